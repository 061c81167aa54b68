/*
 * The configuration model: what conf.d says once it is parsed and the
 * environment has been applied.  conf.c reads files into this model through
 * the schema (schema.c; keys.c for auth keys), env.c applies the
 * environment; main.c maps the model onto each module's own C conf struct,
 * so the runtime modules never see this header's structs.
 *
 * conf.d is a directory of *.json files read in name order.  Each file is a
 * JSON object whose top-level keys are sections ("server", "admin", "log",
 * "database", "auth", "usersync", "cors", "limits") or "plugin" (a plugin
 * manifest, one per file).  A section may appear in only one file; an
 * unknown section or key is an error that names the file and the key.
 * Other files, and names starting with '.', are skipped.
 *
 * Every member below has a default, so an empty conf.d is valid.  Nullable
 * strings ("NULL = ...") may be written as JSON null.  Every char * is owned
 * by the model and freed by keel__conf_free().
 *
 * Plugin files are resolved once the whole directory has been read, against
 * the final server.plugin_dir; keel__conf_apply_env() resolves them again
 * when KEEL_PLUGIN_DIR changes it.  To make that possible each manifest keeps
 * "file" as written (file_spec) next to the resolved path (file).
 */
#ifndef KEEL_CORE_CONF_CONF_H
#define KEEL_CORE_CONF_CONF_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include <keel/common.h>

#include "util/cidr.h"

/* The install paths behind the defaults of server.plugin_dir and
 * database.migrations_dir: Makefile.am passes them; unit tests built by
 * hand may not. */
#ifndef KEEL_PLUGINDIR
#define KEEL_PLUGINDIR "/usr/local/lib/keel"
#endif
#ifndef KEEL_DATADIR
#define KEEL_DATADIR "/usr/local/share/keel"
#endif

enum keel__auth_level { KEEL__AUTH_PUBLIC = 0, KEEL__AUTH_USER = 1, KEEL__AUTH_ADMIN = 2 };
enum keel__listener { KEEL__LISTENER_MAIN = 0, KEEL__LISTENER_ADMIN = 1 };

/* One route of a plugin manifest. */
struct keel__manifest_route {
    char *method;             /* upper case */
    char *path;               /* template */
    int auth;                 /* enum keel__auth_level */
    int listener;             /* enum keel__listener */
    unsigned fallback_status; /* default 200; 503 when the route has no "fallback" */
    json_t *fallback;         /* body for a user when the plugin is down; owned, never
                              NULL ({"detail":"Service unavailable"} by default) */
    json_t *fallback_headers; /* object of string values to add, owned; NULL = none */
    /* "body": "stream": the body is spooled to a temporary file and read by
     * line (keel_host.req_body_line) instead of held in memory. */
    bool stream_body;
    /* The route's API documentation (docs/api.md): an object with any of
     * summary, description, parameters, request_body and responses, as
     * written in the manifest; owned, NULL when the route has none. */
    json_t *doc;
};

/* A plugin manifest: everything the core knows without loading the .so. */
struct keel__manifest {
    char *name;
    char *source;    /* the conf.d file it came from */
    char *file;      /* absolute path of the .so (resolved against plugin_dir) */
    char *file_spec; /* "file" as written in the manifest */
    /* "migrations" as written: the plugin's own migrations directory, relative
     * to database.migrations_dir unless absolute; NULL = none. */
    char *migrations;
    bool enabled;
    json_t *config;  /* "config" object handed to init; owned, never NULL */
    json_t *schemas; /* "schemas": named JSON Schemas the docs refer to; owned or NULL */
    struct keel__manifest_route *routes;
    size_t nroutes;
};

struct keel__key_conf {
    char *kid;
    char *alg; /* "RS256" | "ES256" */
    char *pem; /* PEM text (read from "pem" or "pem_file") */
};

struct keel__conf {
    char *dir; /* the conf.d directory */

    struct {
        char *host;  /* default 127.0.0.1 */
        int port;    /* default 8080 */
        int threads; /* 0 = 4 per usable CPU (util/cpus.h) */
        /* Default 30.  Bounds silence on a connection (libmicrohttpd) and the
         * time a request may take to arrive in full (core/http/deadline.h). */
        int connection_timeout_s;
        int shutdown_timeout_s;   /* SIGTERM drain deadline, default 10 */
        int drain_s;              /* lame duck: /health answers 503 this long first, default 5 */
        int workers;              /* worker processes, default 2; 0 = one per usable CPU */
        int worker_max_rss_mb;    /* recycle a worker past this RSS; 0 = off (default) */
        long worker_max_requests; /* recycle a worker after this many requests; 0 = off */
        /* "batch" (default): the workers' threads run SCHED_BATCH, so that
         * a wakeup does not preempt another worker mid-batch; "normal". */
        char *scheduling;
        char *plugin_dir; /* default KEEL_PLUGINDIR (the install's lib/keel) */
        /* Peers whose X-Forwarded-For names the client (a load balancer);
         * CIDRs, default none. */
        struct keel__cidr *trusted_proxies;
        size_t ntrusted_proxies;
        /* Where private copies of plugin files live; NULL (default) =
         * $TMPDIR or /tmp. */
        char *runtime_dir;
    } server;

