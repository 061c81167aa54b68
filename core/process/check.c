#include "config.h"

#include "process/check.h"

#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>

#include <keel/error.h>

#include "data/migrate.h"

/* The name an operator knows the setting by: the variable when the
 * environment set it, else the conf.d key. */
static const char *url_origin(void)
{
    const char *v = getenv("KEEL_DATABASE_URL");
    return v != NULL && *v != '\0' ? "KEEL_DATABASE_URL" : "database.url";
}

/* One line of a libpq message (they end with, and may contain, newlines). */
static const char *flat(const char *in, char *buf, size_t len)
{
    size_t n = 0;
    for (const char *p = in ? in : ""; *p && n + 1 < len; p++)
        buf[n++] = (*p == '\n' || *p == '\t') ? ' ' : *p;
    while (n > 0 && buf[n - 1] == ' ')
        n--;
    buf[n] = '\0';
    return buf;
}

static bool check_url(const char *what, const char *url, FILE *out)
{
    /* A bare word is a database name to libpq; only strings that look like
     * a URI or key=value pairs can be malformed. */
    if (strchr(url, '=') == NULL && strstr(url, "://") == NULL)
        return true;
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &perr);
    char msg[512];
    if (opts == NULL) {
        fprintf(out, "problem: %s: not a valid libpq URL or conninfo: %s\n", what,
                flat(perr ? perr : "out of memory", msg, sizeof msg));
        PQfreemem(perr);
        return false;
    }
    /* libpq parses values only when it connects; the port is the one an
     * operator gets wrong most (a typo, a missing digit). */
    bool ok = true;
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (o->val == NULL || strcmp(o->keyword, "port") != 0)
            continue;
        for (const char *p = o->val; *p && ok; p++) {
            char *end;
            long port = strtol(p, &end, 10);
            if (end == p || port < 1 || port > 65535 || (*end != '\0' && *end != ','))
                ok = false;
            p = *end == ',' ? end : end - 1;
        }
        if (!ok)
            fprintf(out, "problem: %s: port \"%s\" is not a TCP port (1-65535)\n", what, o->val);
    }
    PQconninfoFree(opts);
    return ok;
}

static bool check_database(const struct keel__conf *c, bool connect, FILE *out)
{
    if (c->database.url == NULL || *c->database.url == '\0') {
        fprintf(out, "note: no database.url: keeld would run without a database\n");
        return true;
    }
    bool ok = check_url(url_origin(), c->database.url, out);
    if (c->database.listen_url != NULL)
        ok = check_url("database.listen_url", c->database.listen_url, out) && ok;
    if (!ok || !connect)
        return ok;
    int behind = 0;
    char err[512];
    int rc = keel__db_schema_behind(c->database.url, c->database.migrations_dir, &behind, err,
                                    sizeof err);
    if (rc != 0) {
        char msg[512];
        fprintf(out, "problem: %s: %s\n", url_origin(), flat(err, msg, sizeof msg));
        return false;
    }
    if (behind > 0) {
        fprintf(out,
                "problem: the database schema is %d migration(s) behind %s: run keeld "
                "--migrate\n",
                behind, c->database.migrations_dir);
        return false;
    }
    fprintf(out, "database: connected, schema up to date\n");
    return true;
}

static bool check_auth(const struct keel__conf *c, FILE *out)
{
    if ((c->auth.jwt_secret != NULL && *c->auth.jwt_secret != '\0') || c->auth.nkeys > 0)
        return true;
    for (size_t i = 0; i < c->nplugins; i++) {
        const struct keel__manifest *m = &c->plugins[i];
        if (!m->enabled)
            continue;
        for (size_t r = 0; r < m->nroutes; r++)
            if (m->routes[r].auth == KEEL__AUTH_USER) {
                fprintf(out,
                        "problem: auth: no jwt_secret, jwt_secret_file, keys or KEEL_JWT_SECRET, "
                        "but %s %s (%s) needs a user: every token would be refused\n",
                        m->routes[r].method, m->routes[r].path, m->source);
                return false;
            }
    }
    return true;
}

bool keel__check_settings(const struct keel__conf *c, bool connect, FILE *out)
{
    bool ok = check_database(c, connect, out);
    return check_auth(c, out) && ok;
}

const char *keel__check_where(const char *source, const char *stage, char *buf, size_t len)
{
    const char *key = "file";
    if (stage != NULL && strcmp(stage, "init") == 0)
        key = "config";
    else if (stage != NULL && strcmp(stage, "routes") == 0)
        key = "routes";
    else if (stage != NULL && strcmp(stage, "manifest") == 0)
        key = NULL; /* the manifest parser's message names the key itself */
    if (key == NULL)
        snprintf(buf, len, "%s", source ? source : "conf.d");
    else
        snprintf(buf, len, "%s: plugin.%s", source ? source : "conf.d", key);
    return buf;
}
