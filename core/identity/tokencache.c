#include "config.h"

#include "identity/tokencache.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "util/lru.h"

/* Verified tokens remembered at most: a few per active user is plenty. */
#define MAX_TOKENS 4096
#define MIN_PER_SHARD 64
#define MAX_SHARDS 32u

struct token {
    struct keel__lru_node node; /* first: the LRU hands back nodes */
    unsigned char digest[32];
    time_t since; /* when it verified */
    time_t until; /* cache life end */
    struct keel__claims claims;
    /* One reference for the cache, one per request holding the claims: an
     * evicted token lives until the last of them is done. */
    struct keel__claims_pin pin;
};

struct keel__tokencache {
    struct keel__lru tokens; /* keyed by the token's SHA-256 */
};

static bool token_is(const struct keel__lru_node *n, const void *digest)
{
    return memcmp(((const struct token *)n)->digest, digest, 32) == 0;
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

/* SHA-256 fetched from the provider once: EVP_sha256() makes OpenSSL 3
 * look the algorithm up again on every digest, which cost about a third of
 * the digest on a cache hit (perf). */
static EVP_MD *sha256;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
/* Each thread's digest context, kept between requests: EVP_Digest()
 * allocates, sets up and frees one per call, most of its cost for a token of
 * a few hundred bytes.  Freed when the thread ends. */
static pthread_key_t ctx_key;
static bool ctx_key_ok;

static void free_ctx(void *ctx)
{
    EVP_MD_CTX_free(ctx);
}

static void fetch_sha256(void)
{
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    ctx_key_ok = pthread_key_create(&ctx_key, free_ctx) == 0;
}

static EVP_MD_CTX *thread_ctx(void)
{
    if (!ctx_key_ok)
        return NULL;
    EVP_MD_CTX *ctx = pthread_getspecific(ctx_key);
    if (ctx == NULL && (ctx = EVP_MD_CTX_new()) != NULL && pthread_setspecific(ctx_key, ctx) != 0) {
        EVP_MD_CTX_free(ctx);
        ctx = NULL;
    }
    return ctx;
}

static bool digest_of(const char *token, size_t len, unsigned char out[32])
{
    pthread_once(&sha256_once, fetch_sha256);
    const EVP_MD *md = sha256 != NULL ? sha256 : EVP_sha256();
    unsigned int n = 0;
    EVP_MD_CTX *ctx = thread_ctx();
    if (ctx == NULL)
        return EVP_Digest(token, len, out, &n, md, NULL) == 1 && n == 32;
    return EVP_DigestInit_ex2(ctx, md, NULL) == 1 && EVP_DigestUpdate(ctx, token, len) == 1 &&
           EVP_DigestFinal_ex(ctx, out, &n) == 1 && n == 32;
}

/* The digest is already a uniform hash of the token. */
static uint64_t hash_of(const unsigned char d[32])
{
    uint64_t h;
    memcpy(&h, d, sizeof h);
    return h;
}

bool keel__tokencache_get(keel__tokencache *tc, const char *token, size_t len, time_t now,
                          int exp_leeway, struct keel__claims *out)
{
    unsigned char d[32];
    if (tc == NULL || !digest_of(token, len, d))
        return false;
    uint64_t h = hash_of(d);
    struct keel__lru_shard *sh = keel__lru_shard(&tc->tokens, h);
    bool hit = false;
    keel__lru_lock(sh);
    struct token *t = (struct token *)keel__lru_find(&tc->tokens, sh, h, d);
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
    unsigned char d[32];
    if (tc == NULL || !digest_of(token, len, d))
        return;
    /* Copy outside the lock; inside, only pointers move. */
    struct token *t = calloc(1, sizeof *t);
    if (t == NULL)
        return;
    if (!keel__claims_copy(&t->claims, claims)) {
        free(t);
        return;
    }
    atomic_init(&t->pin.refs, 1);
    t->pin.release = token_release;
    memcpy(t->digest, d, sizeof d);
    t->since = now;
    t->until = now + KEEL__TOKENCACHE_TTL_S;
    t->node.hash = hash_of(d);
    struct keel__lru_shard *sh = keel__lru_shard(&tc->tokens, t->node.hash);
    keel__lru_lock(sh);
    struct keel__lru_node *old = keel__lru_find(&tc->tokens, sh, t->node.hash, d);
    if (old != NULL)
        keel__lru_remove(sh, old);
    struct keel__lru_node *evicted = keel__lru_insert(sh, &t->node);
    keel__lru_unlock(sh);
    if (old != NULL)
        token_free(old);
    if (evicted != NULL)
        token_free(evicted);
}
