/*
 * Handlers that wait leave the event loop (docs/operations.md, "Threads
 * and connections").
 *
 * A serving thread (a lane, core/http/acceptor.h) runs the handlers of its
 * connections one at a time, and a libmicrohttpd connection never moves to
 * another lane: while one handler waits on the database or an upstream,
 * every other request on the lane waits with it (head-of-line), kept-alive
 * connections from a proxy included.  So a route whose handlers have been
 * waiting runs its requests here instead: the server suspends the
 * connection (MHD_suspend_connection), a thread of this pool authorizes
 * and runs the handler, the response is parked on the request, and the
 * connection is resumed; its lane queues the parked response and goes on
 * serving its other connections meanwhile.
 *
 * Which routes: each route's metrics record keeps a wait score (below),
 * moved by every request that completes: up when its handler waited on
 * I/O (util/blocking.h) or took more than KEEL__OFFLOAD_SLOW_NS, down
 * otherwise.  A route goes to the pool once the score passes ON and comes
 * back to its lane once it falls under OFF; the hand-over costs a few
 * microseconds, which a route that answers from memory (or waits once a
 * second to refresh a cache) should not pay.
 *
 * The pool's threads start on demand, up to a bound; they are the
 * process's, serving both listeners.
 */
#ifndef KEEL_CORE_HTTP_OFFLOAD_H
#define KEEL_CORE_HTTP_OFFLOAD_H

#include <stdbool.h>
#include <stdint.h>

#include <keel/common.h>

/* ------------------------------------------------------------ the score */

/* The score is 0..1024 in the low bits; KEEL__OFFLOAD_ON_BIT says the route
 * runs in the pool now, KEEL__OFFLOAD_SEEN_BIT that it ever did (the log
 * line that says so is written once). */
#define KEEL__OFFLOAD_ON_BIT (1u << 16)
#define KEEL__OFFLOAD_SEEN_BIT (1u << 17)
#define KEEL__OFFLOAD_SCORE_MASK 0xffffu
/* Three waits in a row from nothing (256, 448, 592) send a route to the
 * pool, and so does waiting on one request in eight or more; 17
 * quick requests in a row (29 from the top) bring it back, and it takes two
 * waits in a row to send it again. */
#define KEEL__OFFLOAD_ON 480u
#define KEEL__OFFLOAD_OFF 160u
/* A handler that held its thread this long counts as one that waited.  A
 * profiling build under valgrind, where every request takes milliseconds,
 * raises it to measure the path requests take at full speed. */
#ifndef KEEL__OFFLOAD_SLOW_NS
#define KEEL__OFFLOAD_SLOW_NS (2 * 1000 * 1000LL)
#endif

/* The score after one more request that waited or not (pure). */
static inline unsigned keel__offload_score(unsigned v, bool waited)
{
    unsigned s = v & KEEL__OFFLOAD_SCORE_MASK, flags = v & ~KEEL__OFFLOAD_SCORE_MASK;
    s = waited ? s + (1024 - s) / 4 : s - s / 16;
    if (s >= KEEL__OFFLOAD_ON)
        flags |= KEEL__OFFLOAD_ON_BIT | KEEL__OFFLOAD_SEEN_BIT;
    else if (s < KEEL__OFFLOAD_OFF)
        flags &= ~KEEL__OFFLOAD_ON_BIT;
    return flags | s;
}

static inline bool keel__offload_on(unsigned v)
{
    return (v & KEEL__OFFLOAD_ON_BIT) != 0;
}

/* ------------------------------------------------------------ the pool */

/* Starts nothing yet: threads start with the work, up to max_threads. */
void keel__offload_init(unsigned max_threads);
/* Runs fn(arg) on a pool thread.  Returns 0, or KEEL_ENOMEM when no thread
 * could be had (none running and none could start): the caller then runs
 * it itself. */
int keel__offload_submit(void (*fn)(void *), void *arg) KEEL_WARN_UNUSED;
/* Called by a job about to end (its last step hands the connection back):
 * its thread counts as idle from now, so a request that the hand-back lets
 * in at once waits for this thread instead of starting another.  Nothing
 * outside a pool thread. */
void keel__offload_finishing(void);
/* Jobs queued or running. */
long keel__offload_pending(void);
/* Threads started, and requests handed over, since keel__offload_init. */
unsigned keel__offload_threads(void);
unsigned long long keel__offload_total(void);
/* Ends the idle threads and waits for them; with jobs still running
 * (handlers that never return) it waits for nothing and leaves them.
 * Returns the jobs left. */
long keel__offload_stop(void);

#endif
