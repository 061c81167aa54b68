/*
 * POST /api/v1/simple/creator/search/{username} (also GET
 * /api/v1/search/creator/{username}, the frontend's spelling): full analytics
 * for a stored profile the caller has unlocked, a preview for a stored one
 * they have not, and a search job (202) for a profile that is not stored yet.
 * A finished job's result (jobs.c) is the same answer without the queueing.
 *
 * Finding out which case applies is a read, so a database failure there
 * answers the degraded 200 body.  Creating the job is a write, so a failure
 * there answers 503 with Retry-After.
 */
#include "config.h"

#include "creator.h"

#include <stdio.h>

#define SEARCH_JOB_ATTEMPTS 3

static int search_degraded(keel_request *req, const char *username)
{
    return creator_degraded(req, json_pack("{s:s,s:n}", "username", username, "profile"),
                            "Creator search temporarily unavailable - database connection issues");
}

/* What the full answer's profile has besides the base fields. */
static const struct creator_column rate_columns[] = {
    {"engagement_rate", "engagement_rate", creator_json_real},
    {"avg_likes", "avg_likes", creator_json_real},
    {"avg_comments", "avg_comments", creator_json_real},
    {NULL, NULL, NULL},
};

static const struct creator_column full_ai_columns[] = {
    {"available", "ai_analyzed", creator_json_bool},
    {"primary_content_type", "ai_primary_content_type", creator_json_text},
    {"content_distribution", "ai_content_distribution", creator_json_doc},
    {"language_distribution", "ai_language_distribution", creator_json_doc},
    {"avg_sentiment_score", "ai_avg_sentiment_score", creator_json_real},
    {"content_quality_score", "ai_content_quality_score", creator_json_real},
    {"profile_analyzed_at", "ai_analyzed_at", creator_json_text},
    {NULL, NULL, NULL},
};

/* The profile of the full answer: base fields, rates and the AI summary. */
static json_t *full_profile(const keel_db_result *res)
{
    return creator_with_ai(creator_set_columns(creator_profile_base(res, 0), res, 0, rate_columns),
                           creator_set_columns(json_object(), res, 0, full_ai_columns));
}

static int search_full(keel_request *req, const struct creator_conf *conf, const char *username,
                       const keel_db_result *profile)
{
    const char *profile_id = creator_col(profile, 0, "id");
    keel_db_result *res = NULL;
    char limit[24];
    json_t *posts, *body;
    int rc;

    snprintf(limit, sizeof limit, "%lld", conf->max_posts);
    rc = creator_host->db_query(req,
                                "SELECT " CREATOR_POST_COLUMNS
                                "  FROM posts po WHERE po.profile_id = $1"
                                " ORDER BY po.taken_at DESC NULLS LAST, po.id LIMIT $2",
                                2, (const char *const[]){profile_id, limit}, &res);
    if (rc != 0) {
        creator_log_db(req, rc, "search posts");
        return search_degraded(req, username);
    }
    posts = creator_posts_json(res);
    /* The posts live inside the profile, where the replaced system put them
     * and the frontend reads them. */
    body = full_profile(profile);
    if (body != NULL && json_object_set_new(body, "posts", posts) != 0) {
        json_decref(body);
        body = NULL;
    } else if (body == NULL) {
        json_decref(posts);
    }
    return creator_respond(req, 200,
                           json_pack("{s:b,s:o,s:b,s:b,s:b,s:s}", "success", 1, "profile", body,
                                     "unlocked", 1, "unlock_required", 0, "preview_mode", 0,
                                     "message", "Full analytics loaded"));
}

static int search_preview(keel_request *req, const struct creator_conf *conf, const char *username,
                          const keel_db_result *profile)
{
    char endpoint[96];

    snprintf(endpoint, sizeof endpoint, "/api/v1/simple/creator/unlock/%s", username);
    return creator_respond(req, 200,
                           json_pack("{s:b,s:o,s:b,s:b,s:I,s:b,s:s,s:s}", "success", 1, "profile",
                                     creator_profile_base(profile, 0), "unlocked", 0,
                                     "unlock_required", 1, "unlock_cost",
                                     (json_int_t)conf->unlock_cost, "preview_mode", 1,
                                     "unlock_endpoint", endpoint, "message",
                                     "Profile preview - unlock to see full analytics"));
}

