#include "config.h"

#include "identity/ratelimit.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <keel/error.h>

#include "util/lru.h"

/*
 * Each bucket is kept as the generic cell rate algorithm's "theoretical
 * arrival time" (tat): the moment the bucket would be full again if nothing
 * else came.  A request at time t passes when tat - t <= tolerance, where the
 * tolerance is (burst - 1) emission intervals, and then moves tat one
 * interval later.  This is exactly a token bucket of `burst` tokens refilled
 * at `rate` per second, kept in one integer with no floating point and no
 * refill arithmetic that could overflow.
 */

#define NS_PER_S 1000000000LL
#define MAX_SHARDS 64u
#define MIN_PER_SHARD 16
#define DEFAULT_MAX_KEYS 65536
#define MAX_KEYS_LIMIT (1u << 24)

struct bucket {
    struct keel__lru_node node; /* first: the LRU hands back nodes */
    int64_t tat;
    char key[KEEL__RATELIMIT_MAX_KEY + 1];
};

/* A bucket of the shared table: the key's 64-bit hash (0 = free) and its
 * theoretical arrival time, both updated with atomics only, so processes
 * share the table without a lock one of them could die holding. */
struct shared_slot {
    _Atomic uint64_t key;
    _Atomic int64_t tat;
};

#define SHARED_PROBES 16

struct keel__ratelimit {
    int64_t interval_ns;      /* time for one token to come back */
    int64_t tolerance_ns;     /* (burst - 1) intervals */
    struct keel__lru buckets; /* this process's buckets (util/lru.h) */
    /* keel__ratelimit_new_shared: the table instead of the buckets. */
    struct shared_slot *shared;
    size_t shared_slots;
};

static keel__ratelimit *server_wide;

static bool bucket_is(const struct keel__lru_node *n, const void *key)
{
    return strcmp(((const struct bucket *)n)->key, key) == 0;
}

static void bucket_free(struct keel__lru_node *n)
{
    free(n);
}

