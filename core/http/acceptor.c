#include "config.h"

#include "http/acceptor.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http/clientaddr.h"
#include "util/blocking.h"
#include "util/log.h"
#include "util/time.h"

/* How long the acceptor waits for a lane to clear before it starts another
 * one.  A lane clears within microseconds of reading a new connection's
 * first request, so a burst of connections (a client opening its pool)
 * settles on the lanes there are; only lanes held by slow or stuck
 * handlers outlast it.  On a CPU shared with other work a lane running
 * quick requests may not be seen clear only because it waits for the CPU,
 * and another thread would not get more of it (bench: lanes grew from 2 to
 * 17 per worker over six bursts of 50 connections on a loaded machine; and
 * to 19 when only the first request of a burst waited on the database, for
 * its user): a lane that finishes a request during the wait without
 * waiting on I/O takes the connection, and while some lane might still
 * (not waiting on I/O, not stuck) the wait stretches to BUSY_WAIT_NS.  A
 * lane held by a handler that has not returned for STUCK_NS, and one
 * waiting on the database, would be overlapped by another thread: when
 * every lane is one of these the lane starts after CLEAR_WAIT_NS. */
#define CLEAR_WAIT_NS (2 * 1000 * 1000LL)
#define BUSY_WAIT_NS (50 * 1000 * 1000LL)
#define STUCK_NS (20 * 1000 * 1000LL)
#define CLEAR_POLL_NS (50 * 1000L)
/* Connections taken off the listening socket per wake-up before the stop
 * pipe is looked at again. */
#define ACCEPT_BATCH 64

struct keel__acceptor {
    struct keel__acceptor_conf conf;
    /* Appended by the acceptor thread only; readers load nlanes first. */
    struct keel__lane **lanes;
    atomic_uint nlanes;
    unsigned in_use; /* the first in_use lanes get new connections: acceptor thread only */
    atomic_long open;
    int wake[2];
    pthread_t thread;
    bool running;
    unsigned long long refused_ip;
    bool full_logged;
};

/* Per descriptor: what the acceptor counted for the connection on it, so
 * that the lane's callbacks, which see only the connection, can undo it.
 * Indexed by fd (the process's descriptors are bounded by RLIMIT_NOFILE);
 * a descriptor past the table is simply not tracked. */
enum { FD_FRESH = 1, FD_PER_IP = 2 };
static _Atomic unsigned char *fd_marks;
static size_t nfd_marks;
static pthread_once_t fd_marks_once = PTHREAD_ONCE_INIT;

static void make_fd_marks(void)
{
    struct rlimit rl;
    size_t n = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        n = (size_t)rl.rlim_cur;
    if (n > (1u << 20))
        n = 1u << 20;
    fd_marks = calloc(n, sizeof *fd_marks);
    nfd_marks = fd_marks != NULL ? n : 0;
}

static void mark_fd(int fd, unsigned char bits)
{
    if (fd >= 0 && (size_t)fd < nfd_marks)
        atomic_store(&fd_marks[fd], bits);
}

/* Clears bits of fd's mark; returns the ones that were set. */
static unsigned char unmark_fd(int fd, unsigned char bits)
{
    if (fd < 0 || (size_t)fd >= nfd_marks)
        return 0;
    return atomic_fetch_and(&fd_marks[fd], (unsigned char)~bits) & bits;
}

static int conn_fd(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn,
                                                                 MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci != NULL ? (int)ci->connect_fd : -1;
}

/* ------------------------------------------------------------ the choice */

int keel__lane_pick(const struct keel__lane_load *loads, unsigned n, enum keel__lane_pick_mode mode)
{
    int best = -1;
    for (unsigned i = 0; i < n; i++) {
        const struct keel__lane_load *l = &loads[i];
        if (l->fresh > 0 || l->active > 0)
            continue;
        if (best < 0 || l->conns < loads[best].conns)
            best = (int)i;
    }
    if (best >= 0 || mode == KEEL__PICK_CLEAR)
        return best;
    for (unsigned i = 0; i < n; i++) {
        const struct keel__lane_load *l = &loads[i];
        if (mode == KEEL__PICK_PROGRESS && !l->progress)
            continue;
        int work = l->fresh + l->active,
            best_work = best < 0 ? 0 : loads[best].fresh + loads[best].active;
        if (best < 0 || work < best_work || (work == best_work && l->conns < loads[best].conns))
            best = (int)i;
    }
    return best;
}

unsigned keel__lanes_in_use(const struct keel__lane_load *loads, unsigned in_use, unsigned base)
{
    while (in_use > base && loads[in_use - 1].conns == 0)
        in_use--;
    return in_use;
}

