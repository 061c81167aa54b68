/*
 * Unit tests for core/util/lru.c, the sharded LRU table the rate limiter,
 * the user-sync cache and the token cache share: shard capacities add up to
 * exactly the bound, a full shard gives back its least recently used entry,
 * touching an entry saves it, and destroy hands back every entry left.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "util/lru.h"

struct entry {
    struct keel__lru_node node; /* first: the table hands back nodes */
    char key[32];
};

static bool entry_is(const struct keel__lru_node *n, const void *key)
{
    return strcmp(((const struct entry *)n)->key, key) == 0;
}

static uint64_t hash_of(const char *key)
{
    return keel__lru_hash(key, strlen(key));
}

/* Inserts e under its key; returns the entry evicted, or NULL. */
static struct entry *put(struct keel__lru *lru, struct entry *e)
{
    e->node.hash = hash_of(e->key);
    struct keel__lru_shard *sh = keel__lru_shard(lru, e->node.hash);
    keel__lru_lock(sh);
    struct keel__lru_node *old = keel__lru_insert(sh, &e->node);
    keel__lru_unlock(sh);
    return (struct entry *)old;
}

static struct entry *get(struct keel__lru *lru, const char *key, bool touch)
{
    uint64_t h = hash_of(key);
    struct keel__lru_shard *sh = keel__lru_shard(lru, h);
    keel__lru_lock(sh);
    struct keel__lru_node *n = keel__lru_find(lru, sh, h, key);
    if (n != NULL && touch)
        keel__lru_touch(sh, n);
    keel__lru_unlock(sh);
    return (struct entry *)n;
}

/* The hash reads whole words and a tail: every prefix of a key (so every
 * tail length) and every one-byte change of a long key (a token) gives
 * another value, and the top bits, which pick the shard, vary too. */
static void test_hash_sees_every_byte(void **state)
{
    (void)state;
    unsigned char key[400];
    for (size_t i = 0; i < sizeof key; i++)
        key[i] = (unsigned char)('A' + i % 53);
    uint64_t seen[41];
    for (size_t n = 0; n <= 40; n++) {
        seen[n] = keel__lru_hash(key, n);
        for (size_t m = 0; m < n; m++)
            assert_true(seen[m] != seen[n]);
    }
    uint64_t whole = keel__lru_hash(key, sizeof key), tops = 0;
    for (size_t i = 0; i < sizeof key; i++) {
        key[i] ^= 1;
        uint64_t h = keel__lru_hash(key, sizeof key);
        key[i] ^= 1;
        assert_true(h != whole);
        tops |= 1ull << (h >> 58);
    }
    /* 400 changes spread over most of the 64 top-six-bit values. */
    assert_true(__builtin_popcountll(tops) > 48);
}

static void test_capacities_add_up_to_the_bound(void **state)
{
    (void)state;
    static const size_t bounds[] = {1, 7, 64, 1000, 4099};
    for (size_t b = 0; b < sizeof bounds / sizeof bounds[0]; b++) {
        struct keel__lru lru;
        assert_int_equal(keel__lru_init(&lru, bounds[b], 16, 64, entry_is), 0);
        assert_true(lru.nshards >= 1 && lru.nshards <= 64);
        assert_int_equal(lru.nshards & (lru.nshards - 1), 0);
        size_t total = 0;
        for (unsigned i = 0; i < lru.nshards; i++) {
            /* Every shard keeps at least its minimum, unless the whole
             * table is smaller than that. */
            assert_true(lru.shards[i].cap >= 16 || lru.nshards == 1);
            total += lru.shards[i].cap;
        }
        assert_int_equal(total, bounds[b]);
        keel__lru_destroy(&lru, NULL);
    }
}

/* One shard of three: the fourth entry pushes out the least recently used
 * one, and a touched entry is no longer the least recently used. */
static void test_full_shard_evicts_the_least_recently_used(void **state)
{
    (void)state;
    struct keel__lru lru;
    assert_int_equal(keel__lru_init(&lru, 3, 16, 64, entry_is), 0);
    assert_int_equal(lru.nshards, 1);
    struct entry e[5] = {{.key = "a"}, {.key = "b"}, {.key = "c"}, {.key = "d"}, {.key = "e"}};
    for (int i = 0; i < 3; i++)
        assert_null(put(&lru, &e[i]));
    assert_ptr_equal(get(&lru, "a", true), &e[0]); /* a is now the newest */
    assert_ptr_equal(put(&lru, &e[3]), &e[1]);     /* b was the oldest */
    assert_null(get(&lru, "b", false));
    assert_ptr_equal(put(&lru, &e[4]), &e[2]);
    assert_ptr_equal(get(&lru, "a", false), &e[0]);
    assert_ptr_equal(get(&lru, "d", false), &e[3]);
    assert_ptr_equal(get(&lru, "e", false), &e[4]);
    assert_int_equal(lru.shards[0].count, 3);
    keel__lru_destroy(&lru, NULL);
}

static int freed;

static void count_free(struct keel__lru_node *n)
{
    (void)n;
    freed++;
}

/* Removed entries are gone for find; destroy hands back the rest, across
 * every shard. */
static void test_remove_and_destroy_hand_back_entries(void **state)
{
    (void)state;
    struct keel__lru lru;
    assert_int_equal(keel__lru_init(&lru, 1024, 4, 16, entry_is), 0);
    assert_int_equal(lru.nshards, 16);
    static struct entry e[100];
    for (int i = 0; i < 100; i++) {
        snprintf(e[i].key, sizeof e[i].key, "user-%d", i);
        assert_null(put(&lru, &e[i]));
    }
    for (int i = 0; i < 100; i += 2) {
        struct keel__lru_shard *sh = keel__lru_shard(&lru, e[i].node.hash);
        keel__lru_lock(sh);
        keel__lru_remove(sh, &e[i].node);
        keel__lru_unlock(sh);
    }
    for (int i = 0; i < 100; i++)
        assert_ptr_equal(get(&lru, e[i].key, false), i % 2 ? &e[i] : NULL);
    freed = 0;
    keel__lru_destroy(&lru, count_free);
    assert_int_equal(freed, 50);
    assert_null(lru.shards);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_sees_every_byte),
        cmocka_unit_test(test_capacities_add_up_to_the_bound),
        cmocka_unit_test(test_full_shard_evicts_the_least_recently_used),
        cmocka_unit_test(test_remove_and_destroy_hand_back_entries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
