#include "config.h"

/*
 * keelctl: the ops client for keeld's admin listener (docs/operations.md).
 * Each command is one HTTP request; the answer is printed as a table or as
 * the server's raw JSON (--json).  This is a command-line program, so it
 * reports to stderr directly instead of going through the core's logger.
 */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include <keel/common.h>

#include "http_client.h"
#include "newplugin.h"
#include "output.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

#define DEFAULT_ADMIN_URL "http://127.0.0.1:8081"
#define MAX_IMPORT_BYTES ((size_t)256 * 1024 * 1024)
/* The import answer has one result per input line, so it may outgrow the
 * usual 64 MiB reply limit that every other command keeps. */
#define MAX_IMPORT_REPLY_BYTES ((size_t)256 * 1024 * 1024)

struct ctl {
    struct http_url url;
    const char *token;
    bool json;
};

static void KEEL_PRINTF(1, 2) fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("keelctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static int KEEL_PRINTF(1, 2) usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("keelctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\nTry 'keelctl --help' for more information.\n", stderr);
    va_end(ap);
    return EXIT_USAGE;
}

static void print_help(void)
{
    fputs("Usage: keelctl [OPTIONS] COMMAND [ARGS]\n"
          "Ops client for keeld's admin listener.\n"
          "\n"
          "Commands:\n"
          "  plugins                     list plugins with state, generation and counters\n"
          "  reload [PLUGIN]             reload every plugin, or one; exit 1 if any fails\n"
          "  status                      server, database, plugin and cache status\n"
          "  upgrade                     start the installed keeld binary on the same sockets;\n"
          "                              the old one drains and exits (exit 1 if it failed)\n"
          "  import FILE                 import NDJSON profiles (FILE '-' reads stdin)\n"
          "  credits EMAIL AMOUNT [REASON]\n"
          "                              add AMOUNT (> 0) credits to a user's wallet\n"
          "  evict USER                  drop a user (email or Supabase id) from the\n"
          "                              user-sync cache\n"
          "  new-plugin NAME DIR         write a plugin project (source, manifest, Makefile,\n"
          "                              test script) into DIR; needs no server\n"
          "\n"
          "Options:\n"
          "  --admin URL    admin listener, http://host:port[/prefix]\n"
          "                 (default: $KEEL_ADMIN_URL, else " DEFAULT_ADMIN_URL ")\n"
          "  --token TOKEN  admin bearer token (default: $KEEL_ADMIN_TOKEN)\n"
          "  --json         print the server's JSON instead of tables\n"
          "  --help         show this help and exit\n"
          "  --version      show the version and exit\n"
          "\n"
          "Exit status: 0 success; 1 the server reported a failure; 2 usage error;\n"
          "3 the admin listener could not be reached or gave no usable answer.\n",
          stdout);
}

/* ------------------------------------------------------------ the requests */

/* The outcome of one admin call: the response and, when it is JSON, its
 * parsed body. */
struct reply {
    struct http_response http;
    json_t *json; /* NULL if the body is not JSON */
};

static void reply_free(struct reply *r)
{
    http_response_free(&r->http);
    json_decref(r->json);
    r->json = NULL;
}

static bool is_success(const struct reply *r)
{
    return r->http.status >= 200 && r->http.status < 300;
}

/*
 * Performs one request.  Returns EXIT_OK with *r filled (whatever the HTTP
 * status), or EXIT_UNREACHABLE after printing why.  With --json, any JSON
 * body is echoed to stdout here, so every command gets the same behaviour.
 */
static int call(const struct ctl *ctl, const char *method, const char *target,
                const char *content_type, const char *body, size_t body_len, size_t max_reply,
                struct reply *r)
{
    memset(r, 0, sizeof *r);
    struct http_request req = {
        .max_body = max_reply,
        .method = method,
        .target = target,
        .bearer_token = ctl->token,
        .content_type = content_type,
        .body = body,
        .body_len = body_len,
        .user_agent = "keelctl/" PACKAGE_VERSION,
    };
    char err[512];
    if (http_request_perform(&ctl->url, &req, &r->http, err, sizeof err) < 0) {
        fail("%s", err);
        return EXIT_UNREACHABLE;
    }
    if (r->http.body_len > 0) {
        json_error_t jerr;
        r->json = json_loadb(r->http.body, r->http.body_len, JSON_DECODE_ANY, &jerr);
    }
    if (ctl->json && r->json != NULL) {
        fwrite(r->http.body, 1, r->http.body_len, stdout);
        if (r->http.body[r->http.body_len - 1] != '\n')
            fputc('\n', stdout);
    }
    return EXIT_OK;
}

