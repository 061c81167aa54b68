#include "config.h"

#include "identity/tokencache.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#define NSHARDS 32
#define SLOTS_PER_SHARD 128

struct slot {
    bool used;
    unsigned char digest[32];
    time_t since; /* when it verified */
    time_t until; /* cache life end */
    struct keel__claims claims;
};

struct shard {
    pthread_mutex_t mu;
    struct slot slots[SLOTS_PER_SHARD];
};

struct keel__tokencache {
    struct shard shards[NSHARDS];
};

keel__tokencache *keel__tokencache_new(void)
{
    keel__tokencache *tc = calloc(1, sizeof *tc);
    if (tc == NULL)
        return NULL;
    for (size_t i = 0; i < NSHARDS; i++)
        pthread_mutex_init(&tc->shards[i].mu, NULL);
    return tc;
}

void keel__tokencache_free(keel__tokencache *tc)
{
    if (tc == NULL)
        return;
    for (size_t i = 0; i < NSHARDS; i++) {
        for (size_t j = 0; j < SLOTS_PER_SHARD; j++)
            keel__claims_clear(&tc->shards[i].slots[j].claims);
        pthread_mutex_destroy(&tc->shards[i].mu);
    }
    free(tc);
}

static bool digest_of(const char *token, size_t len, unsigned char out[32])
{
    unsigned int n = 0;
    return EVP_Digest(token, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32;
}

static struct slot *slot_for(keel__tokencache *tc, const unsigned char d[32], struct shard **sh)
{
    uint32_t h;
    memcpy(&h, d, sizeof h);
    *sh = &tc->shards[h % NSHARDS];
    return &(*sh)->slots[(h / NSHARDS) % SLOTS_PER_SHARD];
}

static bool copy_claims(struct keel__claims *dst, const struct keel__claims *src)
{
    memset(dst, 0, sizeof *dst);
    memcpy(dst->sub, src->sub, sizeof dst->sub);
    dst->exp = src->exp;
    dst->email = strdup(src->email ? src->email : "");
    dst->role = strdup(src->role ? src->role : "");
    if (src->user_metadata != NULL)
        dst->user_metadata = json_deep_copy(src->user_metadata);
    if (dst->email == NULL || dst->role == NULL ||
        (src->user_metadata != NULL && dst->user_metadata == NULL)) {
        keel__claims_clear(dst);
        return false;
    }
    return true;
}

bool keel__tokencache_get(keel__tokencache *tc, const char *token, size_t len, time_t now,
                          int exp_leeway, struct keel__claims *out)
{
    unsigned char d[32];
    if (tc == NULL || !digest_of(token, len, d))
        return false;
    struct shard *sh;
    struct slot *s = slot_for(tc, d, &sh);
    bool hit = false;
    pthread_mutex_lock(&sh->mu);
    if (s->used && memcmp(s->digest, d, sizeof d) == 0 && now >= s->since && now < s->until &&
        (int64_t)now <= s->claims.exp + exp_leeway)
        hit = copy_claims(out, &s->claims);
    pthread_mutex_unlock(&sh->mu);
    return hit;
}

void keel__tokencache_put(keel__tokencache *tc, const char *token, size_t len, time_t now,
                          const struct keel__claims *claims)
{
    unsigned char d[32];
    if (tc == NULL || !digest_of(token, len, d))
        return;
    /* Copy outside the lock; the slot swap inside is a struct assignment. */
    struct keel__claims copy;
    if (!copy_claims(&copy, claims))
        return;
    struct keel__claims old;
    struct shard *sh;
    struct slot *s = slot_for(tc, d, &sh);
    pthread_mutex_lock(&sh->mu);
    old = s->claims;
    s->claims = copy;
    memcpy(s->digest, d, sizeof d);
    s->since = now;
    s->until = now + KEEL__TOKENCACHE_TTL_S;
    s->used = true;
    pthread_mutex_unlock(&sh->mu);
    keel__claims_clear(&old);
}
