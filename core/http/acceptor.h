/*
 * How a listener's connections reach its threads (docs/operations.md,
 * "Threads and connections").  One acceptor thread accepts on the listening
 * socket and hands each connection (MHD_add_connection) to one of several
 * lanes: single-thread libmicrohttpd daemons without a listening socket of
 * their own.  A lane's thread runs the handlers of its connections, so a
 * handler that never returns holds every connection of its lane; the
 * acceptor therefore gives a new connection only to a lane that is clear
 * (no request in progress, no connection waiting for its first request),
 * the one with the fewest connections.  When none is, it waits a moment
 * for one to clear, or to finish a request without waiting on the database
 * or an upstream (a lane only short of CPU, which another thread would
 * share: it takes the connection), and then starts another lane, up to a
 * cap; sooner when every lane waits on I/O or is held by a handler that
 * does not return (another thread would overlap those).  A connection
 * stays on its lane for its whole life (keep-alive included).  Lanes
 * started for such a stretch stay started, but the last ones go out of use
 * while they hold no connection, and come back into use, as a new one
 * would start, when the others are held again: connections arriving later
 * are not split over more threads than the CPU needs.
 *
 * Connection limits are the acceptor's, over all lanes: the total
 * (limits.max_connections) and, when asked, per peer address.
 */
#ifndef KEEL_CORE_HTTP_ACCEPTOR_H
#define KEEL_CORE_HTTP_ACCEPTOR_H

#include <stdatomic.h>
#include <stdbool.h>

#include <microhttpd.h>

#include <keel/common.h>
#include <keel/error.h>

#include "util/blocking.h"

typedef struct keel__acceptor keel__acceptor;

/* One lane: a libmicrohttpd daemon with one thread. */
struct keel__lane {
    struct MHD_Daemon *daemon;
    keel__acceptor *acceptor;
    void *cls;                     /* the caller's (keel__acceptor_conf.cls) */
    atomic_int conns;              /* open connections */
    atomic_int fresh;              /* handed over, no request begun yet */
    atomic_int active;             /* requests begun and not completed */
    atomic_uint done;              /* requests completed, ever (wraps) */
    atomic_llong begun;            /* monotonic ns the latest request began (its headers in) */
    struct keel__blocking blocked; /* waits on the database or upstream (util/blocking.h) */
};

struct keel__acceptor_conf {
    const char *name; /* for the log: "main", "admin" */
    int fd;           /* listening socket, non-blocking; not closed by the acceptor */
    unsigned lanes;   /* started at once (at least 1) */
    unsigned max_lanes;
    long max_connections; /* 0 = no limit */
    int max_per_ip;       /* 0 = no limit */
    /* Starts the daemon of a new lane; every daemon must pass the lane as
     * the cls of its URI log, access and completion callbacks (or reach it
     * from them), call keel__lane_request_begin/end, and install
     * keel__lane_notify (cls = the lane) as its connection notifier.
     * Returns NULL on failure. */
    struct MHD_Daemon *(*start_lane)(struct keel__lane *lane);
    void *cls;
    /* Chained from keel__lane_notify (may be NULL): e.g. the deadlines. */
    MHD_NotifyConnectionCallback chain_notify;
    void *chain_cls;
};

/* Starts the lanes and the acceptor thread.  Returns 0 or a negative code
 * (nothing left running). */
int keel__acceptor_start(const struct keel__acceptor_conf *conf,
                         keel__acceptor **out) KEEL_WARN_UNUSED;
/* Stops accepting (the thread ends; queued connections stay in the
 * listening socket for whoever else accepts on it).  Idempotent. */
void keel__acceptor_quiesce(keel__acceptor *a);
/* Quiesces, stops every lane (waiting for their threads) and frees. */
void keel__acceptor_stop(keel__acceptor *a);

/* Open connections over all lanes. */
long keel__acceptor_connections(const keel__acceptor *a);

/* From the lane's URI log callback (a request begins, at start_ns on
 * keel__monotonic_ns()'s clock) and its completion callback (it ends). */
void keel__lane_request_begin(struct keel__lane *lane, struct MHD_Connection *conn,
                              int64_t start_ns);
void keel__lane_request_end(struct keel__lane *lane, bool parked);
/* Its headers are in, at start_ns (exact; the begin's time may be at the
 * tick): what "begun" holds from here. */
void keel__lane_request_started(struct keel__lane *lane, int64_t start_ns);
/* The request left the lane's thread (core/http/offload.h): the lane is
 * clear of it, though it ends (keel__lane_request_end, parked true) only
 * once its response is done. */
void keel__lane_request_park(struct keel__lane *lane);
/* The lane daemons' MHD_OPTION_NOTIFY_CONNECTION (cls = the lane). */
void keel__lane_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                       enum MHD_ConnectionNotificationCode toe);

/*
 * The choice itself, for n lanes described by their counters: the index of
 * the clear lane with the fewest connections, or -1 when no lane is clear.
 * With fallback, never -1 (n > 0): the lane with the least work in hand,
 * then the fewest connections; with progress, the same among the lanes
 * that finish requests (-1 when none does).
 */
enum keel__lane_pick_mode { KEEL__PICK_CLEAR, KEEL__PICK_PROGRESS, KEEL__PICK_ANY };
struct keel__lane_load {
    int conns, fresh, active;
    bool progress; /* finished a request lately and waits on no I/O */
};
int keel__lane_pick(const struct keel__lane_load *loads, unsigned n,
                    enum keel__lane_pick_mode mode);
/*
 * How many of the lanes stay in use, of in_use now (at least base): the
 * last ones go out of use while they hold no connection at all, so that
 * lanes started for a burst of waiting handlers do not go on splitting the
 * connections that come after it into more threads than the CPU needs.
 */
unsigned keel__lanes_in_use(const struct keel__lane_load *loads, unsigned in_use, unsigned base);

#endif
