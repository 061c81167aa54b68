/* Clocks the core measures with: monotonic, so wall-clock steps never make
 * a timeout fire early or a latency negative. */
#ifndef KEEL_CORE_UTIL_TIME_H
#define KEEL_CORE_UTIL_TIME_H

#include <stdint.h>
#include <time.h>

/* clock in nanoseconds. */
int64_t keel__clock_ns(clockid_t clock);
/* CLOCK_MONOTONIC in nanoseconds. */
int64_t keel__monotonic_ns(void);
/* The same clock at the kernel's tick (a few milliseconds behind at most),
 * for timestamps only compared against seconds: a fraction of the cost of
 * a full read. */
int64_t keel__monotonic_coarse_ns(void);
/* CLOCK_MONOTONIC in milliseconds. */
int64_t keel__now_ms(void);
/* clock's time ms milliseconds from now: an absolute deadline for
 * pthread_cond_timedwait (CLOCK_REALTIME unless the condition variable was
 * set to another clock). */
struct timespec keel__timespec_after(clockid_t clock, int64_t ms);

#endif
