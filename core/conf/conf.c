#include "config.h"

#include "conf/conf.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <keel/error.h>
#include <keel/plugin.h>

#include "util/log.h"

/* Makefile.am passes the install paths; unit tests built by hand may not. */
#ifndef KEEL_PLUGINDIR
#define KEEL_PLUGINDIR "/usr/local/lib/keel"
#endif
#ifndef KEEL_DATADIR
#define KEEL_DATADIR "/usr/local/share/keel"
#endif

/* Secret and key files are small; anything bigger is a mistake. */
#define SMALL_FILE_MAX (64 * 1024)
/* Bounds on arrays read from conf.d, so a typo cannot ask for huge tables. */
#define MAX_KEYS 64
#define MAX_ORIGINS 256
#define MAX_KID_LEN 256

int keel__conf_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (err != NULL && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return KEEL_ECONFIG;
}

int keel__conf_nomem(char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "out of memory");
    return KEEL_ENOMEM;
}

/* Replaces *slot with a copy of s (NULL allowed).  0 or KEEL_ENOMEM. */
static int set_string(char **slot, const char *s)
{
    char *copy = NULL;
    if (s != NULL && (copy = strdup(s)) == NULL)
        return KEEL_ENOMEM;
    free(*slot);
    *slot = copy;
    return 0;
}

char *keel__path_join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    while (la > 1 && a[la - 1] == '/')
        la--;
    char *p = malloc(la + 1 + lb + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, a, la);
    size_t n = la;
    if (!(la == 1 && a[0] == '/'))
        p[n++] = '/';
    memcpy(p + n, b, lb);
    p[n + lb] = '\0';
    return p;
}

bool keel__conf_is_text(const json_t *v)
{
    return json_is_string(v) && strlen(json_string_value(v)) == json_string_length(v);
}

/* Edit distance (insert, delete, substitute, swap of neighbours) between
 * short keys; past 63 characters keys are too long to be typos of ours. */
static size_t key_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return (size_t)-1;
    size_t d[64][64];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            size_t best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < best)
                best = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[la][lb];
}

const char *keel__conf_nearest(const char *key, const char *const *known)
{
    const char *best = NULL;
    size_t best_d = (size_t)-1;
    for (size_t i = 0; known[i] != NULL; i++) {
        size_t d = key_distance(key, known[i]);
        if (d < best_d) {
            best_d = d;
            best = known[i];
        }
    }
    /* Close enough to be a typo: one edit in a short key, two in a longer
     * one, a third of a long one. */
    size_t len = strlen(key);
    size_t limit = len >= 9 ? len / 3 : len >= 5 ? 2 : 1;
    return best != NULL && best_d <= limit ? best : NULL;
}

const char *keel__conf_hint(const char *key, const char *const *known, char *buf, size_t len)
{
    const char *near = keel__conf_nearest(key, known);
    if (near == NULL || len == 0)
        return "";
    snprintf(buf, len, " (did you mean \"%s\"?)", near);
    return buf;
}

const char *keel__conf_unknown_key(const json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *value;

    /* jansson has no const iteration; the loop only reads. */
    json_object_foreach((json_t *)obj, key, value)
    {
        size_t i = 0;
        while (allowed[i] != NULL && strcmp(allowed[i], key) != 0)
            i++;
        if (allowed[i] == NULL)
            return key;
    }
    return NULL;
}

/*
 * Reads a whole small text file.  Fails (with why) when it is not a regular
 * file, is larger than cap or contains a NUL byte.
 */
static int read_small_file(const char *path, size_t cap, char **out, char *why, size_t whylen)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "cannot open %s: %s", path, strerror(errno));
        return KEEL_EIO;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "%s is not a regular file", path);
        close(fd);
        return KEEL_EIO;
    }
    if ((uintmax_t)st.st_size > cap) {
        snprintf(why, whylen, "%s is larger than %zu bytes", path, cap);
        close(fd);
        return KEEL_ETOOBIG;
    }
    char *buf = malloc(cap + 1);
    if (buf == NULL) {
        close(fd);
        snprintf(why, whylen, "out of memory");
        return KEEL_ENOMEM;
    }
    /* Read up to one byte past the cap so a file that grew is still caught. */
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, cap + 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(why, whylen, "cannot read %s: %s", path, strerror(errno));
            free(buf);
            close(fd);
            return KEEL_EIO;
        }
        if (r == 0)
            break;
        len += (size_t)r;
        if (len > cap) {
            snprintf(why, whylen, "%s is larger than %zu bytes", path, cap);
            free(buf);
            close(fd);
            return KEEL_ETOOBIG;
        }
    }
    close(fd);
    if (memchr(buf, '\0', len) != NULL) {
        snprintf(why, whylen, "%s contains a NUL byte", path);
        free(buf);
        return KEEL_EINVAL;
    }
    buf[len] = '\0';
    *out = buf;
    return 0;
}

/* ------------------------------------------------------------------ schema */

/* What one key of a section is while it is being parsed. */
struct parse_ctx {
    struct keel__conf *conf;
    const char *file; /* for messages */
    json_t *section;  /* the section object being applied */
    char *err;
    size_t errlen;
};

enum field_type { FT_STRING, FT_INT, FT_LONG, FT_BOOL, FT_CUSTOM };

