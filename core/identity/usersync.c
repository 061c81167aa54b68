#include "config.h"

#include "identity/usersync.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <strings.h>

#include <keel/error.h>

#include "util/log.h"
#include "util/lru.h"
#include "util/text.h"

#define TAG "usersync"

/* Shards are a power of two so the shard index is a mask of the hash.  A
 * small cache gets fewer shards so that each still holds a useful number of
 * entries and LRU order stays meaningful (below 32 entries it is exact). */
#define MAX_SHARDS 64u
#define MIN_PER_SHARD 16
/* Bounds the bucket arrays allocated up front from configuration. */
#define MAX_ENTRIES_LIMIT (1 << 24)

#define NO_FIELD SIZE_MAX

/* The principal's strings, in the order they are packed into one block. */
enum field { F_USER_ID, F_SUPABASE_ID, F_EMAIL, F_FULL_NAME, F_ROLE, F_STATUS, F_TIER, F_COUNT };

/*
 * One cached user.  The principal's strings live in blob, packed exactly as
 * they are handed to a request, so a hit is one allocation and one memcpy
 * under the shard lock.  The token's email follows them: an entry only
 * answers for the email it was synced with, so a user whose email changed at
 * Supabase is synced again instead of being served the old one for a TTL.
 */
struct entry {
    struct keel__lru_node node; /* first: the LRU hands back nodes */
    int64_t inserted, expires;
    size_t off[F_COUNT]; /* offsets into blob, NO_FIELD for NULL */
    size_t principal_len;
    size_t token_email_off;
    char blob[];
};

/*
 * What each shard of the cache keeps besides its entries, aligned to its own
 * cache line(s) so that threads working on different shards do not
 * false-share the counters: a global hit counter would be one contended
 * line that every request writes.
 */
struct shard {
    /* Bumped by every eviction request, under the shard's lock: a sync that
     * started before an evict must not put back what the evict meant to drop
     * (the admin's change may have committed after the sync read the row). */
    _Alignas(64) uint64_t generation;
    atomic_uint_fast64_t hits, misses, evictions, sync_failures, entries;
};

struct keel__usersync {
    keel__db *db;
    int ttl_s;
    long initial_credits;
    bool caching;
    struct keel__lru cache; /* entries keyed by Supabase id */
    struct shard *shards;   /* one per cache shard */
};

/*
 * The whole sync in one statement, so it needs no transaction and cannot be
 * left half done:
 *  - known:   the row already linked to this Supabase id; the email follows
 *             the token unless another row holds it.
 *  - linked:  otherwise one row with the same email (case-insensitive) and
 *             no Supabase id gets this id.  A concurrent link of the same row
 *             re-checks "supabase_user_id IS NULL" after waiting for the lock
 *             and then finds nothing, so the insert below runs and meets the
 *             first link through ON CONFLICT.
 *  - created: otherwise a new row.  ON CONFLICT on supabase_user_id makes
 *             concurrent first requests for one user end with one row.
 *  - wallet:  created with the initial credits if missing; a grant is
 *             recorded only when this statement created it.  The NOT EXISTS
 *             keeps the insert from touching a wallet that exists: ON
 *             CONFLICT alone would wait for an unlock that holds the wallet
 *             (another worker or keeld), while this statement holds the
 *             user row that unlock's foreign-key checks need: a deadlock.
 * A unique violation on email (two users racing to one address) fails the
 * statement; the caller runs it once more, when the winner is visible.
 * $1 sub, $2 token email ('' when absent: no link, no insert, no email
 * change), $3 full name from user_metadata or NULL, $4 initial credits,
 * $5 the role of a new row, from keel__role_from_metadata().
 */
