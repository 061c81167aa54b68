#include "config.h"

#include "conf/schema.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <keel/error.h>
#include <keel/plugin.h>

#include "util/log.h"

/* Bounds on arrays read from conf.d, so a typo cannot ask for huge tables. */
#define MAX_ORIGINS 256

int keel__conf_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    keel__vset_err(err, errlen, fmt, ap);
    va_end(ap);
    return KEEL_ECONFIG;
}

int keel__conf_nomem(char *err, size_t errlen)
{
    keel__set_err(err, errlen, "out of memory");
    return KEEL_ENOMEM;
}

int keel__conf_set_string(char **slot, const char *s)
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

/* ------------------------------------------------------------------ schema */

enum field_type { FT_STRING, FT_INT, FT_LONG, FT_BOOL, FT_CUSTOM };

#define F_NULLABLE 1u    /* JSON null sets NULL */
#define F_DEFAULT_INT 2u /* FT_CUSTOM: def is the default of an int member */

struct field {
    const char *key;
    enum field_type type;
    size_t offset;
    unsigned flags;
    long long min, max;
    long long def;              /* FT_INT, FT_LONG, FT_BOOL: the default */
    const char *def_text;       /* FT_STRING: the default, NULL for none */
    const char *const *choices; /* FT_STRING: allowed values, NULL-terminated */
    int (*parse)(struct parse_ctx *c, const char *section, const char *key, json_t *value);
};

struct section {
    const char *name;
    const struct field *fields;
};

/* JSON key = C member name, so the tables name each member once. */
#define OFF(sec, name) offsetof(struct keel__conf, sec.name)
#define STRING(sec, name, fl, dflt)                                                                \
    {                                                                                              \
        .key = #name, .type = FT_STRING, .offset = OFF(sec, name), .flags = (fl),                  \
        .def_text = (dflt)                                                                         \
    }
#define CHOICE(sec, name, list, dflt)                                                              \
    {                                                                                              \
        .key = #name, .type = FT_STRING, .offset = OFF(sec, name), .choices = (list),              \
        .def_text = (dflt)                                                                         \
    }
#define INT(sec, name, lo, hi, dflt)                                                               \
    {                                                                                              \
        .key = #name, .type = FT_INT, .offset = OFF(sec, name), .min = (lo), .max = (hi),          \
        .def = (dflt)                                                                              \
    }
#define LONG(sec, name, lo, hi, dflt)                                                              \
    {                                                                                              \
        .key = #name, .type = FT_LONG, .offset = OFF(sec, name), .min = (lo), .max = (hi),         \
        .def = (dflt)                                                                              \
    }
#define BOOL(sec, name, dflt)                                                                      \
    {                                                                                              \
        .key = #name, .type = FT_BOOL, .offset = OFF(sec, name), .def = (dflt)                     \
    }
/* A key with its own parser; its member (if any) starts zeroed. */
#define CUSTOM(name, fn)                                                                           \
    {                                                                                              \
        .key = (name), .type = FT_CUSTOM, .parse = (fn)                                            \
    }
/* A custom key that sets one int member, with a default. */
#define CUSTOM_INT(sec, name, fn, dflt)                                                            \
    {                                                                                              \
        .key = #name, .type = FT_CUSTOM, .offset = OFF(sec, name), .parse = (fn), .def = (dflt),   \
        .flags = F_DEFAULT_INT                                                                     \
    }

static int parse_log_level(struct parse_ctx *c, const char *section, const char *key, json_t *v);
static int parse_origins(struct parse_ctx *c, const char *section, const char *key, json_t *v);
static int parse_proxies(struct parse_ctx *c, const char *section, const char *key, json_t *v);
static int parse_admin_hosts(struct parse_ctx *c, const char *section, const char *key, json_t *v);

static const char *const access_formats[] = {"text", "json", NULL};
static const char *const schedulings[] = {"batch", "normal", NULL};
const char *const keel__conf_poolers[] = {"none", "pgbouncer-session", "pgbouncer-transaction",
                                          NULL};

/* Each default lives here, beside its key; conf.h says what each means. */
static const struct field server_fields[] = {
    STRING(server, host, 0, "127.0.0.1"),
    INT(server, port, 1, 65535, 8080),
    INT(server, threads, 0, 1024, 0),
    INT(server, connection_timeout_s, 1, 3600, 30),
    INT(server, shutdown_timeout_s, 0, 3600, 10),
    INT(server, drain_s, 0, 3600, 5),
    INT(server, workers, 0, 256, 2),
    INT(server, worker_max_rss_mb, 0, 1048576, 0),
    LONG(server, worker_max_requests, 0, 1000000000000L, 0),
    CHOICE(server, scheduling, schedulings, "batch"),
    STRING(server, plugin_dir, 0, KEEL_PLUGINDIR),
    CUSTOM("trusted_proxies", parse_proxies),
    STRING(server, runtime_dir, F_NULLABLE, NULL),
    {0},
};

