/*
 * The keel plugin ABI.  This header is the only thing a route plugin sees of
 * the host: a plugin exports one symbol, keel_plugin_entry(), that returns a
 * const descriptor; the host hands the plugin a table of function pointers at
 * init.  Plugins never link against core symbols.
 *
 * Versioning (see docs/plugin-guide.md):
 *  - KEEL_ABI_MAJOR changes when anything existing changes layout or meaning;
 *    a host refuses a plugin of another major.
 *  - KEEL_ABI_MINOR grows when members are appended to keel_host or to
 *    keel_plugin.  A plugin lists the capabilities it cannot run without in
 *    `requires`; a host lacking one refuses the plugin and names it.  Optional
 *    capabilities are tested at run time with KEEL_HOST_HAS().
 *
 * Capability names accepted in `requires` (and the minor that added them):
 *   1.0  "log"          log
 *        "request"      req_method .. req_on_cleanup
 *        "response"     respond_json, respond_error, set_header
 *        "json_body"    req_json_body
 *        "user"         req_user
 *        "db"           db_query .. db_affected
 *   1.1  "db_result_free"  db_result_free
 *        "query_arg"       req_query_arg
 *   1.2  "body_lines"      req_body_line
 *   1.3  "tasks"           task_add .. task_sleep
 *        "upstream"        upstream_add .. upstream_open
 *        "metrics"         metric_add, metric_observe (and plugin_note)
 *   1.4  "response_pack"   respond_pack
 *
 * Rules every plugin relies on:
 *  - Concurrency.  Handlers of one generation run concurrently on many server
 *    threads and all receive the same `state` pointer made by init.  What a
 *    handler writes through it needs a lock or atomics.  During a reload two
 *    generations of a plugin are loaded side by side, each with its own state.
 *  - Strings.  Functions taking a `const char *` copy it before returning
 *    unless their comment says otherwise (set_header, respond_error, log,
 *    db_query's sql and params are all copied or used only during the call),
 *    so a plugin may pass stack buffers.  Strings the host returns are owned
 *    by the host: request strings until the request completes, a result's
 *    values until the result is freed or the request completes.
 *  - jansson.  Plugins and host share one libjansson and its default
 *    allocator; nobody may call json_set_alloc_funcs().  respond_json takes
 *    the reference it is given, on success and on failure alike, and the host
 *    serialises and frees it; do not decref it afterwards.
 *  - Logging.  log() lines are tagged with the plugin's name (and the request
 *    id when req is given), init and fini included: pass req == NULL there.
 *  - Errors.  Host functions returning int return 0 or a negative KEEL_E*
 *    code from keel/error.h.
 *  - Background work.  A plugin never starts threads of its own: it registers
 *    tasks at init (task_add) and the host runs, stops and joins them, all
 *    before fini, so a reload never unmaps code that is still running.
 *    Registration calls (task_add, upstream_add, metric_add, plugin_note) are
 *    only accepted while init runs, on init's thread.
 */
#ifndef KEEL_PLUGIN_H
#define KEEL_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <keel/common.h>
#include <keel/error.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KEEL_ABI_MAJOR 1
#define KEEL_ABI_MINOR 4

/* "KEEL" in ASCII; the first member of every descriptor. */
#define KEEL_PLUGIN_MAGIC 0x4b45454cu

/* The one symbol a plugin exports. */
#define KEEL_PLUGIN_ENTRY_SYMBOL "keel_plugin_entry"

/* One HTTP request as the host sees it.  Opaque; use the accessors. */
typedef struct keel_request keel_request;
/* A database result owned by the request that produced it. */
typedef struct keel_db_result keel_db_result;
/* A database transaction in progress; valid only inside its callback. */
typedef struct keel_db_tx keel_db_tx;
/* A background task registered at init (ABI 1.3).  Opaque. */
typedef struct keel_task keel_task;
/* An upstream HTTP service declared at init (ABI 1.3).  Opaque. */
typedef struct keel_upstream keel_upstream;
/* A plugin metric registered at init (ABI 1.3).  Opaque. */
typedef struct keel_metric keel_metric;

enum keel_log_level {
    KEEL_LOG_ERROR = 0,
    KEEL_LOG_WARN = 1,
    KEEL_LOG_INFO = 2,
    KEEL_LOG_DEBUG = 3
};

