/*
 * Circuit breaker around the database (docs/database.md has the state
 * diagram).  closed: calls pass; `threshold` consecutive *unavailable*
 * failures open it.  open: calls are refused at once, without touching the
 * network, until `open_ms` has passed; then one caller is let through as a
 * half-open probe.  half_open: the probe's success closes the breaker, its
 * failure opens it again for another `open_ms`.  All state is atomics, so
 * keel__breaker_allow() is a few loads on the hot path.
 */
#ifndef KEEL_CORE_DATA_BREAKER_H
#define KEEL_CORE_DATA_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

#include <keel/common.h>

#include "util/time.h"

enum keel__breaker_state {
    KEEL__BREAKER_CLOSED = 0,
    KEEL__BREAKER_OPEN = 1,
    KEEL__BREAKER_HALF_OPEN = 2
};

typedef struct keel__breaker keel__breaker;

keel__breaker *keel__breaker_new(int threshold, int open_ms);
void keel__breaker_free(keel__breaker *b);

/* True when a call may go to the database now.  In the open state after
 * open_ms, exactly one caller gets true (the probe) and the state becomes
 * half_open.  now_ms is a monotonic clock in milliseconds. */
bool keel__breaker_allow(keel__breaker *b, int64_t now_ms);
/* Like keel__breaker_allow() but false while closed: true only for the
 * caller that claims the half-open probe.  For a background prober that
 * must not touch the network while things are fine. */
bool keel__breaker_try_probe(keel__breaker *b, int64_t now_ms);
void keel__breaker_success(keel__breaker *b);
/* Records an *unavailable* failure (other failures are not the breaker's). */
void keel__breaker_failure(keel__breaker *b, int64_t now_ms);

/* True when a call now would be refused: open and not yet due for a probe,
 * or half-open with the probe still out.  Changes nothing. */
bool keel__breaker_refusing(const keel__breaker *b, int64_t now_ms);

int keel__breaker_state(const keel__breaker *b);
const char *keel__breaker_state_name(int state);
/* Number of transitions into each state since start (for metrics). */
uint64_t keel__breaker_transitions(const keel__breaker *b, int to_state);

#endif