static const struct field admin_fields[] = {
    STRING(admin, host, 0, "127.0.0.1"),
    INT(admin, port, 1, 65535, 8081),
    STRING(admin, token, F_NULLABLE, NULL),
    CUSTOM("allowed_hosts", parse_admin_hosts),
    {0},
};

static const struct field log_fields[] = {
    CUSTOM_INT(log, level, parse_log_level, KEEL_LOG_INFO),
    STRING(log, access_log, F_NULLABLE, NULL),
    CHOICE(log, access_format, access_formats, "text"),
    STRING(log, error_log, F_NULLABLE, NULL),
    {0},
};

static const struct field database_fields[] = {
    STRING(database, url, F_NULLABLE, NULL),
    INT(database, pool_size, 1, 1024, 8),
    INT(database, pool_wait_ms, 0, 600000, 2000),
    INT(database, connect_timeout_s, 1, 300, 3),
    INT(database, statement_timeout_ms, 0, 3600000, 5000),
    INT(database, lock_timeout_ms, 0, 3600000, 2000),
    INT(database, breaker_failures, 1, 1000, 3),
    INT(database, breaker_open_ms, 1, 3600000, 2000),
    STRING(database, migrations_dir, 0, KEEL_DATADIR "/migrations"),
    CHOICE(database, pooler, keel__conf_poolers, "none"),
    STRING(database, listen_url, F_NULLABLE, NULL),
    {0},
};

static const struct field auth_fields[] = {
    STRING(auth, jwt_secret, F_NULLABLE, NULL),
    CUSTOM("jwt_secret_file", keel__conf_parse_secret_file),
    STRING(auth, jwt_kid, F_NULLABLE, NULL),
    CUSTOM("keys", keel__conf_parse_keys),
    STRING(auth, issuer, F_NULLABLE, NULL),
    STRING(auth, audience, 0, "authenticated"),
    INT(auth, leeway_s, 0, 3600, 30),
    INT(auth, max_token_bytes, 256, 1048576, 8192),
    {0},
};

static const struct field usersync_fields[] = {
    INT(usersync, ttl_s, 0, 86400, 300),
    INT(usersync, max_entries, 0, 10000000, 10000),
    LONG(usersync, initial_credits, 0, 1000000000, 0),
    {0},
};

static const struct field cors_fields[] = {
    CUSTOM("origins", parse_origins),
    STRING(cors, methods, 0, "GET, POST, PUT, PATCH, DELETE, OPTIONS"),
    STRING(cors, headers, 0, "Authorization, Content-Type"),
    INT(cors, max_age, 0, 86400, 600),
    BOOL(cors, credentials, false),
    {0},
};

static const struct field limits_fields[] = {
    LONG(limits, max_body_bytes, 1, 1073741824, 1024L * 1024),
    LONG(limits, max_admin_body_bytes, 1, 1073741824, 1024L * 1024),
    LONG(limits, max_admin_stream_bytes, 1, 17179869184L, 256L * 1024 * 1024),
    INT(limits, max_admin_bodies, 1, 1024, 2),
    LONG(limits, max_body_line_bytes, 1024, 1073741824, 8L * 1024 * 1024),
    INT(limits, max_json_depth, 1, 1024, 32),
    LONG(limits, max_header_bytes, 1024, 1048576, 12L * 1024),
    INT(limits, max_uri_bytes, 256, 1048576, 4096),
    LONG(limits, max_drain_bytes, 0, 1073741824, 32L * 1024 * 1024),
    INT(limits, max_connections, 1, 1000000, 1024),
    INT(limits, max_per_ip, 0, 1000000, 0),
    INT(limits, rate_per_user, 0, 1000000, 0),
    INT(limits, rate_burst, 0, 1000000, 0),
    {0},
};

/* Section "plugins" (the plural: "plugin" is a manifest). */
static const struct field containment_fields[] = {
    INT(containment, crash_limit, 1, 1000, 1),
    INT(containment, crash_window_s, 1, 86400, 300),
    INT(containment, handler_timeout_ms, 10, 3600000, 30000),
    INT(containment, init_timeout_ms, 10, 3600000, 10000),
    {0},
};