    struct {
        char *host;  /* default 127.0.0.1 */
        int port;    /* default 8081 */
        char *token; /* required when host is not loopback */
        /* Host names (besides the bound address, and localhost on loopback)
         * the admin listener answers to; any other Host gets 421. */
        char **allowed_hosts;
        size_t nallowed_hosts;
    } admin;

    struct {
        int level;           /* KEEL_LOG_*, default info */
        char *access_log;    /* "-" = stderr, path, or NULL = off (the default) */
        char *access_format; /* "text" (default) | "json" */
        char *error_log;     /* the server's own log: "-" or NULL = stderr (default), or a path */
    } log;

    struct {
        char *url;                /* libpq URI or conninfo; NULL = no database */
        int pool_size;            /* default 8 */
        int pool_wait_ms;         /* default 2000 */
        int connect_timeout_s;    /* default 3 */
        int statement_timeout_ms; /* default 5000 */
        int lock_timeout_ms;      /* default 2000 */
        int breaker_failures;     /* consecutive unavailable failures, default 3 */
        int breaker_open_ms;      /* time open before a half-open probe, default 2000 */
        char *migrations_dir;     /* default KEEL_DATADIR "/migrations" */
        char *pooler;             /* "none" (default) | "pgbouncer-session" |
                                     "pgbouncer-transaction" */
        /* The LISTEN connection for fleet-wide cache invalidation; NULL =
         * url.  It needs a session of its own, so behind a transaction
         * pooler point it at PostgreSQL directly. */
        char *listen_url;
    } database;

    struct {
        /* HS256 shared secret; NULL = HS256 disabled.  The file may give it as
         * "jwt_secret" or as "jwt_secret_file" (a path relative to conf.d, at
         * most 64 KiB, trailing CR/LF removed); KEEL_JWT_SECRET overrides. */
        char *jwt_secret;
        char *jwt_kid; /* optional kid of the HS256 key */
        /* "keys": [{"kid","alg","pem" | "pem_file"}]; pem_file is relative to
         * conf.d, at most 64 KiB.  kids are unique. */
        struct keel__key_conf *keys;
        size_t nkeys;
        char *issuer;        /* NULL = not checked */
        char *audience;      /* default "authenticated" */
        int leeway_s;        /* default 30 */
        int max_token_bytes; /* default 8192 */
    } auth;

    struct {
        int ttl_s;            /* default 300 */
        int max_entries;      /* default 10000 */
        long initial_credits; /* default 0 */
    } usersync;

    struct {
        char **origins; /* "*" allows any; else "scheme://host[:port]"; default none */
        size_t norigins;
        char *methods;    /* default "GET, POST, PUT, PATCH, DELETE, OPTIONS" */
        char *headers;    /* default "Authorization, Content-Type" */
        int max_age;      /* default 600 */
        bool credentials; /* default false */
    } cors;

    struct {
        long max_body_bytes;       /* default 1 MiB */
        long max_admin_body_bytes; /* admin listener, default 1 MiB */
        /* Admin routes whose manifest says "body": "stream" (the NDJSON
         * import) spool their body to a temporary file: default 256 MiB. */
        long max_admin_stream_bytes;
        int max_admin_bodies;     /* admin requests with a body at once, default 2 */
        long max_body_line_bytes; /* one line of a streamed body, default 8 MiB */
        int max_json_depth;       /* default 32 */
        long max_header_bytes;    /* request headers, default 12 KiB: 431 past it */
        int max_uri_bytes;        /* path and query string, default 4 KiB: 414 past it */
        /* An oversized chunked body is read and thrown away for up to this
         * many more bytes so the client still gets its 413; past that the
         * connection is closed.  Default 32 MiB. */
        long max_drain_bytes;
        int max_connections; /* default 1024 */
        int max_per_ip;      /* default 0 = unlimited */
        int rate_per_user;   /* requests per second, 0 = off */
        int rate_burst;      /* default 0 = same as rate_per_user */
    } limits;

