/*
 * The database pool's insides, shared by its files: db.c (the pool:
 * checkout, release, health), db_conn.c (one connection: open, close,
 * liveness), db_exec.c (running a statement), db_error.c (classifying a
 * failure) and db_stmt.c (the statement cache).  Nothing outside core/data/
 * includes this.
 */
#ifndef KEEL_CORE_DATA_DB_CONN_H
#define KEEL_CORE_DATA_DB_CONN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "data/breaker.h"
#include "data/db.h"
#include "data/db_stmt.h"

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
    struct keel__stmt_cache stmts;
};

/* The connection parameters handed to libpq, by index into keywords/values. */
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

static inline void keel__db_count(_Atomic uint64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* Copies a libpq message (NULL: "") into buf as one line and returns buf. */
const char *keel__db_one_line(const char *msg, char *buf, size_t len);

/* Opens c's connection; the pool mutex must not be held (this is network
 * I/O bounded by connect_timeout).  Feeds the breaker either way.  0 or
 * KEEL_EDB_UNAVAILABLE (err says why). */
int keel__db_conn_open(keel__db *db, keel__db_conn *c, char *err, size_t errlen);
/* Closes c's connection (if open) and empties its statement cache. */
void keel__db_conn_close(keel__db *db, keel__db_conn *c);
/* Whether an idle connection is still usable, found without a round trip. */
bool keel__db_conn_alive(keel__db_conn *c);
/* Ends an open transaction so the connection can be pooled; false if that
 * did not leave it idle. */
bool keel__db_conn_rollback(keel__db_conn *c);

#endif
