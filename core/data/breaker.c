#include "config.h"

#include "data/breaker.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "util/log.h"

/*
 * The state and its deadline live in one 64-bit word, (deadline << 2) | state,
 * so that a single compare-and-swap moves the breaker from one (state,
 * deadline) pair to the next.  That is what makes "exactly one probe" hold:
 * every caller that sees the same expired open word races the same CAS and
 * only one of them can win it.  With two separate atomics a caller could read
 * a fresh state with a stale deadline and let a second probe through.
 *
 * In the open state the deadline is when probing may start.  In the
 * half-open state it is when the probe is presumed lost: a probe whose owner
 * never reports (it crashed, or acquired a connection and released it
 * without running a statement) must not wedge the breaker half-open for
 * ever, so after another open_ms one more probe is let through.
 */
#define STATE_BITS 2u
#define STATE_MASK 3u

struct keel__breaker {
    _Atomic uint64_t word;
    atomic_int failures; /* consecutive unavailable failures while closed */
    int threshold;
    int open_ms;
    _Atomic uint64_t transitions[3];
};

static uint64_t pack(int state, int64_t deadline_ms)
{
    if (deadline_ms < 0)
        deadline_ms = 0;
    return ((uint64_t)deadline_ms << STATE_BITS) | (uint64_t)state;
}

static int word_state(uint64_t w)
{
    return (int)(w & STATE_MASK);
}

static int64_t word_deadline(uint64_t w)
{
    return (int64_t)(w >> STATE_BITS);
}

keel__breaker *keel__breaker_new(int threshold, int open_ms)
{
    keel__breaker *b = calloc(1, sizeof *b);
    if (b == NULL)
        return NULL;
    b->threshold = threshold > 0 ? threshold : 1;
    b->open_ms = open_ms > 0 ? open_ms : 0;
    atomic_init(&b->word, pack(KEEL__BREAKER_CLOSED, 0));
    atomic_init(&b->failures, 0);
    for (int i = 0; i < 3; i++)
        atomic_init(&b->transitions[i], 0);
    return b;
}

void keel__breaker_free(keel__breaker *b)
{
    free(b);
}

/* Moves from exactly `from` to `to`; false when another thread got there
 * first (the word changed under us). */
static bool transition(keel__breaker *b, uint64_t from, int to, int64_t deadline_ms)
{
    uint64_t expected = from;
    if (!atomic_compare_exchange_strong(&b->word, &expected, pack(to, deadline_ms)))
        return false;
    atomic_fetch_add_explicit(&b->transitions[to], 1, memory_order_relaxed);
    return true;
}

/* Claims the probe if the breaker is open and due, or half-open with a
 * probe presumed lost.  Exactly one caller per deadline wins. */
static bool claim_probe(keel__breaker *b, uint64_t w, int64_t now_ms)
{
    if (now_ms < word_deadline(w))
        return false;
    if (!transition(b, w, KEEL__BREAKER_HALF_OPEN, now_ms + b->open_ms))
        return false;
    keel__log(KEEL_LOG_INFO, "breaker", "circuit breaker half-open: letting one probe through");
    return true;
}

bool keel__breaker_allow(keel__breaker *b, int64_t now_ms)
{
    uint64_t w = atomic_load(&b->word);
    if (word_state(w) == KEEL__BREAKER_CLOSED)
        return true;
    return claim_probe(b, w, now_ms);
}

bool keel__breaker_try_probe(keel__breaker *b, int64_t now_ms)
{
    uint64_t w = atomic_load(&b->word);
    if (word_state(w) == KEEL__BREAKER_CLOSED)
        return false;
    return claim_probe(b, w, now_ms);
}

void keel__breaker_success(keel__breaker *b)
{
    uint64_t w = atomic_load(&b->word);
    switch (word_state(w)) {
    case KEEL__BREAKER_CLOSED:
        /* Only a store when needed: the hot path should not bounce the
         * cache line between cores on every successful query. */
        if (atomic_load_explicit(&b->failures, memory_order_relaxed) != 0)
            atomic_store(&b->failures, 0);
        break;
    case KEEL__BREAKER_HALF_OPEN:
        atomic_store(&b->failures, 0);
        if (transition(b, w, KEEL__BREAKER_CLOSED, 0))
            keel__log(KEEL_LOG_INFO, "breaker", "circuit breaker closed: database reachable again");
        break;
    default:
        /* A success reported while open comes from a call that started
         * before the breaker opened; it says nothing about now, and closing
         * here would skip the open period. */
        break;
    }
}

void keel__breaker_failure(keel__breaker *b, int64_t now_ms)
{
    uint64_t w = atomic_load(&b->word);
    switch (word_state(w)) {
    case KEEL__BREAKER_CLOSED: {
        int n = atomic_fetch_add(&b->failures, 1) + 1;
        if (n < b->threshold)
            break;
        if (transition(b, w, KEEL__BREAKER_OPEN, now_ms + b->open_ms)) {
            atomic_store(&b->failures, 0);
            keel__log(
                KEEL_LOG_WARN, "breaker",
                "circuit breaker open after %d consecutive failures; refusing calls for %d ms", n,
                b->open_ms);
        }
        break;
    }
    case KEEL__BREAKER_HALF_OPEN:
        if (transition(b, w, KEEL__BREAKER_OPEN, now_ms + b->open_ms))
            keel__log(KEEL_LOG_WARN, "breaker",
                      "circuit breaker probe failed; open for another %d ms", b->open_ms);
        break;
    default:
        break;
    }
}

int keel__breaker_state(const keel__breaker *b)
{
    return word_state(atomic_load(&b->word));
}

const char *keel__breaker_state_name(int state)
{
    switch (state) {
    case KEEL__BREAKER_CLOSED:
        return "closed";
    case KEEL__BREAKER_OPEN:
        return "open";
    case KEEL__BREAKER_HALF_OPEN:
        return "half_open";
    default:
        return "unknown";
    }
}

uint64_t keel__breaker_transitions(const keel__breaker *b, int to_state)
{
    if (to_state < 0 || to_state > 2)
        return 0;
    return atomic_load(&b->transitions[to_state]);
}

bool keel__breaker_refusing(const keel__breaker *b, int64_t now_ms)
{
    uint64_t w = atomic_load(&((keel__breaker *)b)->word);
    return word_state(w) != KEEL__BREAKER_CLOSED && now_ms < word_deadline(w);
}