/* Reports a non-2xx answer: the "detail" of a JSON error body when there
 * is one, else the status line.  Always returns EXIT_SERVER_FAILED. */
static int report_http_error(const struct ctl *ctl, const struct reply *r)
{
    const json_t *detail = json_is_object(r->json) ? json_object_get(r->json, "detail") : NULL;
    if (detail != NULL) {
        char *s = value_text(detail);
        fail("%s", s);
        free(s);
    } else {
        char *reason = sanitized_copy(r->http.reason ? r->http.reason : "");
        fail("%s answered %d %s", ctl->url.text, r->http.status, reason);
        free(reason);
    }
    if (r->http.status == 401 || r->http.status == 403)
        fputs("keelctl: (the admin listener wants a token: --token or KEEL_ADMIN_TOKEN)\n", stderr);
    return EXIT_SERVER_FAILED;
}

/* What every command asks of an answer: a 2xx status (else the error is
 * reported) and a JSON object body.  EXIT_OK or EXIT_SERVER_FAILED. */
static int check_answer(const struct ctl *ctl, const struct reply *r)
{
    if (!is_success(r))
        return report_http_error(ctl, r);
    if (json_is_object(r->json))
        return EXIT_OK;
    fail("%s answered %d without the expected JSON object", ctl->url.text, r->http.status);
    return EXIT_SERVER_FAILED;
}

/* Percent-encodes s for use in a query string. */
static char *url_encode(const char *s)
{
    char *out = xmalloc(strlen(s) * 3 + 1);
    static const char hex[] = "0123456789ABCDEF";
    char *o = out;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}

/* Serialises a JSON object built by the caller and POSTs it. */
static int post_json(const struct ctl *ctl, const char *target, json_t *body, struct reply *r)
{
    if (body == NULL) {
        /* json_pack() refuses strings that are not valid UTF-8. */
        fail("cannot encode the request: arguments must be valid UTF-8");
        return EXIT_USAGE;
    }
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (text == NULL) {
        fail("cannot encode the request body");
        return EXIT_USAGE;
    }
    int rc = call(ctl, "POST", target, "application/json", text, strlen(text), 0, r);
    free(text);
    return rc;
}

/* ----------------------------------------------------------------- plugins */

/* " at STAGE: ERROR" of a failed reload, each part when the server sent it. */
static void print_failure(const json_t *reload)
{
    const json_t *stage = json_object_get(reload, "stage");
    if (json_is_string(stage)) {
        fputs(" at ", stdout);
        put_value(stdout, stage);
    }
    const json_t *error = json_object_get(reload, "error");
    if (json_is_string(error)) {
        fputs(": ", stdout);
        put_value(stdout, error);
    }
}

static char *last_reload_text(const json_t *lr)
{
    if (!json_is_object(lr))
        return xstrdup("-");
    if (json_is_true(json_object_get(lr, "ok")))
        return xstrdup("ok");
    const json_t *stage = json_object_get(lr, "stage");
    if (json_is_string(stage)) {
        char *s = xasprintf("FAILED@%s", json_string_value(stage));
        sanitize(s);
        return s;
    }
    return xstrdup("FAILED");
}

