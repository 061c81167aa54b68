/*
 * The pool's internals, shared by the files of core/data/ that implement
 * keel__db: db.c (connections, checkout, health) and exec.c (statements).
 * Nothing outside core/data/ includes this.
 */
#ifndef KEEL_CORE_DATA_POOL_H
#define KEEL_CORE_DATA_POOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "data/breaker.h"
/* include-ok: pool.h is the private half of db.c and exec.c, not a separate unit */
#include "data/db.h"

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

struct keel__db_waiter;

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
    /* Callers waiting for a slot, oldest first, under mu: a returned slot
     * goes to the oldest directly, and no newcomer takes a slot while
     * anyone waits, so a wait is bounded by the ones queued before it (the
     * tail of a queued request's latency, docs/performance.md round 10). */
    struct keel__db_waiter *waiters, *waiters_tail;
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

/* Copies a libpq message into buf as one line (libpq ends messages with a
 * newline and splits hints over lines); returns buf. */
const char *keel__db_one_line(const char *msg, char *buf, size_t len);
/* A relaxed increment of one of the pool's counters. */
void keel__db_count(_Atomic uint64_t *c);
/* Opens c's connection (network I/O: the pool lock must not be held); feeds
 * the breaker either way.  0 or KEEL_EDB_UNAVAILABLE with the reason. */
int keel__db_conn_open(keel__db *db, keel__db_conn *c, char *err, size_t errlen);
/* Closes c's connection and forgets its statements. */
void keel__db_conn_close(keel__db *db, keel__db_conn *c);
/* Whether an idle connection is still usable, found without a round trip. */
bool keel__db_conn_alive(keel__db_conn *c);
/* Ends an open transaction so the connection can be pooled; false if that
 * did not leave it idle. */
bool keel__db_conn_rollback(keel__db_conn *c);
/* Forgets every prepared statement of c (exec.c). */
void keel__db_stmt_clear(keel__db_conn *c);

#endif
