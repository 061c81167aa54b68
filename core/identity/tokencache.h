/*
 * A cache of verified tokens.  The frontend sends the same bearer token on
 * every request for up to an hour; verifying it costs two JSON parses and a
 * signature check (docs/performance.md measured 60% of an authenticated
 * route).  A token that verified is remembered, its bytes compared whole
 * on a lookup (a hash picks the slot; no two tokens can meet), for at
 * most KEEL__TOKENCACHE_TTL_S seconds and never past its own exp (plus the
 * leeway), so a hit gives exactly the answer a full verification would.
 * Failed verifications are never cached.  Keys only change with a restart,
 * so nothing needs invalidating.
 *
 * Kept in the core's sharded LRU table (util/lru.h), at most 4096 tokens
 * per worker, each holding its bytes: Supabase tokens are about 1 KiB (4 MiB
 * for a full cache), and at most max_token_bytes (8 KiB by default: 32 MiB
 * for a cache full of the largest tokens keel accepts).  A lookup takes
 * one shard lock for a compare of the token and lends the cached claims
 * under a reference count (no copy).
 */
#ifndef KEEL_CORE_IDENTITY_TOKENCACHE_H
#define KEEL_CORE_IDENTITY_TOKENCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "identity/claims.h"

#define KEEL__TOKENCACHE_TTL_S 60

typedef struct keel__tokencache keel__tokencache;

keel__tokencache *keel__tokencache_new(void);
void keel__tokencache_free(keel__tokencache *tc);

/* On a hit fills *out with the cached claims, lent (read-only; release
 * with keel__claims_clear), and returns true.  exp_leeway is the leeway
 * applied to exp. */
bool keel__tokencache_get(keel__tokencache *tc, const char *token, size_t len, time_t now,
                          int exp_leeway, struct keel__claims *out);
/* Remembers claims of a token that just verified (copies them). */
void keel__tokencache_put(keel__tokencache *tc, const char *token, size_t len, time_t now,
                          const struct keel__claims *claims);

#endif