/* What a lane had done when the wait for a clear lane began. */
struct lane_mark {
    unsigned done, waits;
};

static void mark_lanes(keel__acceptor *a, struct lane_mark *m, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        m[i].done = atomic_load_explicit(&a->lanes[i]->done, memory_order_relaxed);
        m[i].waits = atomic_load_explicit(&a->lanes[i]->blocked.waits, memory_order_relaxed);
    }
}

/* Whether l waits on the database or an upstream now, or has since m. */
static bool waited_on_io(struct keel__lane *l, const struct lane_mark *m)
{
    return atomic_load_explicit(&l->blocked.now, memory_order_relaxed) > 0 ||
           atomic_load_explicit(&l->blocked.waits, memory_order_relaxed) != m->waits;
}

/* The counters of the first n lanes; with marks, which of them have
 * finished a request since the marks were taken without waiting on I/O. */
static void load_lanes(keel__acceptor *a, struct keel__lane_load *loads, unsigned n,
                       const struct lane_mark *m)
{
    for (unsigned i = 0; i < n; i++) {
        struct keel__lane *l = a->lanes[i];
        loads[i].conns = atomic_load_explicit(&l->conns, memory_order_relaxed);
        loads[i].fresh = atomic_load_explicit(&l->fresh, memory_order_relaxed);
        loads[i].active = atomic_load_explicit(&l->active, memory_order_relaxed);
        loads[i].progress = m != NULL && !waited_on_io(l, &m[i]) &&
                            atomic_load_explicit(&l->done, memory_order_relaxed) != m[i].done;
    }
}

static struct keel__lane *add_lane(keel__acceptor *a)
{
    unsigned n = atomic_load(&a->nlanes);
    if (n >= a->conf.max_lanes)
        return NULL;
    struct keel__lane *lane = calloc(1, sizeof *lane);
    if (lane == NULL)
        return NULL;
    lane->acceptor = a;
    lane->cls = a->conf.cls;
    lane->daemon = a->conf.start_lane(lane);
    if (lane->daemon == NULL) {
        free(lane);
        return NULL;
    }
    a->lanes[n] = lane;
    atomic_store(&a->nlanes, n + 1);
    return lane;
}

/* Whether some lane will clear by itself once it gets the CPU: one that
 * neither waits on the database or an upstream (now, or since m was taken)
 * nor is stuck (a request in progress for STUCK_NS with nothing finished
 * since m).  Another thread would overlap the others' waits; it would
 * only share the CPU with this one. */
static bool some_lane_runs(keel__acceptor *a, const struct lane_mark *m, unsigned n, int64_t now)
{
    for (unsigned i = 0; i < n; i++) {
        struct keel__lane *l = a->lanes[i];
        if (waited_on_io(l, &m[i]))
            continue;
        if (atomic_load_explicit(&l->active, memory_order_relaxed) > 0 &&
            atomic_load_explicit(&l->done, memory_order_relaxed) == m[i].done &&
            now - atomic_load_explicit(&l->begun, memory_order_relaxed) >= STUCK_NS)
            continue;
        return true;
    }
    return false;
}

/*
 * The lane for a new connection, among the lanes in use (the first
 * a->in_use of those started): a clear one; else the first to clear or to
 * finish a request without waiting on I/O while the acceptor waits (it is
 * only short of CPU, which another thread would share); else one more lane,
 * taken back into use or started.
 */
static struct keel__lane *choose(keel__acceptor *a)
{
    unsigned n = atomic_load(&a->nlanes);
    struct keel__lane_load loads[n];
    load_lanes(a, loads, n, NULL);
    a->in_use = keel__lanes_in_use(loads, a->in_use, a->conf.lanes);
    unsigned m = a->in_use;
    int i = keel__lane_pick(loads, m, KEEL__PICK_CLEAR);
    if (i >= 0)
        return a->lanes[i];
    if (m < a->conf.max_lanes) {
        struct lane_mark marks[m];
        mark_lanes(a, marks, m);
        int64_t start = keel__monotonic_ns(), now = start;
        while (now - start < (some_lane_runs(a, marks, m, now) ? BUSY_WAIT_NS : CLEAR_WAIT_NS)) {
            struct timespec ts = {0, CLEAR_POLL_NS};
            nanosleep(&ts, NULL);
            load_lanes(a, loads, m, marks);
            i = keel__lane_pick(loads, m, KEEL__PICK_PROGRESS);
            if (i >= 0)
                return a->lanes[i];
            now = keel__monotonic_ns();
        }
        struct keel__lane *lane = m < n ? a->lanes[m] : add_lane(a);
        if (lane != NULL) {
            a->in_use = m + 1;
            keel__log(m < n ? KEEL_LOG_DEBUG : KEEL_LOG_INFO, "core",
                      "%s listener: every thread busy for %lld ms; %s thread %u of at most %u",
                      a->conf.name, (long long)((now - start) / 1000000),
                      m < n ? "took back" : "started", m + 1, a->conf.max_lanes);
            return lane;
        }
    }
    load_lanes(a, loads, a->in_use, NULL);
    return a->lanes[keel__lane_pick(loads, a->in_use, KEEL__PICK_ANY)];
}

