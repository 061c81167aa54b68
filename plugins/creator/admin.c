/*
 * The creator plugin's admin routes (docs/operations.md), served on the
 * admin listener: POST /admin/import (NDJSON profiles with their posts) and
 * POST /admin/credits (add credits to a user's wallet).
 *
 * Import works line by line: each non-blank line is parsed, validated and
 * written in its own transaction, so a bad line is reported by number and
 * the others still land.  Re-importing a line is harmless (every write is an
 * upsert).  If the database becomes unavailable the import stops and
 * answers 503; lines before that point are committed and a retry of the
 * whole file converges.
 */
#include "config.h"

#include "creator.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define IMPORT_LINE_MAX (1024 * 1024)
#define IMPORT_POSTS_MAX 1000
#define IMPORT_SHORTCODE_MAX 64
#define IMPORT_ERROR_MAX 512
#define CREDITS_AMOUNT_MAX 1000000
#define CREDITS_EMAIL_MAX 320
#define CREDITS_REASON_MAX 500

/* ----------------------------------------------------------- field readers */

/*
 * Each reader looks at obj[key]: absent or null leaves *out NULL (the column
 * keeps its stored value on update); a value of the wrong type writes an
 * error "<prefix><key>: ..." and returns false.
 */

static bool read_string(const json_t *obj, const char *key, const char *prefix, const char **out,
                        char *err)
{
    const json_t *v = json_object_get(obj, key);

    *out = NULL;
    if (v == NULL || json_is_null(v))
        return true;
    if (!json_is_string(v) || json_string_length(v) != strlen(json_string_value(v))) {
        snprintf(err, IMPORT_ERROR_MAX, "%s%s: expected a string", prefix, key);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

static bool read_count(const json_t *obj, const char *key, const char *prefix, char buf[24],
                       const char **out, char *err)
{
    const json_t *v = json_object_get(obj, key);

    *out = NULL;
    if (v == NULL || json_is_null(v))
        return true;
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        snprintf(err, IMPORT_ERROR_MAX, "%s%s: expected a non-negative integer", prefix, key);
        return false;
    }
    snprintf(buf, 24, "%lld", (long long)json_integer_value(v));
    *out = buf;
    return true;
}

static bool read_number(const json_t *obj, const char *key, const char *prefix, char buf[40],
                        const char **out, char *err)
{
    const json_t *v = json_object_get(obj, key);

    *out = NULL;
    if (v == NULL || json_is_null(v))
        return true;
    if (json_is_integer(v))
        snprintf(buf, 40, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(buf, 40, "%.17g", json_real_value(v));
    else {
        snprintf(err, IMPORT_ERROR_MAX, "%s%s: expected a number", prefix, key);
        return false;
    }
    *out = buf;
    return true;
}

static bool read_bool(const json_t *obj, const char *key, const char *prefix, const char **out,
                      char *err)
{
    const json_t *v = json_object_get(obj, key);

    *out = NULL;
    if (v == NULL || json_is_null(v))
        return true;
    if (!json_is_boolean(v)) {
        snprintf(err, IMPORT_ERROR_MAX, "%s%s: expected true or false", prefix, key);
        return false;
    }
    *out = json_is_true(v) ? "true" : "false";
    return true;
}

/* An object member as compact JSON text (malloc'd; the caller frees). */
static bool read_object_text(const json_t *obj, const char *key, const char *prefix, char **out,
                             char *err)
{
    const json_t *v = json_object_get(obj, key);

    *out = NULL;
    if (v == NULL || json_is_null(v))
        return true;
    if (!json_is_object(v)) {
        snprintf(err, IMPORT_ERROR_MAX, "%s%s: expected an object", prefix, key);
        return false;
    }
    /* 15 significant digits store 0.3 as 0.3 rather than 0.29999999999999999. */
    *out = json_dumps(v, JSON_COMPACT | JSON_REAL_PRECISION(15));
    if (*out == NULL) {
        snprintf(err, IMPORT_ERROR_MAX, "%s%s: cannot be stored as JSON", prefix, key);
        return false;
    }
    return true;
}

static bool two_digits(const char *s)
{
    return s[0] >= '0' && s[0] <= '9' && s[1] >= '0' && s[1] <= '9';
}

/*
 * Normalises taken_at: an ISO 8601 string (date, optional time with optional
 * fraction, optional Z or +hh[:mm]) or Unix seconds.  A time without a zone
 * is taken as UTC, so the result never depends on the session time zone.
 * The database checks the calendar (month 13 fails the line).
 */
static bool read_taken_at(const json_t *post, const char *prefix, char buf[64], const char **out,
                          char *err)
{
    const json_t *v = json_object_get(post, "taken_at");
    const char *s, *p;
    size_t len;

    *out = NULL;
    if (v == NULL || json_is_null(v))
        return true;
    if (json_is_integer(v)) {
        json_int_t secs = json_integer_value(v);
        struct tm tm;
        time_t t;

        /* Up to 9999-12-31T23:59:59Z. */
        if (secs < 0 || secs > 253402300799LL)
            goto bad;
        t = (time_t)secs;
        if (gmtime_r(&t, &tm) == NULL || strftime(buf, 64, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
            goto bad;
        *out = buf;
        return true;
    }
    if (!json_is_string(v))
        goto bad;
    s = json_string_value(v);
    len = strlen(s);
    if (len != json_string_length(v) || len < 10 || len > 40)
        goto bad;
    if (!two_digits(s) || !two_digits(s + 2) || s[4] != '-' || !two_digits(s + 5) || s[7] != '-' ||
        !two_digits(s + 8))
        goto bad;
    p = s + 10;
    if (*p == '\0') {
        snprintf(buf, 64, "%sT00:00:00Z", s);
        *out = buf;
        return true;
    }
    if ((*p != 'T' && *p != ' ') || !two_digits(p + 1) || p[3] != ':' || !two_digits(p + 4))
        goto bad;
    p += 6;
    if (*p == ':') {
        if (!two_digits(p + 1))
            goto bad;
        p += 3;
        if (*p == '.') {
            const char *digits = ++p;

            while (*p >= '0' && *p <= '9')
                p++;
            if (p == digits || p - digits > 9)
                goto bad;
        }
    }
    if (*p == '\0') {
        snprintf(buf, 64, "%sZ", s);
    } else if ((p[0] == 'Z' || p[0] == 'z') && p[1] == '\0') {
        snprintf(buf, 64, "%s", s);
    } else if ((p[0] == '+' || p[0] == '-') && two_digits(p + 1) &&
               (p[3] == '\0' || (two_digits(p + 3) && p[5] == '\0') ||
                (p[3] == ':' && two_digits(p + 4) && p[6] == '\0'))) {
        snprintf(buf, 64, "%s", s);
    } else {
        goto bad;
    }
    *out = buf;
    return true;
bad:
    snprintf(err, IMPORT_ERROR_MAX, "%staken_at: expected an ISO 8601 timestamp or Unix seconds",
             prefix);
    return false;
}

static bool valid_shortcode(const char *s)
{
    size_t len = strlen(s);

    if (len == 0 || len > IMPORT_SHORTCODE_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* --------------------------------------------------------------- one line */

enum profile_param {
    P_USERNAME,
    P_FULL_NAME,
    P_BIOGRAPHY,
    P_FOLLOWERS,
    P_FOLLOWING,
    P_POSTS_COUNT,
    P_VERIFIED,
    P_PRIVATE,
    P_PIC_URL,
    P_ENGAGEMENT,
    P_AI,
    P_AI_TYPE,
    P_AI_SENTIMENT,
    P_AI_CONTENT,
    P_AI_LANGUAGE,
    P_AI_QUALITY,
    P_COUNT
};

struct import_line {
    const char *params[P_COUNT];
    char followers[24], following[24], posts_count[24];
    char engagement[40], ai_sentiment[40], ai_quality[40];
    char *ai_content;    /* malloc'd JSON text */
    char *ai_language;   /* malloc'd JSON text */
    char *posts;         /* malloc'd JSON array for json_to_recordset, or NULL */
    long jobs_completed; /* out */
    bool summarize;      /* no "ai": compute the profile's summary from its posts */
    char err[IMPORT_ERROR_MAX];
};

static void import_line_clear(struct import_line *l)
{
    free(l->ai_content);
    free(l->ai_language);
    free(l->posts);
    l->ai_content = l->ai_language = l->posts = NULL;
}

/* Builds the recordset row of one post; false with l->err on bad input. */
static bool import_post(struct import_line *l, const json_t *post, size_t index, json_t *seen,
                        json_t *rows)
{
    char prefix[32], likes[24], comments[24], sentiment_score[40], taken[64];
    const char *shortcode, *caption, *display_url, *likes_p, *comments_p, *taken_p;
    const char *category = NULL, *sentiment = NULL, *score_p = NULL, *language = NULL;
    const json_t *ai;
    json_t *row;

    snprintf(prefix, sizeof prefix, "posts[%zu].", index);
    if (!json_is_object(post)) {
        snprintf(l->err, sizeof l->err, "posts[%zu]: expected an object", index);
        return false;
    }
    if (!read_string(post, "shortcode", prefix, &shortcode, l->err))
        return false;
    if (shortcode == NULL || !valid_shortcode(shortcode)) {
        snprintf(l->err, sizeof l->err,
                 "%sshortcode: required, 1-%d of letters, digits, '_' and '-'", prefix,
                 IMPORT_SHORTCODE_MAX);
        return false;
    }
    if (json_object_get(seen, shortcode) != NULL) {
        snprintf(l->err, sizeof l->err, "%sshortcode: duplicate '%s' in this line", prefix,
                 shortcode);
        return false;
    }
    json_object_set_new(seen, shortcode, json_true());
    if (!read_string(post, "caption", prefix, &caption, l->err) ||
        !read_string(post, "display_url", prefix, &display_url, l->err) ||
        !read_count(post, "likes_count", prefix, likes, &likes_p, l->err) ||
        !read_count(post, "comments_count", prefix, comments, &comments_p, l->err) ||
        !read_taken_at(post, prefix, taken, &taken_p, l->err))
        return false;
    ai = json_object_get(post, "ai");
    if (ai != NULL && !json_is_null(ai)) {
        char ai_prefix[40];

        snprintf(ai_prefix, sizeof ai_prefix, "%sai.", prefix);
        if (!json_is_object(ai)) {
            snprintf(l->err, sizeof l->err, "%sai: expected an object", prefix);
            return false;
        }
        if (!read_string(ai, "content_category", ai_prefix, &category, l->err) ||
            !read_string(ai, "sentiment", ai_prefix, &sentiment, l->err) ||
            !read_number(ai, "sentiment_score", ai_prefix, sentiment_score, &score_p, l->err) ||
            !read_string(ai, "language_code", ai_prefix, &language, l->err))
            return false;
    } else {
        ai = NULL;
    }
    /* Numbers travel as JSON text here; json_to_recordset casts them. */
    row = json_pack("{s:s,s:s?,s:s?,s:s?,s:s?,s:s?,s:b,s:s?,s:s?,s:s?,s:s?}", "shortcode",
                    shortcode, "caption", caption, "display_url", display_url, "likes_count",
                    likes_p, "comments_count", comments_p, "taken_at", taken_p, "ai_analyzed",
                    ai != NULL, "ai_content_category", category, "ai_sentiment", sentiment,
                    "ai_sentiment_score", score_p, "ai_language_code", language);
    if (row == NULL || json_array_append_new(rows, row) != 0) {
        snprintf(l->err, sizeof l->err, "%s: out of memory", prefix);
        return false;
    }
    return true;
}

/* Validates a parsed line into l (params, post rows); false with l->err. */
static bool import_validate(keel_request *req, struct import_line *l, const json_t *doc)
{
    const char **p = l->params;
    const json_t *ai, *posts, *post;
    json_t *errors, *seen, *rows;
    size_t i;
    bool ok = true;

    if (!json_is_object(doc)) {
        snprintf(l->err, sizeof l->err, "expected a JSON object");
        return false;
    }
    if ((errors = json_array()) == NULL) {
        snprintf(l->err, sizeof l->err, "out of memory");
        return false;
    }
    if (!json_is_string(json_object_get(doc, "username"))) {
        snprintf(l->err, sizeof l->err, "username: required string");
        ok = false;
    } else if (json_string_length(json_object_get(doc, "username")) !=
                   strlen(json_string_value(json_object_get(doc, "username"))) ||
               (p[P_USERNAME] =
                    creator_username(req, json_string_value(json_object_get(doc, "username")),
                                     errors, "body", "username")) == NULL) {
        snprintf(l->err, sizeof l->err, "username: must be 1-30 of letters, digits, '.' and '_'");
        ok = false;
    }
    json_decref(errors);
    if (!ok)
        return false;

    if (!read_string(doc, "full_name", "", &p[P_FULL_NAME], l->err) ||
        !read_string(doc, "biography", "", &p[P_BIOGRAPHY], l->err) ||
        !read_count(doc, "followers_count", "", l->followers, &p[P_FOLLOWERS], l->err) ||
        !read_count(doc, "following_count", "", l->following, &p[P_FOLLOWING], l->err) ||
        !read_count(doc, "posts_count", "", l->posts_count, &p[P_POSTS_COUNT], l->err) ||
        !read_bool(doc, "is_verified", "", &p[P_VERIFIED], l->err) ||
        !read_bool(doc, "is_private", "", &p[P_PRIVATE], l->err) ||
        !read_string(doc, "profile_pic_url", "", &p[P_PIC_URL], l->err) ||
        !read_number(doc, "engagement_rate", "", l->engagement, &p[P_ENGAGEMENT], l->err))
        return false;

    ai = json_object_get(doc, "ai");
    p[P_AI] = "false";
    if (ai != NULL && !json_is_null(ai)) {
        if (!json_is_object(ai)) {
            snprintf(l->err, sizeof l->err, "ai: expected an object");
            return false;
        }
        p[P_AI] = "true";
        if (!read_string(ai, "primary_content_type", "ai.", &p[P_AI_TYPE], l->err) ||
            !read_number(ai, "avg_sentiment_score", "ai.", l->ai_sentiment, &p[P_AI_SENTIMENT],
                         l->err) ||
            !read_object_text(ai, "content_distribution", "ai.", &l->ai_content, l->err) ||
            !read_object_text(ai, "language_distribution", "ai.", &l->ai_language, l->err) ||
            !read_number(ai, "content_quality_score", "ai.", l->ai_quality, &p[P_AI_QUALITY],
                         l->err))
            return false;
        p[P_AI_CONTENT] = l->ai_content;
        p[P_AI_LANGUAGE] = l->ai_language;
    }

    posts = json_object_get(doc, "posts");
    if (posts == NULL || json_is_null(posts))
        return true;
    if (!json_is_array(posts)) {
        snprintf(l->err, sizeof l->err, "posts: expected an array");
        return false;
    }
    if (json_array_size(posts) > IMPORT_POSTS_MAX) {
        snprintf(l->err, sizeof l->err, "posts: at most %d per line", IMPORT_POSTS_MAX);
        return false;
    }
    seen = json_object();
    rows = json_array();
    ok = seen != NULL && rows != NULL;
    if (!ok)
        snprintf(l->err, sizeof l->err, "out of memory");
    json_array_foreach(posts, i, post)
    {
        if (!ok || !(ok = import_post(l, post, i, seen, rows)))
            break;
    }
    if (ok && (l->posts = json_dumps(rows, JSON_COMPACT)) == NULL) {
        snprintf(l->err, sizeof l->err, "out of memory");
        ok = false;
    }
    json_decref(seen);
    json_decref(rows);
    return ok;
}

/*
 * Absent fields keep the stored value on update ($n::type is NULL); "ai"
 * replaces the stored analysis only when the line carries one.
 */
static const char upsert_profile_sql[] =
    "INSERT INTO profiles (username, full_name, biography, followers_count, following_count,"
    "   posts_count, is_verified, is_private, profile_pic_url, engagement_rate, ai_analyzed,"
    "   ai_primary_content_type, ai_avg_sentiment_score, ai_content_distribution,"
    "   ai_language_distribution, ai_content_quality_score, ai_analyzed_at)"
    " VALUES ($1, $2, $3, COALESCE($4::bigint, 0), COALESCE($5::bigint, 0),"
    "   COALESCE($6::bigint, 0), COALESCE($7::boolean, false), COALESCE($8::boolean, false),"
    "   $9, $10::float8, $11::boolean, $12, $13::float8, $14::jsonb, $15::jsonb, $16::float8,"
    "   CASE WHEN $11::boolean THEN now() END)"
    " ON CONFLICT (username) DO UPDATE SET"
    "   full_name = COALESCE(EXCLUDED.full_name, profiles.full_name),"
    "   biography = COALESCE(EXCLUDED.biography, profiles.biography),"
    "   followers_count = COALESCE($4::bigint, profiles.followers_count),"
    "   following_count = COALESCE($5::bigint, profiles.following_count),"
    "   posts_count = COALESCE($6::bigint, profiles.posts_count),"
    "   is_verified = COALESCE($7::boolean, profiles.is_verified),"
    "   is_private = COALESCE($8::boolean, profiles.is_private),"
    "   profile_pic_url = COALESCE(EXCLUDED.profile_pic_url, profiles.profile_pic_url),"
    "   engagement_rate = COALESCE(EXCLUDED.engagement_rate, profiles.engagement_rate),"
    "   ai_analyzed = profiles.ai_analyzed OR EXCLUDED.ai_analyzed,"
    "   ai_primary_content_type = CASE WHEN EXCLUDED.ai_analyzed"
    "     THEN EXCLUDED.ai_primary_content_type ELSE profiles.ai_primary_content_type END,"
    "   ai_avg_sentiment_score = CASE WHEN EXCLUDED.ai_analyzed"
    "     THEN EXCLUDED.ai_avg_sentiment_score ELSE profiles.ai_avg_sentiment_score END,"
    "   ai_content_distribution = CASE WHEN EXCLUDED.ai_analyzed"
    "     THEN EXCLUDED.ai_content_distribution ELSE profiles.ai_content_distribution END,"
    "   ai_language_distribution = CASE WHEN EXCLUDED.ai_analyzed"
    "     THEN EXCLUDED.ai_language_distribution ELSE profiles.ai_language_distribution END,"
    "   ai_content_quality_score = CASE WHEN EXCLUDED.ai_analyzed"
    "     THEN EXCLUDED.ai_content_quality_score ELSE profiles.ai_content_quality_score END,"
    "   ai_analyzed_at = CASE WHEN EXCLUDED.ai_analyzed"
    "     THEN now() ELSE profiles.ai_analyzed_at END,"
    "   updated_at = now()"
    " RETURNING id";

/* One statement for all posts of the line; engagement is computed against
 * the profile's (just upserted) follower count. */
static const char upsert_posts_sql[] =
    "INSERT INTO posts (profile_id, shortcode, caption, likes_count, comments_count,"
    "   engagement_rate, display_url, taken_at, ai_analyzed, ai_content_category,"
    "   ai_sentiment, ai_sentiment_score, ai_language_code)"
    " SELECT p.id, r.shortcode, r.caption, COALESCE(r.likes_count, 0),"
    "   COALESCE(r.comments_count, 0),"
    "   CASE WHEN p.followers_count > 0 THEN"
    "     (COALESCE(r.likes_count, 0) + COALESCE(r.comments_count, 0))::float8"
    "       / p.followers_count * 100 END,"
    "   r.display_url, r.taken_at, r.ai_analyzed, r.ai_content_category, r.ai_sentiment,"
    "   r.ai_sentiment_score, r.ai_language_code"
    "  FROM json_to_recordset($2::json) AS r(shortcode text, caption text,"
    "        likes_count bigint, comments_count bigint, display_url text,"
    "        taken_at timestamptz, ai_analyzed boolean, ai_content_category text,"
    "        ai_sentiment text, ai_sentiment_score float8, ai_language_code text)"
    "  JOIN profiles p ON p.id = $1"
    " ON CONFLICT (shortcode) DO UPDATE SET"
    "   profile_id = EXCLUDED.profile_id,"
    "   caption = COALESCE(EXCLUDED.caption, posts.caption),"
    "   likes_count = EXCLUDED.likes_count,"
    "   comments_count = EXCLUDED.comments_count,"
    "   engagement_rate = EXCLUDED.engagement_rate,"
    "   display_url = COALESCE(EXCLUDED.display_url, posts.display_url),"
    "   taken_at = COALESCE(EXCLUDED.taken_at, posts.taken_at),"
    "   ai_analyzed = posts.ai_analyzed OR EXCLUDED.ai_analyzed,"
    "   ai_content_category = CASE WHEN EXCLUDED.ai_analyzed"
    "     THEN EXCLUDED.ai_content_category ELSE posts.ai_content_category END,"
    "   ai_sentiment = CASE WHEN EXCLUDED.ai_analyzed"
    "     THEN EXCLUDED.ai_sentiment ELSE posts.ai_sentiment END,"
    "   ai_sentiment_score = CASE WHEN EXCLUDED.ai_analyzed"
    "     THEN EXCLUDED.ai_sentiment_score ELSE posts.ai_sentiment_score END,"
    "   ai_language_code = CASE WHEN EXCLUDED.ai_analyzed"
    "     THEN EXCLUDED.ai_language_code ELSE posts.ai_language_code END";

/* Averages over every stored post; the line's own engagement_rate wins. */
static const char profile_averages_sql[] =
    "UPDATE profiles p SET avg_likes = s.avg_likes, avg_comments = s.avg_comments,"
    "   engagement_rate = CASE"
    "     WHEN $2::boolean THEN p.engagement_rate"
    "     WHEN s.n > 0 AND p.followers_count > 0"
    "       THEN (s.avg_likes + s.avg_comments) / p.followers_count * 100"
    "     ELSE p.engagement_rate END"
    "  FROM (SELECT count(*) AS n, avg(likes_count)::float8 AS avg_likes,"
    "               avg(comments_count)::float8 AS avg_comments"
    "          FROM posts WHERE profile_id = $1) s"
    " WHERE p.id = $1";

static int import_in_tx(keel_db_tx *tx, void *arg)
{
    struct import_line *l = arg;
    const keel_host *h = creator_host;
    keel_db_result *res = NULL;
    const char *profile_id;
    int rc;

    l->jobs_completed = 0;
    rc = h->db_tx_query(tx, upsert_profile_sql, P_COUNT, l->params, &res);
    if (rc != 0)
        return rc;
    if (h->db_rows(res) != 1 || (profile_id = creator_col(res, 0, "id")) == NULL)
        return KEEL_EDB_BUG;
    if (l->posts != NULL) {
        rc = h->db_tx_query(tx, upsert_posts_sql, 2, (const char *const[]){profile_id, l->posts},
                            &res);
        if (rc != 0)
            return rc;
    }
    rc = h->db_tx_query(tx, profile_averages_sql, 2,
                        (const char *const[]){profile_id,
                                              l->params[P_ENGAGEMENT] != NULL ? "true" : "false"},
                        &res);
    if (rc != 0)
        return rc;
    if (l->summarize && strcmp(l->params[P_AI], "false") == 0) {
        rc = h->db_tx_query(tx, creator_ai_summary_sql, 1, (const char *const[]){profile_id}, &res);
        if (rc != 0)
            return rc;
    }
    rc = h->db_tx_query(tx,
                        "UPDATE search_jobs SET status = 'complete', progress_percent = 100,"
                        "   progress_message = 'Completed', error = NULL, lease_owner = NULL,"
                        "   lease_until = NULL, updated_at = now()"
                        " WHERE username = $1 AND status IN ('queued', 'processing')",
                        1, (const char *const[]){l->params[P_USERNAME]}, &res);
    if (rc != 0)
        return rc;
    l->jobs_completed = h->db_affected(res);
    return 0;
}

/*
 * Imports one line.  Returns 0 with *ok telling success (l->err says why
 * not), or KEEL_EDB_UNAVAILABLE when the import has to stop.
 */
static int import_one(keel_request *req, const char *text, size_t len, long lineno,
                      struct import_line *l, bool *ok)
{
    json_error_t jerr;
    json_t *doc;
    int rc;

    *ok = false;
    if (len > IMPORT_LINE_MAX) {
        snprintf(l->err, sizeof l->err, "line too long (more than %d bytes)", IMPORT_LINE_MAX);
        return 0;
    }
    doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        snprintf(l->err, sizeof l->err, "invalid JSON at column %d: %s", jerr.column, jerr.text);
        /* jansson quotes the offending input, which may be invalid UTF-8;
         * the report is JSON, so such bytes become '?' (otherwise the
         * line's result could not be built and would go missing). */
        for (char *c = l->err; *c != '\0'; c++)
            if ((unsigned char)*c >= 0x80 || (unsigned char)*c < 0x20)
                *c = '?';
        return 0;
    }
    if (!import_validate(req, l, doc)) {
        import_line_clear(l);
        json_decref(doc);
        return 0;
    }
    rc = creator_host->db_transaction(req, import_in_tx, l);
    import_line_clear(l);
    json_decref(doc);
    if (rc == KEEL_EDB_UNAVAILABLE) {
        creator_host->log(req, KEEL_LOG_WARN, "import line %ld: database unavailable, stopping",
                          lineno);
        return rc;
    }
    if (rc != 0) {
        const char *detail = creator_host->db_last_error(req);

        /* Input the database refuses (a date out of range) is the line's
         * fault, not the server's: a warning, not an error. */
        if (rc == KEEL_EDB_BADREQ)
            creator_host->log(req, KEEL_LOG_WARN, "import line %ld rejected: %s", lineno, detail);
        else
            creator_log_db(req, rc, "import line");
        snprintf(l->err, sizeof l->err, "database rejected the line: %s",
                 detail != NULL && *detail != '\0' ? detail : keel_strerror(rc));
        return 0;
    }
    *ok = true;
    return 0;
}

int creator_import_doc(keel_request *req, const json_t *doc, bool summarize, char *err,
                       size_t errlen)
{
    struct import_line *l = creator_host->req_alloc(req, sizeof *l);
    int rc;

    if (l == NULL)
        return KEEL_ENOMEM;
    l->summarize = summarize;
    if (!import_validate(req, l, doc)) {
        import_line_clear(l);
        snprintf(err, errlen, "%s", l->err);
        return KEEL_EINVAL;
    }
    rc = creator_host->db_transaction(req, import_in_tx, l);
    import_line_clear(l);
    if (rc != 0) {
        const char *detail = creator_host->db_last_error(req);

        snprintf(err, errlen, "%s", detail != NULL && *detail != '\0' ? detail : keel_strerror(rc));
    }
    return rc;
}

static bool blank(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return false;
    return true;
}

/*
 * The next line of the import body: through the host's line reader when it
 * has one (the body is then streamed from disk, never held whole), else
 * from the in-memory body.  Returns 1, 0 at the end, KEEL_ETOOBIG for an
 * overlong line (skipped), or another negative code.
 */
static int next_line(keel_request *req, const char *body, size_t len, size_t *pos,
                     const char **line, size_t *n)
{
    if (KEEL_HOST_HAS(creator_host, req_body_line))
        return creator_host->req_body_line(req, line, n);
    if (body == NULL || *pos >= len)
        return 0;
    const char *start = body + *pos;
    const char *nl = memchr(start, '\n', len - *pos);
    *n = nl != NULL ? (size_t)(nl - start) : len - *pos;
    *pos += *n + (nl != NULL);
    *line = start;
    return 1;
}

int creator_admin_import(keel_request *req, void *state)
{
    size_t len = 0, pos = 0;
    const char *body = creator_host->req_body(req, &len);
    long lines = 0, imported = 0, failed = 0, jobs = 0;
    json_t *results = json_array();
    struct import_line *l;
    const char *start;
    size_t n;
    int more;

    l = creator_host->req_alloc(req, sizeof *l);
    if (results == NULL || l == NULL) {
        json_decref(results);
        return creator_respond(req, 500, NULL);
    }
    while ((more = next_line(req, body, len, &pos, &start, &n)) != 0) {
        bool ok;

        lines++;
        if (more == KEEL_ETOOBIG) {
            failed++;
            json_array_append_new(results, json_pack("{s:I,s:b,s:s}", "line", (json_int_t)lines,
                                                     "ok", 0, "error", "line too long"));
            continue;
        }
        if (more < 0) {
            json_decref(results);
            return creator_respond(req, 500, NULL);
        }
        if (n > 0 && start[n - 1] == '\r')
            n--;
        if (blank(start, n))
            continue;
        memset(l, 0, sizeof *l);
        if (import_one(req, start, n, lines, l, &ok) != 0) {
            json_decref(results);
            return creator_unavailable(req);
        }
        if (ok) {
            imported++;
            jobs += l->jobs_completed;
            json_array_append_new(results, json_pack("{s:I,s:b,s:s}", "line", (json_int_t)lines,
                                                     "ok", 1, "username", l->params[P_USERNAME]));
        } else {
            failed++;
            json_array_append_new(results, json_pack("{s:I,s:b,s:s}", "line", (json_int_t)lines,
                                                     "ok", 0, "error", l->err));
        }
    }
    creator_host->log(req, KEEL_LOG_INFO,
                      "import: %ld lines, %ld imported, %ld failed, %ld jobs completed", lines,
                      imported, failed, jobs);
    return creator_respond(req, 200,
                           json_pack("{s:b,s:I,s:I,s:I,s:I,s:o}", "ok", failed == 0, "lines",
                                     (json_int_t)lines, "imported", (json_int_t)imported, "failed",
                                     (json_int_t)failed, "jobs_completed", (json_int_t)jobs,
                                     "results", results));
}

/* ------------------------------------------------------------------ credits */

struct credits_tx {
    const char *email;
    const char *amount;
    const char *reason;
    char user_email[CREDITS_EMAIL_MAX + 1]; /* out: the stored spelling */
    long long balance;                      /* out */
};

enum credits_outcome { CREDITS_OK = 0, CREDITS_NO_USER = 1 };

static int credits_in_tx(keel_db_tx *tx, void *arg)
{
    struct credits_tx *c = arg;
    const keel_host *h = creator_host;
    keel_db_result *res = NULL;
    const char *user_id, *email;
    char balance[24];
    int rc;

    c->balance = 0;
    c->user_email[0] = '\0';
    /* The unique index answers the exact spelling; only a miss pays for the
     * case-insensitive scan. */
    rc = h->db_tx_query(tx, "SELECT id, email FROM users WHERE email = $1", 1,
                        (const char *const[]){c->email}, &res);
    if (rc == 0 && h->db_rows(res) == 0)
        rc = h->db_tx_query(tx,
                            "SELECT id, email FROM users WHERE lower(email) = lower($1)"
                            " ORDER BY created_at LIMIT 1",
                            1, (const char *const[]){c->email}, &res);
    if (rc != 0)
        return rc;
    if (h->db_rows(res) == 0)
        return CREDITS_NO_USER;
    user_id = creator_col(res, 0, "id");
    email = creator_col(res, 0, "email");
    if (user_id == NULL || email == NULL || strlen(email) > CREDITS_EMAIL_MAX)
        return KEEL_EDB_BUG;
    memcpy(c->user_email, email, strlen(email) + 1);

    rc = h->db_tx_query(tx,
                        "INSERT INTO credit_wallets (user_id, balance) VALUES ($1, $2)"
                        " ON CONFLICT (user_id) DO UPDATE"
                        "   SET balance = credit_wallets.balance + EXCLUDED.balance,"
                        "       updated_at = now()"
                        " RETURNING balance",
                        2, (const char *const[]){user_id, c->amount}, &res);
    if (rc != 0)
        return rc;
    if (h->db_rows(res) != 1 || !creator_parse_ll(creator_col(res, 0, "balance"), &c->balance))
        return KEEL_EDB_BUG;
    snprintf(balance, sizeof balance, "%lld", c->balance);
    return h->db_tx_query(tx,
                          "INSERT INTO credit_transactions"
                          "   (user_id, amount, balance_after, kind, reason)"
                          " VALUES ($1, $2, $3, 'admin', $4)",
                          4, (const char *const[]){user_id, c->amount, balance, c->reason}, &res);
}

int creator_admin_credits(keel_request *req, void *state)
{
    struct credits_tx c = {.reason = "Admin credit"};
    json_t *body = NULL, *errors, *v;
    long long amount_value = 0;
    char amount[24];
    int rc;

    if (creator_host->req_json_body(req, &body) != 0)
        return 0;
    if ((errors = json_array()) == NULL)
        return creator_respond(req, 500, NULL);

    v = json_object_get(body, "email");
    if (v == NULL)
        creator_add_error(errors, "body", "email", "field required", "value_error.missing");
    else if (!json_is_string(v) || json_string_length(v) == 0 ||
             json_string_length(v) > CREDITS_EMAIL_MAX ||
             json_string_length(v) != strlen(json_string_value(v)))
        creator_add_error(errors, "body", "email", "expected a non-empty email address",
                          "value_error");
    else
        c.email = json_string_value(v);

    v = json_object_get(body, "amount");
    if (v == NULL)
        creator_add_error(errors, "body", "amount", "field required", "value_error.missing");
    else if (!json_is_integer(v))
        creator_add_error(errors, "body", "amount", "value is not a valid integer",
                          "type_error.integer");
    else if (json_integer_value(v) < 1)
        creator_add_error(errors, "body", "amount",
                          "ensure this value is greater than or equal to 1",
                          "value_error.number.not_ge");
    else if (json_integer_value(v) > CREDITS_AMOUNT_MAX)
        creator_add_error(errors, "body", "amount",
                          "ensure this value is less than or equal to 1000000",
                          "value_error.number.not_le");
    else {
        amount_value = (long long)json_integer_value(v);
        snprintf(amount, sizeof amount, "%lld", amount_value);
        c.amount = amount;
    }

    v = json_object_get(body, "reason");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) > CREDITS_REASON_MAX ||
            json_string_length(v) != strlen(json_string_value(v)))
            creator_add_error(errors, "body", "reason",
                              "expected a string of at most 500 characters", "value_error");
        else if (json_string_length(v) > 0)
            c.reason = json_string_value(v);
    }
    if (json_array_size(errors) > 0)
        return creator_reject(req, errors);
    json_decref(errors);

    rc = creator_host->db_transaction(req, credits_in_tx, &c);
    if (rc == CREDITS_NO_USER)
        return creator_host->respond_error(req, 404, "User not found");
    if (rc != 0) {
        creator_log_db(req, rc, "admin credits");
        return creator_unavailable(req);
    }
    creator_host->log(req, KEEL_LOG_INFO, "credits: +%s for %s, balance %lld", c.amount,
                      c.user_email, c.balance);
    return creator_respond(req, 200,
                           json_pack("{s:b,s:s,s:I,s:I}", "success", 1, "email", c.user_email,
                                     "amount", (json_int_t)amount_value, "balance",
                                     (json_int_t)c.balance));
}
