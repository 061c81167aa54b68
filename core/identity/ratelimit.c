#include "config.h"

#include "identity/ratelimit.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <string.h>

#include <keel/error.h>

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
    struct bucket *chain;         /* next in the hash chain */
    struct bucket *newer, *older; /* LRU list, newest first */
    uint64_t hash;
    int64_t tat;
    char key[KEEL__RATELIMIT_MAX_KEY + 1];
};

struct shard {
    _Alignas(64) pthread_mutex_t mu;
    struct bucket **table;
    size_t mask;
    struct bucket *newest, *oldest;
    size_t count, cap;
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
    int64_t interval_ns;  /* time for one token to come back */
    int64_t tolerance_ns; /* (burst - 1) intervals */
    unsigned nshards;
    struct shard *shards;
    /* keel__ratelimit_new_shared: the table instead of the shards. */
    struct shared_slot *shared;
    size_t shared_slots;
};

static keel__ratelimit *server_wide;

static uint64_t hash_key(const char *s, size_t n)
{
    /* FNV-1a: keys are UUIDs chosen by the identity provider, not by the
     * client, so a keyed hash buys nothing here. */
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static size_t pow2_at_least(size_t n)
{
    size_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

int keel__ratelimit_new(const struct keel__ratelimit_conf *conf, keel__ratelimit **out)
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

    unsigned n = 1;
    while (n < MAX_SHARDS && max_keys / (n * 2) >= MIN_PER_SHARD)
        n *= 2;
    rl->nshards = n;
    rl->shards = aligned_alloc(64, sizeof *rl->shards * n);
    if (rl->shards == NULL) {
        free(rl);
        return KEEL_ENOMEM;
    }
    memset(rl->shards, 0, sizeof *rl->shards * n);
    size_t per = max_keys / n;
    if (per == 0)
        per = 1;
    for (unsigned i = 0; i < n; i++) {
        struct shard *s = &rl->shards[i];
        pthread_mutex_init(&s->mu, NULL);
        s->cap = per;
        size_t slots = pow2_at_least(per * 2 > 16 ? per * 2 : 16);
        s->table = calloc(slots, sizeof *s->table);
        s->mask = slots - 1;
        if (s->table == NULL) {
            rl->nshards = i + 1;
            keel__ratelimit_free(rl);
            return KEEL_ENOMEM;
        }
    }
    *out = rl;
    return 0;
}

int keel__ratelimit_new_shared(const struct keel__ratelimit_conf *conf, keel__ratelimit **out)
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
    /* Twice the keys, so probes stay short. */
    rl->shared_slots = pow2_at_least(max_keys * 2);
    void *p = mmap(NULL, rl->shared_slots * sizeof *rl->shared, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        free(rl);
        return KEEL_ENOMEM;
    }
    rl->shared = p; /* zero-filled: every slot free */
    *out = rl;
    return 0;
}

void keel__ratelimit_set_server_wide(keel__ratelimit *rl)
{
    server_wide = rl;
}

keel__ratelimit *keel__ratelimit_server_wide(void)
{
    return server_wide;
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
        if (tat - now_ns > rl->tolerance_ns) {
            int64_t wait = tat - rl->tolerance_ns - now_ns;
            int64_t secs = (wait + NS_PER_S - 1) / NS_PER_S;
            if (secs < 1)
                secs = 1;
            if (retry_after_s != NULL)
                *retry_after_s = secs > 86400 ? 86400u : (unsigned)secs;
            return KEEL_EBUSY;
        }
        if (atomic_compare_exchange_weak(&slot->tat, &old, tat + rl->interval_ns))
            return 0;
    }
}

void keel__ratelimit_free(keel__ratelimit *rl)
{
    if (rl == NULL)
        return;
    if (rl->shared != NULL) {
        munmap(rl->shared, rl->shared_slots * sizeof *rl->shared);
        free(rl);
        return;
    }
    for (unsigned i = 0; i < rl->nshards; i++) {
        struct shard *s = &rl->shards[i];
        struct bucket *b = s->newest;
        while (b != NULL) {
            struct bucket *next = b->older;
            free(b);
            b = next;
        }
        free(s->table);
        pthread_mutex_destroy(&s->mu);
    }
    free(rl->shards);
    free(rl);
}

static void lru_unlink(struct shard *s, struct bucket *b)
{
    if (b->newer != NULL)
        b->newer->older = b->older;
    else
        s->newest = b->older;
    if (b->older != NULL)
        b->older->newer = b->newer;
    else
        s->oldest = b->newer;
    b->newer = b->older = NULL;
}

static void lru_push(struct shard *s, struct bucket *b)
{
    b->older = s->newest;
    b->newer = NULL;
    if (s->newest != NULL)
        s->newest->newer = b;
    s->newest = b;
    if (s->oldest == NULL)
        s->oldest = b;
}

static void chain_remove(struct shard *s, struct bucket *b)
{
    struct bucket **p = &s->table[b->hash & s->mask];
    while (*p != NULL && *p != b)
        p = &(*p)->chain;
    if (*p == b)
        *p = b->chain;
}

/* Finds key's bucket in s, creating it (and evicting the oldest when full).
 * NULL only when memory runs out.  Called with s->mu held. */
static struct bucket *bucket_get(struct shard *s, const char *key, size_t len, uint64_t h,
                                 int64_t now)
{
    for (struct bucket *b = s->table[h & s->mask]; b != NULL; b = b->chain) {
        if (b->hash == h && strcmp(b->key, key) == 0) {
            lru_unlink(s, b);
            lru_push(s, b);
            return b;
        }
    }
    struct bucket *b;
    if (s->count >= s->cap && s->oldest != NULL) {
        /* Reuse the least recently used bucket's memory. */
        b = s->oldest;
        lru_unlink(s, b);
        chain_remove(s, b);
        s->count--;
    } else {
        b = malloc(sizeof *b);
        if (b == NULL)
            return NULL;
    }
    memcpy(b->key, key, len + 1);
    b->hash = h;
    b->tat = now; /* a new key starts with a full burst */
    b->chain = s->table[h & s->mask];
    s->table[h & s->mask] = b;
    lru_push(s, b);
    s->count++;
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
    uint64_t h = hash_key(key, len);
    if (rl->shared != NULL)
        return shared_take(rl, h, now_ns, retry_after_s);
    /* The top bits choose the shard, the low bits the hash slot. */
    struct shard *s = &rl->shards[(h >> 40) & (rl->nshards - 1)];

    pthread_mutex_lock(&s->mu);
    struct bucket *b = bucket_get(s, key, len, h, now_ns);
    if (b == NULL) {
        pthread_mutex_unlock(&s->mu);
        return KEEL_ENOMEM;
    }
    int64_t tat = b->tat > now_ns ? b->tat : now_ns;
    int rc = 0;
    if (tat - now_ns > rl->tolerance_ns) {
        /* The next token is back when tat - tolerance is reached. */
        int64_t wait = tat - rl->tolerance_ns - now_ns;
        int64_t secs = (wait + NS_PER_S - 1) / NS_PER_S;
        if (secs < 1)
            secs = 1;
        if (retry_after_s != NULL)
            *retry_after_s = secs > 86400 ? 86400u : (unsigned)secs;
        rc = KEEL_EBUSY;
    } else {
        b->tat = tat + rl->interval_ns;
    }
    pthread_mutex_unlock(&s->mu);
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
    for (unsigned i = 0; i < rl->nshards; i++) {
        pthread_mutex_lock(&rl->shards[i].mu);
        n += rl->shards[i].count;
        pthread_mutex_unlock(&rl->shards[i].mu);
    }
    return n;
}