/* Fields of the authenticated user, read with keel_host.req_user(). */
enum keel_user_field {
    KEEL_USER_ID = 0,          /* local users.id (uuid); NULL if not synced */
    KEEL_USER_SUPABASE_ID = 1, /* the token's sub */
    KEEL_USER_EMAIL = 2,
    KEEL_USER_FULL_NAME = 3,
    KEEL_USER_ROLE = 4,   /* local role: user, admin, ... */
    KEEL_USER_STATUS = 5, /* active, pending, ... */
    KEEL_USER_TIER = 6,   /* subscription tier */
    KEEL_USER_SYNCED = 7  /* "1" when read from the users table, else "0" */
};

/*
 * A route handler.  It runs on a server thread once the request is complete
 * and authorised, and must queue exactly one response through the host
 * (respond_json / respond_error) before returning.  It returns 0, or a
 * negative KEEL_E* code; a handler that fails without responding gets a
 * generic JSON 500 from the host and an error log line.
 */
typedef int (*keel_handler_fn)(keel_request *req, void *state);

/* One entry of a plugin's route table; the table ends with a NULL method. */
typedef struct keel_route {
    const char *method; /* "GET", "POST", ... */
    const char *path;   /* template, e.g. "/api/v1/x/{username}" */
    keel_handler_fn handler;
} keel_route;

/*
 * Callback run inside one database transaction; see db_transaction.  It
 * returns 0 to COMMIT, or any negative code to ROLLBACK.  A KEEL_EDB_* code
 * it got from db_tx_query is best passed on unchanged: KEEL_EDB_CONFLICT makes
 * db_transaction run the callback again, and the others reach the caller as
 * they are.  Its own codes (KEEL_ENOTFOUND, KEEL_EINVAL, ...) reach the caller
 * of db_transaction unchanged too, so they can carry the callback's verdict.
 * Positive values are reserved; do not return them.
 */
typedef int (*keel_db_tx_fn)(keel_db_tx *tx, void *arg);

/*
 * One run of a background task (ABI 1.3, see task_add).  `req` is a request
 * the host made for this run alone: it has no connection, user, parameters
 * or body, but log, req_alloc, req_on_cleanup, db_query, db_transaction and
 * upstream_request work on it exactly as in a handler, and everything it
 * owns is released when the run returns.  Responding on it does nothing.
 * Returns 0 or a negative KEEL_E* code (logged by the host).
 */
typedef int (*keel_task_fn)(keel_task *task, keel_request *req, void *arg);

/* Kinds of plugin metrics (metric_add). */
enum keel_metric_kind {
    KEEL_METRIC_COUNTER = 0,  /* metric_observe adds v (v >= 0) */
    KEEL_METRIC_GAUGE = 1,    /* metric_observe sets v */
    KEEL_METRIC_HISTOGRAM = 2 /* metric_observe records v (seconds, say) */
};

/*
 * The host API table.  Members are only ever appended; `size` tells how many
 * exist in the running host.  Everything returned as `const char *` is owned
 * by the host and valid until the request completes (a result's values: until
 * the result is freed, at the latest when the request completes).
 */
