/*
 * The creator plugin's read routes: system stats, the unlocked list, a
 * profile, its status and its posts (search jobs are in jobs.c).
 *
 * Reads never fail with 5xx because of the database: when it is unavailable
 * (or the caller's local user id is unknown) each route answers 200 with its
 * degraded body and X-Keel-Degraded: database.  The degraded bodies of stats
 * and unlocked are fixed by what the frontend expects.  The others are this
 * plugin's choice: the route's usual top-level keys ("profile": null,
 * "posts": [], "status": "unknown" where a value cannot be known) plus
 * "success": false, "error": "Database connectivity issues" and a "message".
 */
#include "config.h"

#include "creator.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------- system stats */

/* "66.7%": one decimal rounded half up in integer arithmetic, "0%" if empty. */
static json_t *stats_section(long long total, long long ai)
{
    char rate[32];

    if (total < 0)
        total = 0;
    if (ai < 0)
        ai = 0;
    if (total == 0) {
        snprintf(rate, sizeof rate, "0%%");
    } else {
        long long tenths = (ai * 1000 + total / 2) / total;

        snprintf(rate, sizeof rate, "%lld.%lld%%", tenths / 10, tenths % 10);
    }
    return json_pack("{s:I,s:I,s:s}", "total", (json_int_t)total, "with_ai_analysis",
                     (json_int_t)ai, "ai_completion_rate", rate);
}

static int stats_degraded(keel_request *req)
{
    return creator_degraded(
        req,
        json_pack("{s:{s:o,s:o,s:{s:s,s:s}}}", "stats", "profiles", stats_section(0, 0), "posts",
                  stats_section(0, 0), "system", "status", "degraded", "ai_system", "unavailable"),
        "System statistics partially unavailable - system will retry automatically");
}

static long long elapsed_ms(const struct timespec *from, const struct timespec *to)
{
    return (long long)(to->tv_sec - from->tv_sec) * 1000 + (to->tv_nsec - from->tv_nsec) / 1000000;
}

/* Copies the cached counts into counts if they were read less than
 * stats_cache_ms ago. */
static bool stats_cached(struct creator_conf *conf, long long counts[2][2])
{
    struct creator_stats_cache *c = &conf->stats;
    struct timespec now;
    bool hit;

    if (conf->stats_cache_ms <= 0)
        return false;
    clock_gettime(CLOCK_MONOTONIC, &now);
    pthread_mutex_lock(&c->lock);
    hit = c->valid && elapsed_ms(&c->read_at, &now) < conf->stats_cache_ms;
    if (hit)
        memcpy(counts, c->counts, sizeof c->counts);
    pthread_mutex_unlock(&c->lock);
    return hit;
}

/* Keeps counts read by a query sent at read_at, unless a concurrent
 * handler has stored counts from a later query meanwhile. */
static void stats_store(struct creator_conf *conf, const struct timespec *read_at,
                        long long counts[2][2])
{
    struct creator_stats_cache *c = &conf->stats;

    pthread_mutex_lock(&c->lock);
    if (!c->valid || elapsed_ms(&c->read_at, read_at) >= 0) {
        c->valid = true;
        c->read_at = *read_at;
        memcpy(c->counts, counts, sizeof c->counts);
    }
    pthread_mutex_unlock(&c->lock);
}

static json_t *stats_body(long long counts[2][2])
{
    return json_pack("{s:b,s:{s:o,s:o,s:{s:s,s:s}},s:s}", "success", 1, "stats", "profiles",
                     stats_section(counts[0][0], counts[0][1]), "posts",
                     stats_section(counts[1][0], counts[1][1]), "system", "status", "operational",
                     "ai_system", "active", "message", "System statistics retrieved successfully");
}

/* Reads the counts from the database into counts (and the cache).  0, or
 * the database's error code (logged). */
