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
#include "util/blocking.h"
#include "util/log.h"
#include "util/time.h"

#include "data/pool.h"
/* Copies a libpq message into buf as one line: libpq ends its messages with
 * a newline and splits hints over several lines, which would break the
 * one-line-per-event log format. */
const char *keel__db_one_line(const char *msg, char *buf, size_t len)
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

void keel__db_count(_Atomic uint64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
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
    const char *msg = keel__db_one_line(PQresultErrorMessage(res), buf, sizeof buf);
    if (severity != NULL && (strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0)) {
        c->doomed = true;
        keel__log(KEEL_LOG_INFO, "db", "server ended an idle connection: %s", msg);
        return;
    }
    bool warning = severity != NULL && strcmp(severity, "WARNING") == 0;
    keel__log(warning ? KEEL_LOG_WARN : KEEL_LOG_DEBUG, "db", "server notice: %s", msg);
}

void keel__db_conn_close(keel__db *db, keel__db_conn *c)
{
    if (c->pg != NULL) {
        PQfinish(c->pg);
        c->pg = NULL;
        keel__db_count(&db->discarded);
    }
    keel__db_stmt_clear(c);
    c->broken = false;
    c->doomed = false;
}

/* Opens c's connection; the pool mutex must not be held (this is network
 * I/O bounded by connect_timeout).  Feeds the breaker either way. */
int keel__db_conn_open(keel__db *db, keel__db_conn *c, char *err, size_t errlen)
{
    keel__db_count(&db->connects);
    PGconn *pg = PQconnectdbParams(db->keywords, db->values, 1);
    if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
        char buf[512];
        keel__db_one_line(pg ? PQerrorMessage(pg) : "out of memory", buf, sizeof buf);
        PQfinish(pg);
        keel__db_count(&db->connect_failures);
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
            keel__db_one_line(PQerrorMessage(pg), buf, sizeof buf);
        PQclear(res);
        if (!ok) {
            PQfinish(pg);
            keel__db_count(&db->connect_failures);
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
    keel__db_stmt_clear(c);
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
bool keel__db_conn_alive(keel__db_conn *c)
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
                      keel__db_one_line(perr ? perr : "out of memory", buf, sizeof buf));
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

    if (pthread_mutex_init(&db->mu, NULL) != 0)
        goto fail;

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
        keel__db_conn_close(db, &db->conns[i]);
    pthread_mutex_destroy(&db->mu);
    pool_release(db);
}

static void publish_counts_locked(keel__db *db)
{
    atomic_store(&db->idle_count, db->nidle);
    atomic_store(&db->in_use, db->size - db->nidle - db->nempty);
}

/* One caller waiting for a slot (keel__db_acquire).  A thread waits for one
 * slot at a time, so each has one record, with a condition variable on the
 * monotonic clock made the first time it waits. */
struct keel__db_waiter {
    pthread_cond_t cv;
    int slot; /* -1 until slot_return hands it one */
    struct keel__db_waiter *next;
};

static _Thread_local struct keel__db_waiter thread_waiter;
static _Thread_local bool thread_waiter_ready;

static struct keel__db_waiter *my_waiter(void)
{
    if (!thread_waiter_ready) {
        pthread_condattr_t ca;
        if (pthread_condattr_init(&ca) != 0)
            return NULL;
        int rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        if (rc == 0)
            rc = pthread_cond_init(&thread_waiter.cv, &ca);
        pthread_condattr_destroy(&ca);
        if (rc != 0)
            return NULL;
        thread_waiter_ready = true;
    }
    return &thread_waiter;
}

/* Hands the slot to the oldest waiter, or puts it back on the right stack
 * when nobody waits. */
static void slot_return(keel__db *db, keel__db_conn *c)
{
    pthread_mutex_lock(&db->mu);
    struct keel__db_waiter *w = db->waiters;
    if (w != NULL) {
        db->waiters = w->next;
        if (db->waiters == NULL)
            db->waiters_tail = NULL;
        w->slot = c->slot;
        pthread_cond_signal(&w->cv);
    } else if (c->pg != NULL) {
        db->idle[db->nidle++] = c->slot;
    } else {
        db->empty[db->nempty++] = c->slot;
    }
    publish_counts_locked(db);
    pthread_mutex_unlock(&db->mu);
}

/* Takes w out of the queue (it gave up waiting). */
static void waiter_unlink_locked(keel__db *db, struct keel__db_waiter *w)
{
    struct keel__db_waiter *prev = NULL;
    for (struct keel__db_waiter *p = db->waiters; p != NULL; prev = p, p = p->next) {
        if (p != w)
            continue;
        if (prev != NULL)
            prev->next = w->next;
        else
            db->waiters = w->next;
        if (db->waiters_tail == w)
            db->waiters_tail = prev;
        return;
    }
}

/* Waits, under mu, for slot_return to hand this caller a slot: the slot,
 * or -1 when wait_ms passed first. */
static int slot_wait_locked(keel__db *db)
{
    struct keel__db_waiter *w = my_waiter();
    if (w == NULL)
        return -1;
    w->slot = -1;
    w->next = NULL;
    if (db->waiters_tail != NULL)
        db->waiters_tail->next = w;
    else
        db->waiters = w;
    db->waiters_tail = w;
    struct timespec until = keel__timespec_after(CLOCK_MONOTONIC, db->wait_ms);
    while (w->slot < 0) {
        int rc = pthread_cond_timedwait(&w->cv, &db->mu, &until);
        if (rc == ETIMEDOUT && w->slot < 0) {
            waiter_unlink_locked(db, w);
            break;
        }
    }
    return w->slot;
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
    int slot;
    if (db->waiters == NULL && (db->nidle > 0 || db->nempty > 0)) {
        slot = db->nidle > 0 ? db->idle[--db->nidle] : db->empty[--db->nempty];
        publish_counts_locked(db);
    } else {
        /* Behind the ones already waiting, never past them. */
        keel__db_count(&db->waits);
        keel__blocking_enter();
        slot = slot_wait_locked(db);
        keel__blocking_leave();
        if (slot < 0) {
            pthread_mutex_unlock(&db->mu);
            keel__db_count(&db->wait_timeouts);
            keel__set_err(
                err, errlen,
                "database unavailable: no connection became free within %d ms (all %d in use)",
                db->wait_ms, db->size);
            return KEEL_EDB_UNAVAILABLE;
        }
    }
    pthread_mutex_unlock(&db->mu);

    keel__db_conn *c = &db->conns[slot];
    c->checkout_ok = false;
    if (c->pg != NULL && !keel__db_conn_alive(c)) {
        keel__log(KEEL_LOG_INFO, "db", "pooled connection was closed by the server; reconnecting");
        keel__db_conn_close(db, c);
    }
    if (c->pg == NULL) {
        int rc = keel__db_conn_open(db, c, err, errlen);
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
bool keel__db_conn_rollback(keel__db_conn *c)
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
            keep = keel__db_conn_rollback(c);
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
        keel__db_conn_close(db, c);
    c->checkout_ok = false;
    slot_return(db, c);
}

PGconn *keel__db_conn_pg(keel__db_conn *c)
{
    return c ? c->pg : NULL;
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