typedef struct keel_host {
    uint32_t size; /* sizeof(keel_host) in the running host */
    uint16_t abi_major;
    uint16_t abi_minor;

    /* --- ABI 1.0: logging ------------------------------------------------ */
    /* Logs one line tagged with the plugin name (and request id if req). */
    void (*log)(keel_request *req, int level, const char *fmt, ...) KEEL_PRINTF(3, 4);

    /* --- ABI 1.0: request accessors ------------------------------------- */
    const char *(*req_method)(const keel_request *req);
    const char *(*req_path)(const keel_request *req);
    /* A `{name}` segment of the matched template, percent-decoded. */
    const char *(*req_param)(const keel_request *req, const char *name);
    /*
     * A query-string argument, percent-decoded ('+' is a space), or NULL when
     * it is absent *or* malformed (a broken %-escape, or one decoding to a
     * NUL byte).  Use req_query_arg (ABI 1.1) to tell the two apart.
     */
    const char *(*req_query)(const keel_request *req, const char *name);
    /* A request header (case-insensitive name), or NULL. */
    const char *(*req_header)(const keel_request *req, const char *name);
    /* The request body (NUL-terminated; *len excludes the NUL), or NULL. */
    const char *(*req_body)(const keel_request *req, size_t *len);
    /* Request-lifetime memory, freed when the request completes. */
    void *(*req_alloc)(keel_request *req, size_t size);
    /* Runs fn(arg) when the request completes, in reverse order of adding. */
    int (*req_on_cleanup)(keel_request *req, void (*fn)(void *), void *arg);

    /* --- ABI 1.0: responses --------------------------------------------- */
    /* Queues `body` with `status`.  Always takes ownership of body. */
    int (*respond_json)(keel_request *req, unsigned status, json_t *body);
    /* Queues {"detail": detail} with `status`; detail is copied. */
    int (*respond_error)(keel_request *req, unsigned status, const char *detail);
    /* Adds a response header to the response that will be queued; name and
     * value are copied.  KEEL_EINVAL for CR, LF or (in the name) ':'. */
    int (*set_header)(keel_request *req, const char *name, const char *value);
    /*
     * Parses the body as a JSON object under the host's size and depth
     * limits.  On failure it has already queued 400/413/415 and returns a
     * negative code; the handler just returns.  *out is owned by the request.
     */
    int (*req_json_body)(keel_request *req, json_t **out);

    /* --- ABI 1.0: the authenticated user -------------------------------- */
    /* A field of the request's user, or NULL (public routes, unknown). */
    const char *(*req_user)(const keel_request *req, int field);

    /* --- ABI 1.0: database ---------------------------------------------- */
    /*
     * Runs one parameterised statement on a pooled connection.  The result
     * belongs to the request (or is freed earlier with db_result_free); with
     * out == NULL nothing is kept at all, so a statement run only for its
     * effect costs no memory until the request ends.  Returns 0,
     * KEEL_EDB_UNAVAILABLE (answer the degraded body or 503),
     * KEEL_EDB_CONFLICT, KEEL_EDB_BADREQ or KEEL_EDB_BUG.  Parameters are
     * text; NULL entries are SQL NULL.  sql and params are used only during
     * the call.
     */
    int (*db_query)(keel_request *req, const char *sql, int nparams, const char *const *params,
                    keel_db_result **out);
    /*
     * Runs fn inside one transaction on one connection: COMMIT when fn
     * returns 0, ROLLBACK otherwise (and on any database error).  Returns 0,
     * fn's own non-zero code unchanged, or the KEEL_EDB_* code of BEGIN or
     * COMMIT.  When fn (or COMMIT) returns KEEL_EDB_CONFLICT (serialization
     * failures, deadlocks, a unique key taken concurrently) the whole
     * transaction is run again, up to a small bound, before KEEL_EDB_CONFLICT
     * is returned; so fn must have no effect outside the database.  The
     * results of BEGIN and COMMIT are never kept.
     */
    int (*db_transaction)(keel_request *req, keel_db_tx_fn fn, void *arg);
    /* db_query inside a transaction. */
    int (*db_tx_query)(keel_db_tx *tx, const char *sql, int nparams, const char *const *params,
                       keel_db_result **out);
    int (*db_rows)(const keel_db_result *res);
    /* Column index by name, or -1. */
    int (*db_column)(const keel_db_result *res, const char *name);
    /* Text value, or NULL for SQL NULL or out of range. */
    const char *(*db_value)(const keel_db_result *res, int row, int col);
    /* The message of the request's last database failure, or "". */
    const char *(*db_last_error)(const keel_request *req);
    /* Number of rows a command affected (UPDATE/INSERT/DELETE). */
    long (*db_affected)(const keel_db_result *res);

    /* --- ABI 1.1 ------------------------------------------------------- */
    /*
     * Frees a result now instead of when the request completes, so a
     * handler running many statements (an import) holds one at a time.  res
     * must not be used afterwards (it reads as an empty result); NULL is
     * ignored.  Works inside a transaction callback too.  Capability
     * "db_result_free".
     */
    void (*db_result_free)(keel_db_result *res);
    /*
     * A query-string argument: 0 with *value the decoded text (as
     * req_query), KEEL_ENOTFOUND when the URL has no such argument,
     * KEEL_EINVAL when it is there but malformed (a broken %-escape or %00),
     * KEEL_ENOMEM.  *value is NULL unless 0 is returned.  Capability
     * "query_arg".
     */
    int (*req_query_arg)(const keel_request *req, const char *name, const char **value);

    /* --- ABI 1.2 ------------------------------------------------------- */
    /*
     * The next line of the request body, without its "\n" (a "\r" before
     * it is kept).  *line is owned by the host and valid until the next
     * call.  Returns 1 with a line, 0 at the end of the body, KEEL_ETOOBIG
     * for a line over the host's line limit (skipped: the next call reads
     * the line after it), or another negative code.  It is the only way to
     * read the body of a route whose manifest says "body": "stream" (such a
     * body is spooled to disk, and req_body returns NULL for it); it reads
     * in-memory bodies as well.  Capability "body_lines".
     */
    int (*req_body_line)(keel_request *req, const char **line, size_t *len);

    /* --- ABI 1.3: background tasks (capability "tasks") ---------------- */
    /*
     * Registers a task; only valid while the plugin's init runs.  The host
     * runs fn(task, req, arg) on a thread of its own: every every_ms
     * milliseconds (0 = only when woken by task_notify), never two runs of
     * one task at once.  Tasks start once the generation is loaded and are
     * stopped and joined before fini, so a reload never unmaps running code:
     * a run should return soon after task_stopping() turns true.  A run
     * longer than every_ms is logged as an overrun.  name (1-63 of
     * [a-z0-9_-]) is copied; arg is the plugin's.  *out (may be NULL) stays
     * valid until fini.  Returns 0, KEEL_EINVAL (outside init, bad name or
     * duplicate) or KEEL_ENOMEM.
     */
    int (*task_add)(const char *name, unsigned every_ms, keel_task_fn fn, void *arg,
                    keel_task **out);
    /* Wakes the task now (a run starts soon unless one is running, in which
     * case one more follows it).  Callable from any thread, handlers too. */
    void (*task_notify)(keel_task *task);
    /* True once the host asked the task to stop (reload, unload, shutdown). */
    int (*task_stopping)(const keel_task *task);
    /* Sleeps up to ms, returning early when the task is asked to stop;
     * returns task_stopping().  For backoff inside a run. */
    int (*task_sleep)(keel_task *task, unsigned ms);

    /* --- ABI 1.3: upstream HTTP client (capability "upstream") --------- */
    /*
     * Declares an upstream service; only valid while init runs.  config is
     * an object (borrowed):
     *   "url"              base URL, http:// or https:// (required)
     *   "timeout_ms"       per attempt, default 5000
     *   "max_bytes"        response body cap, default 1048576
     *   "retries"          extra attempts on errors and 5xx, default 2
     *   "backoff_ms"       first backoff, doubled per retry, default 200
     *   "token_env"        environment variable holding a bearer token
     *   "breaker_failures" consecutive failures that open the breaker, default 5
     *   "breaker_open_ms"  time open before a probe, default 5000
     * Unknown keys are ignored, so an upstream can live inside a larger
     * object.  The token is read at declaration and never logged.  Counters,
     * latency and breaker state are exported per upstream on /metrics.
     * Returns 0, KEEL_EINVAL (outside init, bad name) or KEEL_ECONFIG (bad
     * config, logged).
     */
    int (*upstream_add)(const char *name, const json_t *config, keel_upstream **out);
    /*
     * Sends one request: method ("GET", "POST", ...) to the base URL +
     * path, with body (may be NULL) as JSON.  From a handler deadline_ms is
     * required, 1-5000 (a handler must not wait long on another service);
     * from a task 0 means the upstream's timeout and retries.  Errors and
     * 5xx answers are retried with backoff inside the deadline.  Returns 0
     * when an answer arrived: *status is its HTTP status and *json (may be
     * NULL) its parsed body, owned by req (NULL when empty, or when a non-2xx
     * body is not JSON).  Failures: KEEL_EUPSTREAM (unreachable, TLS error,
     * circuit open), KEEL_ETIMEOUT, KEEL_ETOOBIG (over max_bytes),
     * KEEL_EBADRESPONSE (2xx that is not JSON, redirect to another host),
     * KEEL_EINVAL; upstream_last_error() then says why.
     */
    int (*upstream_request)(keel_request *req, keel_upstream *up, const char *method,
                            const char *path, const json_t *body, unsigned deadline_ms,
                            long *status, json_t **json);
    /* The message of req's last upstream failure, or "". */
    const char *(*upstream_last_error)(const keel_request *req);
    /* True while the upstream's circuit breaker would refuse a call now. */
    int (*upstream_open)(const keel_upstream *up);

    /* --- ABI 1.3: plugin metrics (capability "metrics") ---------------- */
    /*
     * Registers a metric; only valid while init runs.  name (a Prometheus
     * name, [a-z_][a-z0-9_]*, at most 63) starts with the plugin's name and
     * '_' ('-' in the plugin name becomes '_'), e.g. "creator_jobs_total",
     * and is exported as keel_plugin_<name>{plugin="<plugin>"}.  Values survive reloads: a new
     * generation registering the same name and kind gets the same metric.
     * Returns 0, KEEL_EINVAL or KEEL_EEXISTS (the name has another kind).
     */
    int (*metric_add)(int kind, const char *name, const char *help, keel_metric **out);
    /* Counts, sets or records v (see enum keel_metric_kind); lock-free. */
    void (*metric_observe)(keel_metric *m, double v);

    /* --- ABI 1.3: admin status ------------------------------------------ */
    /* Sets a one-line note that GET /admin/plugins shows for this
     * generation ("note"), e.g. why a feature is off; only valid while init
     * runs.  text is copied (at most 255 bytes kept).  0 or KEEL_EINVAL. */
    int (*plugin_note)(const char *text);

    /* --- ABI 1.4: responses without a tree (capability "response_pack") - */
    /*
     * Queues the JSON body that json_pack(fmt, ...) would build, written
     * straight out instead (no json_t is made and freed): for the small,
     * fixed-shape answers most routes give.  The format is a subset of
     * json_pack's: '{' '}' '[' ']', object keys 's', values 's' (const char
     * *, UTF-8), 's?' (NULL writes null), 'i' (int), 'I' (json_int_t), 'b'
     * (int), 'f' (double, finite), 'n' (null) and 'O' / 'O?' (a json_t *,
     * borrowed: written, not stolen).  Whitespace, ':' and ',' are skipped.
     * Keys are written as given, so the plugin keeps them unique.  A bad
     * format or value (a NULL 's', a string that is not UTF-8) is logged and
     * answered 500, and KEEL_EINVAL returned (KEEL_ENOMEM when memory
     * runs out).
     *
     *     keel_api->respond_pack(req, 200, "{s:s, s:i}", "name", name, "n", n);
     */
    int (*respond_pack)(keel_request *req, unsigned status, const char *fmt, ...);
} keel_host;

