#include "config.h"

#include "data/db.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <keel/error.h>

#include "data/breaker.h"
#include "data/sqlstate.h"
#include "util/log.h"

/*
 * Per-connection statement cache: an open-addressing table twice the size of
 * its bound so probe chains stay short.  It never deletes single entries; it
 * is emptied when its connection is replaced.  Once full, further SQL texts
 * run unprepared (PQexecParams) rather than evicting: a service has a fixed
 * set of statements, so a full cache means a caller is building SQL
 * dynamically and preparing it would only leak server memory.
 */
#define STMT_CACHE_MAX 128
#define STMT_TABLE_SIZE 256
#define STMT_SQL_MAX 16384
#define STMT_NAME_LEN 16

/* How long data we sent may stay unacknowledged before the kernel gives up
 * on the connection.  A running query does not count (the server's kernel
 * still acks), so this only bites when the server or the path to it is gone;
 * with it set, Linux also uses it to bound keepalive probing. */
#define TCP_USER_TIMEOUT_MS 10000
/* A transaction left idle this long is ended by the server, so a leaked
 * checkout cannot hold locks for ever.  Never below the statement timeout. */
#define IDLE_IN_TX_MIN_MS 10000

#define MAX_PARAMS 65535
/* How long a run of failed statements keeps /health at "down". */
#define FAILING_FOR_MS 10000
#define SQL_LOG_MAX 200

struct stmt_entry {
    uint64_t hash;
    char *sql;                /* NULL: free slot */
    char name[STMT_NAME_LEN]; /* "": seen but must run unprepared */
};

struct keel__db_conn {
    PGconn *pg;
    int slot;
    /* Known unusable: release closes it instead of pooling it. */
    bool broken;
    /* The server sent a FATAL while no statement was running: it ended
     * the session and the socket is about to close. */
    bool doomed;
    /* A statement succeeded since this checkout began; after that a lost
     * connection is never retried transparently (see keel__db_exec). */
    bool checkout_ok;
    unsigned next_stmt;
    int nstmts;
    struct stmt_entry stmts[STMT_TABLE_SIZE];
};

enum {
    KW_APP,
    KW_KA,
    KW_KA_IDLE,
    KW_KA_INTERVAL,
    KW_KA_COUNT,
    KW_DBNAME,
    KW_CONNECT_TIMEOUT,
    KW_TCP_USER_TIMEOUT,
    KW_OPTIONS,
    KW_END
};

struct keel__db {
    char *conninfo;
    char *options;
    int pooler; /* enum keel__db_pooler */
    /* The timeouts as SET statements, for poolers that refuse "options":
     * session-wide (session pooling) or SET LOCAL (transaction pooling). */
    char timeouts_sql[256];
    /* Statements that failed in a row, of any kind but a caller's bad data
     * or a conflict; a success resets it.  Past fail_threshold the database
     * counts as down even though it answers pings. */
    atomic_int failing;
    int fail_threshold;
    _Atomic int64_t last_failure_ms;
    char connect_timeout[16];
    char tcp_user_timeout[16];
    const char *keywords[KW_END + 1];
    const char *values[KW_END + 1];

    int size;
    int wait_ms;
    keel__breaker *breaker;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct keel__db_conn *conns;
    /* Two stacks of slot indexes, both guarded by mu: slots holding an open
     * connection, and slots whose connection has yet to be (re)made.  Open
     * ones are handed out first so the pool only grows under load. */
    int *idle;
    int nidle;
    int *empty;
    int nempty;

    /* Written under mu, read without it by keel__db_stats(). */
    atomic_int in_use;
    atomic_int idle_count;

    _Atomic uint64_t waits;
    _Atomic uint64_t wait_timeouts;
    _Atomic uint64_t connects;
    _Atomic uint64_t connect_failures;
    _Atomic uint64_t discarded;
};

/* Copies a libpq message into buf as one line: libpq ends its messages with
 * a newline and splits hints over several lines, which would break the
 * one-line-per-event log format. */