static int stats_read(keel_request *req, struct creator_conf *conf, long long counts[2][2])
{
    keel_db_result *res = NULL;
    struct timespec read_at;
    int rc;

    clock_gettime(CLOCK_MONOTONIC, &read_at);
    /* Two rows kept current by triggers: no COUNT over the big tables. */
    rc = creator_host->db_query(req,
                                "SELECT name, total, ai_analyzed FROM stats_counters"
                                " WHERE name IN ('profiles', 'posts')",
                                0, NULL, &res);
    if (rc != 0) {
        creator_log_db(req, rc, "system stats");
        return rc;
    }
    for (int i = 0; i < creator_host->db_rows(res); i++) {
        const char *name = creator_col(res, i, "name");
        int which = name != NULL && strcmp(name, "posts") == 0;
        long long v;

        if (creator_parse_ll(creator_col(res, i, "total"), &v))
            counts[which][0] = v;
        if (creator_parse_ll(creator_col(res, i, "ai_analyzed"), &v))
            counts[which][1] = v;
    }
    if (conf->stats_reads != NULL)
        creator_host->metric_observe(conf->stats_reads, 1);
    if (conf->stats_cache_ms > 0)
        stats_store(conf, &read_at, counts);
    return 0;
}

/*
 * The counts are cached per worker process for stats_cache_ms (default
 * 1000): an answer reflects the database as it was at most that long ago,
 * measured from just before the query that read them was sent.  Only the
 * counts are shared between handlers; each answer is built from a copy of
 * them, outside the cache's lock.
 */
int creator_stats(keel_request *req, void *state)
{
    struct creator_conf *conf = state;
    long long counts[2][2] = {{0, 0}, {0, 0}}; /* [profiles|posts][total|ai] */

    if (creator_user_id(req) == NULL)
        return stats_degraded(req);
    if (!stats_cached(conf, counts) && stats_read(req, conf, counts) != 0)
        return stats_degraded(req);
    return creator_respond(req, 200, stats_body(counts));
}

/* ------------------------------------------------------------ unlocked list */

static int unlocked_degraded(keel_request *req)
{
    return creator_degraded(req, json_pack("{s:[]}", "profiles"),
                            "Unable to retrieve unlocked profiles - database connection issues");
}

static const struct creator_column unlocked_columns[] = {
    {"profile_id", "id", creator_json_text},
    {"username", "username", creator_json_text},
    {"full_name", "full_name", creator_json_text},
    {"followers_count", "followers_count", creator_json_int},
    {"following_count", "following_count", creator_json_int},
    {"posts_count", "posts_count", creator_json_int},
    {"profile_pic_url", "profile_pic_url", creator_json_text},
    {"is_verified", "is_verified", creator_json_bool},
    {"engagement_rate", "engagement_rate", creator_json_real},
    {"unlocked_at", "unlocked_at", creator_json_text},
    {"expires_at", "expires_at", creator_json_text},
    {"days_remaining", "days_remaining", creator_json_int},
    {NULL, NULL, NULL},
};

static const struct creator_column unlocked_ai_columns[] = {
    {"primary_content_type", "ai_primary_content_type", creator_json_text},
    {"avg_sentiment_score", "ai_avg_sentiment_score", creator_json_real},
    {NULL, NULL, NULL},
};

int creator_unlocked(keel_request *req, void *state)
{
    json_t *errors = json_array();
    json_t *profiles, *body;
    keel_db_result *res = NULL;
    long long page, page_size, total = 0;
    char limit[24], offset[24], message[64];
    const char *uid;
    int rc;

    if (errors == NULL)
        return creator_respond(req, 500, NULL);
    creator_page_args(req, 10, &page, &page_size, errors);
    if (json_array_size(errors) > 0)
        return creator_reject(req, errors);
    json_decref(errors);

    if ((uid = creator_user_id(req)) == NULL)
        return unlocked_degraded(req);

    snprintf(limit, sizeof limit, "%lld", page_size);
    snprintf(offset, sizeof offset, "%lld", creator_page_offset(page, page_size));
    /* Walks (user_id, granted_at DESC, id DESC) in order and stops after
     * LIMIT + OFFSET rows; no sort of the caller's whole history.  The
     * total comes with the page (see CREATOR_UNLOCKED_TOTAL). */
    rc = creator_host->db_query(
        req,
        "SELECT p.id, p.username, p.full_name, p.followers_count, p.following_count,"
        "       p.posts_count, p.profile_pic_url, p.is_verified, p.engagement_rate,"
        "       p.ai_primary_content_type, p.ai_avg_sentiment_score,"
        "       " CREATOR_UNLOCKED_PAGE_TAIL,
        3, (const char *const[]){uid, limit, offset}, &res);
    if (rc == 0)
        rc = creator_unlocked_total(req, uid, res, &total);
    if (rc != 0) {
        creator_log_db(req, rc, "unlocked list");
        return unlocked_degraded(req);
    }
    profiles = creator_rows(res, unlocked_columns, unlocked_ai_columns);
    snprintf(message, sizeof message, "Found %lld unlocked profiles", total);
    body = json_pack("{s:b,s:o,s:o,s:s}", "success", 1, "profiles", profiles, "pagination",
                     creator_pagination(page, page_size, total), "message", message);
    return creator_respond(req, 200, body);
}

