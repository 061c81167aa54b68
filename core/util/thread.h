/* Threads nobody joins. */
#ifndef KEEL_CORE_UTIL_THREAD_H
#define KEEL_CORE_UTIL_THREAD_H

#include <stdbool.h>

/* Starts fn(arg) on a detached thread; false (nothing started) when the
 * thread cannot be made. */
bool keel__thread_detached(void *(*fn)(void *), void *arg);

#endif
