#include "config.h"

#include "identity/notify.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include <keel/error.h>

#include "util/log.h"
#include "util/time.h"

#define TAG "notify"
/* How often the thread looks at its stop flag while the socket is quiet. */
#define POLL_MS 250
#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 2000
/* A quiet connection is checked with a round trip this often, so that a
 * server that vanished without closing the socket is noticed. */
#define CHECK_EVERY_MS 10000

struct keel__notify {
    char *conninfo;
    keel__usersync *us;
    pthread_t thread;
    atomic_bool stop;
    atomic_bool listening;
};

/* Sleeps ms in POLL_MS steps; false when asked to stop meanwhile. */
static bool pause_ms(keel__notify *n, int ms)
{
    while (ms > 0 && !atomic_load(&n->stop)) {
        int step = ms < POLL_MS ? ms : POLL_MS;
        struct timespec ts = {step / 1000, (long)(step % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        ms -= step;
    }
    return !atomic_load(&n->stop);
}

/* libpq's message without its trailing newline, for one-line logs. */
static const char *pq_message(PGconn *pg, char *buf, size_t len)
{
    const char *m = pg ? PQerrorMessage(pg) : "out of memory";
    size_t n = 0;
    for (; m[n] != '\0' && n + 1 < len; n++)
        buf[n] = m[n] == '\n' ? ' ' : m[n];
    while (n > 0 && buf[n - 1] == ' ')
        n--;
    buf[n] = '\0';
    return buf;
}

/* quiet: the previous attempt failed too, so this one is logged at debug. */
static PGconn *listen_connect(keel__notify *n, bool quiet)
{
    /* The operator's conninfo comes last so it may override these. */
    const char *const keywords[] = {
        "application_name",    "connect_timeout",  "keepalives", "keepalives_idle",
        "keepalives_interval", "keepalives_count", "dbname",     NULL};
    const char *const values[] = {"keeld-listen", "3", "1", "5", "2", "3", n->conninfo, NULL};
    PGconn *pg = PQconnectdbParams(keywords, values, 1);
    char buf[512];
    if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
        keel__log(quiet ? KEEL_LOG_DEBUG : KEEL_LOG_WARN, TAG,
                  "cannot connect the LISTEN connection (user changes made elsewhere reach "
                  "this instance only after usersync.ttl_s until it is back): %s",
                  pq_message(pg, buf, sizeof buf));
        PQfinish(pg);
        return NULL;
    }
    PGresult *res = PQexec(pg, "LISTEN " KEEL__NOTIFY_CHANNEL);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!ok) {
        keel__log(quiet ? KEEL_LOG_DEBUG : KEEL_LOG_WARN, TAG, "LISTEN failed: %s",
                  pq_message(pg, buf, sizeof buf));
        PQfinish(pg);
        return NULL;
    }
    return pg;
}

/* Applies every notification libpq has parsed. */
static void drain(keel__notify *n, PGconn *pg)
{
    PGnotify *note;
    while ((note = PQnotifies(pg)) != NULL) {
        const char *who = note->extra ? note->extra : "";
        int dropped = keel__usersync_evict(n->us, who);
        keel__log(KEEL_LOG_INFO, TAG, "user %s changed elsewhere: dropped %d cache entr%s", who,
                  dropped, dropped == 1 ? "y" : "ies");
        PQfreemem(note);
    }
}

/* Serves one connection until it breaks or stop is set. */
static void serve(keel__notify *n, PGconn *pg)
{
    int64_t last_check = keel__now_ms();
    while (!atomic_load(&n->stop)) {
        struct pollfd p = {.fd = PQsocket(pg), .events = POLLIN};
        int r = poll(&p, 1, POLL_MS);
        if (r < 0 && errno != EINTR)
            return;
        if (r > 0 && PQconsumeInput(pg) == 0)
            return;
        drain(n, pg);
        if (PQstatus(pg) != CONNECTION_OK)
            return;
        if (keel__now_ms() - last_check >= CHECK_EVERY_MS) {
            PGresult *res = PQexec(pg, "SELECT 1");
            bool ok = PQresultStatus(res) == PGRES_TUPLES_OK;
            PQclear(res);
            if (!ok)
                return;
            drain(n, pg);
            last_check = keel__now_ms();
        }
    }
}

static void *listener(void *arg)
{
    keel__notify *n = arg;
    int retry_ms = RETRY_MIN_MS;
    bool lost = false, failing = false;
    while (!atomic_load(&n->stop)) {
        PGconn *pg = listen_connect(n, failing);
        if (pg == NULL) {
            lost = true;
            failing = true;
            if (!pause_ms(n, retry_ms))
                break;
            retry_ms = retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : retry_ms * 2;
            continue;
        }
        retry_ms = RETRY_MIN_MS;
        failing = false;
        atomic_store(&n->listening, true);
        if (lost) {
            /* Whatever changed while nobody listened went unheard. */
            int dropped = keel__usersync_flush(n->us);
            keel__log(KEEL_LOG_WARN, TAG,
                      "listening again after an outage: flushed %d user-cache entr%s", dropped,
                      dropped == 1 ? "y" : "ies");
        } else {
            keel__log(KEEL_LOG_INFO, TAG, "listening for user changes on " KEEL__NOTIFY_CHANNEL);
        }
        serve(n, pg);
        atomic_store(&n->listening, false);
        PQfinish(pg);
        if (!atomic_load(&n->stop)) {
            keel__log(KEEL_LOG_WARN, TAG, "the LISTEN connection was lost; reconnecting");
            lost = true;
        }
    }
    return NULL;
}

int keel__notify_start(const char *conninfo, keel__usersync *us, keel__notify **out)
{
    *out = NULL;
    if (conninfo == NULL || us == NULL)
        return KEEL_EINVAL;
    keel__notify *n = calloc(1, sizeof *n);
    if (n == NULL)
        return KEEL_ENOMEM;
    n->conninfo = strdup(conninfo);
    n->us = us;
    atomic_init(&n->stop, false);
    atomic_init(&n->listening, false);
    if (n->conninfo == NULL || pthread_create(&n->thread, NULL, listener, n) != 0) {
        free(n->conninfo);
        free(n);
        return KEEL_ENOMEM;
    }
    *out = n;
    return 0;
}

void keel__notify_stop(keel__notify *n)
{
    if (n == NULL)
        return;
    atomic_store(&n->stop, true);
    pthread_join(n->thread, NULL);
    free(n->conninfo);
    free(n);
}
