/* Threads nobody joins, and threads that do background work. */
#ifndef KEEL_CORE_UTIL_THREAD_H
#define KEEL_CORE_UTIL_THREAD_H

#include <pthread.h>
#include <stdbool.h>

/* Starts fn(arg) on a detached thread; false (nothing started) when the
 * thread cannot be made. */
bool keel__thread_detached(void *(*fn)(void *), void *arg);

/* Starts fn(arg) on a thread to be joined; 0 or an errno value, as
 * pthread_create. */
int keel__thread_start(pthread_t *thread, void *(*fn)(void *), void *arg);

/*
 * Turns the calling thread into a background thread: nice 19, so that
 * while other threads want the CPU the scheduler gives it a small share
 * (weight 15 against 1024 for each thread at nice 0), and all of it when
 * they do not.  For a worker's reloads: with it, requests sent during reloads
 * keep the p99 of requests sent between them (docs/performance.md, round
 * 15).  A thread without CAP_SYS_NICE cannot lower its nice value again,
 * and a new thread inherits its creator's; so the threads a background
 * thread starts with the two functions above (a plugin's init, its tasks)
 * are started for it by a helper thread ("keel-spawner") at the priority
 * the process had, and run as every other thread does.  name (at most 15
 * bytes) is what `top -H` and /proc/PID/task/TID/comm show for the thread.
 * False when the priority could not be set (the thread then runs as
 * before).
 */
bool keel__thread_background(const char *name);

/*
 * Between the steps of background work: a thread of this process that woke
 * meanwhile gets the CPU now.  The workers' threads run SCHED_BATCH
 * (server.scheduling), so a waking one does not preempt the running one,
 * however low its priority: without these points it would wait for the
 * scheduler's tick (4 ms at HZ=250).
 */
void keel__let_serve(void);

#endif