#define F_NULLABLE 1u /* JSON null sets NULL */

struct field {
    const char *key;
    enum field_type type;
    size_t offset;
    unsigned flags;
    long long min, max;
    const char *const *choices; /* FT_STRING: allowed values, NULL-terminated */
    int (*parse)(struct parse_ctx *c, const char *section, const char *key, json_t *value);
};

struct section {
    const char *name;
    const struct field *fields;
};

/* JSON key = C member name, so the tables name each member once. */
#define OFF(sec, name) offsetof(struct keel__conf, sec.name)
#define STRING(sec, name, fl)                                                                      \
    {                                                                                              \
        .key = #name, .type = FT_STRING, .offset = OFF(sec, name), .flags = (fl)                   \
    }
#define CHOICE(sec, name, list)                                                                    \
    {                                                                                              \
        .key = #name, .type = FT_STRING, .offset = OFF(sec, name), .choices = (list)               \
    }
#define INT(sec, name, lo, hi)                                                                     \
    {                                                                                              \
        .key = #name, .type = FT_INT, .offset = OFF(sec, name), .min = (lo), .max = (hi)           \
    }
#define LONG(sec, name, lo, hi)                                                                    \
    {                                                                                              \
        .key = #name, .type = FT_LONG, .offset = OFF(sec, name), .min = (lo), .max = (hi)          \
    }
#define BOOL(sec, name)                                                                            \
    {                                                                                              \
        .key = #name, .type = FT_BOOL, .offset = OFF(sec, name)                                    \
    }
#define CUSTOM(name, fn)                                                                           \
    {                                                                                              \
        .key = (name), .type = FT_CUSTOM, .parse = (fn)                                            \
    }

static int parse_log_level(struct parse_ctx *c, const char *section, const char *key, json_t *v);
static int parse_secret_file(struct parse_ctx *c, const char *section, const char *key, json_t *v);
static int parse_keys(struct parse_ctx *c, const char *section, const char *key, json_t *v);
static int parse_origins(struct parse_ctx *c, const char *section, const char *key, json_t *v);
static int parse_proxies(struct parse_ctx *c, const char *section, const char *key, json_t *v);

static const char *const access_formats[] = {"text", "json", NULL};
static const char *const poolers[] = {"none", "pgbouncer-session", "pgbouncer-transaction", NULL};

static const struct field server_fields[] = {
    STRING(server, host, 0),
    INT(server, port, 1, 65535),
    INT(server, threads, 0, 1024),
    INT(server, connection_timeout_s, 1, 3600),
    INT(server, shutdown_timeout_s, 0, 3600),
    STRING(server, plugin_dir, 0),
    CUSTOM("trusted_proxies", parse_proxies),
    STRING(server, runtime_dir, F_NULLABLE),
    {0},
};

static const struct field admin_fields[] = {
    STRING(admin, host, 0),
    INT(admin, port, 1, 65535),
    STRING(admin, token, F_NULLABLE),
    {0},
};

static const struct field log_fields[] = {
    CUSTOM("level", parse_log_level),
    STRING(log, access_log, F_NULLABLE),
    STRING(log, error_log, F_NULLABLE),
    CHOICE(log, access_format, access_formats),
    {0},
};

static const struct field database_fields[] = {
    STRING(database, url, F_NULLABLE),
    INT(database, pool_size, 1, 1024),
    INT(database, pool_wait_ms, 0, 600000),
    INT(database, connect_timeout_s, 1, 300),
    INT(database, statement_timeout_ms, 0, 3600000),
    INT(database, lock_timeout_ms, 0, 3600000),
    INT(database, breaker_failures, 1, 1000),
    INT(database, breaker_open_ms, 1, 3600000),
    STRING(database, migrations_dir, 0),
    CHOICE(database, pooler, poolers),
    STRING(database, listen_url, F_NULLABLE),
    {0},
};

static const struct field auth_fields[] = {
    STRING(auth, jwt_secret, F_NULLABLE),
    CUSTOM("jwt_secret_file", parse_secret_file),
    STRING(auth, jwt_kid, F_NULLABLE),
    CUSTOM("keys", parse_keys),
    STRING(auth, issuer, F_NULLABLE),
    STRING(auth, audience, 0),
    INT(auth, leeway_s, 0, 3600),
    INT(auth, max_token_bytes, 256, 1048576),
    {0},
};

static const struct field usersync_fields[] = {
    INT(usersync, ttl_s, 0, 86400),
    INT(usersync, max_entries, 0, 10000000),
    LONG(usersync, initial_credits, 0, 1000000000),
    {0},
};

static const struct field cors_fields[] = {
    CUSTOM("origins", parse_origins), STRING(cors, methods, 0), STRING(cors, headers, 0),
    INT(cors, max_age, 0, 86400),     BOOL(cors, credentials),  {0},
};

static const struct field limits_fields[] = {
    LONG(limits, max_body_bytes, 1, 1073741824),
    LONG(limits, max_admin_body_bytes, 1, 1073741824),
    INT(limits, max_json_depth, 1, 1024),
    LONG(limits, max_header_bytes, 1024, 1048576),
    INT(limits, max_uri_bytes, 256, 1048576),
    LONG(limits, max_drain_bytes, 0, 1073741824),
    INT(limits, max_connections, 1, 1000000),
    INT(limits, max_per_ip, 0, 1000000),
    INT(limits, rate_per_user, 0, 1000000),
    INT(limits, rate_burst, 0, 1000000),
    {0},
};