static const struct section sections[] = {
    {"server", server_fields},     {"admin", admin_fields},   {"log", log_fields},
    {"database", database_fields}, {"auth", auth_fields},     {"usersync", usersync_fields},
    {"cors", cors_fields},         {"limits", limits_fields}, {"plugins", containment_fields},
};
#define NSECTIONS (sizeof sections / sizeof sections[0])

const char *const keel__conf_section_names[] = {"server",   "admin", "log",    "database", "auth",
                                                "usersync", "cors",  "limits", "plugins"};
const size_t keel__conf_nsections = NSECTIONS;

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
        return keel__conf_set_string(slot, s) < 0 ? keel__conf_nomem(c->err, c->errlen) : 0;
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

int keel__conf_apply_section(struct parse_ctx *c, size_t index, json_t *obj)
{
    const struct section *sec = &sections[index];
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

static void free_admin_hosts(struct keel__conf *conf)
{
    for (size_t i = 0; i < conf->admin.nallowed_hosts; i++)
        free(conf->admin.allowed_hosts[i]);
    free(conf->admin.allowed_hosts);
    conf->admin.allowed_hosts = NULL;
    conf->admin.nallowed_hosts = 0;
}

/* A host name or address literal as it appears in a Host header, without
 * the port (IPv6 literals are written bare, like admin.host). */
static bool valid_host_name(const char *s)
{
    if (*s == '\0' || strlen(s) > 253)
        return false;
    for (const char *p = s; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '.' || ch == ':'))
            return false;
    }
    return true;
}

static int parse_admin_hosts(struct parse_ctx *c, const char *section, const char *key, json_t *v)
{
    struct keel__conf *conf = c->conf;

    if (!json_is_array(v) || json_array_size(v) > MAX_ORIGINS)
        return keel__conf_fail(c->err, c->errlen,
                               "%s: %s.%s: expected an array of at most %d strings", c->file,
                               section, key, MAX_ORIGINS);
    free_admin_hosts(conf);
    size_t n = json_array_size(v);
    if (n == 0)
        return 0;
    conf->admin.allowed_hosts = calloc(n, sizeof *conf->admin.allowed_hosts);
    if (conf->admin.allowed_hosts == NULL)
        return keel__conf_nomem(c->err, c->errlen);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(v, i);
        if (!keel__conf_is_text(o) || !valid_host_name(json_string_value(o)))
            return keel__conf_fail(c->err, c->errlen,
                                   "%s: %s.%s[%zu]: expected a host name or address such as "
                                   "\"keel-admin.internal\" (no scheme, no port)",
                                   c->file, section, key, i);
        conf->admin.allowed_hosts[i] = strdup(json_string_value(o));
        if (conf->admin.allowed_hosts[i] == NULL)
            return keel__conf_nomem(c->err, c->errlen);
        conf->admin.nallowed_hosts = i + 1;
    }
    return 0;
}

int keel__conf_set_defaults(struct keel__conf *conf)
{
    char *base = (char *)conf;
    for (size_t s = 0; s < NSECTIONS; s++) {
        for (const struct field *f = sections[s].fields; f->key != NULL; f++) {
            switch (f->type) {
            case FT_STRING:
                if (keel__conf_set_string((char **)(base + f->offset), f->def_text) < 0)
                    return KEEL_ENOMEM;
                break;
            case FT_INT:
                *(int *)(base + f->offset) = (int)f->def;
                break;
            case FT_LONG:
                *(long *)(base + f->offset) = (long)f->def;
                break;
            case FT_BOOL:
                *(bool *)(base + f->offset) = f->def != 0;
                break;
            case FT_CUSTOM:
                if (f->flags & F_DEFAULT_INT)
                    *(int *)(base + f->offset) = (int)f->def;
                break;
            }
        }
    }
    return 0;
}

void keel__conf_free_members(struct keel__conf *conf)
{
    char *base = (char *)conf;
    for (size_t s = 0; s < NSECTIONS; s++)
        for (const struct field *f = sections[s].fields; f->key != NULL; f++)
            if (f->type == FT_STRING) {
                free(*(char **)(base + f->offset));
                *(char **)(base + f->offset) = NULL;
            }
    keel__conf_free_keys(conf);
    free_origins(conf);
    free(conf->server.trusted_proxies);
    conf->server.trusted_proxies = NULL;
    conf->server.ntrusted_proxies = 0;
    free_admin_hosts(conf);
}
