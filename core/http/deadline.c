#include "config.h"

#include "http/deadline.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <keel/error.h>

#include "http/clientaddr.h"
#include "util/log.h"
#include "util/time.h"

#define NS_PER_S 1000000000LL
/* How often the sweeper looks.  The bound is in whole seconds, so a quarter
 * of a second late is within its resolution. */
#define SWEEP_MS 250

/* One watched connection.  deadline is written by the worker that owns the
 * connection and read by the sweeper, hence atomic; 0 = not receiving. */
struct watch {
    struct watch *prev, *next;
    MHD_socket fd;
    int64_t bound_ns;
    atomic_llong deadline;
    /* Still waiting for its first request: such a connection may be
     * closed to make room when the table is full (under the lock). */
    atomic_bool first;
    bool gone_once;                       /* the sweeper saw the client gone once (sweeper only) */
    char peer[KEEL__CLIENT_ADDR_MAX + 1]; /* keel__conn_addr_text() */
};

struct keel__deadlines {
    int64_t bound_ns;
    pthread_mutex_t mu; /* the list, and shutdown() of its sockets */
    pthread_cond_t wake;
    bool stopping;
    struct watch *head;
    long count;
    atomic_ullong closed;
    /* Room keeping: at evict_at watched connections (0 = off), a new one
     * closes the connection that has waited longest for its first request.
     * evicted counts them; the sweeper logs them in batches. */
    long evict_at;
    atomic_ullong evicted;
    unsigned evicted_unlogged;
    char evicted_last[INET6_ADDRSTRLEN];
    pthread_t sweeper;
};

/* True when the client has closed its end (or reset it) and libmicrohttpd
 * has already read everything before that.  Peeking consumes nothing, so
 * it cannot disturb the worker that owns the socket. */
static bool peer_gone(MHD_socket fd)
{
    char c;
    ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r == 0)
        return true;
    return r < 0 && (errno == ECONNRESET || errno == ENOTCONN || errno == EPIPE);
}

static void sweep(keel__deadlines *d)
{
    int64_t now = keel__monotonic_ns();
    unsigned n = 0, gone = 0;
    char last[INET6_ADDRSTRLEN] = "";
    for (struct watch *w = d->head; w != NULL; w = w->next) {
        long long dl = atomic_load_explicit(&w->deadline, memory_order_relaxed);
        if (dl == 0) {
            w->gone_once = false;
            continue;
        }
        bool late = dl <= now;
        if (!late) {
            /* A client may half-close right after a complete request; the
             * worker then reaches the final call within microseconds.  So
             * a client counts as gone only when two sweeps in a row find
             * it gone with the request still incomplete. */
            bool gone_now = peer_gone(w->fd);
            bool confirmed = gone_now && w->gone_once;
            w->gone_once = gone_now;
            if (!confirmed)
                continue;
        }
        /* Once is enough: MHD reports the connection closed soon after. */
        atomic_store_explicit(&w->deadline, 0, memory_order_relaxed);
        if (shutdown(w->fd, SHUT_RDWR) != 0 && errno != ENOTCONN)
            continue;
        if (!late) {
            gone++;
            continue;
        }
        n++;
        memcpy(last, w->peer, sizeof last);
    }
    if (gone > 0)
        keel__log(KEEL_LOG_DEBUG, "core", "closed %u connection(s) whose client left mid-request",
                  gone);
    if (d->evicted_unlogged > 0) {
        keel__log(KEEL_LOG_INFO, "core",
                  "closed %u connection(s) still sending their first request to make room for "
                  "new ones (%ld connections open; last from %s)",
                  d->evicted_unlogged, d->count, d->evicted_last);
        d->evicted_unlogged = 0;
    }
    if (n > 0) {
        atomic_fetch_add_explicit(&d->closed, n, memory_order_relaxed);
        keel__log(KEEL_LOG_INFO, "core",
                  "closed %u connection(s) that sent no complete request within %lld s "
                  "(last from %s)",
                  n, (long long)(d->bound_ns / NS_PER_S), last);
    }
}