static const struct section sections[] = {
    {"server", server_fields},     {"admin", admin_fields},   {"log", log_fields},
    {"database", database_fields}, {"auth", auth_fields},     {"usersync", usersync_fields},
    {"cors", cors_fields},         {"limits", limits_fields},
};
#define NSECTIONS (sizeof sections / sizeof sections[0])

static int apply_field(struct parse_ctx *c, const char *section, const struct field *f, json_t *v)
{
    char *base = (char *)c->conf;

    switch (f->type) {
    case FT_STRING: {
        char **slot = (char **)(base + f->offset);
        if (json_is_null(v) && (f->flags & F_NULLABLE)) {
            free(*slot);
            *slot = NULL;
            return 0;
        }
        if (!keel__conf_is_text(v) || json_string_length(v) == 0) {
            return keel__conf_fail(c->err, c->errlen, "%s: %s.%s: expected a non-empty string%s",
                                   c->file, section, f->key,
                                   (f->flags & F_NULLABLE) ? " or null" : "");
        }
        const char *s = json_string_value(v);
        if (f->choices) {
            size_t i;
            for (i = 0; f->choices[i] && strcmp(f->choices[i], s) != 0; i++)
                ;
            if (f->choices[i] == NULL) {
                char list[128] = "";
                size_t used = 0;
                for (i = 0; f->choices[i]; i++) {
                    int w = snprintf(list + used, sizeof list - used, "%s\"%s\"", i ? ", " : "",
                                     f->choices[i]);
                    if (w > 0 && (size_t)w < sizeof list - used)
                        used += (size_t)w;
                }
                return keel__conf_fail(c->err, c->errlen, "%s: %s.%s: expected one of %s", c->file,
                                       section, f->key, list);
            }
        }
        return set_string(slot, s) < 0 ? keel__conf_nomem(c->err, c->errlen) : 0;
    }
    case FT_INT:
    case FT_LONG: {
        if (!json_is_integer(v) || json_integer_value(v) < f->min ||
            json_integer_value(v) > f->max) {
            return keel__conf_fail(c->err, c->errlen, "%s: %s.%s: expected an integer %lld-%lld",
                                   c->file, section, f->key, f->min, f->max);
        }
        if (f->type == FT_INT)
            *(int *)(base + f->offset) = (int)json_integer_value(v);
        else
            *(long *)(base + f->offset) = (long)json_integer_value(v);
        return 0;
    }
    case FT_BOOL:
        if (!json_is_boolean(v))
            return keel__conf_fail(c->err, c->errlen, "%s: %s.%s: expected true or false", c->file,
                                   section, f->key);
        *(bool *)(base + f->offset) = json_is_true(v);
        return 0;
    case FT_CUSTOM:
        return f->parse(c, section, f->key, v);
    }
    return keel__conf_fail(c->err, c->errlen, "%s: %s.%s: internal error", c->file, section,
                           f->key);
}

