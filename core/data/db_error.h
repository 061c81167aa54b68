/*
 * What a database failure means.  keel__db_classify (db.h) maps a SQLSTATE
 * to a KEEL_EDB_* code: unavailable (may well succeed later: connection
 * loss, overload, timeouts, the server ending the session), conflict,
 * the caller's bad data, or a bug.  keel__db_failed applies it to a failed
 * result and decides what the failure says about the connection and about
 * whether the statement ran, which the retry rule in db_exec.c needs.
 */
#ifndef KEEL_CORE_DATA_DB_ERROR_H
#define KEEL_CORE_DATA_DB_ERROR_H

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

#include "data/db_conn.h"

/* What one failed attempt at a statement proves. */
struct keel__db_attempt {
    bool before_execution; /* the failure proves the statement did not run */
    bool plan_changed;     /* a cached plan no longer fits the schema */
};

/*
 * Classifies a failed result (NULL: nothing could be sent), marks the
 * connection broken when it is, records in a what the failure proves,
 * writes the server's message into err, logs it with sql, and consumes res.
 * Returns the KEEL_EDB_* code.
 */
int keel__db_failed(keel__db_conn *c, PGresult *res, const char *sql, struct keel__db_attempt *a,
                    char *err, size_t errlen);

#endif
