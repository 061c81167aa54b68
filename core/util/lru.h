/*
 * A sharded hash table with least-recently-used eviction, for the caches
 * keyed by a user or a token (rate limit buckets, user-sync entries,
 * verified tokens).  Nodes are intrusive: a cache embeds struct
 * keel__lru_node first in its entry and owns the entry's memory.
 *
 * The table is split into shards with a mutex each, so threads working for
 * different keys rarely meet on a lock.  The caller takes the shard's lock
 * (keel__lru_lock) around find/touch/insert/remove and decides what to do
 * with an evicted node, typically freeing it after unlocking.  A shard holds
 * at most its share of max_entries: keel__lru_insert returns the least
 * recently used node when the shard was full.
 */
#ifndef KEEL_CORE_UTIL_LRU_H
#define KEEL_CORE_UTIL_LRU_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <keel/common.h>

struct keel__lru_node {
    struct keel__lru_node *chain;         /* next in the hash bucket */
    struct keel__lru_node *newer, *older; /* LRU list, newest first */
    uint64_t hash;
};

struct keel__lru_shard {
    _Alignas(64) pthread_mutex_t mu;
    struct keel__lru_node **buckets;
    size_t mask;
    struct keel__lru_node *newest, *oldest;
    size_t count, cap;
};

/* True when n is the entry for key (called with the shard locked). */
typedef bool (*keel__lru_match_fn)(const struct keel__lru_node *n, const void *key);

struct keel__lru {
    unsigned nshards; /* a power of two */
    struct keel__lru_shard *shards;
    keel__lru_match_fn match;
};

/*
 * Sets up lru for at most max_entries entries (at least 1), in as many
 * shards (a power of two, at most max_shards) as keep min_per_shard entries
 * each; the capacities add up to exactly max_entries.  0 or KEEL_ENOMEM.
 */
int keel__lru_init(struct keel__lru *lru, size_t max_entries, size_t min_per_shard,
                   unsigned max_shards, keel__lru_match_fn match) KEEL_WARN_UNUSED;
/* Frees the shards; free_node (may be NULL) is called for every node left. */
void keel__lru_destroy(struct keel__lru *lru, void (*free_node)(struct keel__lru_node *n));

/* The shard hash belongs to, and its index. */
struct keel__lru_shard *keel__lru_shard(const struct keel__lru *lru, uint64_t hash);
unsigned keel__lru_shard_index(const struct keel__lru *lru, uint64_t hash);

void keel__lru_lock(struct keel__lru_shard *sh);
void keel__lru_unlock(struct keel__lru_shard *sh);

/* With the shard locked: the node for key, or NULL.  Does not touch it. */
struct keel__lru_node *keel__lru_find(const struct keel__lru *lru, struct keel__lru_shard *sh,
                                      uint64_t hash, const void *key);
/* Marks n the most recently used. */
void keel__lru_touch(struct keel__lru_shard *sh, struct keel__lru_node *n);
/* Adds n (n->hash set) as the most recently used; returns the node evicted
 * to make room (removed from the shard, the caller's to free) or NULL. */
struct keel__lru_node *keel__lru_insert(struct keel__lru_shard *sh,
                                        struct keel__lru_node *n) KEEL_WARN_UNUSED;
/* Removes n from its shard; the caller frees it. */
void keel__lru_remove(struct keel__lru_shard *sh, struct keel__lru_node *n);

/* A 64-bit hash of n bytes, eight at a time: keys are ids the identity
 * provider or the server chose, or tokens that verified, not what a client
 * makes up, so a keyed hash buys nothing. */
uint64_t keel__lru_hash(const void *data, size_t n);

#endif