static int cmd_plugins(const struct ctl *ctl)
{
    struct reply r;
    int rc = call(ctl, "GET", "/admin/plugins", NULL, NULL, 0, 0, &r);
    if (rc != EXIT_OK)
        return rc;
    if ((rc = check_answer(ctl, &r)) != EXIT_OK || ctl->json)
        goto out;
    const json_t *plugins = json_object_get(r.json, "plugins");
    if (!json_is_array(plugins)) {
        fail("%s answered without a \"plugins\" list", ctl->url.text);
        rc = EXIT_SERVER_FAILED;
        goto out;
    }
    if (json_array_size(plugins) == 0) {
        puts("no plugins configured");
        goto out;
    }

    static const char *const headers[] = {"NAME",    "VERSION",     "STATE",     "REASON",
                                          "GEN",     "ABI",         "IN-FLIGHT", "REQUESTS",
                                          "RELOADS", "LAST-RELOAD", "LOADED-AT"};
    static const bool right[] = {false, false, false, false, true, false,
                                 true,  true,  true,  false, false};
    struct table t = {.ncols = 11, .headers = headers, .right = right};
    size_t i;
    const json_t *p;
    json_array_foreach(plugins, i, p)
    {
        char *row[11] = {
            field_text(p, "name"),       field_text(p, "version"),
            field_text(p, "state"),      field_text(p, "reason"),
            field_text(p, "generation"), field_text(p, "abi"),
            field_text(p, "in_flight"),  field_text(p, "requests"),
            field_text(p, "reloads"),    last_reload_text(json_object_get(p, "last_reload")),
            time_text(p, "loaded_at"),
        };
        table_add(&t, row);
    }
    table_print(stdout, &t);

    /* File paths are long and the failure messages longer still: they go
     * below the table, one block per plugin, names aligned with it. */
    fputc('\n', stdout);
    size_t name_width = 0;
    for (i = 0; i < t.nrows; i++) {
        size_t w = display_width(t.cells[i * t.ncols]);
        if (w > name_width)
            name_width = w;
    }
    json_array_foreach(plugins, i, p)
    {
        const char *name = t.cells[i * t.ncols];
        char *file = field_text(p, "file");
        print_cell(stdout, name, name_width, false, false);
        fprintf(stdout, "  %s", file);
        free(file);
        const json_t *routes = json_object_get(p, "routes");
        const json_t *enabled = json_object_get(p, "enabled");
        if (json_is_integer(routes))
            fprintf(stdout, " (%" JSON_INTEGER_FORMAT " route%s%s)", json_integer_value(routes),
                    json_integer_value(routes) == 1 ? "" : "s",
                    json_is_false(enabled) ? ", disabled" : "");
        else if (json_is_false(enabled))
            fputs(" (disabled)", stdout);
        fputc('\n', stdout);

        const json_t *lr = json_object_get(p, "last_reload");
        if (json_is_object(lr) && !json_is_true(json_object_get(lr, "ok"))) {
            fprintf(stdout, "%*s  last reload failed", (int)name_width, "");
            print_failure(lr);
            const json_t *at = json_object_get(lr, "at");
            if (json_is_string(at)) {
                fputs(" (", stdout);
                put_value(stdout, at);
                fputc(')', stdout);
            }
            fputc('\n', stdout);
        }
    }
    table_free(&t);
out:
    reply_free(&r);
    return rc;
}

/* ------------------------------------------------------------------ reload */

static int cmd_reload(const struct ctl *ctl, const char *plugin)
{
    char *target;
    if (plugin != NULL) {
        char *enc = url_encode(plugin);
        target = xasprintf("/admin/reload?plugin=%s", enc);
        free(enc);
    } else {
        target = xstrdup("/admin/reload");
    }
    struct reply r;
    /* The admin listener takes writes only with a JSON content type (a
     * browser cannot send that cross-site without a preflight). */
    int rc = call(ctl, "POST", target, "application/json", NULL, 0, 0, &r);
    free(target);
    if (rc != EXIT_OK)
        return rc;
    if ((rc = check_answer(ctl, &r)) != EXIT_OK)
        goto out;

    const json_t *results = json_object_get(r.json, "results");
    bool any_failed = json_is_false(json_object_get(r.json, "ok"));
    size_t i;
    const json_t *res;
    size_t name_width = 0;
    json_array_foreach(results, i, res)
    {
        if (!json_is_true(json_object_get(res, "ok")))
            any_failed = true;
        char *name = field_text(res, "plugin");
        size_t w = display_width(name);
        free(name);
        if (w > name_width)
            name_width = w;
    }
    if (ctl->json) {
        rc = any_failed ? EXIT_SERVER_FAILED : EXIT_OK;
        goto out;
    }
    if (json_array_size(results) == 0)
        puts("no plugins to reload");
    json_array_foreach(results, i, res)
    {
        char *name = field_text(res, "plugin");
        print_cell(stdout, name, name_width, false, false);
        free(name);
        const json_t *gen = json_object_get(res, "generation");
        if (json_is_true(json_object_get(res, "ok"))) {
            fputs("  ok", stdout);
            if (gen != NULL && !json_is_null(gen)) {
                fputs("    generation ", stdout);
                put_value(stdout, gen);
            }
        } else {
            fputs("  FAILED", stdout);
            print_failure(res);
            /* A failed reload leaves the previous generation serving. */
            if (json_is_integer(gen) && json_integer_value(gen) > 0) {
                fputs(" (generation ", stdout);
                put_value(stdout, gen);
                fputs(" keeps serving)", stdout);
            }
        }
        fputc('\n', stdout);
    }
    if (any_failed) {
        rc = EXIT_SERVER_FAILED;
        if (json_array_size(results) == 0)
            fail("the server reported the reload as failed");
    }
out:
    reply_free(&r);
    return rc;
}