/* ------------------------------------------------------------ accepting */

static void admit(keel__acceptor *a, int fd, const struct sockaddr *sa, socklen_t salen)
{
    unsigned char marks = FD_FRESH;
    char key[INET6_ADDRSTRLEN];
    if (a->conf.max_per_ip > 0) {
        keel__addr_text(sa, key, sizeof key);
        if (!keel__addr_limit_enter(key, a->conf.max_per_ip)) {
            if (a->refused_ip++ % 1000 == 0)
                keel__log(KEEL_LOG_INFO, "core",
                          "%s listener: %s has %d connections open (limits.max_per_ip share): "
                          "closing its new ones",
                          a->conf.name, key, a->conf.max_per_ip);
            close(fd);
            return;
        }
        marks |= FD_PER_IP;
    }
    struct keel__lane *lane = choose(a);
    /* Counted now, not when the lane's thread gets to it, so that the
     * next choice and the limit see it. */
    mark_fd(fd, marks);
    atomic_fetch_add(&lane->fresh, 1);
    atomic_fetch_add(&lane->conns, 1);
    atomic_fetch_add(&a->open, 1);
    if (MHD_add_connection(lane->daemon, fd, sa, salen) != MHD_YES) {
        /* libmicrohttpd closed the socket. */
        atomic_fetch_sub(&lane->conns, 1);
        atomic_fetch_sub(&a->open, 1);
        if (unmark_fd(fd, FD_FRESH))
            atomic_fetch_sub(&lane->fresh, 1);
        if (unmark_fd(fd, FD_PER_IP))
            keel__addr_limit_leave(key);
    }
}

static bool at_limit(keel__acceptor *a)
{
    long open = atomic_load(&a->open);
    if (a->conf.max_connections <= 0 || open < a->conf.max_connections) {
        a->full_logged = false;
        return false;
    }
    if (!a->full_logged)
        keel__log(KEEL_LOG_WARN, "core",
                  "%s listener: %ld connections open (its share of limits.max_connections): new "
                  "ones wait until one closes",
                  a->conf.name, open);
    a->full_logged = true;
    return true;
}

static void *accept_main(void *arg)
{
    keel__acceptor *a = arg;
    for (;;) {
        /* At the connection limit, as libmicrohttpd does, new connections
         * wait in the listen queue (or go to another worker) until one
         * closes: only the stop pipe is watched, and the count looked at
         * again every 10 ms. */
        bool full = at_limit(a);
        struct pollfd p[2] = {{.fd = a->wake[0], .events = POLLIN},
                              {.fd = a->conf.fd, .events = POLLIN}};
        int r = poll(p, full ? 1 : 2, full ? 10 : -1);
        if (r < 0 && errno != EINTR)
            break;
        if (r <= 0)
            continue;
        if (p[0].revents != 0)
            break;
        for (int i = 0; i < ACCEPT_BATCH && !full && !at_limit(a); i++) {
            struct sockaddr_storage ss;
            socklen_t sl = sizeof ss;
            /* accept4() wants _GNU_SOURCE; libmicrohttpd makes the socket
             * non-blocking itself, close-on-exec is set here. */
            int fd = accept(a->conf.fd, (struct sockaddr *)&ss, &sl);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED)
                    continue;
                if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                    keel__log(KEEL_LOG_WARN, "core", "%s listener: accept: %s", a->conf.name,
                              strerror(errno));
                    struct timespec ts = {0, 10 * 1000 * 1000};
                    nanosleep(&ts, NULL);
                }
                break; /* EAGAIN: another worker took it, or none left */
            }
            fcntl(fd, F_SETFD, FD_CLOEXEC);
            admit(a, fd, (const struct sockaddr *)&ss, sl);
        }
    }
    return NULL;
}

/* ------------------------------------------------------------ lane callbacks */

/* A lane's active and done counts change only on the lane's own thread
 * (libmicrohttpd calls back on its daemon's thread; a parked request's
 * completion too), so a plain load and store keeps them: no locked
 * instruction on every request.  Other threads only read them.  A macro:
 * active is an atomic_int, done an atomic_uint. */