static const char *one_line(const char *msg, char *buf, size_t len)
{
    size_t n = 0;
    bool space = false;
    for (const char *p = msg ? msg : ""; *p != '\0' && n + 1 < len; p++) {
        if (*p == '\n' || *p == '\t' || *p == '\r' || *p == ' ') {
            space = n > 0;
            continue;
        }
        if (space && n + 2 < len)
            buf[n++] = ' ';
        space = false;
        buf[n++] = *p;
    }
    buf[n] = '\0';
    return buf;
}

static void count(_Atomic uint64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* ------------------------------------------------------------ statement cache */

static uint64_t hash_sql(const char *s)
{
    /* FNV-1a: the keys are our own SQL texts, not attacker input. */
    uint64_t h = 14695981039346656037ull;
    for (; *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

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

static void stmt_clear(keel__db_conn *c)
{
    for (int i = 0; i < STMT_TABLE_SIZE; i++) {
        free(c->stmts[i].sql);
        c->stmts[i].sql = NULL;
    }
    c->nstmts = 0;
}

/* ------------------------------------------------------------ connections */

/* Server notices go to the log instead of libpq's default, stderr.  An
 * error that arrives while no statement runs is passed here as well: that is
 * the server saying why it is about to close the connection. */
static void notice_receiver(void *arg, const PGresult *res)
{
    keel__db_conn *c = arg;
    const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    char buf[512];
    const char *msg = one_line(PQresultErrorMessage(res), buf, sizeof buf);
    if (severity != NULL && (strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0)) {
        c->doomed = true;
        keel__log(KEEL_LOG_INFO, "db", "server ended an idle connection: %s", msg);
        return;
    }
    bool warning = severity != NULL && strcmp(severity, "WARNING") == 0;
    keel__log(warning ? KEEL_LOG_WARN : KEEL_LOG_DEBUG, "db", "server notice: %s", msg);
}

static void conn_close(keel__db *db, keel__db_conn *c)
{
    if (c->pg != NULL) {
        PQfinish(c->pg);
        c->pg = NULL;
        count(&db->discarded);
    }
    stmt_clear(c);
    c->broken = false;
    c->doomed = false;
}

/* Opens c's connection; the pool mutex must not be held (this is network
 * I/O bounded by connect_timeout).  Feeds the breaker either way. */
static int conn_open(keel__db *db, keel__db_conn *c, char *err, size_t errlen)
{
    count(&db->connects);
    PGconn *pg = PQconnectdbParams(db->keywords, db->values, 1);
    if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
        char buf[512];
        one_line(pg ? PQerrorMessage(pg) : "out of memory", buf, sizeof buf);
        PQfinish(pg);
        count(&db->connect_failures);
        keel__breaker_failure(db->breaker, keel__now_ms());
        keel__log(KEEL_LOG_WARN, "db", "cannot connect to the database: %s", buf);
        keel__set_err(err, errlen, "database unavailable: cannot connect: %s", buf);
        return KEEL_EDB_UNAVAILABLE;
    }
    PQsetNoticeReceiver(pg, notice_receiver, c);
    if (db->pooler == KEEL__DB_POOLER_SESSION) {
        /* Session pooling hands this server session to us alone until we
         * disconnect, so session-wide settings stay ours. */
        PGresult *res = PQexec(pg, db->timeouts_sql);
        bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        char buf[512];
        if (!ok)
            one_line(PQerrorMessage(pg), buf, sizeof buf);
        PQclear(res);
        if (!ok) {
            PQfinish(pg);
            count(&db->connect_failures);
            keel__breaker_failure(db->breaker, keel__now_ms());
            keel__log(KEEL_LOG_WARN, "db", "cannot set the session timeouts: %s", buf);
            keel__set_err(err, errlen, "database unavailable: cannot set the timeouts: %s", buf);
            return KEEL_EDB_UNAVAILABLE;
        }
    }
    c->pg = pg;
    c->broken = false;
    c->doomed = false;
    c->checkout_ok = false;
    stmt_clear(c);
    keel__breaker_success(db->breaker);
    return 0;
}

/*
 * Whether an idle connection is still usable, found without a round trip.
 * When the server ends a session (pg_terminate_backend, a fast shutdown, a
 * crash restart) it sends a FATAL message and closes the socket; both wait
 * unread on our side until a statement is sent.  Reading and parsing what
 * is there now (PQconsumeInput only buffers; PQisBusy parses) hands the
 * FATAL to notice_receiver or lets libpq see the EOF, while nothing has
 * been sent and replacing the connection is certainly safe.
 */
static bool conn_alive(keel__db_conn *c)
{
    for (int round = 0; round < 4; round++) {
        if (c->doomed || PQstatus(c->pg) != CONNECTION_OK)
            return false;
        struct pollfd p = {.fd = PQsocket(c->pg), .events = POLLIN};
        int r = poll(&p, 1, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r == 0;
        if (PQconsumeInput(c->pg) == 0)
            return false;
        (void)PQisBusy(c->pg);
        /* Something harmless (a ParameterStatus, say) leaves the
         * connection usable; look again in case more arrived. */
    }
    return !c->doomed && PQstatus(c->pg) == CONNECTION_OK;
}

/* ------------------------------------------------------------ pool */

/* Frees the pool's own memory: what keel__db_new() allocated, once no
 * connection is open any more. */
static void pool_release(keel__db *db)
{
    keel__breaker_free(db->breaker);
    free(db->options);
    free(db->empty);
    free(db->idle);
    free(db->conns);
    free(db->conninfo);
    free(db);
}

int keel__db_new(const struct keel__db_conf *conf, keel__db **out)
{
    *out = NULL;
    if (conf == NULL || conf->pool_size < 1 || conf->pool_size > 1024 || conf->wait_ms < 0)
        return KEEL_EINVAL;

    const char *conninfo = conf->conninfo ? conf->conninfo : "";
    /* Parse the conninfo once here so that a typo fails at start-up with
     * libpq's message, and so that options the operator set in it are kept
     * (ours are appended, later -c settings win). */
    const char *user_options = NULL;
    PQconninfoOption *parsed = NULL;
    if (strchr(conninfo, '=') != NULL || strstr(conninfo, "://") != NULL) {
        char *perr = NULL;
        parsed = PQconninfoParse(conninfo, &perr);
        if (parsed == NULL) {
            char buf[512];
            keel__log(KEEL_LOG_ERROR, "db", "invalid database conninfo: %s",
                      one_line(perr ? perr : "out of memory", buf, sizeof buf));
            PQfreemem(perr);
            return perr ? KEEL_ECONFIG : KEEL_ENOMEM;
        }
        for (PQconninfoOption *o = parsed; o->keyword != NULL; o++)
            if (strcmp(o->keyword, "options") == 0 && o->val != NULL && o->val[0] != '\0')
                user_options = o->val;
    }

    keel__db *db = calloc(1, sizeof *db);
    int rc = KEEL_ENOMEM;
    if (db == NULL)
        goto fail;
    db->size = conf->pool_size;
    db->wait_ms = conf->wait_ms;
    db->conninfo = strdup(conninfo);
    db->conns = calloc((size_t)db->size, sizeof *db->conns);
    db->idle = calloc((size_t)db->size, sizeof *db->idle);
    db->empty = calloc((size_t)db->size, sizeof *db->empty);
    db->breaker = keel__breaker_new(conf->breaker_failures, conf->breaker_open_ms);
    int stmt_ms = conf->statement_timeout_ms > 0 ? conf->statement_timeout_ms : 0;
    int lock_ms = conf->lock_timeout_ms > 0 ? conf->lock_timeout_ms : 0;
    int idle_tx_ms = stmt_ms > IDLE_IN_TX_MIN_MS ? stmt_ms : IDLE_IN_TX_MIN_MS;
    size_t olen = (user_options ? strlen(user_options) : 0) + 160;
    db->options = malloc(olen);
    if (db->conninfo == NULL || db->conns == NULL || db->idle == NULL || db->empty == NULL ||
        db->breaker == NULL || db->options == NULL)
        goto fail;
    snprintf(
        db->options, olen,
        "%s%s-c statement_timeout=%d -c lock_timeout=%d -c idle_in_transaction_session_timeout=%d",
        user_options ? user_options : "", user_options ? " " : "", stmt_ms, lock_ms, idle_tx_ms);
    db->pooler = conf->pooler;
    db->fail_threshold = conf->breaker_failures > 0 ? conf->breaker_failures : 3;
    snprintf(db->timeouts_sql, sizeof db->timeouts_sql,
             "SET%s statement_timeout = %d; SET%s lock_timeout = %d; "
             "SET%s idle_in_transaction_session_timeout = %d",
             db->pooler == KEEL__DB_POOLER_TRANSACTION ? " LOCAL" : "", stmt_ms,
             db->pooler == KEEL__DB_POOLER_TRANSACTION ? " LOCAL" : "", lock_ms,
             db->pooler == KEEL__DB_POOLER_TRANSACTION ? " LOCAL" : "", idle_tx_ms);
    if (db->pooler != KEEL__DB_POOLER_NONE && user_options != NULL)
        keel__log(KEEL_LOG_WARN, "db",
                  "the database url sets \"options\", which PgBouncer refuses "
                  "(database.pooler is set)");
    snprintf(db->connect_timeout, sizeof db->connect_timeout, "%d",
             conf->connect_timeout_s > 0 ? conf->connect_timeout_s : 0);
    snprintf(db->tcp_user_timeout, sizeof db->tcp_user_timeout, "%d", TCP_USER_TIMEOUT_MS);

    /* libpq processes keywords in order and the last value wins, so the
     * defaults an operator may override come before the conninfo
     * (expand_dbname expands it in place) and the ones keel relies on come
     * after it. */
    static const char *const names[KW_END] = {
        [KW_APP] = "application_name",
        [KW_KA] = "keepalives",
        [KW_KA_IDLE] = "keepalives_idle",
        [KW_KA_INTERVAL] = "keepalives_interval",
        [KW_KA_COUNT] = "keepalives_count",
        [KW_DBNAME] = "dbname",
        [KW_CONNECT_TIMEOUT] = "connect_timeout",
        [KW_TCP_USER_TIMEOUT] = "tcp_user_timeout",
        [KW_OPTIONS] = "options",
    };
    for (int i = 0; i < KW_END; i++)
        db->keywords[i] = names[i];
    db->values[KW_APP] = "keeld";
    db->values[KW_KA] = "1";
    db->values[KW_KA_IDLE] = "10";
    db->values[KW_KA_INTERVAL] = "5";
    db->values[KW_KA_COUNT] = "3";
    db->values[KW_DBNAME] = db->conninfo;
    /* An empty value means "not set here" to libpq, so a zero timeout
     * leaves whatever the conninfo says. */
    db->values[KW_CONNECT_TIMEOUT] = conf->connect_timeout_s > 0 ? db->connect_timeout : "";
    db->values[KW_TCP_USER_TIMEOUT] = db->tcp_user_timeout;
    /* PgBouncer refuses a connection that sends "options"; an empty value
     * is "not set" to libpq. */
    db->values[KW_OPTIONS] = db->pooler == KEEL__DB_POOLER_NONE ? db->options : "";
    db->keywords[KW_END] = NULL;
    db->values[KW_END] = NULL;

    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0)
        goto fail;
    int crc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (crc == 0)
        crc = pthread_cond_init(&db->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (crc != 0)
        goto fail;
    if (pthread_mutex_init(&db->mu, NULL) != 0) {
        pthread_cond_destroy(&db->cv);
        goto fail;
    }

    /* Slots are pushed in reverse so that slot 0 is used first. */
    for (int i = 0; i < db->size; i++) {
        db->conns[i].slot = i;
        db->empty[i] = db->size - 1 - i;
    }
    db->nempty = db->size;
    atomic_init(&db->in_use, 0);
    atomic_init(&db->idle_count, 0);
    atomic_init(&db->failing, 0);
    PQconninfoFree(parsed);
    *out = db;
    return 0;

fail:
    PQconninfoFree(parsed);
    if (db != NULL)
        pool_release(db);
    return rc;
}

void keel__db_free(keel__db *db)
{
    if (db == NULL)
        return;
    if (atomic_load(&db->in_use) != 0)
        keel__log(KEEL_LOG_ERROR, "db", "pool freed with %d connections still checked out",
                  atomic_load(&db->in_use));
    for (int i = 0; i < db->size; i++)
        conn_close(db, &db->conns[i]);
    pthread_mutex_destroy(&db->mu);
    pthread_cond_destroy(&db->cv);
    pool_release(db);
}

static struct timespec deadline_after(int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

static void publish_counts_locked(keel__db *db)
{
    atomic_store(&db->idle_count, db->nidle);
    atomic_store(&db->in_use, db->size - db->nidle - db->nempty);
}

/* Puts a slot back on the right stack and wakes one waiter. */
static void slot_return(keel__db *db, keel__db_conn *c)
{
    pthread_mutex_lock(&db->mu);
    if (c->pg != NULL)
        db->idle[db->nidle++] = c->slot;
    else
        db->empty[db->nempty++] = c->slot;
    publish_counts_locked(db);
    pthread_cond_signal(&db->cv);
    pthread_mutex_unlock(&db->mu);
}

int keel__db_acquire(keel__db *db, keel__db_conn **out, char *err, size_t errlen)
{
    *out = NULL;
    /* The breaker is asked first so that, while it is open, a caller is
     * turned away without waiting for a slot or touching the network. */
    if (!keel__breaker_allow(db->breaker, keel__now_ms())) {
        keel__set_err(err, errlen,
                      "database unavailable: circuit breaker %s after repeated failures",
                      keel__breaker_state_name(keel__breaker_state(db->breaker)));
        return KEEL_EDB_UNAVAILABLE;
    }

    pthread_mutex_lock(&db->mu);
    if (db->nidle == 0 && db->nempty == 0) {
        count(&db->waits);
        struct timespec until = deadline_after(db->wait_ms);
        while (db->nidle == 0 && db->nempty == 0) {
            int rc = pthread_cond_timedwait(&db->cv, &db->mu, &until);
            if (rc == ETIMEDOUT && db->nidle == 0 && db->nempty == 0) {
                pthread_mutex_unlock(&db->mu);
                count(&db->wait_timeouts);
                keel__set_err(
                    err, errlen,
                    "database unavailable: no connection became free within %d ms (all %d in use)",
                    db->wait_ms, db->size);
                return KEEL_EDB_UNAVAILABLE;
            }
        }
    }
    int slot = db->nidle > 0 ? db->idle[--db->nidle] : db->empty[--db->nempty];
    publish_counts_locked(db);
    pthread_mutex_unlock(&db->mu);

    keel__db_conn *c = &db->conns[slot];
    c->checkout_ok = false;
    if (c->pg != NULL && !conn_alive(c)) {
        keel__log(KEEL_LOG_INFO, "db", "pooled connection was closed by the server; reconnecting");
        conn_close(db, c);
    }
    if (c->pg == NULL) {
        int rc = conn_open(db, c, err, errlen);
        if (rc != 0) {
            slot_return(db, c);
            return rc;
        }
    }
    *out = c;
    return 0;
}

/* Ends an open transaction so the connection can be pooled; false if that
 * did not leave it idle. */
static bool conn_rollback(keel__db_conn *c)
{
    PGresult *res = PQexec(c->pg, "ROLLBACK");
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok && PQtransactionStatus(c->pg) == PQTRANS_IDLE;
}

void keel__db_release(keel__db *db, keel__db_conn *c)
{
    if (c == NULL)
        return;
    bool keep = false;
    if (c->pg != NULL && !c->broken && !c->doomed && PQstatus(c->pg) == CONNECTION_OK) {
        switch (PQtransactionStatus(c->pg)) {
        case PQTRANS_IDLE:
            keep = true;
            break;
        case PQTRANS_INTRANS:
        case PQTRANS_INERROR:
            keep = conn_rollback(c);
            if (!keep)
                keel__log(KEEL_LOG_WARN, "db",
                          "rollback on release failed; closing the connection");
            break;
        default:
            /* A command still running, or a state libpq cannot tell:
             * nothing safe can be sent on it. */
            break;
        }
    }
    if (!keep)
        conn_close(db, c);
    c->checkout_ok = false;
    slot_return(db, c);
}

PGconn *keel__db_conn_pg(keel__db_conn *c)
{
    return c ? c->pg : NULL;
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
        primary = one_line(PQerrorMessage(c->pg), msg, sizeof msg);
    /* A schema change under a prepared statement (columns added to a table
     * it selects *) fails it with this message; the statement did not run. */
    a->plan_changed = keel__sqlstate_is(sqlstate, "0A000") &&
                      strstr(primary, "cached plan") != NULL;
    if (sqlstate != NULL)
        keel__set_err(err, errlen, "%s (SQLSTATE %s)", primary, sqlstate);
    else
        keel__set_err(err, errlen, "%s", primary);

    char sqlbuf[SQL_LOG_MAX + 1];
    one_line(sql, sqlbuf, sizeof sqlbuf);
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
        if (!c->broken && PQtransactionStatus(c->pg) != PQTRANS_IDLE && !conn_rollback(c))
            c->broken = true;
        return rc;
    }
    rc = run_once(c, sql, h, nparams, params, true, out, a, err, errlen);
    if (rc != 0) {
        if (!c->broken && !conn_rollback(c))
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
        if (!c->broken && PQtransactionStatus(c->pg) != PQTRANS_IDLE && !conn_rollback(c))
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

    uint64_t h = hash_sql(sql);
    bool outside_tx = PQtransactionStatus(c->pg) == PQTRANS_IDLE;
    struct attempt a;
    int rc;
    if (outside_tx && !c->checkout_ok && !conn_alive(c)) {
        /* Found dead before anything was sent: the connection can be
         * replaced with no doubt about what ran. */
        keel__log(KEEL_LOG_INFO, "db", "connection was closed by the server; reconnecting");
        conn_close(db, c);
        rc = conn_open(db, c, err, errlen);
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
            conn_close(db, c);
            rc = conn_open(db, c, err, errlen);
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

/* ------------------------------------------------------------ health */

bool keel__db_up(const keel__db *db)
{
    /* Half-open is still down: requests are refused until the probe succeeds.
     * A server that answers pings while every statement fails (a broken
     * pooler, a revoked grant) is down too: what matters is the queries. */
    if (keel__breaker_state(db->breaker) != KEEL__BREAKER_CLOSED)
        return false;
    /* Without traffic nothing would reset the count, and a load balancer
     * that stopped sending requests because of it would never see "up"
     * again: failures older than FAILING_FOR_MS no longer count. */
    return atomic_load(&db->failing) < db->fail_threshold ||
           keel__now_ms() - atomic_load(&db->last_failure_ms) > FAILING_FOR_MS;
}

void keel__db_tick(keel__db *db)
{
    if (!keel__breaker_try_probe(db->breaker, keel__now_ms()))
        return;
    PGPing ping = PQpingParams(db->keywords, db->values, 1);
    if (ping == PQPING_OK) {
        keel__log(KEEL_LOG_INFO, "db", "database answers again");
        keel__breaker_success(db->breaker);
    } else {
        keel__breaker_failure(db->breaker, keel__now_ms());
    }
}

void keel__db_stats(const keel__db *db, struct keel__db_stats *out)
{
    memset(out, 0, sizeof *out);
    out->size = db->size;
    out->in_use = atomic_load(&db->in_use);
    out->idle = atomic_load(&db->idle_count);
    out->waits = atomic_load(&db->waits);
    out->wait_timeouts = atomic_load(&db->wait_timeouts);
    out->connects = atomic_load(&db->connects);
    out->connect_failures = atomic_load(&db->connect_failures);
    out->discarded = atomic_load(&db->discarded);
    out->breaker_state = keel__breaker_state(db->breaker);
    out->breaker_to_open = keel__breaker_transitions(db->breaker, KEEL__BREAKER_OPEN);
    out->breaker_to_half_open = keel__breaker_transitions(db->breaker, KEEL__BREAKER_HALF_OPEN);
    out->breaker_to_closed = keel__breaker_transitions(db->breaker, KEEL__BREAKER_CLOSED);
}

void keel__db_note_unreachable(keel__db *db)
{
    /* A failed start-up check is proof enough: open the breaker now instead
     * of after `threshold` failed requests, so /health says "down" from the
     * first request and the ticker's probes close it when the server is back. */
    for (int i = 0; i < 1000 && keel__breaker_state(db->breaker) == KEEL__BREAKER_CLOSED; i++)
        keel__breaker_failure(db->breaker, keel__now_ms());
}
