/*
 * Running statements on a checked-out connection: the per-connection
 * statement cache, transparent retries when they are safe, and the
 * classification of every failure (docs/database.md).
 */
#include "config.h"

#include "data/db.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <keel/error.h>

#include "data/breaker.h"
#include "data/pool.h"
#include "data/sqlstate.h"
#include "util/blocking.h"
#include "util/log.h"
#include "util/lru.h"

/* ------------------------------------------------------------ statement cache */

/* The slot holding sql, or the free slot where it would go. */
static struct stmt_entry *stmt_slot(keel__db_conn *c, const char *sql, uint64_t h)
{
    size_t i = (size_t)h & (STMT_TABLE_SIZE - 1);
    for (;;) {
        struct stmt_entry *e = &c->stmts[i];
        if (e->sql == NULL || (e->hash == h && strcmp(e->sql, sql) == 0))
            return e;
        i = (i + 1) & (STMT_TABLE_SIZE - 1);
    }
}

void keel__db_stmt_clear(keel__db_conn *c)
{
    for (int i = 0; i < STMT_TABLE_SIZE; i++) {
        free(c->stmts[i].sql);
        c->stmts[i].sql = NULL;
    }
    c->nstmts = 0;
}

/* ------------------------------------------------------------ exec */

struct attempt {
    bool before_execution; /* the failure proves the statement did not run */
    bool plan_changed;     /* a cached plan no longer fits the schema */
};

/* Classifies a failed result, marks the connection broken when it is, and
 * consumes res. */
static int failed(keel__db_conn *c, PGresult *res, const char *sql, struct attempt *a, char *err,
                  size_t errlen)
{
    const char *sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    bool bad = PQstatus(c->pg) != CONNECTION_OK;
    int code;
    if (sqlstate == NULL && !bad)
        /* libpq refused before sending (wrong parameter count, out of
         * memory, a COPY it did not expect): the caller's mistake. */
        code = KEEL_EDB_BUG;
    else
        code = keel__db_classify(sqlstate);
    if (bad || keel__sqlstate_session_over(sqlstate) || keel__sqlstate_class(sqlstate, "08") ||
        PQtransactionStatus(c->pg) == PQTRANS_ACTIVE)
        c->broken = true;
    if (keel__sqlstate_session_over(sqlstate))
        a->before_execution = true;

    char msg[512];
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (primary == NULL)
        primary = keel__db_one_line(PQerrorMessage(c->pg), msg, sizeof msg);
    /* A schema change under a prepared statement (columns added to a table
     * it selects *) fails it with this message; the statement did not run. */
    a->plan_changed = keel__sqlstate_is(sqlstate, "0A000") &&
                      strstr(primary, "cached plan") != NULL;
    if (sqlstate != NULL)
        keel__set_err(err, errlen, "%s (SQLSTATE %s)", primary, sqlstate);
    else
        keel__set_err(err, errlen, "%s", primary);

    char sqlbuf[SQL_LOG_MAX + 1];
    keel__db_one_line(sql, sqlbuf, sizeof sqlbuf);
    int level = code == KEEL_EDB_BUG           ? KEEL_LOG_ERROR
                : code == KEEL_EDB_UNAVAILABLE ? KEEL_LOG_WARN
                                               : KEEL_LOG_DEBUG;
    keel__log(level, "db", "%s: %s [SQLSTATE %s] in: %s", keel_strerror(code), primary,
              sqlstate ? sqlstate : "none", sqlbuf);
    PQclear(res);
    return code;
}

/*
 * Waits for the result of what was just sent.  Like PQexec, except that it
 * keeps the *first* error: when the server ends the session mid-statement,
 * libpq 15 yields its FATAL (SQLSTATE 57P01) and then, on the EOF behind
 * it, a generic "server closed the connection" result with no SQLSTATE.
 * PQexec returns the last one and the proof that the statement was aborted
 * would be lost.  NULL when the send itself failed.
 */
static PGresult *wait_result(PGconn *pg, int sent)
{
    if (!sent)
        return NULL;
    PGresult *keep = NULL, *r;
    keel__blocking_enter();
    while ((r = PQgetResult(pg)) != NULL) {
        if (keep == NULL ||
            (PQresultStatus(keep) != PGRES_FATAL_ERROR && PQresultStatus(r) == PGRES_FATAL_ERROR)) {
            PQclear(keep);
            keep = r;
        } else {
            PQclear(r);
        }
        /* As PQexec does: after a lost connection nothing more comes. */
        if (PQstatus(pg) == CONNECTION_BAD)
            break;
    }
    keel__blocking_leave();
    return keep;
}

static bool result_ok(const PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    return res != NULL && (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK);
}