static const char sync_sql[] =
    "WITH known AS ("
    " UPDATE users u"
    "    SET email = CASE WHEN $2::text <> '' AND u.email <> $2::text"
    "                      AND NOT EXISTS (SELECT 1 FROM users o"
    "                                       WHERE lower(o.email) = lower($2::text)"
    "                                         AND o.id <> u.id)"
    "                     THEN $2::text ELSE u.email END,"
    "        full_name = COALESCE(u.full_name, $3::text),"
    "        last_login = now(), last_activity = now()"
    "  WHERE u.supabase_user_id = $1::uuid"
    " RETURNING u.id, u.email, u.full_name, u.role, u.status, u.subscription_tier"
    "), linked AS ("
    " UPDATE users u"
    "    SET supabase_user_id = $1::uuid, full_name = COALESCE(u.full_name, $3::text),"
    "        last_login = now(), last_activity = now()"
    "  WHERE u.supabase_user_id IS NULL"
    "    AND u.id = (SELECT o.id FROM users o"
    "                 WHERE $2::text <> '' AND lower(o.email) = lower($2::text)"
    "                   AND o.supabase_user_id IS NULL"
    "                 ORDER BY o.email = $2::text DESC, o.created_at LIMIT 1)"
    "    AND NOT EXISTS (SELECT 1 FROM known)"
    " RETURNING u.id, u.email, u.full_name, u.role, u.status, u.subscription_tier"
    "), created AS ("
    " INSERT INTO users AS u (supabase_user_id, email, full_name, role, status,"
    "                         subscription_tier, last_login, last_activity)"
    " SELECT $1::uuid, $2::text, $3::text, $5::text, 'active', 'free', now(), now()"
    "  WHERE $2::text <> '' AND NOT EXISTS (SELECT 1 FROM known)"
    "    AND NOT EXISTS (SELECT 1 FROM linked)"
    " ON CONFLICT (supabase_user_id) DO UPDATE"
    "    SET last_login = now(), last_activity = now()"
    " RETURNING u.id, u.email, u.full_name, u.role, u.status, u.subscription_tier"
    "), synced AS ("
    " SELECT * FROM known UNION ALL SELECT * FROM linked UNION ALL SELECT * FROM created"
    "), wallet AS ("
    " INSERT INTO credit_wallets (user_id, balance)"
    " SELECT id, $4::bigint FROM synced s"
    "  WHERE NOT EXISTS (SELECT 1 FROM credit_wallets w WHERE w.user_id = s.id)"
    " ON CONFLICT (user_id) DO NOTHING"
    " RETURNING user_id, balance"
    "), granted AS ("
    " INSERT INTO credit_transactions (user_id, amount, balance_after, kind, reason)"
    " SELECT user_id, balance, balance, 'grant', 'initial credits' FROM wallet"
    "  WHERE balance > 0"
    ")"
    " SELECT id, email, full_name, role, status, subscription_tier FROM synced";

const char *keel__role_from_metadata(const json_t *user_metadata)
{
    const char *r = json_string_value(json_object_get(user_metadata, "role"));

    if (r == NULL)
        return "free";
    if (strcmp(r, "premium") == 0 || strcmp(r, "standard") == 0)
        return r;
    if (strcmp(r, "super_admin") == 0 || strcmp(r, "superadmin") == 0)
        return "super_admin";
    return "free";
}

const char *keel__role_public(const char *stored)
{
    static const char *const known[] = {"free",       "standard", "premium",
                                        "enterprise", "admin",    "super_admin"};

    for (size_t i = 0; stored != NULL && i < sizeof known / sizeof known[0]; i++)
        if (strcmp(stored, known[i]) == 0)
            return known[i];
    if (stored != NULL && strcmp(stored, "superadmin") == 0)
        return "super_admin";
    /* Rows from before the mapping say "user": a plain, free account. */
    return "free";
}

/* Keys are the sub of a token that already passed signature verification,
 * so nobody can choose keys to flood one bucket. */
static uint64_t hash_key(const char *sub)
{
    return keel__lru_hash(sub, strlen(sub));
}