/* ------------------------------------------------------------------ profile */

static int profile_degraded(keel_request *req)
{
    return creator_degraded(req, json_pack("{s:n}", "profile"),
                            "Profile data temporarily unavailable - database connection issues");
}

int creator_profile(keel_request *req, void *state)
{
    keel_db_result *res = NULL;
    const char *username;
    int rc;

    if ((username = creator_path_username(req, &rc)) == NULL)
        return rc;

    if (creator_user_id(req) == NULL)
        return profile_degraded(req);
    rc = creator_host->db_query(req,
                                "SELECT " CREATOR_PROFILE_COLUMNS
                                "  FROM profiles p WHERE p.username = $1",
                                1, (const char *const[]){username}, &res);
    if (rc != 0) {
        creator_log_db(req, rc, "profile");
        return profile_degraded(req);
    }
    if (creator_host->db_rows(res) == 0)
        return creator_host->respond_error(req, 404, "Profile not found");
    return creator_respond(req, 200,
                           json_pack("{s:b,s:o,s:s}", "success", 1, "profile",
                                     creator_profile_base(res, 0), "message",
                                     "Profile data loaded"));
}

/* ------------------------------------------------------------------- status */

static int status_degraded(keel_request *req, const char *username)
{
    return creator_degraded(req,
                            json_pack("{s:s,s:s,s:b,s:b,s:s}", "username", username, "status",
                                      "unknown", "profile_ready", 0, "analysis_complete", 0,
                                      "data_source", "none"),
                            "Profile status temporarily unavailable - database connection issues");
}

/*
 * A stored profile is "complete" whether or not the AI has analysed it yet;
 * analysis_complete tells the two apart, so a client polling for the data
 * stops once the data is there.  Without a stored profile, the caller's own
 * open search job (if any) gives "queued" or "processing".
 */
int creator_status(keel_request *req, void *state)
{
    keel_db_result *res = NULL;
    const char *username, *uid, *ai, *job;
    bool stored, analysed;
    int rc;

    if ((username = creator_path_username(req, &rc)) == NULL)
        return rc;

    if ((uid = creator_user_id(req)) == NULL)
        return status_degraded(req, username);
    rc = creator_host->db_query(
        req,
        "SELECT (SELECT ai_analyzed FROM profiles WHERE username = $2) AS ai_analyzed,"
        "       (SELECT status FROM search_jobs"
        "         WHERE user_id = $1 AND username = $2"
        "           AND status IN ('queued', 'processing')) AS job_status",
        2, (const char *const[]){uid, username}, &res);
    if (rc != 0) {
        creator_log_db(req, rc, "profile status");
        return status_degraded(req, username);
    }
    ai = creator_col(res, 0, "ai_analyzed");
    job = creator_col(res, 0, "job_status");
    /* ai_analyzed is NOT NULL, so NULL means no row; search_jobs_open allows
     * at most one open job per user and name, so job_status is one value. */
    stored = ai != NULL;
    analysed = stored && ai[0] == 't';
    return creator_respond(req, 200,
                           json_pack("{s:b,s:s,s:s,s:b,s:b,s:s}", "success", 1, "username",
                                     username, "status",
                                     stored        ? "complete"
                                     : job != NULL ? job
                                                   : "not_found",
                                     "profile_ready", stored, "analysis_complete", analysed,
                                     "data_source", stored ? "database" : "none"));
}

