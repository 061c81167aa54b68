/*
 * The worker's fatal-signal handler (SIGSEGV, SIGBUS, SIGILL, SIGFPE,
 * SIGABRT, SIGSYS): it notes in the scoreboard which thread died and
 * writes a backtrace to the supervisor's crash pipe, using only
 * async-signal-safe calls, then lets the signal kill the worker.  What the
 * thread was running is already in the scoreboard; the supervisor turns
 * both into one crash report.
 */
#ifndef KEEL_CORE_UTIL_CRASH_H
#define KEEL_CORE_UTIL_CRASH_H

#include <stdbool.h>

/* Worker: installs the handlers; backtraces go to fd (-1 = none). */
void keel__crash_install(int fd);
/* Gives the calling thread an alternate signal stack, so that a stack
 * overflow in plugin code still reaches the handler.  Once per thread. */
void keel__crash_thread_setup(void);
/* Drops the calling thread's alternate stack (as it exits). */
void keel__crash_thread_teardown(void);
/* sig is one of the signals above, which the handler reports: a worker
 * that died of it crashed. */
bool keel__crash_is_fatal(int sig);

#endif