/* True when the running host's table has member `m` and it is set. */
#define KEEL_HOST_HAS(host, m)                                                                     \
    ((host)->size >= offsetof(keel_host, m) + sizeof((host)->m) && (host)->m != NULL)

/* The descriptor a plugin's entry symbol returns. */
typedef struct keel_plugin {
    uint32_t magic;       /* KEEL_PLUGIN_MAGIC */
    uint16_t abi_major;   /* KEEL_ABI_MAJOR the plugin was built with */
    uint16_t abi_minor;   /* KEEL_ABI_MINOR the plugin was built with */
    uint32_t struct_size; /* sizeof(keel_plugin) the plugin was built with */
    const char *name;     /* must equal the manifest's name */
    const char *version;
    /*
     * Called once per generation before any route runs.  `config` is the
     * manifest's "config" object (or an empty object), borrowed for the
     * duration of the call.  Returns 0 or a negative code; *state is passed
     * to every handler and to fini.
     */
    int (*init)(const keel_host *host, const json_t *config, void **state);
    /* Called once when the generation is retired and no request holds it. */
    void (*fini)(void *state);
    const keel_route *routes; /* ends with an entry whose method is NULL */
    /* Capability names the plugin cannot run without; NULL-terminated. */
    const char *const *requires;
    void *spare[8]; /* zero; reserved for appended members */
} keel_plugin;