static int apply_section(struct parse_ctx *c, const struct section *sec, json_t *obj)
{
    const char *key;
    json_t *value;

    if (!json_is_object(obj))
        return keel__conf_fail(c->err, c->errlen, "%s: %s: expected an object", c->file, sec->name);
    c->section = obj;
    json_object_foreach(obj, key, value)
    {
        const struct field *f = sec->fields;
        while (f->key && strcmp(f->key, key) != 0)
            f++;
        if (f->key == NULL) {
            const char *known[64];
            size_t n = 0;
            for (const struct field *k = sec->fields; k->key != NULL && n + 1 < 64; k++)
                known[n++] = k->key;
            known[n] = NULL;
            char hint[96];
            return keel__conf_fail(c->err, c->errlen, "%s: %s.%s: unknown key%s", c->file,
                                   sec->name, key, keel__conf_hint(key, known, hint, sizeof hint));
        }
        int rc = apply_field(c, sec->name, f, value);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int parse_log_level(struct parse_ctx *c, const char *section, const char *key, json_t *v)
{
    int level = json_is_string(v) ? keel__log_parse_level(json_string_value(v)) : -1;
    if (level < 0)
        return keel__conf_fail(c->err, c->errlen,
                               "%s: %s.%s: expected one of \"error\", \"warn\", \"info\", "
                               "\"debug\"",
                               c->file, section, key);
    c->conf->log.level = level;
    return 0;
}

/* Resolves a path written in conf.d: relative paths are relative to conf.d. */
static char *conf_path(const struct keel__conf *conf, const char *p)
{
    return p[0] == '/' ? strdup(p) : keel__path_join(conf->dir, p);
}

static int parse_secret_file(struct parse_ctx *c, const char *section, const char *key, json_t *v)
{
    char why[512];
    char *text = NULL;

    if (json_object_get(c->section, "jwt_secret") != NULL)
        return keel__conf_fail(c->err, c->errlen,
                               "%s: %s.%s: give either jwt_secret or jwt_secret_file", c->file,
                               section, key);
    if (!json_is_string(v) || json_string_length(v) == 0)
        return keel__conf_fail(c->err, c->errlen, "%s: %s.%s: expected a file name", c->file,
                               section, key);
    char *path = conf_path(c->conf, json_string_value(v));
    if (path == NULL)
        return keel__conf_nomem(c->err, c->errlen);
    int rc = read_small_file(path, SMALL_FILE_MAX, &text, why, sizeof why);
    free(path);
    if (rc < 0)
        return keel__conf_fail(c->err, c->errlen, "%s: %s.%s: %s", c->file, section, key, why);
    /* Files written with echo or an editor end with a newline that is not
     * part of the secret. */
    size_t len = strlen(text);
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        text[--len] = '\0';
    if (len == 0) {
        free(text);
        return keel__conf_fail(c->err, c->errlen, "%s: %s.%s: the secret file is empty", c->file,
                               section, key);
    }
    free(c->conf->auth.jwt_secret);
    c->conf->auth.jwt_secret = text;
    return 0;
}

static void free_keys(struct keel__conf *conf)
{
    for (size_t i = 0; i < conf->auth.nkeys; i++) {
        free(conf->auth.keys[i].kid);
        free(conf->auth.keys[i].alg);
        free(conf->auth.keys[i].pem);
    }
    free(conf->auth.keys);
    conf->auth.keys = NULL;
    conf->auth.nkeys = 0;
}

static int parse_one_key(struct parse_ctx *c, size_t i, json_t *obj, struct keel__key_conf *k)
{
    static const char *const keys[] = {"kid", "alg", "pem", "pem_file", NULL};
    const char *name;
    char why[512];

    if (!json_is_object(obj))
        return keel__conf_fail(c->err, c->errlen,
                               "%s: auth.keys[%zu]: expected an object with kid, alg and "
                               "pem or pem_file",
                               c->file, i);
    if ((name = keel__conf_unknown_key(obj, keys)) != NULL)
        return keel__conf_fail(c->err, c->errlen, "%s: auth.keys[%zu].%s: unknown key", c->file, i,
                               name);
    json_t *kid = json_object_get(obj, "kid");
    json_t *alg = json_object_get(obj, "alg");
    json_t *pem = json_object_get(obj, "pem");
    json_t *pem_file = json_object_get(obj, "pem_file");

    if (!keel__conf_is_text(kid) || json_string_length(kid) == 0 ||
        json_string_length(kid) > MAX_KID_LEN)
        return keel__conf_fail(c->err, c->errlen,
                               "%s: auth.keys[%zu].kid: expected a non-empty string", c->file, i);
    if (!json_is_string(alg) || (strcmp(json_string_value(alg), "RS256") != 0 &&
                                 strcmp(json_string_value(alg), "ES256") != 0))
        return keel__conf_fail(c->err, c->errlen,
                               "%s: auth.keys[%zu].alg: expected \"RS256\" or \"ES256\"", c->file,
                               i);
    if ((pem == NULL) == (pem_file == NULL))
        return keel__conf_fail(c->err, c->errlen,
                               "%s: auth.keys[%zu]: give exactly one of pem and pem_file", c->file,
                               i);

    k->kid = strdup(json_string_value(kid));
    k->alg = strdup(json_string_value(alg));
    if (k->kid == NULL || k->alg == NULL)
        return keel__conf_nomem(c->err, c->errlen);
    if (pem != NULL) {
        if (!keel__conf_is_text(pem))
            return keel__conf_fail(c->err, c->errlen, "%s: auth.keys[%zu].pem: expected a string",
                                   c->file, i);
        k->pem = strdup(json_string_value(pem));
        if (k->pem == NULL)
            return keel__conf_nomem(c->err, c->errlen);
    } else {
        if (!json_is_string(pem_file) || json_string_length(pem_file) == 0)
            return keel__conf_fail(c->err, c->errlen,
                                   "%s: auth.keys[%zu].pem_file: expected a file name", c->file, i);
        char *path = conf_path(c->conf, json_string_value(pem_file));
        if (path == NULL)
            return keel__conf_nomem(c->err, c->errlen);
        int rc = read_small_file(path, SMALL_FILE_MAX, &k->pem, why, sizeof why);
        free(path);
        if (rc < 0)
            return keel__conf_fail(c->err, c->errlen, "%s: auth.keys[%zu].pem_file: %s", c->file, i,
                                   why);
    }
    /* The auth module parses the key; this only catches a wrong file early. */
    if (strstr(k->pem, "-----BEGIN ") == NULL)
        return keel__conf_fail(c->err, c->errlen,
                               "%s: auth.keys[%zu].%s: not a PEM text (no -----BEGIN line)",
                               c->file, i, pem ? "pem" : "pem_file");
    return 0;
}

static int parse_keys(struct parse_ctx *c, const char *section, const char *key, json_t *v)
{
    struct keel__conf *conf = c->conf;

    if (!json_is_array(v) || json_array_size(v) > MAX_KEYS)
        return keel__conf_fail(c->err, c->errlen,
                               "%s: %s.%s: expected an array of at most %d key objects", c->file,
                               section, key, MAX_KEYS);
    free_keys(conf);
    size_t n = json_array_size(v);
    if (n == 0)
        return 0;
    conf->auth.keys = calloc(n, sizeof *conf->auth.keys);
    if (conf->auth.keys == NULL)
        return keel__conf_nomem(c->err, c->errlen);
    for (size_t i = 0; i < n; i++) {
        /* Count the entry first so free_keys() releases a half-filled one. */
        conf->auth.nkeys = i + 1;
        int rc = parse_one_key(c, i, json_array_get(v, i), &conf->auth.keys[i]);
        if (rc < 0)
            return rc;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(conf->auth.keys[j].kid, conf->auth.keys[i].kid) == 0)
                return keel__conf_fail(c->err, c->errlen,
                                       "%s: auth.keys[%zu].kid: \"%s\" is also the kid of "
                                       "auth.keys[%zu]",
                                       c->file, i, conf->auth.keys[i].kid, j);
        }
    }
    return 0;
}

