#include "config.h"

#include "data/db_conn.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include <keel/error.h>

#include "util/log.h"
#include "util/time.h"

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
    keel__stmt_clear(&c->stmts);
    c->broken = false;
    c->doomed = false;
}

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
    keel__stmt_clear(&c->stmts);
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

bool keel__db_conn_rollback(keel__db_conn *c)
{
    PGresult *res = PQexec(c->pg, "ROLLBACK");
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok && PQtransactionStatus(c->pg) == PQTRANS_IDLE;
}
