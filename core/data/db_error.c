#include "config.h"

#include "data/db_error.h"

#include <stdio.h>
#include <string.h>

#include <keel/error.h>

#include "util/log.h"

/* How much of a failed statement's SQL the log shows. */
#define SQL_LOG_MAX 200

static bool sqlstate_is(const char *s, const char *code)
{
    return s != NULL && strcmp(s, code) == 0;
}

static bool sqlstate_class(const char *s, const char *cls)
{
    return s != NULL && s[0] == cls[0] && s[1] == cls[1];
}

/* The server ended the session: administrator command (57P01), crash of
 * another backend (57P02), or it cannot accept connections now (57P03). */
static bool sqlstate_session_over(const char *s)
{
    return sqlstate_is(s, "57P01") || sqlstate_is(s, "57P02") || sqlstate_is(s, "57P03");
}

int keel__db_classify(const char *s)
{
    if (s == NULL)
        return KEEL_EDB_UNAVAILABLE;
    if (strlen(s) != 5)
        return KEEL_EDB_BUG;
    /* Unavailable: the statement may well succeed later, against a database
     * that is reachable and not overloaded.  Timeouts belong here because
     * they mean "too slow now", not "wrong". */
    if (sqlstate_class(s, "08") || sqlstate_class(s, "53") || sqlstate_session_over(s) ||
        sqlstate_is(s, "57014") || sqlstate_is(s, "55P03"))
        return KEEL_EDB_UNAVAILABLE;
    if (sqlstate_class(s, "23") || sqlstate_is(s, "40001") || sqlstate_is(s, "40P01"))
        return KEEL_EDB_CONFLICT;
    if (sqlstate_class(s, "22") || sqlstate_is(s, "42P02"))
        return KEEL_EDB_BADREQ;
    return KEEL_EDB_BUG;
}
int keel__db_failed(keel__db_conn *c, PGresult *res, const char *sql, struct keel__db_attempt *a,
                    char *err, size_t errlen)
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
    if (bad || sqlstate_session_over(sqlstate) || sqlstate_class(sqlstate, "08") ||
        PQtransactionStatus(c->pg) == PQTRANS_ACTIVE)
        c->broken = true;
    if (sqlstate_session_over(sqlstate))
        a->before_execution = true;

    char msg[512];
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (primary == NULL)
        primary = keel__db_one_line(PQerrorMessage(c->pg), msg, sizeof msg);
    /* A schema change under a prepared statement (columns added to a table
     * it selects *) fails it with this message; the statement did not run. */
    a->plan_changed = sqlstate_is(sqlstate, "0A000") && strstr(primary, "cached plan") != NULL;
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