#define LANE_COUNT_ADD(count, delta)                                                               \
    atomic_store_explicit(&(count),                                                                \
                          atomic_load_explicit(&(count), memory_order_relaxed) + (delta),          \
                          memory_order_relaxed)

void keel__lane_request_begin(struct keel__lane *lane, struct MHD_Connection *conn,
                              int64_t start_ns)
{
    atomic_store_explicit(&lane->begun, start_ns, memory_order_relaxed);
    /* The lane's thread is the only one that runs its requests. */
    keel__blocking_counter = &lane->blocked;
    LANE_COUNT_ADD(lane->active, 1);
    if (atomic_load_explicit(&lane->fresh, memory_order_relaxed) > 0 &&
        unmark_fd(conn_fd(conn), FD_FRESH))
        atomic_fetch_sub_explicit(&lane->fresh, 1, memory_order_relaxed);
}

void keel__lane_request_started(struct keel__lane *lane, int64_t start_ns)
{
    atomic_store_explicit(&lane->begun, start_ns, memory_order_relaxed);
}

void keel__lane_request_park(struct keel__lane *lane)
{
    LANE_COUNT_ADD(lane->active, -1);
}

void keel__lane_request_end(struct keel__lane *lane, bool parked)
{
    if (!parked)
        LANE_COUNT_ADD(lane->active, -1);
    LANE_COUNT_ADD(lane->done, 1);
}

void keel__lane_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                       enum MHD_ConnectionNotificationCode toe)
{
    struct keel__lane *lane = cls;
    keel__acceptor *a = lane->acceptor;
    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        int fd = conn_fd(conn);
        if (unmark_fd(fd, FD_FRESH))
            atomic_fetch_sub(&lane->fresh, 1);
        if (unmark_fd(fd, FD_PER_IP)) {
            char key[INET6_ADDRSTRLEN];
            keel__conn_addr_text(conn, key, sizeof key);
            keel__addr_limit_leave(key);
        }
        atomic_fetch_sub(&lane->conns, 1);
        atomic_fetch_sub(&a->open, 1);
    }
    if (a->conf.chain_notify != NULL)
        a->conf.chain_notify(a->conf.chain_cls, conn, socket_context, toe);
}

/* ------------------------------------------------------------ life cycle */

int keel__acceptor_start(const struct keel__acceptor_conf *conf, keel__acceptor **out)
{
    *out = NULL;
    pthread_once(&fd_marks_once, make_fd_marks);
    keel__acceptor *a = calloc(1, sizeof *a);
    if (a == NULL)
        return KEEL_ENOMEM;
    a->conf = *conf;
    if (a->conf.lanes < 1)
        a->conf.lanes = 1;
    if (a->conf.max_lanes < a->conf.lanes)
        a->conf.max_lanes = a->conf.lanes;
    a->lanes = calloc(a->conf.max_lanes, sizeof *a->lanes);
    a->wake[0] = a->wake[1] = -1;
    int rc = a->lanes != NULL && pipe(a->wake) == 0 ? 0 : KEEL_ENOMEM;
    if (rc == 0) {
        fcntl(a->wake[0], F_SETFD, FD_CLOEXEC);
        fcntl(a->wake[1], F_SETFD, FD_CLOEXEC);
    }
    for (unsigned i = 0; rc == 0 && i < a->conf.lanes; i++)
        if (add_lane(a) == NULL)
            rc = KEEL_EIO;
    a->in_use = atomic_load(&a->nlanes);
    if (rc == 0 && pthread_create(&a->thread, NULL, accept_main, a) != 0)
        rc = KEEL_ENOMEM;
    if (rc != 0) {
        keel__acceptor_stop(a);
        return rc;
    }
    a->running = true;
    *out = a;
    return 0;
}

void keel__acceptor_quiesce(keel__acceptor *a)
{
    if (a == NULL || !a->running)
        return;
    a->running = false;
    char c = 'q';
    while (write(a->wake[1], &c, 1) < 0 && errno == EINTR)
        ;
    pthread_join(a->thread, NULL);
}

void keel__acceptor_stop(keel__acceptor *a)
{
    if (a == NULL)
        return;
    keel__acceptor_quiesce(a);
    unsigned n = atomic_load(&a->nlanes);
    for (unsigned i = 0; i < n; i++) {
        MHD_stop_daemon(a->lanes[i]->daemon);
        free(a->lanes[i]);
    }
    for (int i = 0; i < 2; i++)
        if (a->wake[i] >= 0)
            close(a->wake[i]);
    free(a->lanes);
    free(a);
}

long keel__acceptor_connections(const keel__acceptor *a)
{
    return a != NULL ? atomic_load(&((keel__acceptor *)a)->open) : 0;
}