/* "*" or scheme://host[:port] exactly as a browser sends it in Origin. */
static bool valid_origin(const char *s)
{
    if (strcmp(s, "*") == 0)
        return true;
    const char *rest;
    if (strncmp(s, "http://", 7) == 0)
        rest = s + 7;
    else if (strncmp(s, "https://", 8) == 0)
        rest = s + 8;
    else
        return false;
    if (*rest == '\0' || *rest == ':')
        return false;
    for (const char *p = rest; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch <= 0x20 || ch >= 0x7f || ch == '/' || ch == '?' || ch == '#' || ch == '@')
            return false;
    }
    return true;
}

static void free_origins(struct keel__conf *conf)
{
    for (size_t i = 0; i < conf->cors.norigins; i++)
        free(conf->cors.origins[i]);
    free(conf->cors.origins);
    conf->cors.origins = NULL;
    conf->cors.norigins = 0;
}

static int parse_origins(struct parse_ctx *c, const char *section, const char *key, json_t *v)
{
    struct keel__conf *conf = c->conf;

    if (!json_is_array(v) || json_array_size(v) > MAX_ORIGINS)
        return keel__conf_fail(c->err, c->errlen,
                               "%s: %s.%s: expected an array of at most %d strings", c->file,
                               section, key, MAX_ORIGINS);
    free_origins(conf);
    size_t n = json_array_size(v);
    if (n == 0)
        return 0;
    conf->cors.origins = calloc(n, sizeof *conf->cors.origins);
    if (conf->cors.origins == NULL)
        return keel__conf_nomem(c->err, c->errlen);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(v, i);
        if (!keel__conf_is_text(o) || !valid_origin(json_string_value(o)))
            return keel__conf_fail(c->err, c->errlen,
                                   "%s: %s.%s[%zu]: expected \"*\" or an origin like "
                                   "\"https://example.com:8443\" (no path, no trailing slash)",
                                   c->file, section, key, i);
        conf->cors.origins[i] = strdup(json_string_value(o));
        if (conf->cors.origins[i] == NULL)
            return keel__conf_nomem(c->err, c->errlen);
        conf->cors.norigins = i + 1;
    }
    return 0;
}

#define MAX_PROXIES 256

