/*
 * Per-user rate limiting: one token bucket per key (the principal's Supabase
 * id), refilled at `rate` tokens per second up to `burst`.  A request takes
 * one token; without one it is refused and told how many whole seconds to
 * wait before a token is back.
 *
 * The buckets live in the core's sharded LRU table (util/lru.h), like the
 * user-sync cache, so requests of different users rarely meet on a lock.  It
 * holds at most max_keys buckets; a shard that is full drops its least
 * recently used bucket.  Dropping a bucket forgives that key (it starts again with a full
 * burst), so the bound trades exactness for memory only when more distinct
 * users than max_keys are active at once.  The least recently used bucket
 * is the one that has had the longest to refill, so it is usually full
 * already and dropping it changes nothing.
 */
#ifndef KEEL_CORE_IDENTITY_RATELIMIT_H
#define KEEL_CORE_IDENTITY_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <keel/common.h>

typedef struct keel__ratelimit keel__ratelimit;

/* Keys longer than this are refused by keel__ratelimit_take (KEEL_EINVAL). */
#define KEEL__RATELIMIT_MAX_KEY 63

struct keel__ratelimit_conf {
    unsigned rate;   /* tokens per second, >= 1 */
    unsigned burst;  /* bucket size; 0 = rate */
    size_t max_keys; /* buckets kept at most; 0 = 65536 */
};

/* Returns 0 and a new limiter, KEEL_EINVAL for rate 0, or KEEL_ENOMEM. */
int keel__ratelimit_new(const struct keel__ratelimit_conf *conf,
                        keel__ratelimit **out) KEEL_WARN_UNUSED;
/*
 * The same limiter in memory shared with processes forked later (keeld's
 * workers): one bucket per key for the whole server.  Buckets are kept by
 * the key's 64-bit hash (two keys with the same hash would share one) and
 * updated with atomics only.  Create before forking.
 */
int keel__ratelimit_new_shared(const struct keel__ratelimit_conf *conf,
                               keel__ratelimit **out) KEEL_WARN_UNUSED;
/* The server-wide limiter the HTTP layer uses instead of its own (NULL =
 * none); set by the supervisor before it forks. */
void keel__ratelimit_set_server_wide(keel__ratelimit *rl);
keel__ratelimit *keel__ratelimit_server_wide(void);
void keel__ratelimit_free(keel__ratelimit *rl);

/*
 * Takes one token from key's bucket at now_ns (a monotonic clock in
 * nanoseconds; a clock that goes back is treated as no time passing).
 * Returns 0 when the request may go on; KEEL_EBUSY when the bucket is empty,
 * with *retry_after_s set to the whole seconds (at least 1) until a token is
 * back; KEEL_EINVAL for an empty or too long key (the caller decides; keel's
 * keys are UUIDs).  Safe to call from many threads.
 */
int keel__ratelimit_take(keel__ratelimit *rl, const char *key, int64_t now_ns,
                         unsigned *retry_after_s);

/* Buckets held now (all shards), for tests and metrics. */
size_t keel__ratelimit_size(keel__ratelimit *rl);

#endif