static size_t fields_size(const char *const v[F_COUNT])
{
    size_t n = 0;
    for (int i = 0; i < F_COUNT; i++)
        if (v[i] != NULL)
            n += strlen(v[i]) + 1;
    return n;
}

/* Copies the non-NULL strings of v back to back into dst (sized by
 * fields_size) and records where each one starts. */
static void fields_pack(const char *const v[F_COUNT], char *dst, size_t off[F_COUNT])
{
    size_t at = 0;
    for (int i = 0; i < F_COUNT; i++) {
        if (v[i] == NULL) {
            off[i] = NO_FIELD;
            continue;
        }
        size_t len = strlen(v[i]) + 1;
        memcpy(dst + at, v[i], len);
        off[i] = at;
        at += len;
    }
}

static void principal_set(struct keel__principal *p, char *block, const size_t off[F_COUNT],
                          bool synced)
{
    char *f[F_COUNT];
    for (int i = 0; i < F_COUNT; i++)
        f[i] = off[i] == NO_FIELD ? NULL : block + off[i];
    p->user_id = f[F_USER_ID];
    p->supabase_id = f[F_SUPABASE_ID];
    p->email = f[F_EMAIL];
    p->full_name = f[F_FULL_NAME];
    p->role = f[F_ROLE];
    p->status = f[F_STATUS];
    p->tier = f[F_TIER];
    p->synced = synced;
}

static int principal_fill(struct keel__principal *p, const char *const v[F_COUNT], bool synced,
                          void *(*alloc)(void *ctx, size_t size), void *ctx)
{
    size_t off[F_COUNT];
    size_t size = fields_size(v);
    char *block = alloc(ctx, size);
    if (block == NULL)
        return KEEL_ENOMEM;
    fields_pack(v, block, off);
    principal_set(p, block, off, synced);
    return 0;
}

static const char *claims_email(const struct keel__claims *c)
{
    return c->email != NULL ? c->email : "";
}

/* What log lines call the user: the email, or the sub for a token without. */
static const char *claims_who(const struct keel__claims *c)
{
    return claims_email(c)[0] != '\0' ? claims_email(c) : c->sub;
}

/* user_metadata.full_name, else user_metadata.name, else NULL. */
static const char *claims_full_name(const struct keel__claims *c)
{
    static const char *const keys[] = {"full_name", "name"};
    if (!json_is_object(c->user_metadata))
        return NULL;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        json_t *v = json_object_get(c->user_metadata, keys[i]);
        if (json_is_string(v) && json_string_length(v) > 0)
            return json_string_value(v);
    }
    return NULL;
}

static struct entry *entry_new(const char *const v[F_COUNT], const char *token_email, uint64_t hash,
                               int64_t now, int ttl_s)
{
    size_t plen = fields_size(v);
    size_t elen = strlen(token_email) + 1;
    struct entry *e = malloc(sizeof *e + plen + elen);
    if (e == NULL)
        return NULL;
    memset(&e->node, 0, sizeof e->node);
    e->node.hash = hash;
    e->inserted = now;
    e->expires = now + ttl_s;
    fields_pack(v, e->blob, e->off);
    e->principal_len = plen;
    e->token_email_off = plen;
    memcpy(e->blob + plen, token_email, elen);
    return e;
}

static const char *entry_sub(const struct entry *e)
{
    return e->blob + e->off[F_SUPABASE_ID];
}

static bool entry_is(const struct keel__lru_node *n, const void *sub)
{
    return strcmp(entry_sub((const struct entry *)n), sub) == 0;
}

static void entry_free(struct keel__lru_node *n)
{
    free(n);
}

/* The shard's own state and its part of the cache. */
struct place {
    struct keel__lru_shard *lru;
    struct shard *sh;
};

static struct place place_at(keel__usersync *us, unsigned i)
{
    return (struct place){&us->cache.shards[i], &us->shards[i]};
}