static int run_once(keel__db_conn *c, const char *sql, uint64_t h, int nparams,
                    const char *const *params, bool unnamed, PGresult **out, struct attempt *a,
                    char *err, size_t errlen)
{
    *a = (struct attempt){0};
    struct stmt_entry *e = stmt_slot(c, sql, h);
    char fresh[STMT_NAME_LEN];
    const char *name = NULL;
    if (unnamed) {
        /* Behind a transaction pooler a name prepared now may be missing
         * (or taken) on the server connection of the next transaction. */
    } else if (e->sql != NULL) {
        if (e->name[0] != '\0')
            name = e->name;
    } else if (c->nstmts < STMT_CACHE_MAX && strlen(sql) <= STMT_SQL_MAX) {
        snprintf(fresh, sizeof fresh, "keel_%u", c->next_stmt++);
        PGresult *res = wait_result(c->pg, PQsendPrepare(c->pg, fresh, sql, nparams, NULL));
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            /* Parsing executes nothing, so whatever went wrong, the
             * statement did not run. */
            a->before_execution = true;
            return failed(c, res, sql, a, err, errlen);
        }
        PQclear(res);
        name = fresh;
        /* Without memory for the cache entry the statement still runs by
         * the name just prepared; it is merely prepared again next time. */
        char *copy = strdup(sql);
        if (copy != NULL) {
            e->sql = copy;
            e->hash = h;
            memcpy(e->name, fresh, sizeof fresh);
            c->nstmts++;
        }
    }

    int sent = name ? PQsendQueryPrepared(c->pg, name, nparams, params, NULL, NULL, 0)
                    : PQsendQueryParams(c->pg, sql, nparams, NULL, params, NULL, NULL, 0);
    /* A statement libpq could not send did not run. */
    a->before_execution = !sent;
    PGresult *res = wait_result(c->pg, sent);
    if (result_ok(res)) {
        *out = res;
        return 0;
    }
    int rc = failed(c, res, sql, a, err, errlen);
    if (a->plan_changed && name != NULL && e->sql != NULL && !unnamed)
        /* Run this text unprepared from now on: preparing it again under
         * the same name would need a DEALLOCATE round trip first. */
        e->name[0] = '\0';
    return rc;
}

/* Runs parameterless SQL (possibly several statements) with the simple
 * query protocol; on success *out is the first result. */
static int run_simple(keel__db_conn *c, const char *sql, PGresult **out, struct attempt *a,
                      char *err, size_t errlen)
{
    *a = (struct attempt){0};
    int sent = PQsendQuery(c->pg, sql);
    a->before_execution = !sent;
    PGresult *res = wait_result(c->pg, sent);
    if (result_ok(res)) {
        if (out != NULL)
            *out = res;
        else
            PQclear(res);
        return 0;
    }
    return failed(c, res, sql, a, err, errlen);
}

/* "BEGIN" or "START TRANSACTION", with or without modes after it. */
static bool starts_transaction(const char *sql)
{
    while (*sql == ' ' || *sql == '\n' || *sql == '\t')
        sql++;
    size_t n = strncasecmp(sql, "BEGIN", 5) == 0                ? 5
               : strncasecmp(sql, "START TRANSACTION", 17) == 0 ? 17
                                                                : 0;
    return n > 0 && (sql[n] == '\0' || sql[n] == ' ' || sql[n] == ';' || sql[n] == '\n');
}

/*
 * One attempt at sql behind a transaction pooler, where the timeouts can
 * only be SET LOCAL inside a transaction.  A caller's BEGIN is sent
 * together with them; a statement outside a transaction gets a short one
 * of its own (BEGIN and the SETs, the statement, COMMIT), so that every
 * statement runs under every timeout.
 */
static int run_pooled(keel__db *db, keel__db_conn *c, const char *sql, uint64_t h, int nparams,
                      const char *const *params, bool outside_tx, PGresult **out, struct attempt *a,
                      char *err, size_t errlen)
{
    if (!outside_tx)
        return run_once(c, sql, h, nparams, params, true, out, a, err, errlen);
    if (nparams == 0 && starts_transaction(sql) && strlen(sql) <= STMT_SQL_MAX) {
        size_t len = strlen(sql) + strlen(db->timeouts_sql) + 3;
        char *both = malloc(len);
        if (both == NULL) {
            keel__set_err(err, errlen, "out of memory");
            return KEEL_ENOMEM;
        }
        snprintf(both, len, "%s; %s", sql, db->timeouts_sql);
        int rc = run_simple(c, both, out, a, err, errlen);
        free(both);
        return rc;
    }
    char begin[sizeof db->timeouts_sql + 8];
    snprintf(begin, sizeof begin, "BEGIN; %s", db->timeouts_sql);
    int rc = run_simple(c, begin, NULL, a, err, errlen);
    if (rc != 0) {
        /* Nothing of the caller's ran. */
        a->before_execution = true;
        if (!c->broken && PQtransactionStatus(c->pg) != PQTRANS_IDLE && !keel__db_conn_rollback(c))
            c->broken = true;
        return rc;
    }
    rc = run_once(c, sql, h, nparams, params, true, out, a, err, errlen);
    if (rc != 0) {
        if (!c->broken && !keel__db_conn_rollback(c))
            c->broken = true;
        return rc;
    }
    struct attempt ca;
    rc = run_simple(c, "COMMIT", NULL, &ca, err, errlen);
    if (rc != 0) {
        /* Whether it committed is unknown when the connection was lost. */
        PQclear(*out);
        *out = NULL;
        a->before_execution = false;
        if (!c->broken && PQtransactionStatus(c->pg) != PQTRANS_IDLE && !keel__db_conn_rollback(c))
            c->broken = true;
    }
    return rc;
}

