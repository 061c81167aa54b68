/*
 * The PostgreSQL connection pool (libpq) and its circuit breaker.
 *
 * A fixed-size pool of connections, each set up with connect_timeout, TCP
 * keepalives, tcp_user_timeout, statement_timeout and lock_timeout.  Callers
 * wait at most wait_ms for a connection.  A connection goes back to the idle
 * list only when it is idle outside a transaction; otherwise it is rolled
 * back, or closed and replaced lazily.  Statements are prepared per
 * connection the first time their SQL text is seen there.  Every failure is
 * classified by SQLSTATE (keel__db_classify) and *unavailable* failures feed
 * the breaker; while the breaker is open, acquire fails in microseconds.
 */
#ifndef KEEL_CORE_DATA_DB_H
#define KEEL_CORE_DATA_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include <keel/common.h>

#include "data/sqlstate.h"

typedef struct keel__db keel__db;
typedef struct keel__db_conn keel__db_conn;

/* What stands between keel and PostgreSQL.  PgBouncer refuses the startup
 * "options" parameter, so behind it the timeouts are sent as SET statements:
 * once per connection in session pooling, and in transaction pooling as SET
 * LOCAL at the start of every transaction (a lone statement gets a short
 * transaction of its own), where named prepared statements are not used
 * either, since the next transaction may run on another server connection. */
enum keel__db_pooler {
    KEEL__DB_POOLER_NONE = 0,
    KEEL__DB_POOLER_SESSION = 1,
    KEEL__DB_POOLER_TRANSACTION = 2,
};

struct keel__db_conf {
    const char *conninfo; /* libpq URI or key=value string */
    int pooler;           /* enum keel__db_pooler */
    int pool_size;
    int wait_ms;
    int connect_timeout_s;
    int statement_timeout_ms;
    int lock_timeout_ms;
    int breaker_failures;
    int breaker_open_ms;
};

/* Creates the pool; connects lazily, so a down database does not fail this.
 * conf strings are copied. */
int keel__db_new(const struct keel__db_conf *conf, keel__db **out) KEEL_WARN_UNUSED;
/* Closes every connection.  No connection may be checked out. */
void keel__db_free(keel__db *db);

/*
 * Checks out a connection.  Returns 0, or KEEL_EDB_UNAVAILABLE when the
 * breaker is open, no connection can be made, or none became free within
 * wait_ms (err then says which).
 */
int keel__db_acquire(keel__db *db, keel__db_conn **out, char *err, size_t errlen) KEEL_WARN_UNUSED;
/* Returns a connection (rolling back or discarding it as needed). */
void keel__db_release(keel__db *db, keel__db_conn *conn);

/*
 * Runs one parameterised statement.  On success *out is a PGresult the
 * caller PQclear()s (PGRES_TUPLES_OK or PGRES_COMMAND_OK); with out == NULL
 * the result is cleared before returning.  On failure
 * returns a KEEL_EDB_* code, writes the server's message into err, feeds the
 * breaker, and marks a broken connection so release replaces it.
 */
int keel__db_exec(keel__db *db, keel__db_conn *conn, const char *sql, int nparams,
                  const char *const *params, PGresult **out, char *err,
                  size_t errlen) KEEL_WARN_UNUSED;

/* The libpq connection behind conn, for diagnostics and tests (e.g.
 * PQtransactionStatus).  Statements sent on it directly bypass the error
 * classification, the breaker and the broken-connection bookkeeping. */
PGconn *keel__db_conn_pg(keel__db_conn *conn);

/* True while the breaker is closed (half-open still counts as down).  Never
 * touches the network. */
bool keel__db_up(const keel__db *db);
/* Runs one half-open probe now if the breaker is open and due (PQping); used
 * by a background timer so the breaker closes without traffic. */
void keel__db_tick(keel__db *db);

/* Opens the breaker at once (start-up found the server unreachable). */
void keel__db_note_unreachable(keel__db *db);

struct keel__db_stats {
    int size, in_use, idle;
    uint64_t waits, wait_timeouts, connects, connect_failures, discarded;
    int breaker_state;
    uint64_t breaker_to_open, breaker_to_half_open, breaker_to_closed;
};
void keel__db_stats(const keel__db *db, struct keel__db_stats *out);

#endif
