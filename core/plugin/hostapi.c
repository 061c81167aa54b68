#include "config.h"

#include "plugin/hostapi.h"

#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/log.h"
#include "http/body.h"
#include "net/upstream.h"
#include "plugin/plugin_metrics.h"
#include "plugin/tasks.h"
#include "http/routes.h"
#include "http/server.h"

/* A statement's result as a plugin holds it.  The wrapper lives in the
 * request's arena with a cleanup registered once; when the plugin frees the
 * result early, the wrapper goes on the request's spare list and the next
 * statement reuses it (and its cleanup), so freeing keeps memory flat. */
struct keel_db_result {
    PGresult *pg;
    keel_request *req; /* the request it belongs to */
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
        keel__log(level, tag, "req=%llu rid=%s %s", (unsigned long long)req->id, req->request_id,
                  line);
    else
        keel__log(level, tag, "%s", line);
}

/* ------------------------------------------------------------ request */

/* ------------------------------------------------------------ responses */

/* A status a plugin may answer with. */
static bool status_ok(unsigned status)
{
    return status >= 100 && status <= 599;
}

static int host_respond_json(keel_request *req, unsigned status, json_t *body)
{
    if (!status_ok(status)) {
        json_decref(body);
        return KEEL_EINVAL;
    }
    return keel__respond_json(req, status, body);
}

static int host_respond_error(keel_request *req, unsigned status, const char *detail)
{
    if (!status_ok(status))
        return KEEL_EINVAL;
    return keel__respond_detail(req, status, detail ? detail : "");
}

static int host_respond_pack(keel_request *req, unsigned status, const char *fmt, ...)
{
    if (!status_ok(status))
        return KEEL_EINVAL;
    va_list ap;
    va_start(ap, fmt);
    int rc = keel__respond_packv(req, status, fmt, ap);
    va_end(ap);
    return rc;
}

static int host_set_header(keel_request *req, const char *name, const char *value)
{
    if (name == NULL || value == NULL || strpbrk(name, "\r\n:") != NULL ||
        strpbrk(value, "\r\n") != NULL)
        return KEEL_EINVAL;
    return keel__req_add_header(req, name, value);
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
    r->req = req;
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

static void host_db_result_free(keel_db_result *res)
{
    if (res == NULL || res->pg == NULL)
        return;
    result_clear(res);
    res->next_spare = res->req->spare_results;
    res->req->spare_results = res;
}

int keel__req_db_acquire(keel_request *req, keel__db_conn **conn)
{
    if (keel__rt.db == NULL) {
        keel__set_err(req->db_error, sizeof req->db_error, "no database is configured");
        return KEEL_EDB_UNAVAILABLE;
    }
    return keel__db_acquire(keel__rt.db, conn, req->db_error, sizeof req->db_error);
}

static int host_db_query(keel_request *req, const char *sql, int nparams, const char *const *params,
                         keel_db_result **out)
{
    if (out != NULL)
        *out = NULL;
    keel__db_conn *conn;
    int rc = keel__req_db_acquire(req, &conn);
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
    int rc = 0;
    for (int attempt = 0; attempt < TX_ATTEMPTS; attempt++) {
        keel__db_conn *conn;
        rc = keel__req_db_acquire(req, &conn);
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
    .req_method = keel__req_method,
    .req_path = keel__req_path,
    .req_param = keel__req_param,
    .req_query = keel__req_query,
    .req_header = keel__req_header,
    .req_body = keel__req_body,
    .req_alloc = keel__req_alloc,
    .req_on_cleanup = keel__req_on_cleanup,
    .respond_json = host_respond_json,
    .respond_error = host_respond_error,
    .set_header = host_set_header,
    .req_json_body = keel__req_json_body,
    .req_user = keel__req_user,
    .db_query = host_db_query,
    .db_transaction = host_db_transaction,
    .db_tx_query = host_db_tx_query,
    .db_rows = host_db_rows,
    .db_column = host_db_column,
    .db_value = host_db_value,
    .db_last_error = host_db_last_error,
    .db_affected = host_db_affected,
    .db_result_free = host_db_result_free,
    .req_query_arg = keel__req_query_arg,
    .req_body_line = keel__body_line,
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
    .respond_pack = host_respond_pack,
};

const keel_host *keel__host_api(void)
{
    return &host_api;
}