static int parse_proxies(struct parse_ctx *c, const char *section, const char *key, json_t *v)
{
    struct keel__conf *conf = c->conf;
    if (!json_is_array(v) || json_array_size(v) > MAX_PROXIES)
        return keel__conf_fail(c->err, c->errlen,
                               "%s: %s.%s: expected an array of at most %d CIDR strings", c->file,
                               section, key, MAX_PROXIES);
    free(conf->server.trusted_proxies);
    conf->server.trusted_proxies = NULL;
    conf->server.ntrusted_proxies = 0;
    size_t n = json_array_size(v);
    if (n == 0)
        return 0;
    conf->server.trusted_proxies = calloc(n, sizeof *conf->server.trusted_proxies);
    if (conf->server.trusted_proxies == NULL)
        return keel__conf_nomem(c->err, c->errlen);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(v, i);
        if (!keel__conf_is_text(o) ||
            keel__cidr_parse(json_string_value(o), &conf->server.trusted_proxies[i]) != 0)
            return keel__conf_fail(c->err, c->errlen,
                                   "%s: %s.%s[%zu]: expected an address or CIDR like "
                                   "\"10.0.0.0/8\" or \"::1\"",
                                   c->file, section, key, i);
        conf->server.ntrusted_proxies = i + 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ loading */

static int set_defaults(struct keel__conf *conf)
{
    conf->server.port = 8080;
    conf->server.threads = 0;
    conf->server.connection_timeout_s = 30;
    conf->server.shutdown_timeout_s = 10;
    conf->admin.port = 8081;
    conf->log.level = KEEL_LOG_INFO;
    conf->database.pool_size = 8;
    conf->database.pool_wait_ms = 2000;
    conf->database.connect_timeout_s = 3;
    conf->database.statement_timeout_ms = 5000;
    conf->database.lock_timeout_ms = 2000;
    conf->database.breaker_failures = 3;
    conf->database.breaker_open_ms = 2000;
    conf->auth.leeway_s = 30;
    conf->auth.max_token_bytes = 8192;
    conf->usersync.ttl_s = 300;
    conf->usersync.max_entries = 10000;
    conf->usersync.initial_credits = 0;
    conf->cors.max_age = 600;
    conf->cors.credentials = false;
    conf->limits.max_body_bytes = 1024L * 1024;
    conf->limits.max_admin_body_bytes = 256L * 1024 * 1024;
    conf->limits.max_json_depth = 32;
    conf->limits.max_header_bytes = 16L * 1024;
    conf->limits.max_uri_bytes = 8192;
    conf->limits.max_drain_bytes = 32L * 1024 * 1024;
    conf->limits.max_connections = 1024;
    conf->limits.max_per_ip = 0;
    conf->limits.rate_per_user = 0;
    conf->limits.rate_burst = 0;

    if (set_string(&conf->server.host, "127.0.0.1") < 0 ||
        set_string(&conf->server.plugin_dir, KEEL_PLUGINDIR) < 0 ||
        set_string(&conf->admin.host, "127.0.0.1") < 0 ||
        set_string(&conf->log.access_format, "text") < 0 ||
        set_string(&conf->database.migrations_dir, KEEL_DATADIR "/migrations") < 0 ||
        set_string(&conf->database.pooler, "none") < 0 ||
        set_string(&conf->auth.audience, "authenticated") < 0 ||
        set_string(&conf->cors.methods, "GET, POST, PUT, PATCH, DELETE, OPTIONS") < 0 ||
        set_string(&conf->cors.headers, "Authorization, Content-Type") < 0)
        return KEEL_ENOMEM;
    return 0;
}

/* A manifest seen while reading files, parsed once plugin_dir is final. */
struct pending_plugin {
    json_t *obj;
    char *source;
};

struct load_state {
    struct keel__conf *conf;
    const char *seen[NSECTIONS]; /* the file that defined each section */
    char **files;                /* paths of the files read, owned */
    size_t nfiles;
    struct pending_plugin *pending;
    size_t npending;
};

static int json_file_filter(const struct dirent *d)
{
    size_t n = strlen(d->d_name);
    return d->d_name[0] != '.' && n > 5 && strcmp(d->d_name + n - 5, ".json") == 0;
}

/* Byte order, not the locale's collation: "10-x" < "9-y" everywhere. */
static int name_order(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static int load_file(struct load_state *st, const char *path, char *err, size_t errlen)
{
    json_error_t je;
    const char *key;
    json_t *value;
    int rc = 0;

    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL && je.line > 0)
        return keel__conf_fail(err, errlen, "%s: line %d, column %d: %s", path, je.line, je.column,
                               je.text);
    if (root == NULL)
        return keel__conf_fail(err, errlen, "%s: %s", path, je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return keel__conf_fail(err, errlen, "%s: expected a JSON object of sections", path);
    }

    struct parse_ctx c = {.conf = st->conf, .file = path, .err = err, .errlen = errlen};
    json_object_foreach(root, key, value)
    {
        if (strcmp(key, "plugin") == 0) {
            struct pending_plugin *grown = realloc(st->pending,
                                                   (st->npending + 1) * sizeof *st->pending);
            if (grown == NULL) {
                rc = keel__conf_nomem(err, errlen);
                break;
            }
            st->pending = grown;
            grown[st->npending].source = strdup(path);
            if (grown[st->npending].source == NULL) {
                rc = keel__conf_nomem(err, errlen);
                break;
            }
            grown[st->npending].obj = json_incref(value);
            st->npending++;
            continue;
        }
        size_t s = 0;
        while (s < NSECTIONS && strcmp(sections[s].name, key) != 0)
            s++;
        if (s == NSECTIONS) {
            const char *known[NSECTIONS + 2];
            for (size_t k = 0; k < NSECTIONS; k++)
                known[k] = sections[k].name;
            known[NSECTIONS] = "plugin";
            known[NSECTIONS + 1] = NULL;
            char hint[96];
            rc = keel__conf_fail(err, errlen, "%s: %s: unknown section%s", path, key,
                                 keel__conf_hint(key, known, hint, sizeof hint));
            break;
        }
        if (st->seen[s] != NULL) {
            rc = keel__conf_fail(err, errlen, "%s: section \"%s\" is already defined in %s", path,
                                 key, st->seen[s]);
            break;
        }
        st->seen[s] = path;
        rc = apply_section(&c, &sections[s], value);
        if (rc < 0)
            break;
    }
    json_decref(root);
    return rc;
}

static int load_plugins(struct load_state *st, char *err, size_t errlen)
{
    struct keel__conf *conf = st->conf;

    if (st->npending == 0)
        return 0;
    conf->plugins = calloc(st->npending, sizeof *conf->plugins);
    if (conf->plugins == NULL)
        return keel__conf_nomem(err, errlen);
    for (size_t i = 0; i < st->npending; i++) {
        struct keel__manifest *m = &conf->plugins[conf->nplugins];
        int rc = keel__manifest_parse(st->pending[i].obj, st->pending[i].source,
                                      conf->server.plugin_dir, m, err, errlen);
        if (rc < 0)
            return rc;
        conf->nplugins++;
        for (size_t j = 0; j + 1 < conf->nplugins; j++) {
            if (strcmp(conf->plugins[j].name, m->name) == 0)
                return keel__conf_fail(err, errlen, "%s: plugin \"%s\" is already defined in %s",
                                       m->source, m->name, conf->plugins[j].source);
        }
    }
    return 0;
}

int keel__conf_load(const char *dir, struct keel__conf **out, char *err, size_t errlen)
{
    struct load_state st = {0};
    struct dirent **names = NULL;
    int n = 0, rc;

    *out = NULL;
    if (dir == NULL || dir[0] == '\0')
        return keel__conf_fail(err, errlen, "no configuration directory given");
    st.conf = calloc(1, sizeof *st.conf);
    if (st.conf == NULL)
        return keel__conf_nomem(err, errlen);
    rc = set_defaults(st.conf);
    if (rc == 0)
        rc = set_string(&st.conf->dir, dir);
    if (rc < 0) {
        rc = keel__conf_nomem(err, errlen);
        goto out;
    }

    n = scandir(dir, &names, json_file_filter, name_order);
    if (n < 0) {
        rc = keel__conf_fail(err, errlen, "%s: cannot read the configuration directory: %s", dir,
                             strerror(errno));
        n = 0;
        goto out;
    }
    st.files = calloc((size_t)n + 1, sizeof *st.files);
    if (st.files == NULL) {
        rc = keel__conf_nomem(err, errlen);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        struct stat sb;
        char *path = keel__path_join(dir, names[i]->d_name);
        if (path == NULL) {
            rc = keel__conf_nomem(err, errlen);
            goto out;
        }
        st.files[st.nfiles++] = path;
        /* A directory that happens to be called x.json is not a file to read. */
        if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode))
            continue;
        rc = load_file(&st, path, err, errlen);
        if (rc < 0)
            goto out;
    }
    rc = load_plugins(&st, err, errlen);