    /* Fault containment (docs/operations.md, "Process model"). */
    struct {
        int crash_limit;        /* crashes of one generation that quarantine it, default 1 */
        int crash_window_s;     /* ... counted within this window, default 300 */
        int handler_timeout_ms; /* a handler running longer is a hang, default 30000 */
        int init_timeout_ms;    /* a plugin init running longer is refused, default 10000 */
    } containment;

    struct keel__manifest *plugins;
    size_t nplugins;
};

/*
 * Reads every *.json file of dir.  On success *out is a new model the caller
 * frees with keel__conf_free().  On failure returns KEEL_ECONFIG (or
 * KEEL_ENOMEM) and writes a message naming the file and key into err, e.g.
 * "conf.d/10-server.json: server.port: expected an integer 1-65535"; *out is
 * then NULL.
 */
int keel__conf_load(const char *dir, struct keel__conf **out, char *err,
                    size_t errlen) KEEL_WARN_UNUSED;

/* keel__conf_load parses a file again only when its bytes changed since it
 * last read it (a reload re-reads all of conf.d); this drops what it keeps. */
void keel__conf_forget_parsed(void);
/* How many times a file was parsed (not taken as kept), for the tests. */
unsigned long keel__conf_files_parsed(void);

/*
 * Applies KEEL_LISTEN, KEEL_ADMIN_LISTEN, KEEL_DATABASE_URL, KEEL_JWT_SECRET,
 * KEEL_PLUGIN_DIR, KEEL_LOG_LEVEL.  Unset or empty variables change nothing.
 * A listen value without a host (":8080", "8080") keeps the configured host.
 * Then runs the checks that need the final values: an admin listener on a
 * non-loopback host needs admin.token.  Returns KEEL_ECONFIG naming the
 * variable (or the key); every variable is checked before any is applied,
 * so on a bad variable conf is unchanged.
 */
int keel__conf_apply_env(struct keel__conf *conf, char *err, size_t errlen) KEEL_WARN_UNUSED;

/* keel__conf_load then keel__conf_apply_env: the model keeld runs with.  On
 * failure *out is NULL (nothing to free) and err says why. */
int keel__conf_read(const char *dir, struct keel__conf **out, char *err,
                    size_t errlen) KEEL_WARN_UNUSED;

/*
 * How conf.d's "plugin" objects become manifests.  The parser belongs to the
 * plugin layer (core/plugin/manifest.c, which checks route templates with
 * the router), above this one, so it is handed down instead of called up:
 * keel__manifest_install() (plugin/manifest.h) sets these once at start-up.
 * Until then a conf.d with a plugin file is refused.
 */
struct keel__manifest_ops {
    int (*parse)(const json_t *obj, const char *source, const char *plugin_dir,
                 struct keel__manifest *out, char *err, size_t errlen);
    void (*clear)(struct keel__manifest *m);
    char *(*resolve_file)(const char *spec, const char *plugin_dir);
};
void keel__conf_set_manifest_ops(const struct keel__manifest_ops *ops);
const struct keel__manifest_ops *keel__conf_manifest_ops(void);

/*
 * Splits "host:port" ("[::1]:8080", ":8080", "8080" also accepted).  *host
 * is a malloc'd copy (brackets removed), or NULL when spec names no host.
 * Returns KEEL_EINVAL for a malformed spec or a port outside 1-65535.
 */
int keel__parse_listen(const char *spec, char **host, int *port) KEEL_WARN_UNUSED;

void keel__conf_free(struct keel__conf *conf);

/*
 * The parser's own helpers, shared by the files of core/conf/ and
 * plugin/manifest.c; nothing else should need them.
 */

/* Formats a message into err (when err is not NULL) and returns KEEL_ECONFIG. */
int keel__conf_fail(char *err, size_t errlen, const char *fmt, ...) KEEL_PRINTF(3, 4);
/* Writes "out of memory" into err and returns KEEL_ENOMEM. */
int keel__conf_nomem(char *err, size_t errlen);
/* True for a JSON string without an embedded NUL (which C would cut short). */
bool keel__conf_is_text(const json_t *v);
/* The entry of known (NULL-terminated) that key is most likely a typo of,
 * or NULL when none is close. */
const char *keel__conf_nearest(const char *key, const char *const *known);
/* " (did you mean \"x\"?)" in buf for the nearest known key, or "". */
const char *keel__conf_hint(const char *key, const char *const *known, char *buf, size_t len);
/* The first key of obj that is not in allowed (NULL-terminated), or NULL. */
const char *keel__conf_unknown_key(const json_t *obj, const char *const *allowed);
/* a + "/" + b without doubling a trailing slash of a; malloc'd, NULL on ENOMEM. */
char *keel__path_join(const char *a, const char *b);

#endif