static void *sweeper_main(void *arg)
{
    keel__deadlines *d = arg;
    pthread_mutex_lock(&d->mu);
    while (!d->stopping) {
        struct timespec until = keel__timespec_after(CLOCK_REALTIME, SWEEP_MS);
        pthread_cond_timedwait(&d->wake, &d->mu, &until);
        if (!d->stopping)
            sweep(d);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

int keel__deadlines_start(int timeout_s, keel__deadlines **out)
{
    *out = NULL;
    if (timeout_s < 1)
        return KEEL_EINVAL;
    keel__deadlines *d = calloc(1, sizeof *d);
    if (d == NULL)
        return KEEL_ENOMEM;
    d->bound_ns = (int64_t)timeout_s * NS_PER_S;
    atomic_init(&d->closed, 0);
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->wake, NULL);
    if (pthread_create(&d->sweeper, NULL, sweeper_main, d) != 0) {
        pthread_cond_destroy(&d->wake);
        pthread_mutex_destroy(&d->mu);
        free(d);
        return KEEL_ENOMEM;
    }
    *out = d;
    return 0;
}

void keel__deadlines_stop(keel__deadlines *d)
{
    if (d == NULL)
        return;
    pthread_mutex_lock(&d->mu);
    d->stopping = true;
    pthread_cond_signal(&d->wake);
    pthread_mutex_unlock(&d->mu);
    pthread_join(d->sweeper, NULL);
    /* Normally empty: the daemon reported every connection closed. */
    struct watch *w = d->head;
    while (w != NULL) {
        struct watch *next = w->next;
        free(w);
        w = next;
    }
    pthread_cond_destroy(&d->wake);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

void keel__deadlines_evict_at(keel__deadlines *d, long watched)
{
    pthread_mutex_lock(&d->mu);
    d->evict_at = watched > 0 ? watched : 0;
    pthread_mutex_unlock(&d->mu);
}

/* Closes the connection that has waited longest for its first request,
 * other than `keep`.  Called with the lock held. */
static void evict_oldest(keel__deadlines *d, const struct watch *keep)
{
    struct watch *victim = NULL;
    long long oldest = 0;
    for (struct watch *w = d->head; w != NULL; w = w->next) {
        if (w == keep || !atomic_load_explicit(&w->first, memory_order_relaxed))
            continue;
        long long dl = atomic_load_explicit(&w->deadline, memory_order_relaxed);
        if (dl != 0 && (victim == NULL || dl < oldest)) {
            victim = w;
            oldest = dl;
        }
    }
    if (victim == NULL)
        return;
    atomic_store_explicit(&victim->deadline, 0, memory_order_relaxed);
    atomic_store_explicit(&victim->first, false, memory_order_relaxed);
    if (shutdown(victim->fd, SHUT_RDWR) != 0 && errno != ENOTCONN)
        return;
    atomic_fetch_add_explicit(&d->evicted, 1, memory_order_relaxed);
    d->evicted_unlogged++;
    memcpy(d->evicted_last, victim->peer, sizeof d->evicted_last);
}

void keel__deadlines_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                            enum MHD_ConnectionNotificationCode toe)
{
    keel__deadlines *d = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci == NULL)
            return;
        struct watch *w = calloc(1, sizeof *w);
        if (w == NULL)
            return; /* unwatched: only the inactivity timeout applies */
        w->fd = ci->connect_fd;
        w->bound_ns = d->bound_ns;
        atomic_init(&w->deadline, keel__monotonic_ns() + d->bound_ns);
        atomic_init(&w->first, true);
        keel__conn_addr_text(conn, w->peer, sizeof w->peer);
        pthread_mutex_lock(&d->mu);
        w->next = d->head;
        if (d->head != NULL)
            d->head->prev = w;
        d->head = w;
        d->count++;
        if (d->evict_at > 0 && d->count >= d->evict_at)
            evict_oldest(d, w);
        pthread_mutex_unlock(&d->mu);
        *socket_context = w;
        return;
    }
    struct watch *w = *socket_context;
    if (w == NULL)
        return;
    *socket_context = NULL;
    pthread_mutex_lock(&d->mu);
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        d->head = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    d->count--;
    pthread_mutex_unlock(&d->mu);
    free(w);
}

static struct watch *watch_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci != NULL ? ci->socket_context : NULL;
}

const char *keel__deadlines_peer(struct MHD_Connection *conn)
{
    const struct watch *w = watch_of(conn);
    return w != NULL ? w->peer : NULL;
}

void keel__deadlines_received(struct MHD_Connection *conn)
{
    struct watch *w = watch_of(conn);
    if (w != NULL) {
        atomic_store_explicit(&w->deadline, 0, memory_order_relaxed);
        atomic_store_explicit(&w->first, false, memory_order_relaxed);
    }
}

void keel__deadlines_rearm(struct MHD_Connection *conn, int64_t now_ns)
{
    struct watch *w = watch_of(conn);
    if (w != NULL)
        atomic_store_explicit(&w->deadline, now_ns + w->bound_ns, memory_order_relaxed);
}

uint64_t keel__deadlines_closed(const keel__deadlines *d)
{
    return d ? atomic_load_explicit(&((keel__deadlines *)d)->closed, memory_order_relaxed) : 0;
}

long keel__deadlines_watched(const keel__deadlines *d)
{
    if (d == NULL)
        return 0;
    keel__deadlines *m = (keel__deadlines *)d;
    pthread_mutex_lock(&m->mu);
    long n = m->count;
    pthread_mutex_unlock(&m->mu);
    return n;
}