out:
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    for (size_t i = 0; i < st.nfiles; i++)
        free(st.files[i]);
    free(st.files);
    for (size_t i = 0; i < st.npending; i++) {
        json_decref(st.pending[i].obj);
        free(st.pending[i].source);
    }
    free(st.pending);
    if (rc < 0) {
        keel__conf_free(st.conf);
        return rc == KEEL_ENOMEM ? rc : KEEL_ECONFIG;
    }
    *out = st.conf;
    return 0;
}

void keel__conf_free(struct keel__conf *conf)
{
    if (conf == NULL)
        return;
    free(conf->dir);
    free(conf->server.host);
    free(conf->server.plugin_dir);
    free(conf->admin.host);
    free(conf->admin.token);
    free(conf->log.access_log);
    free(conf->log.error_log);
    free(conf->log.access_format);
    free(conf->database.url);
    free(conf->database.migrations_dir);
    free(conf->database.pooler);
    free(conf->database.listen_url);
    free(conf->server.trusted_proxies);
    free(conf->server.runtime_dir);
    free(conf->auth.jwt_secret);
    free(conf->auth.jwt_kid);
    free_keys(conf);
    free(conf->auth.issuer);
    free(conf->auth.audience);
    free_origins(conf);
    free(conf->cors.methods);
    free(conf->cors.headers);
    for (size_t i = 0; i < conf->nplugins; i++)
        keel__manifest_clear(&conf->plugins[i]);
    free(conf->plugins);
    free(conf);
}

/* ------------------------------------------------------------- environment */

static bool valid_hostname(const char *h, size_t len)
{
    if (len == 0 || len > 253)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = h[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-'))
            return false;
    }
    return true;
}

int keel__parse_listen(const char *spec, char **host, int *port)
{
    const char *h = NULL, *portstr;
    size_t hlen = 0;

    *host = NULL;
    *port = 0;
    if (spec == NULL || spec[0] == '\0')
        return KEEL_EINVAL;
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (close == NULL || close[1] != ':')
            return KEEL_EINVAL;
        h = spec + 1;
        hlen = (size_t)(close - h);
        portstr = close + 2;
        char addr[INET6_ADDRSTRLEN + 1];
        struct in6_addr a6;
        if (hlen == 0 || hlen >= sizeof addr)
            return KEEL_EINVAL;
        memcpy(addr, h, hlen);
        addr[hlen] = '\0';
        if (inet_pton(AF_INET6, addr, &a6) != 1)
            return KEEL_EINVAL;
    } else {
        const char *colon = strrchr(spec, ':');
        if (colon == NULL) {
            portstr = spec;
        } else {
            /* A bare IPv6 address is ambiguous with a port: use brackets. */
            if (memchr(spec, ':', (size_t)(colon - spec)) != NULL)
                return KEEL_EINVAL;
            h = spec;
            hlen = (size_t)(colon - spec);
            portstr = colon + 1;
            if (hlen > 0 && !valid_hostname(h, hlen))
                return KEEL_EINVAL;
        }
    }

    size_t plen = strlen(portstr);
    if (plen == 0 || plen > 5 || strspn(portstr, "0123456789") != plen)
        return KEEL_EINVAL;
    long p = strtol(portstr, NULL, 10);
    if (p < 1 || p > 65535)
        return KEEL_EINVAL;

    if (hlen > 0) {
        *host = strndup(h, hlen);
        if (*host == NULL)
            return KEEL_ENOMEM;
    }
    *port = (int)p;
    return 0;
}

static bool is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;

    if (strcmp(host, "localhost") == 0)
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1) {
        if (IN6_IS_ADDR_LOOPBACK(&a6))
            return true;
        return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
    }
    return false;
}

