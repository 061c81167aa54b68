/*
 * User sync (docs/architecture.md, Authentication): turns verified token claims into the
 * request's principal, upserting the user into `users` at most once per TTL.
 *
 * The cache is per process, keyed by Supabase id, kept in the core's sharded
 * LRU table (util/lru.h): shards with a mutex each, so threads working for
 * different users rarely touch the same lock and no global lock sits on the
 * hot path.  Each shard holds at
 * most max_entries / nshards entries and evicts the least recently used one.
 * Every lookup is counted as a hit or a miss and logged as
 * "SYNC-CACHE: Cache HIT for <email>" (debug) or "... MISS ..." (info).  A hit
 * does no database work.  When the sync fails (database down) the principal
 * is built from the claims, with the last known role and status of a user
 * the cache has seen (docs/reliability.md); nothing new is cached, and the
 * next request retries.
 */
#ifndef KEEL_CORE_IDENTITY_USERSYNC_H
#define KEEL_CORE_IDENTITY_USERSYNC_H

#include <stdbool.h>
#include <stdint.h>

#include <keel/common.h>

#include "identity/auth.h"
#include "data/db.h"

/* The request's user.  Strings are owned by whoever filled it (see below). */
struct keel__principal {
    char *user_id; /* local users.id, NULL when not synced */
    char *supabase_id;
    char *email;
    char *full_name;
    char *role;   /* local role: "user", "admin", ... */
    char *status; /* "active", "pending", "inactive", "suspended" */
    char *tier;
    bool synced;
};

typedef struct keel__usersync keel__usersync;

/*
 * ttl_s or max_entries 0 turns the cache off (every lookup is a miss that
 * syncs).  A cache of fewer than 32 entries is a single shard, so its LRU
 * order is exact; larger ones use up to 64 shards.  An entry only answers for
 * the email it was synced with: a token carrying a new email is a miss.
 * initial_credits is put in the wallet created on a user's first sync (and
 * recorded as a 'grant' transaction when positive).
 */
struct keel__usersync_conf {
    int ttl_s;
    int max_entries; /* at most 16777216 */
    long initial_credits;
};

/* db may be NULL (no database configured): every lookup is then a miss that
 * builds the principal from the claims. */
int keel__usersync_new(const struct keel__usersync_conf *conf, keel__db *db,
                       keel__usersync **out) KEEL_WARN_UNUSED;
void keel__usersync_free(keel__usersync *us);

/*
 * Fills *p for verified claims.  Strings in *p are allocated with
 * alloc(ctx, size) (the request's arena), so p needs no freeing.  Returns 0;
 * KEEL_ENOMEM only if alloc fails.  now is wall-clock seconds.
 */
int keel__usersync_resolve(keel__usersync *us, const struct keel__claims *claims, int64_t now,
                           void *(*alloc)(void *ctx, size_t size), void *ctx,
                           struct keel__principal *p) KEEL_WARN_UNUSED;

/* Drops a user from the cache now (by Supabase id or email); returns the
 * number of entries dropped. */
int keel__usersync_evict(keel__usersync *us, const char *supabase_id_or_email);
/* Drops every entry (changes may have been missed); returns how many. */
int keel__usersync_flush(keel__usersync *us);

struct keel__usersync_stats {
    uint64_t hits, misses, evictions, sync_failures;
    uint64_t entries;
};
void keel__usersync_stats(const keel__usersync *us, struct keel__usersync_stats *out);

/*
 * The role a new user gets from the token's user_metadata.role, as the
 * replaced system mapped it: free, premium and standard keep their name,
 * super_admin and superadmin become super_admin, anything else (or none)
 * is free.  Returns a static string.
 */
const char *keel__role_from_metadata(const json_t *user_metadata);
/*
 * The role /auth/me shows for a stored role: one the frontend knows (free,
 * standard, premium, enterprise, admin, super_admin); "superadmin" reads as
 * super_admin and anything else, such as the old default "user", as free.
 * Returns a static string.
 */
const char *keel__role_public(const char *stored);

#endif