/* -------------------------------------------------------------------- posts */

static int posts_degraded(keel_request *req, const char *username)
{
    return creator_degraded(req, json_pack("{s:s,s:[]}", "username", username, "posts"),
                            "Posts temporarily unavailable - database connection issues");
}

/*
 * Both spellings of a page, in one object: the contract's page/page_size
 * keys and the frontend's limit/offset keys describe the same slice.
 */
static json_t *posts_pagination(long long limit, long long offset, long long total)
{
    json_t *p = creator_pagination(offset / limit + 1, limit, total);
    long long pages = total > 0 ? total / limit + (total % limit != 0) : 0;

    if (p != NULL &&
        json_object_update_new(p, json_pack("{s:I,s:I,s:I,s:I,s:b}", "limit", (json_int_t)limit,
                                            "offset", (json_int_t)offset, "total_count",
                                            (json_int_t)total, "total_pages", (json_int_t)pages,
                                            "has_more", offset < total - limit)) != 0) {
        json_decref(p);
        return NULL;
    }
    return p;
}

int creator_posts(keel_request *req, void *state)
{
    const struct creator_conf *conf = state;
    json_t *errors = json_array();
    json_t *posts;
    keel_db_result *res = NULL;
    long long page, page_size, lim, off, total = 0;
    char limit[24], offset[24], message[64];
    const char *username, *uid, *profile_id, *unlocked;
    bool sliced;
    int rc;

    if (errors == NULL)
        return creator_respond(req, 500, NULL);
    username = creator_username(req, creator_host->req_param(req, "username"), errors, "path",
                                "username");
    creator_page_args(req, 20, &page, &page_size, errors);
    creator_limit_args(req, page_size, &lim, &off, &sliced, errors);
    if (json_array_size(errors) > 0)
        return creator_reject(req, errors);
    json_decref(errors);
    if (!sliced)
        off = creator_page_offset(page, page_size);

    if ((uid = creator_user_id(req)) == NULL)
        return posts_degraded(req, username);
    rc = creator_host->db_query(
        req,
        "SELECT p.id, EXISTS (SELECT 1 FROM user_profile_access a"
        "                      WHERE a.user_id = $1 AND a.profile_id = p.id"
        "                        AND a.expires_at > now()) AS unlocked,"
        "       (SELECT count(*) FROM posts po WHERE po.profile_id = p.id) AS total"
        "  FROM profiles p WHERE p.username = $2",
        2, (const char *const[]){uid, username}, &res);
    if (rc != 0) {
        creator_log_db(req, rc, "posts access");
        return posts_degraded(req, username);
    }
    if (creator_host->db_rows(res) == 0)
        return creator_host->respond_error(req, 404, "Profile not found");
    unlocked = creator_col(res, 0, "unlocked");
    if (unlocked == NULL || unlocked[0] != 't')
        return creator_respond(req, 403,
                               json_pack("{s:b,s:b,s:I}", "success", 0, "unlock_required", 1,
                                         "unlock_cost", (json_int_t)conf->unlock_cost));
    profile_id = creator_col(res, 0, "id");
    if (!creator_parse_ll(creator_col(res, 0, "total"), &total))
        total = 0;

    snprintf(limit, sizeof limit, "%lld", lim);
    snprintf(offset, sizeof offset, "%lld", off);
    /* The order is exactly the posts_profile_taken index's. */
    rc = creator_host->db_query(req,
                                "SELECT " CREATOR_POST_COLUMNS
                                "  FROM posts po WHERE po.profile_id = $1"
                                " ORDER BY po.taken_at DESC NULLS LAST, po.id"
                                " LIMIT $2 OFFSET $3",
                                3, (const char *const[]){profile_id, limit, offset}, &res);
    if (rc != 0) {
        creator_log_db(req, rc, "posts list");
        return posts_degraded(req, username);
    }
    posts = creator_posts_json(res);
    snprintf(message, sizeof message, "Found %lld posts", total);
    return creator_respond(req, 200,
                           json_pack("{s:b,s:s,s:o,s:o,s:s}", "success", 1, "username", username,
                                     "posts", posts, "pagination",
                                     posts_pagination(lim, off, total), "message", message));
}
