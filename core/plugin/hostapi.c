#include "config.h"

#include "plugin/hostapi.h"

#include <ctype.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/log.h"
#include "net/upstream.h"
#include "ops/plugin_metrics.h"
#include "plugin/tasks.h"
#include "http/routes.h"
#include "http/server.h"

/* A statement's result as a plugin holds it.  The wrapper lives in the
 * request's arena with a cleanup registered once; when the plugin frees the
 * result early, the wrapper goes on the request's spare list and the next
 * statement reuses it (and its cleanup), so freeing keeps memory flat. */
struct keel_db_result {
    PGresult *pg;
    struct keel_db_result *next_spare;
};

/* Results plugins hold right now, across all requests: a gauge for
 * /metrics and the proof, in tests, that results are freed when promised. */
static atomic_long results_live;

long keel__host_results_live(void)
{
    return atomic_load_explicit(&results_live, memory_order_relaxed);
}

struct keel_db_tx {
    keel_request *req;
    keel__db_conn *conn;
};

/* ------------------------------------------------------------ logging */

static void host_log(keel_request *req, int level, const char *fmt, ...) KEEL_PRINTF(3, 4);

static void host_log(keel_request *req, int level, const char *fmt, ...)
{
    const char *tag = "plugin";
    if (req != NULL && req->route != NULL && req->route->plugin != NULL)
        tag = req->route->plugin;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (req != NULL)
        keel__log(level, tag, "req=%llu %s", (unsigned long long)req->id, line);
    else
        keel__log(level, tag, "%s", line);
}

/* ------------------------------------------------------------ request */

static const char *host_req_method(const keel_request *req)
{
    return req->method;
}

static const char *host_req_path(const keel_request *req)
{
    return req->path;
}