/*
 * Queues a search job, or finds the caller's open one.  The partial unique
 * index search_jobs_open makes the INSERT a no-op while a job is open; the
 * SELECT then finds it.  If that job completed in between (an import ran),
 * nothing is found and the INSERT is tried again.
 */
static int search_queue(keel_request *req, const char *uid, const char *username)
{
    keel_db_result *res = NULL;
    const char *const params[] = {uid, username};
    char polling[96];
    const char *id;
    int rc;

    for (int attempt = 0; attempt < SEARCH_JOB_ATTEMPTS; attempt++) {
        rc = creator_host->db_query(req,
                                    "INSERT INTO search_jobs (user_id, username) VALUES ($1, $2)"
                                    " ON CONFLICT (user_id, username)"
                                    "   WHERE status IN ('queued', 'processing') DO NOTHING"
                                    " RETURNING id, status",
                                    2, params, &res);
        if (rc == 0 && creator_host->db_rows(res) == 0)
            rc = creator_host->db_query(req,
                                        "SELECT id, status FROM search_jobs"
                                        " WHERE user_id = $1 AND username = $2"
                                        "   AND status IN ('queued', 'processing')",
                                        2, params, &res);
        if (rc != 0) {
            creator_log_db(req, rc, "search job");
            return creator_unavailable(req);
        }
        if (creator_host->db_rows(res) > 0)
            break;
    }
    id = creator_host->db_rows(res) > 0 ? creator_col(res, 0, "id") : NULL;
    if (id == NULL) {
        creator_host->log(req, KEEL_LOG_ERROR, "search job for %s: no open job after %d attempts",
                          username, SEARCH_JOB_ATTEMPTS);
        return creator_unavailable(req);
    }
    snprintf(polling, sizeof polling, "/api/v1/jobs/%s/status", id);
    return creator_respond(
        req, 202,
        json_pack("{s:b,s:s,s:o,s:s,s:s,s:s}", "success", 1, "job_id", id, "status",
                  creator_json_text(creator_col(res, 0, "status")), "username", username, "message",
                  "Profile not in the database yet - search queued", "polling_url", polling));
}

int creator_search_answer(keel_request *req, const struct creator_conf *conf, const char *uid,
                          const char *username, bool queue)
{
    keel_db_result *res = NULL;
    const char *unlocked;
    int rc;

    rc = creator_host->db_query(
        req,
        "SELECT " CREATOR_PROFILE_COLUMNS ","
        "       p.engagement_rate, p.avg_likes, p.avg_comments, p.ai_analyzed,"
        "       p.ai_primary_content_type, p.ai_content_distribution,"
        "       p.ai_language_distribution, p.ai_avg_sentiment_score,"
        "       p.ai_content_quality_score,"
        "       " CREATOR_ISO(
            "p.ai_analyzed_at") " AS ai_analyzed_at,"
                                "       EXISTS (SELECT 1 FROM user_profile_access a"
                                "                WHERE a.user_id = $1 AND a.profile_id = p.id"
                                "                  AND a.expires_at > now()) AS unlocked"
                                "  FROM profiles p WHERE p.username = $2",
        2, (const char *const[]){uid, username}, &res);
    if (rc != 0) {
        creator_log_db(req, rc, "search lookup");
        return search_degraded(req, username);
    }
    if (creator_host->db_rows(res) == 0)
        return queue ? search_queue(req, uid, username)
                     : creator_host->respond_error(req, 404, "Profile not found");
    unlocked = creator_col(res, 0, "unlocked");
    if (unlocked != NULL && unlocked[0] == 't')
        return search_full(req, conf, username, res);
    return search_preview(req, conf, username, res);
}

int creator_search(keel_request *req, void *state)
{
    const char *username, *uid;
    int rc;

    if ((username = creator_path_username(req, &rc)) == NULL)
        return rc;
    if ((uid = creator_user_id(req)) == NULL)
        return search_degraded(req, username);
    return creator_search_answer(req, state, uid, username, true);
}
