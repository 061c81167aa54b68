#include "config.h"

#include "util/lru.h"

#include <stdlib.h>
#include <string.h>

#include <keel/error.h>

static uint64_t mix(uint64_t h)
{
    /* MurmurHash3's 64-bit finaliser: every input bit reaches every output
     * bit, the high ones (which pick the shard) included. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/* Folds one word into the state: a multiply spreads it upwards, the shift
 * brings the high bits back down. */
static inline uint64_t fold(uint64_t h, uint64_t w)
{
    h = (h ^ w) * 0xc6a4a7935bd1e995ull;
    return h ^ (h >> 29);
}

uint64_t keel__lru_hash(const void *data, size_t n)
{
    /* Eight bytes a step (a token is hundreds of bytes; FNV's byte loop cost
     * about a nanosecond each): each word is folded in by a multiply and a
     * shift, and the length seeds the state so that keys differing only in
     * trailing zero bytes differ. */
    const unsigned char *s = data;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ ((uint64_t)n * 0xc6a4a7935bd1e995ull);
    for (; n >= 8; s += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = fold(h, w);
    }
    if (n > 0) {
        uint64_t w = 0;
        memcpy(&w, s, n);
        h = fold(h, w);
    }
    return mix(h);
}

int keel__lru_init(struct keel__lru *lru, size_t max_entries, size_t min_per_shard,
                   unsigned max_shards, keel__lru_match_fn match)
{
    memset(lru, 0, sizeof *lru);
    if (max_entries < 1)
        max_entries = 1;
    if (min_per_shard < 1)
        min_per_shard = 1;
    unsigned n = 1;
    while (n * 2 <= max_shards && max_entries / (n * 2) >= min_per_shard)
        n *= 2;
    lru->match = match;
    lru->shards = aligned_alloc(_Alignof(struct keel__lru_shard), n * sizeof *lru->shards);
    if (lru->shards == NULL)
        return KEEL_ENOMEM;
    memset(lru->shards, 0, n * sizeof *lru->shards);
    for (unsigned i = 0; i < n; i++) {
        struct keel__lru_shard *sh = &lru->shards[i];
        /* The remainder goes to the first shards so the capacities add up to
         * exactly max_entries. */
        sh->cap = max_entries / n + (i < max_entries % n ? 1 : 0);
        size_t nb = 8;
        while (nb < sh->cap)
            nb *= 2;
        sh->buckets = calloc(nb, sizeof *sh->buckets);
        if (sh->buckets == NULL || pthread_mutex_init(&sh->mu, NULL) != 0) {
            free(sh->buckets);
            lru->nshards = i;
            keel__lru_destroy(lru, NULL);
            return KEEL_ENOMEM;
        }
        sh->mask = nb - 1;
    }
    lru->nshards = n;
    return 0;
}

void keel__lru_destroy(struct keel__lru *lru, void (*free_node)(struct keel__lru_node *n))
{
    for (unsigned i = 0; i < lru->nshards; i++) {
        struct keel__lru_shard *sh = &lru->shards[i];
        struct keel__lru_node *n = sh->newest;
        while (n != NULL) {
            struct keel__lru_node *next = n->older;
            if (free_node != NULL)
                free_node(n);
            n = next;
        }
        free(sh->buckets);
        pthread_mutex_destroy(&sh->mu);
    }
    free(lru->shards);
    memset(lru, 0, sizeof *lru);
}

unsigned keel__lru_shard_index(const struct keel__lru *lru, uint64_t hash)
{
    /* The high bits pick the shard, the low bits the bucket within it. */
    return (unsigned)(hash >> 32) & (lru->nshards - 1);
}

struct keel__lru_shard *keel__lru_shard(const struct keel__lru *lru, uint64_t hash)
{
    return &lru->shards[keel__lru_shard_index(lru, hash)];
}

void keel__lru_lock(struct keel__lru_shard *sh)
{
    pthread_mutex_lock(&sh->mu);
}

void keel__lru_unlock(struct keel__lru_shard *sh)
{
    pthread_mutex_unlock(&sh->mu);
}

struct keel__lru_node *keel__lru_find(const struct keel__lru *lru, struct keel__lru_shard *sh,
                                      uint64_t hash, const void *key)
{
    for (struct keel__lru_node *n = sh->buckets[hash & sh->mask]; n != NULL; n = n->chain)
        if (n->hash == hash && lru->match(n, key))
            return n;
    return NULL;
}

static void list_unlink(struct keel__lru_shard *sh, struct keel__lru_node *n)
{
    if (n->newer != NULL)
        n->newer->older = n->older;
    else
        sh->newest = n->older;
    if (n->older != NULL)
        n->older->newer = n->newer;
    else
        sh->oldest = n->newer;
    n->newer = n->older = NULL;
}

static void list_push(struct keel__lru_shard *sh, struct keel__lru_node *n)
{
    n->older = sh->newest;
    n->newer = NULL;
    if (sh->newest != NULL)
        sh->newest->newer = n;
    else
        sh->oldest = n;
    sh->newest = n;
}

void keel__lru_touch(struct keel__lru_shard *sh, struct keel__lru_node *n)
{
    if (sh->newest == n)
        return;
    list_unlink(sh, n);
    list_push(sh, n);
}

void keel__lru_remove(struct keel__lru_shard *sh, struct keel__lru_node *n)
{
    struct keel__lru_node **pp = &sh->buckets[n->hash & sh->mask];
    while (*pp != NULL && *pp != n)
        pp = &(*pp)->chain;
    if (*pp == n)
        *pp = n->chain;
    n->chain = NULL;
    list_unlink(sh, n);
    sh->count--;
}

struct keel__lru_node *keel__lru_insert(struct keel__lru_shard *sh, struct keel__lru_node *n)
{
    struct keel__lru_node **head = &sh->buckets[n->hash & sh->mask];
    n->chain = *head;
    *head = n;
    list_push(sh, n);
    sh->count++;
    if (sh->count <= sh->cap)
        return NULL;
    struct keel__lru_node *old = sh->oldest;
    keel__lru_remove(sh, old);
    return old;
}
