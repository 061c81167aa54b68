/*
 * Marks the stretches in which a thread waits on something outside the
 * process (a database result, a free pool connection, an upstream call),
 * for whoever assigned the thread a counter: the HTTP lanes
 * (core/http/acceptor.c) tell a lane that waits on the database, which
 * another thread would overlap, from one that only runs short of CPU, which
 * another thread would not help.  Threads without a counter pay a test of a
 * thread-local pointer.
 */
#ifndef KEEL_CORE_UTIL_BLOCKING_H
#define KEEL_CORE_UTIL_BLOCKING_H

#include <stdatomic.h>
#include <stddef.h>

struct keel__blocking {
    atomic_int now;    /* waits in progress */
    atomic_uint waits; /* waits begun, ever (wraps): a change says one began */
};

/* This thread's counters, or NULL. */
extern _Thread_local struct keel__blocking *keel__blocking_counter;

static inline void keel__blocking_enter(void)
{
    if (keel__blocking_counter != NULL) {
        atomic_fetch_add_explicit(&keel__blocking_counter->now, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&keel__blocking_counter->waits, 1, memory_order_relaxed);
    }
}

static inline void keel__blocking_leave(void)
{
    if (keel__blocking_counter != NULL)
        atomic_fetch_sub_explicit(&keel__blocking_counter->now, 1, memory_order_relaxed);
}

#endif