/* Fills the fixed header of a descriptor. */
#define KEEL_PLUGIN_HEADER                                                                         \
    .magic = KEEL_PLUGIN_MAGIC, .abi_major = KEEL_ABI_MAJOR, .abi_minor = KEEL_ABI_MINOR,          \
    .struct_size = sizeof(keel_plugin)

/*
 * Where a plugin keeps the host table, in the manner of SQLite's
 * SQLITE_EXTENSION_INIT1/2/3, so that no plugin has to invent a global:
 *
 *     KEEL_PLUGIN_INIT1                 once, at file scope, in one file
 *     KEEL_PLUGIN_INIT3                 at file scope in the plugin's other files
 *     KEEL_PLUGIN_INIT2(host);          first thing in init
 *     keel_api->respond_error(req, 404, "Not found");
 *
 * keel_api is hidden, so it never clashes with another plugin's.  It is set
 * by every generation's init to the same table; the host's table never
 * changes while the process runs.
 */
#if defined(__GNUC__) || defined(__clang__)
#define KEEL__HIDDEN __attribute__((visibility("hidden")))
#else
#define KEEL__HIDDEN
#endif
#define KEEL_PLUGIN_INIT1 KEEL__HIDDEN const keel_host *keel_api = NULL
#define KEEL_PLUGIN_INIT2(host) (keel_api = (host))
#define KEEL_PLUGIN_INIT3 extern KEEL__HIDDEN const keel_host *keel_api

/* The entry point every plugin defines. */
KEEL_EXPORT const keel_plugin *keel_plugin_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_PLUGIN_H */