static size_t pow2_at_least(size_t n)
{
    size_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

/* The table of keel__ratelimit_new_shared: twice the keys, so probes stay
 * short, in anonymous shared memory the processes forked later inherit. */
static int shared_table_init(keel__ratelimit *rl, size_t max_keys)
{
    rl->shared_slots = pow2_at_least(max_keys * 2);
    void *p = mmap(NULL, rl->shared_slots * sizeof *rl->shared, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return KEEL_ENOMEM;
    rl->shared = p; /* zero-filled: every slot free */
    return 0;
}

/* Both kinds of limiter: the bucket interval and tolerance from the
 * configured rate and burst, then this process's LRU table or the shared
 * one for max_keys keys. */
static int limiter_new(const struct keel__ratelimit_conf *conf, bool shared, keel__ratelimit **out)
{
    *out = NULL;
    if (conf == NULL || conf->rate == 0)
        return KEEL_EINVAL;
    size_t max_keys = conf->max_keys ? conf->max_keys : DEFAULT_MAX_KEYS;
    if (max_keys > MAX_KEYS_LIMIT)
        max_keys = MAX_KEYS_LIMIT;
    unsigned burst = conf->burst ? conf->burst : conf->rate;
    keel__ratelimit *rl = calloc(1, sizeof *rl);
    if (rl == NULL)
        return KEEL_ENOMEM;
    rl->interval_ns = NS_PER_S / (int64_t)conf->rate;
    if (rl->interval_ns < 1)
        rl->interval_ns = 1;
    rl->tolerance_ns = (int64_t)(burst - 1) * rl->interval_ns;
    int rc = shared ? shared_table_init(rl, max_keys)
                    : keel__lru_init(&rl->buckets, max_keys, MIN_PER_SHARD, MAX_SHARDS, bucket_is);
    if (rc != 0) {
        free(rl);
        return KEEL_ENOMEM;
    }
    *out = rl;
    return 0;
}

int keel__ratelimit_new(const struct keel__ratelimit_conf *conf, keel__ratelimit **out)
{
    return limiter_new(conf, false, out);
}

int keel__ratelimit_new_shared(const struct keel__ratelimit_conf *conf, keel__ratelimit **out)
{
    return limiter_new(conf, true, out);
}

void keel__ratelimit_set_server_wide(keel__ratelimit *rl)
{
    server_wide = rl;
}

keel__ratelimit *keel__ratelimit_server_wide(void)
{
    return server_wide;
}

/* The GCRA test for a bucket whose arrival time is tat (never before now):
 * true when it is empty, with *retry_after_s the whole seconds (1 to a day)
 * until the next token is back, which is when tat - tolerance is reached. */
static bool refused(const keel__ratelimit *rl, int64_t tat, int64_t now_ns, unsigned *retry_after_s)
{
    if (tat - now_ns <= rl->tolerance_ns)
        return false;
    int64_t wait = tat - rl->tolerance_ns - now_ns;
    int64_t secs = (wait + NS_PER_S - 1) / NS_PER_S;
    if (secs < 1)
        secs = 1;
    if (retry_after_s != NULL)
        *retry_after_s = secs > 86400 ? 86400u : (unsigned)secs;
    return true;
}

/* GCRA on one shared slot; the compare-and-swap loop stands in for the
 * shard lock. */
static int shared_take(keel__ratelimit *rl, uint64_t h, int64_t now_ns, unsigned *retry_after_s)
{
    h |= 1; /* 0 marks a free slot */
    size_t mask = rl->shared_slots - 1;
    struct shared_slot *slot = NULL, *stalest = NULL;
    int64_t stalest_tat = INT64_MAX;
    for (size_t i = 0; i < SHARED_PROBES && slot == NULL; i++) {
        struct shared_slot *c = &rl->shared[(h + i) & mask];
        uint64_t k = atomic_load(&c->key);
        if (k == h) {
            slot = c;
        } else if (k == 0) {
            uint64_t free_key = 0;
            if (atomic_compare_exchange_strong(&c->key, &free_key, h) || free_key == h)
                slot = c;
        } else {
            int64_t t = atomic_load(&c->tat);
            if (t < stalest_tat) {
                stalest_tat = t;
                stalest = c;
            }
        }
    }
    if (slot == NULL) {
        /* Full around here: the bucket that has had longest to refill is
         * taken over (it is usually full already; see the header). */
        slot = stalest;
        atomic_store(&slot->tat, 0);
        atomic_store(&slot->key, h);
    }
    int64_t old = atomic_load(&slot->tat);
    for (;;) {
        int64_t tat = old > now_ns ? old : now_ns;
        if (refused(rl, tat, now_ns, retry_after_s))
            return KEEL_EBUSY;
        if (atomic_compare_exchange_weak(&slot->tat, &old, tat + rl->interval_ns))
            return 0;
    }
}

void keel__ratelimit_free(keel__ratelimit *rl)
{
    if (rl == NULL)
        return;
    if (rl->shared != NULL)
        munmap(rl->shared, rl->shared_slots * sizeof *rl->shared);
    else
        keel__lru_destroy(&rl->buckets, bucket_free);
    free(rl);
}

/* Finds key's bucket in sh, creating it (and reusing the least recently used
 * one's memory when the shard is full).  NULL only when memory runs out.
 * Called with the shard locked. */
static struct bucket *bucket_get(keel__ratelimit *rl, struct keel__lru_shard *sh, const char *key,
                                 size_t len, uint64_t h, int64_t now)
{
    struct keel__lru_node *n = keel__lru_find(&rl->buckets, sh, h, key);
    if (n != NULL) {
        keel__lru_touch(sh, n);
        return (struct bucket *)n;
    }
    struct bucket *b;
    if (sh->count >= sh->cap && sh->oldest != NULL) {
        b = (struct bucket *)sh->oldest;
        keel__lru_remove(sh, &b->node);
    } else {
        b = malloc(sizeof *b);
        if (b == NULL)
            return NULL;
    }
    memcpy(b->key, key, len + 1);
    b->node.hash = h;
    b->tat = now; /* a new key starts with a full burst */
    /* Room was made above, so nothing is evicted here. */
    struct keel__lru_node *evicted = keel__lru_insert(sh, &b->node);
    free(evicted);
    return b;
}

int keel__ratelimit_take(keel__ratelimit *rl, const char *key, int64_t now_ns,
                         unsigned *retry_after_s)
{
    if (retry_after_s != NULL)
        *retry_after_s = 0;
    size_t len = key ? strlen(key) : 0;
    if (len == 0 || len > KEEL__RATELIMIT_MAX_KEY)
        return KEEL_EINVAL;
    uint64_t h = keel__lru_hash(key, len);
    if (rl->shared != NULL)
        return shared_take(rl, h, now_ns, retry_after_s);
    struct keel__lru_shard *s = keel__lru_shard(&rl->buckets, h);

    keel__lru_lock(s);
    struct bucket *b = bucket_get(rl, s, key, len, h, now_ns);
    if (b == NULL) {
        keel__lru_unlock(s);
        return KEEL_ENOMEM;
    }
    int64_t tat = b->tat > now_ns ? b->tat : now_ns;
    int rc = 0;
    if (refused(rl, tat, now_ns, retry_after_s))
        rc = KEEL_EBUSY;
    else
        b->tat = tat + rl->interval_ns;
    keel__lru_unlock(s);
    return rc;
}

size_t keel__ratelimit_size(keel__ratelimit *rl)
{
    size_t n = 0;
    if (rl->shared != NULL) {
        for (size_t i = 0; i < rl->shared_slots; i++)
            n += atomic_load(&rl->shared[i].key) != 0;
        return n;
    }
    for (unsigned i = 0; i < rl->buckets.nshards; i++) {
        struct keel__lru_shard *sh = &rl->buckets.shards[i];
        keel__lru_lock(sh);
        n += sh->count;
        keel__lru_unlock(sh);
    }
    return n;
}
