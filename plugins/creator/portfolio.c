/*
 * The caller's unlocked profiles as the frontend's pages read them:
 *  - GET /api/v1/auth/unlocked?page&page_size, the portfolio page: one page
 *    of unexpired unlocks, newest first, with the profile and the grant;
 *  - GET /api/v1/auth/unlocked-profiles, polled by every page to mark
 *    unlocked names: just username, profile_id and unlocked_at, capped.
 * Both read the (user_id, granted_at DESC, id DESC) index in order.  A
 * database failure answers 200 with an empty list, "success": false and
 * X-Keel-Degraded: database, like the other reads.
 */
#include "config.h"

#include "creator.h"

#include <stdio.h>
#include <string.h>

/* The most names the polled list returns; a portfolio larger than this is
 * paged through /auth/unlocked. */
#define PORTFOLIO_NAMES_MAX "1000"

static const struct creator_column portfolio_columns[] = {
    {"profile_id", "id", creator_json_text},
    {"id", "id", creator_json_text},
    {"username", "username", creator_json_text},
    {"full_name", "full_name", creator_json_text},
    {"biography", "biography", creator_json_text},
    {"followers_count", "followers_count", creator_json_int},
    {"following_count", "following_count", creator_json_int},
    {"posts_count", "posts_count", creator_json_int},
    {"profile_pic_url", "profile_pic_url", creator_json_text},
    {"is_verified", "is_verified", creator_json_bool},
    {"is_private", "is_private", creator_json_bool},
    {"engagement_rate", "engagement_rate", creator_json_real},
    {"unlocked_at", "unlocked_at", creator_json_text},
    {"access_granted_at", "unlocked_at", creator_json_text},
    {"access_expires_at", "expires_at", creator_json_text},
    {"days_remaining", "days_remaining", creator_json_int},
    {"credits_spent", "credits_spent", creator_json_int},
    {NULL, NULL, NULL},
};

static const struct creator_column portfolio_ai_columns[] = {
    {"available", "ai_analyzed", creator_json_bool},
    {"primary_content_type", "ai_primary_content_type", creator_json_text},
    {"avg_sentiment_score", "ai_avg_sentiment_score", creator_json_real},
    {"content_quality_score", "ai_content_quality_score", creator_json_real},
    {NULL, NULL, NULL},
};

static json_t *portfolio_pagination(long long page, long long page_size, long long total);

static int portfolio_degraded(keel_request *req, json_t *pagination)
{
    json_t *fields = json_pack("{s:[]}", "profiles");

    /* The portfolio page reads pagination even from a failed answer. */
    if (fields != NULL && pagination != NULL)
        json_object_set_new(fields, "pagination", pagination);
    else
        json_decref(pagination);
    return creator_degraded(req, fields,
                            "Unable to retrieve unlocked profiles - database connection issues");
}

/* The contract's page keys plus the names the frontend's table reads. */
static json_t *portfolio_pagination(long long page, long long page_size, long long total)
{
    json_t *p = creator_pagination(page, page_size, total);

    if (p != NULL &&
        json_object_update_new(p, json_pack("{s:I,s:I,s:I}", "current_page", (json_int_t)page,
                                            "total_count", (json_int_t)total, "total_items",
                                            (json_int_t)total)) != 0) {
        json_decref(p);
        return NULL;
    }
    return p;
}

int creator_auth_unlocked(keel_request *req, void *state)
{
    json_t *errors = json_array();
    json_t *profiles;
    keel_db_result *res = NULL;
    long long page, page_size, total = 0;
    char limit[24], offset[24];
    const char *uid;
    int rc;

    if (errors == NULL)
        return creator_respond(req, 500, NULL);
    creator_page_args(req, 20, &page, &page_size, errors);
    if (json_array_size(errors) > 0)
        return creator_reject(req, errors);
    json_decref(errors);

    if ((uid = creator_user_id(req)) == NULL)
        return portfolio_degraded(req, portfolio_pagination(page, page_size, 0));
    snprintf(limit, sizeof limit, "%lld", page_size);
    snprintf(offset, sizeof offset, "%lld", creator_page_offset(page, page_size));
    rc = creator_host->db_query(
        req,
        "SELECT " CREATOR_PROFILE_COLUMNS ", p.engagement_rate, p.ai_analyzed,"
        "       p.ai_primary_content_type, p.ai_avg_sentiment_score, p.ai_content_quality_score,"
        "       a.credits_spent,"
        "       " CREATOR_UNLOCKED_PAGE_TAIL,
        3, (const char *const[]){uid, limit, offset}, &res);
    if (rc == 0)
        rc = creator_unlocked_total(req, uid, res, &total);
    if (rc != 0) {
        creator_log_db(req, rc, "portfolio");
        return portfolio_degraded(req, portfolio_pagination(page, page_size, 0));
    }
    profiles = creator_rows(res, portfolio_columns, portfolio_ai_columns);
    return creator_respond(req, 200,
                           json_pack("{s:b,s:o,s:o}", "success", 1, "profiles", profiles,
                                     "pagination", portfolio_pagination(page, page_size, total)));
}

static const struct creator_column name_columns[] = {
    {"username", "username", creator_json_text},
    {"profile_id", "profile_id", creator_json_text},
    {"unlocked_at", "unlocked_at", creator_json_text},
    {NULL, NULL, NULL},
};

int creator_auth_unlocked_profiles(keel_request *req, void *state)
{
    keel_db_result *res = NULL;
    json_t *profiles;
    const char *uid;
    int rc;

    if ((uid = creator_user_id(req)) == NULL)
        return portfolio_degraded(req, NULL);
    rc = creator_host->db_query(
        req,
        "SELECT p.username, a.profile_id, " CREATOR_ISO(
            "a.granted_at") " AS unlocked_at"
                            "  FROM user_profile_access a JOIN profiles p ON p.id = a.profile_id"
                            " WHERE a.user_id = $1 AND a.expires_at > now()"
                            " ORDER BY a.granted_at DESC, a.id DESC LIMIT " PORTFOLIO_NAMES_MAX,
        1, (const char *const[]){uid}, &res);
    if (rc != 0) {
        creator_log_db(req, rc, "unlocked names");
        return portfolio_degraded(req, NULL);
    }
    profiles = creator_rows(res, name_columns, NULL);
    return creator_respond(req, 200, json_pack("{s:b,s:o}", "success", 1, "profiles", profiles));
}

/*
 * The sweep of the unlocked counts (migrations/0003_unlock_counts.sql): the
 * total a request reports is exact without it, but subtracts every grant
 * that expired since the user's last sweep, so without sweeps that part of
 * the count grows.  Every worker runs the task; the database lets one sweep
 * run at a time and the others return at once.
 */
int creator_sweep_task(keel_task *task, keel_request *req, void *arg)
{
    keel_db_result *res = NULL;
    const char *moved;
    int rc;

    (void)task;
    (void)arg;
    rc = creator_host->db_query(req, "SELECT unlock_counts_sweep() AS moved", 0, NULL, &res);
    if (rc != 0) {
        creator_log_db(req, rc, "unlocked counts sweep");
        return 0;
    }
    moved = creator_col(res, 0, "moved");
    if (moved != NULL && strcmp(moved, "0") != 0)
        creator_host->log(req, KEEL_LOG_DEBUG, "unlocked counts swept for %s user(s)", moved);
    return 0;
}