/* ------------------------------------------------------------------ status */

struct kv {
    const char *key;
    char *value;
};

static char *uptime_text(const json_t *v)
{
    if (!json_is_number(v))
        return value_text(v);
    long long s = (long long)json_number_value(v);
    long long d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60, sec = s % 60;
    if (d > 0)
        return xasprintf("%lldd %lldh %lldm %llds", d, h, m, sec);
    if (h > 0)
        return xasprintf("%lldh %lldm %llds", h, m, sec);
    if (m > 0)
        return xasprintf("%lldm %llds", m, sec);
    return xasprintf("%llds", sec);
}

/* "N label, N label, ..." from an object's fields.  Fields the server does
 * not send are left out (older and newer servers differ); "-" if none is
 * there at all. */
static char *counts_text(const json_t *obj, const char *const *keys, const char *const *labels,
                         size_t n)
{
    if (!json_is_object(obj))
        return value_text(obj);
    char *out = xstrdup("");
    for (size_t i = 0; i < n; i++) {
        if (json_object_get(obj, keys[i]) == NULL)
            continue;
        char *v = field_text(obj, keys[i]);
        char *next = xasprintf("%s%s%s %s", out, *out ? ", " : "", v, labels[i]);
        free(v);
        free(out);
        out = next;
    }
    if (*out == '\0') {
        free(out);
        out = xstrdup("-");
    }
    return out;
}

/* The /admin/status members cmd_status() shows on lines of their own. */
static bool status_key_known(const char *key)
{
    static const char *const known[] = {"version",      "started_at",     "uptime_s",  "listen",
                                        "admin_listen", "requests_total", "in_flight", "database",
                                        "plugins",      "usersync"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(key, known[i]) == 0)
            return true;
    return false;
}

static int cmd_status(const struct ctl *ctl)
{
    struct reply r;
    int rc = call(ctl, "GET", "/admin/status", NULL, NULL, 0, 0, &r);
    if (rc != EXIT_OK)
        return rc;
    if ((rc = check_answer(ctl, &r)) != EXIT_OK || ctl->json)
        goto out;

    const json_t *j = r.json;
    const json_t *db = json_object_get(j, "database");
    static const char *const pool_keys[] = {"size", "in_use", "idle", "waits"};
    static const char *const pool_labels[] = {"size", "in use", "idle", "waits"};
    static const char *const plugin_keys[] = {"loaded", "fallback"};
    static const char *const sync_keys[] = {"hits", "misses", "evictions", "entries"};
    const json_t *pool = json_is_object(db) ? json_object_get(db, "pool") : NULL;

    /* The pool line reads "size 8, in use 2, ...": label first. */
    char *pool_text;
    if (json_is_object(pool)) {
        pool_text = xstrdup("");
        for (size_t i = 0; i < 4; i++) {
            char *v = field_text(pool, pool_keys[i]);
            char *next = xasprintf("%s%s%s %s", pool_text, i ? ", " : "", pool_labels[i], v);
            free(v);
            free(pool_text);
            pool_text = next;
        }
    } else {
        pool_text = value_text(pool);
    }

    struct kv lines[] = {
        {"version", field_text(j, "version")},
        {"started_at", field_text(j, "started_at")},
        {"uptime", uptime_text(json_object_get(j, "uptime_s"))},
        {"listen", field_text(j, "listen")},
        {"admin_listen", field_text(j, "admin_listen")},
        {"requests_total", field_text(j, "requests_total")},
        {"in_flight", field_text(j, "in_flight")},
        {"database", field_text(db, "state")},
        {"breaker", field_text(db, "breaker")},
        {"db_pool", pool_text},
        {"plugins", counts_text(json_object_get(j, "plugins"), plugin_keys, plugin_keys, 2)},
        {"usersync", counts_text(json_object_get(j, "usersync"), sync_keys, sync_keys, 4)},
    };
    size_t n = sizeof lines / sizeof lines[0];
    size_t width = 0;
    for (size_t i = 0; i < n; i++)
        if (strlen(lines[i].key) > width)
            width = strlen(lines[i].key);

    /* Keys this version does not know about still get shown, generically. */
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)j, key, v)
    {
        if (!status_key_known(key) && strlen(key) > width)
            width = strlen(key);
    }

    for (size_t i = 0; i < n; i++) {
        fprintf(stdout, "%-*s  %s\n", (int)width, lines[i].key, lines[i].value);
        free(lines[i].value);
    }
    json_object_foreach((json_t *)j, key, v)
    {
        if (status_key_known(key))
            continue;
        char *k = sanitized_copy(key);
        char *s = value_text(v);
        fprintf(stdout, "%-*s  %s\n", (int)width, k, s);
        free(k);
        free(s);
    }
