#include "config.h"

#include "identity/tokencache.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/lru.h"

/* Verified tokens remembered at most: a few per active user is plenty. */
#define MAX_TOKENS 4096
#define MIN_PER_SHARD 64
#define MAX_SHARDS 32u

struct token {
    struct keel__lru_node node; /* first: the LRU hands back nodes */
    time_t since;               /* when it verified */
    time_t until;               /* cache life end */
    struct keel__claims claims;
    /* One reference for the cache, one per request holding the claims: an
     * evicted token lives until the last of them is done. */
    struct keel__claims_pin pin;
    size_t len;
    char bytes[]; /* the token */
};

/* What a lookup matches: the token's bytes, whole. */
struct token_key {
    const char *bytes;
    size_t len;
};

struct keel__tokencache {
    struct keel__lru tokens; /* keyed by the token's bytes */
};

static bool token_is(const struct keel__lru_node *n, const void *key)
{
    const struct token *t = (const struct token *)n;
    const struct token_key *k = key;
    return t->len == k->len && memcmp(t->bytes, k->bytes, k->len) == 0;
}

static void token_release(struct keel__claims_pin *pin)
{
    struct token *t = (struct token *)((char *)pin - offsetof(struct token, pin));
    keel__claims_clear(&t->claims);
    free(t);
}

/* The cache lets go of a token: evicted, replaced or the cache freed. */
static void token_free(struct keel__lru_node *n)
{
    keel__claims_pin_drop(&((struct token *)n)->pin);
}

keel__tokencache *keel__tokencache_new(void)
{
    keel__tokencache *tc = calloc(1, sizeof *tc);
    if (tc == NULL)
        return NULL;
    if (keel__lru_init(&tc->tokens, MAX_TOKENS, MIN_PER_SHARD, MAX_SHARDS, token_is) != 0) {
        free(tc);
        return NULL;
    }
    return tc;
}

void keel__tokencache_free(keel__tokencache *tc)
{
    if (tc == NULL)
        return;
    keel__lru_destroy(&tc->tokens, token_free);
    free(tc);
}

bool keel__tokencache_get(keel__tokencache *tc, const char *token, size_t len, time_t now,
                          int exp_leeway, struct keel__claims *out)
{
    if (tc == NULL)
        return false;
    struct token_key k = {token, len};
    uint64_t h = keel__lru_hash(token, len);
    struct keel__lru_shard *sh = keel__lru_shard(&tc->tokens, h);
    bool hit = false;
    keel__lru_lock(sh);
    struct token *t = (struct token *)keel__lru_find(&tc->tokens, sh, h, &k);
    if (t != NULL && now >= t->since && now < t->until &&
        (int64_t)now <= t->claims.exp + exp_leeway) {
        keel__lru_touch(sh, &t->node);
        /* Lent, not copied: the claims never change once cached. */
        keel__claims_pin_hold(&t->pin);
        *out = t->claims;
        out->pin = &t->pin;
        hit = true;
    }
    keel__lru_unlock(sh);
    return hit;
}

void keel__tokencache_put(keel__tokencache *tc, const char *token, size_t len, time_t now,
                          const struct keel__claims *claims)
{
    if (tc == NULL || len > SIZE_MAX - sizeof(struct token))
        return;
    /* Copy outside the lock; inside, only pointers move. */
    struct token *t = calloc(1, sizeof *t + len);
    if (t == NULL)
        return;
    if (!keel__claims_copy(&t->claims, claims)) {
        free(t);
        return;
    }
    atomic_init(&t->pin.refs, 1);
    t->pin.release = token_release;
    memcpy(t->bytes, token, len);
    t->len = len;
    struct token_key k = {t->bytes, len};
    t->since = now;
    t->until = now + KEEL__TOKENCACHE_TTL_S;
    t->node.hash = keel__lru_hash(token, len);
    struct keel__lru_shard *sh = keel__lru_shard(&tc->tokens, t->node.hash);
    keel__lru_lock(sh);
    struct keel__lru_node *old = keel__lru_find(&tc->tokens, sh, t->node.hash, &k);
    if (old != NULL)
        keel__lru_remove(sh, old);
    struct keel__lru_node *evicted = keel__lru_insert(sh, &t->node);
    keel__lru_unlock(sh);
    if (old != NULL)
        token_free(old);
    if (evicted != NULL)
        token_free(evicted);
}