static int run_statement(keel__db *db, keel__db_conn *c, const char *sql, uint64_t h, int nparams,
                         const char *const *params, bool outside_tx, PGresult **out,
                         struct attempt *a, char *err, size_t errlen)
{
    if (db->pooler == KEEL__DB_POOLER_TRANSACTION)
        return run_pooled(db, c, sql, h, nparams, params, outside_tx, out, a, err, errlen);
    return run_once(c, sql, h, nparams, params, false, out, a, err, errlen);
}

/*
 * Runs sql, retrying once on a fresh connection when that is known to be
 * safe.  The rule: the connection turned out to be broken, no statement has
 * succeeded on it during this checkout, it was outside a transaction, and
 * the failure proves the statement never ran (it failed while being
 * prepared, or the server reported that it ended the session: 57P01,
 * 57P02, 57P03, which abort what was running).  A connection lost with no
 * word from the server mid-statement is *not* retried: an autocommit write
 * may have committed just before the loss, and running it twice is worse
 * than one 503.  Inside a transaction, or after an earlier statement of the
 * checkout succeeded, the caller's work is already partly gone with the
 * session, so only the caller can decide to start over.
 */
int keel__db_exec(keel__db *db, keel__db_conn *c, const char *sql, int nparams,
                  const char *const *params, PGresult **out, char *err, size_t errlen)
{
    /* Without a place for the result it is cleared as soon as it arrives. */
    PGresult *discard = NULL;
    if (out == NULL)
        out = &discard;
    *out = NULL;
    if (c == NULL || sql == NULL || nparams < 0 || nparams > MAX_PARAMS ||
        (nparams > 0 && params == NULL)) {
        keel__set_err(err, errlen, "invalid arguments to keel__db_exec");
        return KEEL_EINVAL;
    }
    if (c->pg == NULL || c->broken) {
        keel__set_err(err, errlen,
                      "database unavailable: the connection was lost earlier in this request");
        return KEEL_EDB_UNAVAILABLE;
    }

    uint64_t h = keel__lru_hash(sql, strlen(sql));
    bool outside_tx = PQtransactionStatus(c->pg) == PQTRANS_IDLE;
    struct attempt a;
    int rc;
    if (outside_tx && !c->checkout_ok && !keel__db_conn_alive(c)) {
        /* Found dead before anything was sent: the connection can be
         * replaced with no doubt about what ran. */
        keel__log(KEEL_LOG_INFO, "db", "connection was closed by the server; reconnecting");
        keel__db_conn_close(db, c);
        rc = keel__db_conn_open(db, c, err, errlen);
        if (rc != 0) {
            c->broken = true;
            return rc;
        }
    }
    rc = run_statement(db, c, sql, h, nparams, params, outside_tx, out, &a, err, errlen);
    if (rc != 0 && outside_tx) {
        if (c->broken && a.before_execution && !c->checkout_ok) {
            keel__log(KEEL_LOG_INFO, "db",
                      "connection lost before the statement ran; reconnecting and retrying once");
            keel__db_conn_close(db, c);
            rc = keel__db_conn_open(db, c, err, errlen);
            if (rc != 0)
                return rc; /* conn_open has told the breaker */
            rc = run_statement(db, c, sql, h, nparams, params, true, out, &a, err, errlen);
        } else if (a.plan_changed && !c->broken) {
            rc = run_statement(db, c, sql, h, nparams, params, true, out, &a, err, errlen);
        }
    }

    PQclear(discard);
    if (rc == KEEL_EDB_UNAVAILABLE || rc == KEEL_EDB_BUG) {
        atomic_fetch_add(&db->failing, 1);
        atomic_store(&db->last_failure_ms, keel__now_ms());
    } else if (atomic_load_explicit(&db->failing, memory_order_relaxed) != 0) {
        /* Read first: a store on every success would bounce the line
         * between the cores serving requests. */
        atomic_store(&db->failing, 0);
    }
    if (rc == 0) {
        c->checkout_ok = true;
        keel__breaker_success(db->breaker);
    } else if (rc == KEEL_EDB_UNAVAILABLE) {
        keel__breaker_failure(db->breaker, keel__now_ms());
    } else {
        /* The server answered, so as far as the breaker is concerned the
         * database is up, even if the statement was wrong. */
        keel__breaker_success(db->breaker);
    }
    return rc;
}