static const char *host_req_param(const keel_request *req, const char *name)
{
    for (size_t i = 0; i < req->match.nparams; i++)
        if (strcmp(req->match.names[i], name) == 0)
            return req->match.values[i];
    return NULL;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decodes a query-string value ('+' is a space); KEEL_EINVAL when it
 * decodes to a NUL byte or has a broken escape, so plugins never see
 * truncated input. */
static int decode_query(keel_request *req, const char *raw, const char **value)
{
    size_t n = strlen(raw);
    char *out = keel__req_alloc(req, n + 1);
    if (out == NULL)
        return KEEL_ENOMEM;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (raw[i] == '%') {
            int hi = i + 1 < n ? hexval((unsigned char)raw[i + 1]) : -1;
            int lo = i + 2 < n ? hexval((unsigned char)raw[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return KEEL_EINVAL;
            out[j++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (raw[i] == '+') {
            out[j++] = ' ';
        } else {
            out[j++] = raw[i];
        }
    }
    out[j] = '\0';
    *value = out;
    return 0;
}

static int host_req_query_arg(const keel_request *req, const char *name, const char **value)
{
    *value = NULL;
    if (name == NULL)
        return KEEL_EINVAL;
    const char *raw = req->conn != NULL
                          ? MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name)
                          : keel__synthetic_lookup(req->synthetic ? req->synthetic->query : NULL,
                                                   name);
    if (raw == NULL)
        return KEEL_ENOTFOUND;
    /* The accessor is const for plugins; the arena is request-owned scratch. */
    return decode_query((keel_request *)req, raw, value);
}

static const char *host_req_query(const keel_request *req, const char *name)
{
    const char *v;
    return host_req_query_arg(req, name, &v) == 0 ? v : NULL;
}

static const char *host_req_header(const keel_request *req, const char *name)
{
    if (req->conn == NULL) /* a synthetic request (keel-plugin-check) */
        return keel__synthetic_lookup(req->synthetic ? req->synthetic->headers : NULL, name);
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

static const char *host_req_body(const keel_request *req, size_t *len)
{
    if (len != NULL)
        *len = req->body_len;
    return req->body;
}

static void *host_req_alloc(keel_request *req, size_t size)
{
    return keel__req_alloc(req, size);
}

static int host_req_on_cleanup(keel_request *req, void (*fn)(void *), void *arg)
{
    return keel__req_on_cleanup(req, fn, arg);
}

/* ------------------------------------------------------------ responses */

static int host_respond_json(keel_request *req, unsigned status, json_t *body)
{
    if (status < 100 || status > 599) {
        json_decref(body);
        return KEEL_EINVAL;
    }
    return keel__respond_json(req, status, body);
}

static int host_respond_error(keel_request *req, unsigned status, const char *detail)
{
    if (status < 100 || status > 599)
        return KEEL_EINVAL;
    return keel__respond_detail(req, status, detail ? detail : "");
}

static int host_set_header(keel_request *req, const char *name, const char *value)
{
    if (name == NULL || value == NULL || strpbrk(name, "\r\n:") != NULL ||
        strpbrk(value, "\r\n") != NULL)
        return KEEL_EINVAL;
    return keel__req_add_header(req, name, value);
}

/* True when containers nest more than limit levels deep.  Recursion is
 * bounded by limit (at most 1024 by configuration) and by jansson's own
 * parser depth limit, whichever is lower. */
static bool nests_deeper(const json_t *v, int limit)
{
    if (!json_is_object(v) && !json_is_array(v))
        return false;
    if (limit <= 0)
        return true;
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x) if (nests_deeper(x, limit - 1)) return true;
        return false;
    }
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) if (nests_deeper(x, limit - 1)) return true;
    return false;
}

int keel__json_body_parse(const char *body, size_t len, int max_depth, json_t **out, char *msg,
                          size_t msglen)
{
    *out = NULL;
    if (body == NULL || len == 0) {
        snprintf(msg, msglen, "Request body is empty");
        return KEEL_EINVAL;
    }
    json_error_t jerr;
    json_t *v = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (v == NULL) {
        snprintf(msg, msglen, "Malformed JSON body at line %d column %d: %s", jerr.line,
                 jerr.column, jerr.text);
        /* jansson quotes the input near the error, which may be invalid
         * UTF-8; the message goes into a JSON answer, so such bytes (and
         * control characters) become '?'. */
        for (char *c = msg; *c != '\0'; c++)
            if ((unsigned char)*c >= 0x80 || (unsigned char)*c < 0x20)
                *c = '?';
        return KEEL_EINVAL;
    }
    if (nests_deeper(v, max_depth)) {
        json_decref(v);
        snprintf(msg, msglen, "JSON body nests deeper than %d levels", max_depth);
        return KEEL_EINVAL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        snprintf(msg, msglen, "Request body must be a JSON object");
        return KEEL_EINVAL;
    }
    *out = v;
    return 0;
}

static bool is_json_content_type(const char *ct)
{
    if (ct == NULL)
        return false;
    while (*ct == ' ')
        ct++;
    size_t n = strlen("application/json");
    if (strncasecmp(ct, "application/json", n) != 0)
        return false;
    return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ';
}

static int host_req_json_body(keel_request *req, json_t **out)
{
    *out = NULL;
    if (req->json_body != NULL) {
        *out = req->json_body;
        return 0;
    }
    if (!is_json_content_type(host_req_header(req, "Content-Type"))) {
        keel__respond_detail(req, 415, "Content-Type must be application/json");
        return KEEL_EINVAL;
    }
    if (req->body_too_large) {
        keel__respond_detail(req, 413, "Request body too large");
        return KEEL_ETOOBIG;
    }
    int max_depth = keel__rt.conf ? keel__rt.conf->limits.max_json_depth : 32;
    char msg[256];
    json_t *v;
    if (keel__json_body_parse(req->body, req->body_len, max_depth, &v, msg, sizeof msg) != 0) {
        keel__respond_detail(req, 400, msg);
        return KEEL_EINVAL;
    }
    req->json_body = v;
    *out = v;
    return 0;
}

/* ------------------------------------------------------------ the user */

static const char *host_req_user(const keel_request *req, int field)
{
    if (!req->has_principal)
        return NULL;
    const struct keel__principal *p = &req->principal;
    switch (field) {
    case KEEL_USER_ID:
        return p->user_id;
    case KEEL_USER_SUPABASE_ID:
        return p->supabase_id;
    case KEEL_USER_EMAIL:
        return p->email;
    case KEEL_USER_FULL_NAME:
        return p->full_name;
    case KEEL_USER_ROLE:
        return p->role;
    case KEEL_USER_STATUS:
        return p->status;
    case KEEL_USER_TIER:
        return p->tier;
    case KEEL_USER_SYNCED:
        return p->synced ? "1" : "0";
    default:
        return NULL;
    }
}

/* ------------------------------------------------------------ database */

static void result_clear(struct keel_db_result *r)
{
    if (r->pg != NULL) {
        PQclear(r->pg);
        r->pg = NULL;
        atomic_fetch_sub_explicit(&results_live, 1, memory_order_relaxed);
    }
}

static void result_cleanup(void *p)
{
    result_clear(p);
}

/* Wraps a PGresult so it is cleared when the request completes at the
 * latest.  Consumes pg whatever happens. */
static int own_result(keel_request *req, PGresult *pg, keel_db_result **out)
{
    struct keel_db_result *r = req->spare_results;
    if (r != NULL) {
        req->spare_results = r->next_spare;
        r->next_spare = NULL;
    } else {
        r = keel__req_alloc(req, sizeof *r);
        if (r == NULL || keel__req_on_cleanup(req, result_cleanup, r) != 0) {
            PQclear(pg);
            return KEEL_ENOMEM;
        }
    }
    r->pg = pg;
    atomic_fetch_add_explicit(&results_live, 1, memory_order_relaxed);
    *out = r;
    return 0;
}

/* Runs one statement on conn.  With out == NULL the result is cleared at
 * once (keel__db_exec does that), so statements run for their effect only,
 * BEGIN and COMMIT among them, hold no memory until the request ends. */
static int run_on(keel_request *req, keel__db_conn *conn, const char *sql, int nparams,
                  const char *const *params, keel_db_result **out)
{
    PGresult *pg = NULL;
    int rc = keel__db_exec(keel__rt.db, conn, sql, nparams, params, out != NULL ? &pg : NULL,
                           req->db_error, sizeof req->db_error);
    if (rc != 0 || out == NULL)
        return rc;
    return own_result(req, pg, out);
}

static void host_db_result_free(keel_request *req, keel_db_result *res)
{
    if (req == NULL || res == NULL || res->pg == NULL)
        return;
    result_clear(res);
    res->next_spare = req->spare_results;
    req->spare_results = res;
}

static int host_db_query(keel_request *req, const char *sql, int nparams, const char *const *params,
                         keel_db_result **out)
{
    if (out != NULL)
        *out = NULL;
    if (keel__rt.db == NULL) {
        snprintf(req->db_error, sizeof req->db_error, "no database is configured");
        return KEEL_EDB_UNAVAILABLE;
    }
    keel__db_conn *conn;
    int rc = keel__db_acquire(keel__rt.db, &conn, req->db_error, sizeof req->db_error);
    if (rc != 0)
        return rc;
    rc = run_on(req, conn, sql, nparams, params, out);
    keel__db_release(keel__rt.db, conn);
    return rc;
}

static int host_db_tx_query(keel_db_tx *tx, const char *sql, int nparams, const char *const *params,
                            keel_db_result **out)
{
    if (out != NULL)
        *out = NULL;
    return run_on(tx->req, tx->conn, sql, nparams, params, out);
}

/* Conflicts (serialization failures, deadlocks, a unique key taken by a
 * concurrent transaction) are worth a retry: the callback has no effect
 * outside the database, so running it again is safe. */
#define TX_ATTEMPTS 3

static int host_db_transaction(keel_request *req, keel_db_tx_fn fn, void *arg)
{
    if (keel__rt.db == NULL) {
        snprintf(req->db_error, sizeof req->db_error, "no database is configured");
        return KEEL_EDB_UNAVAILABLE;
    }
    int rc = 0;
    for (int attempt = 0; attempt < TX_ATTEMPTS; attempt++) {
        keel__db_conn *conn;
        rc = keel__db_acquire(keel__rt.db, &conn, req->db_error, sizeof req->db_error);
        if (rc != 0)
            return rc;
        struct keel_db_tx tx = {.req = req, .conn = conn};
        rc = host_db_tx_query(&tx, "BEGIN", 0, NULL, NULL);
        if (rc == 0) {
            rc = fn(&tx, arg);
            if (rc == 0)
                rc = host_db_tx_query(&tx, "COMMIT", 0, NULL, NULL);
        }
        /* Release rolls back whatever is still open on the connection. */
        keel__db_release(keel__rt.db, conn);
        if (rc != KEEL_EDB_CONFLICT)
            return rc;
    }
    return rc;
}

/* A freed result reads as empty rather than crashing the server. */
static int host_db_rows(const keel_db_result *res)
{
    return res && res->pg ? PQntuples(res->pg) : 0;
}

static int host_db_column(const keel_db_result *res, const char *name)
{
    return res && res->pg ? PQfnumber(res->pg, name) : -1;
}

static const char *host_db_value(const keel_db_result *res, int row, int col)
{
    if (res == NULL || res->pg == NULL || row < 0 || col < 0 || row >= PQntuples(res->pg) ||
        col >= PQnfields(res->pg))
        return NULL;
    if (PQgetisnull(res->pg, row, col))
        return NULL;
    return PQgetvalue(res->pg, row, col);
}

static const char *host_db_last_error(const keel_request *req)
{
    return req->db_error;
}

static long host_db_affected(const keel_db_result *res)
{
    if (res == NULL || res->pg == NULL)
        return 0;
    const char *n = PQcmdTuples(res->pg);
    return n && *n ? strtol(n, NULL, 10) : 0;
}

static const keel_host host_api = {
    .size = sizeof(keel_host),
    .abi_major = KEEL_ABI_MAJOR,
    .abi_minor = KEEL_ABI_MINOR,
    .log = host_log,
    .req_method = host_req_method,
    .req_path = host_req_path,
    .req_param = host_req_param,
    .req_query = host_req_query,
    .req_header = host_req_header,
    .req_body = host_req_body,
    .req_alloc = host_req_alloc,
    .req_on_cleanup = host_req_on_cleanup,
    .respond_json = host_respond_json,
    .respond_error = host_respond_error,
    .set_header = host_set_header,
    .req_json_body = host_req_json_body,
    .req_user = host_req_user,
    .db_query = host_db_query,
    .db_transaction = host_db_transaction,
    .db_tx_query = host_db_tx_query,
    .db_rows = host_db_rows,
    .db_column = host_db_column,
    .db_value = host_db_value,
    .db_last_error = host_db_last_error,
    .db_affected = host_db_affected,
    .db_result_free = host_db_result_free,
    .req_query_arg = host_req_query_arg,
    .task_add = keel__host_task_add,
    .task_notify = keel__host_task_notify,
    .task_stopping = keel__host_task_stopping,
    .task_sleep = keel__host_task_sleep,
    .upstream_add = keel__host_upstream_add,
    .upstream_request = keel__host_upstream_request,
    .upstream_last_error = keel__host_upstream_last_error,
    .upstream_open = keel__host_upstream_open,
    .metric_add = keel__host_metric_add,
    .metric_observe = keel__host_metric_observe,
    .plugin_note = keel__host_plugin_note,
};

const keel_host *keel__host_api(void)
{
    return &host_api;
}