static struct place place_of(keel__usersync *us, uint64_t hash)
{
    return place_at(us, keel__lru_shard_index(&us->cache, hash));
}

/* Removes e from the cache; the caller holds the lock and frees e after. */
static void place_remove(struct place pl, struct entry *e)
{
    keel__lru_remove(pl.lru, &e->node);
    atomic_store_explicit(&pl.sh->entries, pl.lru->count, memory_order_relaxed);
}

static void counter_add(atomic_uint_fast64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

int keel__usersync_new(const struct keel__usersync_conf *conf, keel__db *db, keel__usersync **out)
{
    if (conf == NULL || out == NULL || conf->ttl_s < 0 || conf->max_entries < 0 ||
        conf->max_entries > MAX_ENTRIES_LIMIT || conf->initial_credits < 0)
        return KEEL_EINVAL;
    *out = NULL;
    keel__usersync *us = calloc(1, sizeof *us);
    if (us == NULL)
        return KEEL_ENOMEM;
    us->db = db;
    us->ttl_s = conf->ttl_s;
    us->initial_credits = conf->initial_credits;
    us->caching = conf->ttl_s > 0 && conf->max_entries > 0;
    if (keel__lru_init(&us->cache, (size_t)conf->max_entries, MIN_PER_SHARD, MAX_SHARDS,
                       entry_is) != 0) {
        free(us);
        return KEEL_ENOMEM;
    }
    unsigned n = us->cache.nshards;
    us->shards = aligned_alloc(_Alignof(struct shard), n * sizeof *us->shards);
    if (us->shards == NULL) {
        keel__lru_destroy(&us->cache, NULL);
        free(us);
        return KEEL_ENOMEM;
    }
    memset(us->shards, 0, n * sizeof *us->shards);
    for (unsigned i = 0; i < n; i++) {
        struct shard *sh = &us->shards[i];
        atomic_init(&sh->hits, 0);
        atomic_init(&sh->misses, 0);
        atomic_init(&sh->evictions, 0);
        atomic_init(&sh->sync_failures, 0);
        atomic_init(&sh->entries, 0);
    }
    *out = us;
    return 0;
}

void keel__usersync_free(keel__usersync *us)
{
    if (us == NULL)
        return;
    keel__lru_destroy(&us->cache, entry_free);
    free(us->shards);
    free(us);
}

/* What the cache last knew of a user whose entry no longer answers, for a
 * sync that fails. */
struct last_known {
    bool have;
    char role[64];
    char status[64];
    char tier[64];
};

static void remember(struct last_known *lk, const struct entry *e)
{
    const char *role = e->off[F_ROLE] == NO_FIELD ? "user" : e->blob + e->off[F_ROLE];
    const char *status = e->off[F_STATUS] == NO_FIELD ? "active" : e->blob + e->off[F_STATUS];
    const char *tier = e->off[F_TIER] == NO_FIELD ? "free" : e->blob + e->off[F_TIER];
    lk->have = true;
    snprintf(lk->role, sizeof lk->role, "%s", role);
    snprintf(lk->status, sizeof lk->status, "%s", status);
    snprintf(lk->tier, sizeof lk->tier, "%s", tier);
}

/*
 * The hit path.  Returns true when the cache answered: *rc is then 0 with *p
 * filled, or KEEL_ENOMEM.  On a miss *gen is the shard's generation, for
 * cache_put, and an entry that exists but no longer answers (expired, or
 * synced with another email) is kept, its role, status and tier copied to
 * *lk: they are the user's last known state should the sync fail.
 */
static bool cache_lookup(keel__usersync *us, struct place pl, uint64_t hash,
                         const struct keel__claims *c, int64_t now,
                         void *(*alloc)(void *ctx, size_t size), void *ctx,
                         struct keel__principal *p, int *rc, uint64_t *gen, struct last_known *lk)
{
    bool hit = false;

    keel__lru_lock(pl.lru);
    struct entry *e = (struct entry *)keel__lru_find(&us->cache, pl.lru, hash, c->sub);
    if (e != NULL && now >= e->inserted && now < e->expires &&
        strcmp(e->blob + e->token_email_off, claims_email(c)) == 0) {
        hit = true;
        keel__lru_touch(pl.lru, &e->node);
        /* alloc is the request's arena: cheap and never re-entrant here, so
         * calling it under the lock costs less than a second copy. */
        char *block = alloc(ctx, e->principal_len);
        if (block != NULL) {
            memcpy(block, e->blob, e->principal_len);
            principal_set(p, block, e->off, true);
            *rc = 0;
        } else {
            *rc = KEEL_ENOMEM;
        }
    } else if (e != NULL) {
        /* Expired (an entry from the "future" means the wall clock went
         * back: stale too, rather than trusted for longer than the TTL) or
         * synced with another email.  A successful sync replaces it. */
        remember(lk, e);
    }
    *gen = pl.sh->generation;
    keel__lru_unlock(pl.lru);
    return hit;
}

/* Caches e (taking it), replacing an older entry for the same user and
 * evicting the least recently used one when the shard is full.  Does nothing
 * if an evict ran since the lookup that led to this sync. */
static void cache_put(keel__usersync *us, struct place pl, struct entry *e, uint64_t gen)
{
    struct entry *drop[2] = {NULL, NULL};

    keel__lru_lock(pl.lru);
    if (pl.sh->generation != gen) {
        drop[0] = e;
    } else {
        drop[0] = (struct entry *)keel__lru_find(&us->cache, pl.lru, e->node.hash, entry_sub(e));
        if (drop[0] != NULL)
            keel__lru_remove(pl.lru, &drop[0]->node);
        drop[1] = (struct entry *)keel__lru_insert(pl.lru, &e->node);
        if (drop[1] != NULL)
            counter_add(&pl.sh->evictions);
        atomic_store_explicit(&pl.sh->entries, pl.lru->count, memory_order_relaxed);
    }
    keel__lru_unlock(pl.lru);
    free(drop[0]);
    free(drop[1]);
}

/*
 * Runs the sync statement.  On success *out is a result of exactly one row of
 * six columns that the caller PQclear()s; otherwise a KEEL_E* code with the
 * reason in err.
 */
static int sync_user(keel__usersync *us, const struct keel__claims *c, const char *full_name,
                     PGresult **out, char *err, size_t errlen)
{
    char credits[32];
    keel__db_conn *conn = NULL;
    PGresult *res = NULL;
    int rc;

    if (us->db == NULL) {
        snprintf(err, errlen, "no database configured");
        return KEEL_EDB_UNAVAILABLE;
    }
    snprintf(credits, sizeof credits, "%ld", us->initial_credits);
    const char *const params[5] = {c->sub, claims_email(c), full_name, credits,
                                   keel__role_from_metadata(c->user_metadata)};

    rc = keel__db_acquire(us->db, &conn, err, errlen);
    if (rc != 0)
        return rc;
    rc = keel__db_exec(us->db, conn, sync_sql, 5, params, &res, err, errlen);
    /* A conflict is a lost race: on a unique email (the winner is committed
     * now, so the next run takes the path that does not collide), or a
     * deadlock or serialization failure against another process syncing the
     * same new user (two workers, two keelds) while its unlocks hold the
     * wallet.  PostgreSQL rolled the statement back; running it again is
     * the documented answer.  A short pause with jitter lets the other side
     * finish first. */
    for (int attempt = 1; rc == KEEL_EDB_CONFLICT && attempt < 4; attempt++) {
        keel__log(KEEL_LOG_DEBUG, TAG, "sync of %s conflicted (attempt %d), retrying: %s",
                  claims_who(c), attempt, err);
        struct timespec pause = {0, (long)(1 + (unsigned)rand() % 10) * 1000000L * attempt};
        nanosleep(&pause, NULL);
        rc = keel__db_exec(us->db, conn, sync_sql, 5, params, &res, err, errlen);
    }
    keel__db_release(us->db, conn);
    if (rc != 0)
        return rc;
    if (PQntuples(res) != 1 || PQnfields(res) != 6) {
        if (PQntuples(res) == 0 && claims_email(c)[0] == '\0')
            snprintf(err, errlen, "the token has no email and no user has its id");
        else
            snprintf(err, errlen, "sync returned %d rows of %d columns", PQntuples(res),
                     PQnfields(res));
        PQclear(res);
        return KEEL_EDB_BUG;
    }
    *out = res;
    return 0;
}

int keel__usersync_resolve(keel__usersync *us, const struct keel__claims *claims, int64_t now,
                           void *(*alloc)(void *ctx, size_t size), void *ctx,
                           struct keel__principal *p)
{
    uint64_t hash = hash_key(claims->sub);
    struct place pl = place_of(us, hash);
    struct shard *sh = pl.sh;
    uint64_t gen = 0;
    int rc = 0;
    struct last_known lk = {.have = false};

    if (us->caching && cache_lookup(us, pl, hash, claims, now, alloc, ctx, p, &rc, &gen, &lk)) {
        counter_add(&sh->hits);
        keel__log(KEEL_LOG_DEBUG, TAG, "SYNC-CACHE: Cache HIT for %s", claims_who(claims));
        return rc;
    }
    counter_add(&sh->misses);
    keel__log(KEEL_LOG_INFO, TAG, "SYNC-CACHE: Cache MISS for %s", claims_who(claims));

    const char *full_name = claims_full_name(claims);
    char err[512] = "";
    PGresult *res = NULL;
    rc = sync_user(us, claims, full_name, &res, err, sizeof err);
    if (rc == 0) {
        const char *v[F_COUNT];
        v[F_USER_ID] = PQgetvalue(res, 0, 0);
        v[F_SUPABASE_ID] = claims->sub;
        v[F_EMAIL] = PQgetvalue(res, 0, 1);
        v[F_FULL_NAME] = PQgetisnull(res, 0, 2) ? NULL : PQgetvalue(res, 0, 2);
        v[F_ROLE] = PQgetvalue(res, 0, 3);
        v[F_STATUS] = PQgetvalue(res, 0, 4);
        v[F_TIER] = PQgetvalue(res, 0, 5);
        rc = principal_fill(p, v, true, alloc, ctx);
        if (rc == 0 && us->caching) {
            struct entry *e = entry_new(v, claims_email(claims), hash, now, us->ttl_s);
            /* Without memory for an entry the request still has its
             * principal; the next one simply syncs again. */
            if (e != NULL)
                cache_put(us, pl, e, gen);
        }
        PQclear(res);
        return rc;
    }

    counter_add(&sh->sync_failures);
    if (err[0] == '\0')
        snprintf(err, sizeof err, "%s", keel_strerror(rc));
    /* libpq ends its messages with a newline; the log line is one line. */
    keel__trim_newlines(err, 1);
    /* A user the cache has seen keeps its last known role and status, so an
     * outage does not lift a suspension; one never seen is admitted on its
     * claims as an active user, which the log records (docs/reliability.md). */
    if (lk.have)
        keel__log(KEEL_LOG_WARN, TAG,
                  "user sync failed for %s: %s; using token claims and its last known status (%s)",
                  claims_who(claims), err, lk.status);
    else
        keel__log(KEEL_LOG_WARN, TAG,
                  "user sync failed for %s: %s; using token claims (user never seen: admitted as "
                  "active)",
                  claims_who(claims), err);
    const char *v[F_COUNT];
    v[F_USER_ID] = NULL;
    v[F_SUPABASE_ID] = claims->sub;
    v[F_EMAIL] = claims_email(claims);
    v[F_FULL_NAME] = full_name;
    v[F_ROLE] = lk.have ? lk.role : keel__role_from_metadata(claims->user_metadata);
    v[F_STATUS] = lk.have ? lk.status : "active";
    v[F_TIER] = lk.have ? lk.tier : "free";
    return principal_fill(p, v, false, alloc, ctx);
}

/* True for the 8-4-4-4-12 hex form of a UUID (either case). */
static bool looks_like_uuid(const char *s)
{
    static const char hex[] = "0123456789abcdefABCDEF";
    size_t i = 0;
    for (; s[i] != '\0'; i++) {
        if (i >= 36)
            return false;
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (strchr(hex, s[i]) == NULL) {
            return false;
        }
    }
    return i == 36;
}

static int evict_sub(keel__usersync *us, const char *key)
{
    char sub[37];
    for (size_t i = 0; i < sizeof sub; i++)
        sub[i] = (key[i] >= 'A' && key[i] <= 'Z') ? (char)(key[i] - 'A' + 'a') : key[i];
    uint64_t hash = hash_key(sub);
    struct place pl = place_of(us, hash);

    keel__lru_lock(pl.lru);
    struct entry *e = (struct entry *)keel__lru_find(&us->cache, pl.lru, hash, sub);
    if (e != NULL)
        place_remove(pl, e);
    pl.sh->generation++;
    keel__lru_unlock(pl.lru);
    free(e);
    return e != NULL ? 1 : 0;
}

/* Drops the entries for email, or every entry when email is NULL.  An email
 * is not the key, so every shard is searched; this is an admin operation,
 * not a request path. */
static int evict_email(keel__usersync *us, const char *email)
{
    int dropped = 0;
    for (unsigned i = 0; i < us->cache.nshards; i++) {
        struct place pl = place_at(us, i);
        struct keel__lru_node *doomed = NULL;

        keel__lru_lock(pl.lru);
        struct keel__lru_node *n = pl.lru->newest;
        while (n != NULL) {
            struct keel__lru_node *next = n->older;
            struct entry *e = (struct entry *)n;
            if (email == NULL || strcasecmp(e->blob + e->off[F_EMAIL], email) == 0 ||
                strcasecmp(e->blob + e->token_email_off, email) == 0) {
                place_remove(pl, e);
                n->chain = doomed;
                doomed = n;
                dropped++;
            }
            n = next;
        }
        pl.sh->generation++;
        keel__lru_unlock(pl.lru);
        while (doomed != NULL) {
            struct keel__lru_node *next = doomed->chain;
            free(doomed);
            doomed = next;
        }
    }
    return dropped;
}

int keel__usersync_evict(keel__usersync *us, const char *supabase_id_or_email)
{
    if (us == NULL || supabase_id_or_email == NULL || supabase_id_or_email[0] == '\0')
        return 0;
    if (looks_like_uuid(supabase_id_or_email))
        return evict_sub(us, supabase_id_or_email);
    return evict_email(us, supabase_id_or_email);
}

int keel__usersync_flush(keel__usersync *us)
{
    return us == NULL ? 0 : evict_email(us, NULL);
}

void keel__usersync_stats(const keel__usersync *us, struct keel__usersync_stats *out)
{
    memset(out, 0, sizeof *out);
    if (us == NULL)
        return;
    for (unsigned i = 0; i < us->cache.nshards; i++) {
        struct shard *sh = &us->shards[i];
        out->hits += atomic_load_explicit(&sh->hits, memory_order_relaxed);
        out->misses += atomic_load_explicit(&sh->misses, memory_order_relaxed);
        out->evictions += atomic_load_explicit(&sh->evictions, memory_order_relaxed);
        out->sync_failures += atomic_load_explicit(&sh->sync_failures, memory_order_relaxed);
        out->entries += atomic_load_explicit(&sh->entries, memory_order_relaxed);
    }
}