/* An environment variable, or NULL when unset or empty. */
static const char *env(const char *name)
{
    const char *v = getenv(name);
    return (v != NULL && v[0] != '\0') ? v : NULL;
}

/* Parses the listen address in variable `name`, if it is set. */
static int env_listen(const char *name, char **host, int *port, char *err, size_t errlen)
{
    const char *value = env(name);
    int rc = value != NULL ? keel__parse_listen(value, host, port) : 0;

    if (rc == KEEL_ENOMEM)
        return keel__conf_nomem(err, errlen);
    if (rc < 0)
        return keel__conf_fail(err, errlen,
                               "%s: expected host:port, [ipv6]:port or :port with a "
                               "port 1-65535, got \"%s\"",
                               name, value);
    return 0;
}

/* Moves *value, when there is one, into *slot and frees what *slot held. */
static void move_string(char **slot, char **value)
{
    if (*value == NULL)
        return;
    free(*slot);
    *slot = *value;
    *value = NULL;
}

int keel__conf_apply_env(struct keel__conf *conf, char *err, size_t errlen)
{
    const char *url = env("KEEL_DATABASE_URL");
    const char *secret = env("KEEL_JWT_SECRET");
    const char *plugin_dir = env("KEEL_PLUGIN_DIR");
    const char *level_name = env("KEEL_LOG_LEVEL");
    const char *pooler = env("KEEL_DATABASE_POOLER");
    char *host = NULL, *admin_host = NULL, *url_copy = NULL, *secret_copy = NULL;
    char *pooler_copy = NULL;
    char *dir_copy = NULL;
    char **files = NULL;
    int port = 0, admin_port = 0, level = -1, rc = 0;

    /* Check and copy everything first, so that a bad variable changes nothing. */
    if ((rc = env_listen("KEEL_LISTEN", &host, &port, err, errlen)) < 0 ||
        (rc = env_listen("KEEL_ADMIN_LISTEN", &admin_host, &admin_port, err, errlen)) < 0)
        goto out;
    if (level_name != NULL && (level = keel__log_parse_level(level_name)) < 0) {
        rc = keel__conf_fail(err, errlen,
                             "KEEL_LOG_LEVEL: expected error, warn, info or debug, got \"%s\"",
                             level_name);
        goto out;
    }
    if (pooler != NULL) {
        size_t i = 0;
        while (poolers[i] != NULL && strcmp(poolers[i], pooler) != 0)
            i++;
        if (poolers[i] == NULL) {
            rc = keel__conf_fail(err, errlen,
                                 "KEEL_DATABASE_POOLER: expected none, pgbouncer-session or "
                                 "pgbouncer-transaction, got \"%s\"",
                                 pooler);
            goto out;
        }
    }
    const char *final_admin = admin_host ? admin_host : conf->admin.host;
    if (!is_loopback(final_admin) && conf->admin.token == NULL) {
        rc = keel__conf_fail(err, errlen,
                             "%s: the admin listener on %s is not loopback-only, so admin.token "
                             "is required",
                             admin_host ? "KEEL_ADMIN_LISTEN" : "admin.host", final_admin);
        goto out;
    }
    if ((url != NULL && (url_copy = strdup(url)) == NULL) ||
        (secret != NULL && (secret_copy = strdup(secret)) == NULL) ||
        (plugin_dir != NULL && (dir_copy = strdup(plugin_dir)) == NULL) ||
        (pooler != NULL && (pooler_copy = strdup(pooler)) == NULL)) {
        rc = keel__conf_nomem(err, errlen);
        goto out;
    }
    if (dir_copy != NULL && conf->nplugins > 0) {
        files = calloc(conf->nplugins, sizeof *files);
        if (files == NULL) {
            rc = keel__conf_nomem(err, errlen);
            goto out;
        }
        for (size_t i = 0; i < conf->nplugins; i++) {
            files[i] = keel__manifest_resolve_file(conf->plugins[i].file_spec, dir_copy);
            if (files[i] == NULL) {
                rc = keel__conf_nomem(err, errlen);
                goto out;
            }
        }
    }

    /* Nothing below can fail. */
    move_string(&conf->server.host, &host);
    if (port != 0)
        conf->server.port = port;
    move_string(&conf->admin.host, &admin_host);
    if (admin_port != 0)
        conf->admin.port = admin_port;
    if (level >= 0)
        conf->log.level = level;
    move_string(&conf->database.url, &url_copy);
    move_string(&conf->database.pooler, &pooler_copy);
    move_string(&conf->auth.jwt_secret, &secret_copy);
    move_string(&conf->server.plugin_dir, &dir_copy);
    /* files is set only when KEEL_PLUGIN_DIR is, so these match plugin_dir. */
    for (size_t i = 0; files != NULL && i < conf->nplugins; i++)
        move_string(&conf->plugins[i].file, &files[i]);

out:
    free(host);
    free(admin_host);
    free(url_copy);
    free(secret_copy);
    free(dir_copy);
    free(pooler_copy);
    if (files != NULL) {
        for (size_t i = 0; i < conf->nplugins; i++)
            free(files[i]);
        free(files);
    }
    if (rc < 0)
        return rc == KEEL_ENOMEM ? rc : KEEL_ECONFIG;
    return 0;
}