out:
    reply_free(&r);
    return rc;
}

/* ------------------------------------------------------------------ import */

/* Reads all of path ("-" = stdin) into *out, refusing more than max bytes.
 * On success the caller owns *out. */
static int read_input(const char *path, size_t max, char **out, size_t *out_len)
{
    bool is_stdin = strcmp(path, "-") == 0;
    const char *name = is_stdin ? "standard input" : path;
    int fd = is_stdin ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail("cannot open %s: %s", name, strerror(errno));
        return EXIT_USAGE;
    }
    struct stat st;
    bool regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    /* A regular file is read in one allocation; a pipe grows by doubling.
     * One byte past max is room to notice that the input is too large. */
    size_t cap = regular && st.st_size > 0 && (unsigned long long)st.st_size <= max
                     ? (size_t)st.st_size + 1
                     : 65536;
    size_t len = 0;
    char *buf = NULL;
    int rc = EXIT_OK;
    if (regular && (unsigned long long)st.st_size > max)
        goto too_big;
    if ((buf = malloc(cap)) == NULL)
        goto no_memory;
    for (;;) {
        if (len == cap) {
            if (len > max)
                goto too_big;
            size_t ncap = cap > max / 2 ? max + 1 : cap * 2;
            char *p = realloc(buf, ncap);
            if (p == NULL)
                goto no_memory;
            buf = p;
            cap = ncap;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fail("cannot read %s: %s", name, strerror(errno));
            rc = EXIT_USAGE;
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (len > max)
        goto too_big;
    *out = buf;
    *out_len = len;
    buf = NULL;
    goto out;

too_big:
    fail("%s is larger than the import limit of %zu MiB", name, max >> 20);
    rc = EXIT_USAGE;
    goto out;
no_memory:
    fail("out of memory reading %s", name);
    rc = EXIT_USAGE;
out:
    free(buf);
    if (!is_stdin)
        close(fd);
    return rc;
}

static long long int_field(const json_t *obj, const char *key, long long dflt)
{
    const json_t *v = json_object_get(obj, key);
    return json_is_integer(v) ? (long long)json_integer_value(v) : dflt;
}

static int cmd_import(const struct ctl *ctl, const char *path)
{
    char *data = NULL;
    size_t len = 0;
    int rc = read_input(path, MAX_IMPORT_BYTES, &data, &len);
    if (rc != EXIT_OK)
        return rc;
    struct reply r;
    rc = call(ctl, "POST", "/admin/import", "application/x-ndjson", data, len,
              MAX_IMPORT_REPLY_BYTES, &r);
    free(data);
    if (rc != EXIT_OK)
        return rc;
    if ((rc = check_answer(ctl, &r)) != EXIT_OK)
        goto out;

    const json_t *j = r.json;
    long long failed = int_field(j, "failed", 0);
    bool failed_any = failed > 0 || json_is_false(json_object_get(j, "ok"));
    if (!ctl->json) {
        char *lines = field_text(j, "lines");
        char *imported = field_text(j, "imported");
        char *nfailed = field_text(j, "failed");
        char *jobs = field_text(j, "jobs_completed");
        printf("imported %s of %s lines, %s failed; %s search job%s completed\n", imported, lines,
               nfailed, jobs, int_field(j, "jobs_completed", 0) == 1 ? "" : "s");
        free(lines);
        free(imported);
        free(nfailed);
        free(jobs);
        size_t i;
        const json_t *res;
        json_array_foreach(json_object_get(j, "results"), i, res)
        {
            if (json_is_true(json_object_get(res, "ok")))
                continue;
            char *line = field_text(res, "line");
            char *err = field_text(res, "error");
            const json_t *user = json_object_get(res, "username");
            if (json_is_string(user) && json_string_length(user) > 0) {
                char *u = value_text(user);
                printf("line %s (%s): %s\n", line, u, err);
                free(u);
            } else {
                printf("line %s: %s\n", line, err);
            }
            free(line);
            free(err);
        }
    }
    rc = failed_any ? EXIT_SERVER_FAILED : EXIT_OK;
out:
    reply_free(&r);
    return rc;
}

/* ----------------------------------------------------------------- credits */

static int cmd_credits(const struct ctl *ctl, const char *email, const char *amount_text,
                       const char *reason)
{
    if (*email == '\0')
        return usage_error("credits: EMAIL must not be empty");
    char *end;
    errno = 0;
    long long amount = strtoll(amount_text, &end, 10);
    if (errno != 0 || end == amount_text || *end != '\0' || amount <= 0 || amount > INT_MAX)
        return usage_error("credits: AMOUNT must be a whole number from 1 to %d, not '%s'", INT_MAX,
                           amount_text);

    json_t *body = json_pack("{s:s, s:I, s:s}", "email", email, "amount", (json_int_t)amount,
                             "reason", reason != NULL ? reason : "keelctl credits");
    struct reply r;
    int rc = post_json(ctl, "/admin/credits", body, &r);
    if (rc != EXIT_OK)
        return rc;
    if (r.http.status == 404) {
        char *e = sanitized_copy(email);
        fail("no user with email %s", e);
        free(e);
        rc = EXIT_SERVER_FAILED;
        goto out;
    }
    if ((rc = check_answer(ctl, &r)) != EXIT_OK)
        goto out;
    if (json_is_false(json_object_get(r.json, "success"))) {
        const json_t *msg = json_object_get(r.json, "detail");
        if (msg == NULL)
            msg = json_object_get(r.json, "message");
        char *s = value_text(msg);
        fail("the server did not add the credits: %s", s);
        free(s);
        rc = EXIT_SERVER_FAILED;
        goto out;
    }
    if (!ctl->json) {
        const json_t *got = json_object_get(r.json, "amount");
        const json_t *mail = json_object_get(r.json, "email");
        char *a = json_is_integer(got) ? value_text(got) : xasprintf("%lld", amount);
        char *m = value_text(json_is_string(mail) ? mail : NULL);
        if (!json_is_string(mail)) {
            free(m);
            m = sanitized_copy(email);
        }
        char *bal = field_text(r.json, "balance");
        printf("added %s credits to %s; balance %s\n", a, m, bal);
        free(a);
        free(m);
        free(bal);
    }
out:
    reply_free(&r);
    return rc;
}

/* ------------------------------------------------------------------- evict */

static int cmd_evict(const struct ctl *ctl, const char *user)
{
    if (*user == '\0')
        return usage_error("evict: USER must not be empty");
    struct reply r;
    int rc = post_json(ctl, "/admin/usersync/evict", json_pack("{s:s}", "user", user), &r);
    if (rc != EXIT_OK)
        return rc;
    if ((rc = check_answer(ctl, &r)) != EXIT_OK || ctl->json)
        goto out;
    char *u = sanitized_copy(user);
    long long n = int_field(r.json, "evicted", -1);
    if (n == 0)
        printf("no cache entry for %s\n", u);
    else if (n > 0)
        printf("evicted %lld cache entr%s for %s\n", n, n == 1 ? "y" : "ies", u);
    else
        printf("evicted %s\n", u);
    free(u);
out:
    reply_free(&r);
    return rc;
}

/* ----------------------------------------------------------------- upgrade */

static int cmd_upgrade(const struct ctl *ctl)
{
    struct reply r;
    int rc = post_json(ctl, "/admin/upgrade", json_object(), &r);
    if (rc != EXIT_OK)
        return rc;
    if ((rc = check_answer(ctl, &r)) != EXIT_OK)
        goto out;
    bool ok = json_is_true(json_object_get(r.json, "ok"));
    if (!ctl->json) {
        if (ok) {
            printf("upgraded: keeld pid %lld serves; pid %lld drains and exits\n",
                   int_field(r.json, "pid", -1), int_field(r.json, "previous_pid", -1));
        } else {
            char *why = field_text(r.json, "error");
            printf("upgrade FAILED: %s; the running keeld keeps serving\n", why);
            free(why);
        }
    }
    rc = ok ? EXIT_OK : EXIT_SERVER_FAILED;
out:
    reply_free(&r);
    return rc;
}

/* -------------------------------------------------------------------- main */

static bool token_ok(const char *t)
{
    /* It becomes an HTTP header value: no control characters, no blanks. */
    for (; *t; t++)
        if ((unsigned char)*t <= 0x20 || *t == 0x7f)
            return false;
    return true;
}

static int need_args(const char *cmd, int have, int min, int max, const char *synopsis)
{
    if (have < min || have > max)
        return usage_error("usage: keelctl %s%s%s", cmd, *synopsis ? " " : "", synopsis);
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"admin", required_argument, NULL, 'a'}, {"token", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},     {NULL, 0, NULL, 0},
    };
    const char *admin = getenv("KEEL_ADMIN_URL");
    const char *token = getenv("KEEL_ADMIN_TOKEN");
    bool json = false;

    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "hV", options, NULL)) != -1) {
        switch (c) {
        case 'a':
            admin = optarg;
            break;
        case 't':
            token = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'h':
            print_help();
            return EXIT_OK;
        case 'V':
            printf("keelctl (keel) %s\n", PACKAGE_VERSION);
            return EXIT_OK;
        default:
            if (optopt != 0 && optopt != '?')
                return usage_error("unknown option '-%c'", optopt);
            return usage_error("unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return usage_error("no command given");
    /* The only command that does not talk to a server. */
    if (strcmp(argv[optind], "new-plugin") == 0) {
        int n = argc - optind - 1, rc;
        if ((rc = need_args("new-plugin", n, 2, 2, "NAME DIR")) != EXIT_OK)
            return rc;
        rc = newplugin_create(argv[optind + 1], argv[optind + 2]);
        return rc == 0 ? EXIT_OK : EXIT_USAGE;
    }

    struct ctl ctl = {.json = json};
    char err[512];
    if (admin == NULL || *admin == '\0')
        admin = DEFAULT_ADMIN_URL;
    if (http_url_parse(&ctl.url, admin, err, sizeof err) < 0)
        return usage_error("%s", err);
    if (token != NULL && *token != '\0') {
        if (!token_ok(token))
            return usage_error("the admin token contains blanks or control characters");
        ctl.token = token;
    }

    const char *cmd = argv[optind];
    char **args = argv + optind + 1;
    int nargs = argc - optind - 1;
    int rc;
    if (strcmp(cmd, "plugins") == 0) {
        if ((rc = need_args(cmd, nargs, 0, 0, "")) != EXIT_OK)
            return rc;
        rc = cmd_plugins(&ctl);
    } else if (strcmp(cmd, "reload") == 0) {
        if ((rc = need_args(cmd, nargs, 0, 1, "[PLUGIN]")) != EXIT_OK)
            return rc;
        if (nargs == 1 && args[0][0] == '\0')
            return usage_error("reload: PLUGIN must not be empty");
        rc = cmd_reload(&ctl, nargs == 1 ? args[0] : NULL);
    } else if (strcmp(cmd, "status") == 0) {
        if ((rc = need_args(cmd, nargs, 0, 0, "")) != EXIT_OK)
            return rc;
        rc = cmd_status(&ctl);
    } else if (strcmp(cmd, "upgrade") == 0) {
        if ((rc = need_args(cmd, nargs, 0, 0, "")) != EXIT_OK)
            return rc;
        rc = cmd_upgrade(&ctl);
    } else if (strcmp(cmd, "import") == 0) {
        if ((rc = need_args(cmd, nargs, 1, 1, "FILE")) != EXIT_OK)
            return rc;
        rc = cmd_import(&ctl, args[0]);
    } else if (strcmp(cmd, "credits") == 0) {
        if ((rc = need_args(cmd, nargs, 2, 3, "EMAIL AMOUNT [REASON]")) != EXIT_OK)
            return rc;
        rc = cmd_credits(&ctl, args[0], args[1], nargs == 3 ? args[2] : NULL);
    } else if (strcmp(cmd, "evict") == 0) {
        if ((rc = need_args(cmd, nargs, 1, 1, "USER")) != EXIT_OK)
            return rc;
        rc = cmd_evict(&ctl, args[0]);
    } else {
        return usage_error("unknown command '%s'", cmd);
    }

    if (fflush(stdout) != 0 || ferror(stdout)) {
        fail("cannot write to standard output: %s", strerror(errno));
        if (rc == EXIT_OK)
            rc = EXIT_SERVER_FAILED;
    }
    return rc;
}
