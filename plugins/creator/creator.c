/*
 * The creator plugin: descriptor, configuration, and the helpers every route
 * shares (validation, database values to JSON, degraded answers).
 *
 * Configuration ("config" of conf.d/60-creator.json):
 *   unlock_cost  credits charged per unlock       1..1000000, default 25
 *   unlock_days  days an unlock lasts             1..3650,    default 30
 *   max_posts    posts in a full search answer    1..1000,    default 50
 * A value of the wrong type or out of range fails init (the routes are then
 * served by their manifest fallbacks and the reason is logged).
 */
#include "config.h"

#include "creator.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

const keel_host *creator_host;

#define CREATOR_USERNAME_MAX 30

/* ------------------------------------------------------------ database rows */

const char *creator_col(const keel_db_result *res, int row, const char *name)
{
    int col = creator_host->db_column(res, name);

    if (col < 0)
        return NULL;
    return creator_host->db_value(res, row, col);
}

bool creator_parse_ll(const char *s, long long *out)
{
    const char *p = s;
    char *end = NULL;
    long long v;

    if (s == NULL)
        return false;
    /* strtoll skips leading blanks; a query argument " 5" is not an integer. */
    if (*p == '+' || *p == '-')
        p++;
    if (!isdigit((unsigned char)*p))
        return false;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return false;
    *out = v;
    return true;
}

json_t *creator_json_text(const char *v)
{
    const char *p;
    json_t *j;

    if (v == NULL)
        return json_null();
    /* Most values are ASCII, which is valid UTF-8: one tight pass instead of
     * jansson's character-by-character check. */
    for (p = v; *p != '\0' && (unsigned char)*p < 0x80; p++)
        ;
    if (*p == '\0')
        j = json_stringn_nocheck(v, (size_t)(p - v));
    else
        /* A SQL_ASCII database can hold bytes that are not UTF-8; jansson
         * refuses them, and null is better than dropping the whole answer. */
        j = json_string(v);
    return j != NULL ? j : json_null();
}

json_t *creator_json_int(const char *v)
{
    long long n;

    if (!creator_parse_ll(v, &n))
        return json_null();
    return json_integer((json_int_t)n);
}

json_t *creator_json_real(const char *v)
{
    char *end = NULL;
    double d;

    if (v == NULL || *v == '\0')
        return json_null();
    errno = 0;
    d = strtod(v, &end);
    if (errno != 0 || *end != '\0' || !isfinite(d))
        return json_null();
    return json_real(d);
}

json_t *creator_json_bool(const char *v)
{
    if (v == NULL)
        return json_null();
    return json_boolean(v[0] == 't');
}

json_t *creator_json_doc(const char *v)
{
    json_t *j;

    if (v == NULL)
        return json_null();
    j = json_loads(v, JSON_DECODE_ANY, NULL);
    return j != NULL ? j : json_null();
}

/*
 * creator_set_columns for the rows of one result in a loop: the column
 * numbers of cols are looked up by name once, on the first row, and kept in
 * *map (zeroed before the loop), instead of once per row and column.  A
 * table longer than CREATOR_COLUMNS_MAX is refused there (logged, NULL).
 */
#define CREATOR_COLUMNS_MAX 32
struct creator_colmap {
    bool resolved;
    int col[CREATOR_COLUMNS_MAX];
};

static json_t *creator_set_columns_mapped(json_t *obj, const keel_db_result *res, int row,
                                          const struct creator_column *cols,
                                          struct creator_colmap *map)
{
    if (obj != NULL && !map->resolved) {
        for (int i = 0; cols[i].key != NULL; i++) {
            /* Every table is this plugin's own and far shorter; one that
             * outgrew the map fails loudly instead of reading past it. */
            if (i == CREATOR_COLUMNS_MAX) {
                creator_host->log(NULL, KEEL_LOG_ERROR,
                                  "creator: a column table (\"%s\", ...) has more than %d entries",
                                  cols[0].key, CREATOR_COLUMNS_MAX);
                json_decref(obj);
                return NULL;
            }
            map->col[i] = creator_host->db_column(res, cols[i].column);
        }
        map->resolved = true;
    }
    for (int i = 0; obj != NULL && cols[i].key != NULL; i++) {
        /* db_value answers NULL for a column the result lacks (-1). */
        const char *v = creator_host->db_value(res, row, map->col[i]);
        /* The keys are this plugin's own ASCII names: no UTF-8 check. */
        if (json_object_set_new_nocheck(obj, cols[i].key, cols[i].convert(v)) != 0) {
            json_decref(obj);
            return NULL;
        }
    }
    return obj;
}

json_t *creator_set_columns(json_t *obj, const keel_db_result *res, int row,
                            const struct creator_column *cols)
{
    struct creator_colmap map = {.resolved = false};
    return creator_set_columns_mapped(obj, res, row, cols, &map);
}

json_t *creator_with_ai(json_t *obj, json_t *ai)
{
    if (obj == NULL || ai == NULL) {
        json_decref(obj);
        json_decref(ai);
        return NULL;
    }
    /* json_object_set_new() releases ai even when it fails. */
    if (json_object_set_new(obj, "ai_analysis", ai) != 0) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

json_t *creator_rows(const keel_db_result *res, const struct creator_column *cols,
                     const struct creator_column *ai_cols)
{
    struct creator_colmap map = {.resolved = false}, ai_map = {.resolved = false};
    json_t *rows = json_array();

    for (int i = 0; rows != NULL && i < creator_host->db_rows(res); i++) {
        json_t *row = creator_set_columns_mapped(json_object(), res, i, cols, &map);
        if (ai_cols != NULL)
            row = creator_with_ai(row, creator_set_columns_mapped(json_object(), res, i, ai_cols,
                                                                  &ai_map));
        json_array_append_new(rows, row);
    }
    return rows;
}

static const struct creator_column profile_columns[] = {
    {"id", "id", creator_json_text},
    {"username", "username", creator_json_text},
    {"full_name", "full_name", creator_json_text},
    {"biography", "biography", creator_json_text},
    {"followers_count", "followers_count", creator_json_int},
    {"following_count", "following_count", creator_json_int},
    {"posts_count", "posts_count", creator_json_int},
    {"is_verified", "is_verified", creator_json_bool},
    {"is_private", "is_private", creator_json_bool},
    {"profile_pic_url", "profile_pic_url", creator_json_text},
    {NULL, NULL, NULL},
};

static const struct creator_column post_columns[] = {
    {"id", "id", creator_json_text},
    {"shortcode", "shortcode", creator_json_text},
    {"caption", "caption", creator_json_text},
    {"likes_count", "likes_count", creator_json_int},
    {"comments_count", "comments_count", creator_json_int},
    {"engagement_rate", "engagement_rate", creator_json_real},
    {"display_url", "display_url", creator_json_text},
    {"taken_at", "taken_at", creator_json_text},
    {NULL, NULL, NULL},
};

static const struct creator_column post_ai_columns[] = {
    {"content_category", "ai_content_category", creator_json_text},
    {"sentiment", "ai_sentiment", creator_json_text},
    {"sentiment_score", "ai_sentiment_score", creator_json_real},
    {"language_code", "ai_language_code", creator_json_text},
    {NULL, NULL, NULL},
};

json_t *creator_profile_base(const keel_db_result *res, int row)
{
    return creator_set_columns(json_object(), res, row, profile_columns);
}

json_t *creator_posts_json(const keel_db_result *res)
{
    /* The object is always present (fields null when not analysed) so a
     * client can read post.ai_analysis.x without a guard. */
    return creator_rows(res, post_columns, post_ai_columns);
}

json_t *creator_pagination(long long page, long long page_size, long long total)
{
    long long pages = total > 0 ? total / page_size + (total % page_size != 0) : 0;

    return json_pack("{s:I,s:I,s:I,s:I,s:b,s:b}", "page", (json_int_t)page, "page_size",
                     (json_int_t)page_size, "total", (json_int_t)total, "total_pages",
                     (json_int_t)pages, "has_next", page<pages, "has_previous", page> 1);
}

int creator_unlocked_total(keel_request *req, const char *uid, const keel_db_result *res,
                           long long *total)
{
    keel_db_result *alone = NULL;
    int rc;

    if (creator_host->db_rows(res) == 0) {
        rc = creator_host->db_query(req, "SELECT " CREATOR_UNLOCKED_TOTAL " AS total", 1,
                                    (const char *const[]){uid}, &alone);
        if (rc != 0)
            return rc;
        res = alone;
    }
    if (!creator_parse_ll(creator_col(res, 0, "total"), total))
        *total = 0;
    if (*total < 0) {
        /* Only a count the triggers did not keep (disabled by an operator)
         * can go below zero. */
        creator_host->log(req, KEEL_LOG_ERROR,
                          "unlocked total %lld is negative: user_unlock_counts needs a rebuild",
                          *total);
        *total = 0;
    }
    return 0;
}

long long creator_page_offset(long long page, long long page_size)
{
    if (page - 1 > LLONG_MAX / page_size)
        return LLONG_MAX;
    return (page - 1) * page_size;
}

/* ------------------------------------------------------------- validation */

bool creator_is_uuid(const char *s)
{
    static const char hex[] = "0123456789abcdefABCDEF";

    if (s == NULL || strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (strchr(hex, s[i]) == NULL) {
            return false;
        }
    }
    return true;
}

void creator_add_error(json_t *errors, const char *kind, const char *name, const char *msg,
                       const char *type)
{
    json_array_append_new(errors, json_pack("{s:[s,s],s:s,s:s}", "loc", kind, name, "msg", msg,
                                            "type", type));
}

int creator_reject(keel_request *req, json_t *errors)
{
    return creator_respond(req, 422, json_pack("{s:o}", "detail", errors));
}

const char *creator_username(keel_request *req, const char *raw, json_t *errors,
                             const char *loc_kind, const char *loc_name)
{
    size_t len = raw != NULL ? strlen(raw) : 0;
    char *out;

    if (len == 0 || len > CREATOR_USERNAME_MAX) {
        creator_add_error(errors, loc_kind, loc_name, "username must be 1-30 characters long",
                          "value_error");
        return NULL;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)raw[i];

        /* ASCII only: isalnum() would accept locale letters above 0x7f. */
        bool ok = (c < 0x80 && isalnum(c)) || c == '.' || c == '_';

        if (!ok) {
            creator_add_error(errors, loc_kind, loc_name,
                              "username may contain only letters, digits, '.' and '_'",
                              "value_error");
            return NULL;
        }
    }
    out = creator_host->req_alloc(req, len + 1);
    if (out == NULL) {
        creator_add_error(errors, loc_kind, loc_name, "out of memory", "value_error");
        return NULL;
    }
    for (size_t i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)raw[i]);
    out[len] = '\0';
    return out;
}

const char *creator_path_username(keel_request *req, int *rc)
{
    json_t *errors = json_array();
    const char *username;

    if (errors == NULL) {
        *rc = creator_respond(req, 500, NULL);
        return NULL;
    }
    username = creator_username(req, creator_host->req_param(req, "username"), errors, "path",
                                "username");
    if (username == NULL) {
        *rc = creator_reject(req, errors);
        return NULL;
    }
    json_decref(errors);
    return username;
}

/* One ?name=N argument; returns false (and records why) when invalid. */
static bool page_arg(keel_request *req, const char *name, long long min, long long max,
                     long long *value, json_t *errors)
{
    const char *raw = creator_host->req_query(req, name);
    char msg[80];
    long long v;

    if (raw == NULL)
        return true;
    if (!creator_parse_ll(raw, &v)) {
        creator_add_error(errors, "query", name, "value is not a valid integer",
                          "type_error.integer");
        return false;
    }
    if (v < min) {
        snprintf(msg, sizeof msg, "ensure this value is greater than or equal to %lld", min);
        creator_add_error(errors, "query", name, msg, "value_error.number.not_ge");
        return false;
    }
    if (v > max) {
        snprintf(msg, sizeof msg, "ensure this value is less than or equal to %lld", max);
        creator_add_error(errors, "query", name, msg, "value_error.number.not_le");
        return false;
    }
    *value = v;
    return true;
}

void creator_page_args(keel_request *req, long long default_size, long long *page,
                       long long *page_size, json_t *errors)
{
    *page = 1;
    *page_size = default_size;
    page_arg(req, "page", 1, LLONG_MAX, page, errors);
    page_arg(req, "page_size", 1, 100, page_size, errors);
}

void creator_limit_args(keel_request *req, long long default_size, long long *limit,
                        long long *offset, bool *given, json_t *errors)
{
    *limit = default_size;
    *offset = 0;
    *given = creator_host->req_query(req, "limit") != NULL ||
             creator_host->req_query(req, "offset") != NULL;
    page_arg(req, "limit", 1, 100, limit, errors);
    page_arg(req, "offset", 0, LLONG_MAX, offset, errors);
}

/* ------------------------------------------------------------ failure answers */

const char *creator_user_id(keel_request *req)
{
    const char *id = creator_host->req_user(req, KEEL_USER_ID);

    return id != NULL && *id != '\0' ? id : NULL;
}

void creator_log_db(keel_request *req, int rc, const char *what)
{
    const char *detail = creator_host->db_last_error(req);

    creator_host->log(req, rc == KEEL_EDB_UNAVAILABLE ? KEEL_LOG_WARN : KEEL_LOG_ERROR,
                      "%s: %s%s%s", what, keel_strerror(rc),
                      detail != NULL && *detail != '\0' ? ": " : "", detail != NULL ? detail : "");
}

int creator_respond(keel_request *req, unsigned status, json_t *body)
{
    if (body == NULL)
        return creator_host->respond_error(req, 500, "Out of memory");
    return creator_host->respond_json(req, status, body);
}

int creator_degraded(keel_request *req, json_t *fields, const char *message)
{
    json_t *body = fields != NULL ? json_pack("{s:b}", "success", 0) : NULL;

    /* Members in the order every degraded body reads: "success" first,
     * the route's own, then "error" and "message". */
    if (body != NULL &&
        (json_object_update(body, fields) != 0 ||
         json_object_update_new(body, json_pack("{s:s,s:s}", "error", CREATOR_DB_ERROR, "message",
                                                message)) != 0)) {
        json_decref(body);
        body = NULL;
    }
    json_decref(fields);
    creator_host->set_header(req, CREATOR_DEGRADED_HEADER, "database");
    return creator_respond(req, 200, body);
}

int creator_unavailable(keel_request *req)
{
    creator_host->set_header(req, "Retry-After", "5");
    return creator_host->respond_error(req, 503, CREATOR_WRITE_UNAVAILABLE);
}

/* -------------------------------------------------------------- descriptor */

/* The integer settings of the manifest's "config": where each goes in
 * struct creator_conf, its default and its bounds. */
static const struct {
    const char *key;
    size_t offset;
    long long def, min, max;
} conf_ints[] = {
    {"unlock_cost", offsetof(struct creator_conf, unlock_cost), 25, 1, 1000000},
    {"unlock_days", offsetof(struct creator_conf, unlock_days), 30, 1, 3650},
    {"max_posts", offsetof(struct creator_conf, max_posts), 50, 1, 1000},
    {"stats_cache_ms", offsetof(struct creator_conf, stats_cache_ms), 1000, 0, 1000},
    {"unlock_sweep_s", offsetof(struct creator_conf, unlock_sweep_s), 30, 0, 86400},
};

#define NCONF_INTS (sizeof conf_ints / sizeof conf_ints[0])

/* Sets conf's integer settings from config (may be NULL), each to its
 * default when absent; warns about keys that are neither these nor
 * "provider".  0 or KEEL_ECONFIG, logged. */
static int conf_read(const json_t *config, struct creator_conf *conf)
{
    const char *key;
    json_t *value;
    size_t i;

    for (i = 0; i < NCONF_INTS; i++) {
        long long *slot = (long long *)(void *)((char *)conf + conf_ints[i].offset);
        const json_t *v = json_object_get(config, conf_ints[i].key);

        *slot = conf_ints[i].def;
        if (v == NULL)
            continue;
        if (!json_is_integer(v) || json_integer_value(v) < conf_ints[i].min ||
            json_integer_value(v) > conf_ints[i].max) {
            creator_host->log(NULL, KEEL_LOG_ERROR, "config.%s: expected an integer %lld-%lld",
                              conf_ints[i].key, conf_ints[i].min, conf_ints[i].max);
            return KEEL_ECONFIG;
        }
        *slot = (long long)json_integer_value(v);
    }
    if (config == NULL)
        return 0;
    json_object_foreach((json_t *)config, key, value)
    {
        for (i = 0; i < NCONF_INTS && strcmp(key, conf_ints[i].key) != 0; i++)
            ;
        if (i == NCONF_INTS && strcmp(key, "provider") != 0)
            creator_host->log(NULL, KEEL_LOG_WARN, "config.%s: unknown key ignored", key);
    }
    return 0;
}

static int creator_init(const keel_host *host, const json_t *config, void **state)
{
    struct creator_conf *conf;
    int rc;

    /* Every member used here exists in ABI 1.0; the check guards against a
     * host that fills the table only partially. */
    if (!KEEL_HOST_HAS(host, db_affected) || !KEEL_HOST_HAS(host, log) ||
        !KEEL_HOST_HAS(host, db_transaction) || !KEEL_HOST_HAS(host, req_json_body))
        return KEEL_EUNSUPPORTED;
    creator_host = host;

    conf = calloc(1, sizeof *conf);
    if (conf == NULL)
        return KEEL_ENOMEM;
    if ((rc = conf_read(config, conf)) != 0) {
        free(conf);
        return rc;
    }
    rc = creator_runner_init(host, config ? json_object_get(config, "provider") : NULL,
                             &conf->runner);
    if (rc == 0 && conf->unlock_sweep_s > 0 && KEEL_HOST_HAS(host, task_add))
        rc = host->task_add("unlock-count-sweep", (unsigned)(conf->unlock_sweep_s * 1000),
                            creator_sweep_task, NULL, NULL);
    if (rc == 0 && KEEL_HOST_HAS(host, metric_add))
        rc = host->metric_add(KEEL_METRIC_COUNTER, "creator_stats_reads_total",
                              "system/stats answers read from the database (cache misses).",
                              &conf->stats_reads);
    if (rc == 0 && pthread_mutex_init(&conf->stats.lock, NULL) != 0)
        rc = KEEL_ENOMEM;
    if (rc != 0) {
        creator_runner_free(conf->runner);
        free(conf);
        return rc;
    }
    host->log(NULL, KEEL_LOG_INFO,
              "creator ready: unlock_cost=%lld unlock_days=%lld max_posts=%lld"
              " stats_cache_ms=%lld unlock_sweep_s=%lld",
              conf->unlock_cost, conf->unlock_days, conf->max_posts, conf->stats_cache_ms,
              conf->unlock_sweep_s);
    *state = conf;
    return 0;
}

static void creator_fini(void *state)
{
    struct creator_conf *conf = state;

    /* The host has stopped the runner's tasks before calling fini. */
    if (conf != NULL) {
        creator_runner_free(conf->runner);
        pthread_mutex_destroy(&conf->stats.lock);
    }
    free(state);
}

static const keel_route creator_routes[] = {
    {"GET", "/api/v1/simple/creator/system/stats", creator_stats},
    {"GET", "/api/v1/simple/creator/unlocked", creator_unlocked},
    {"GET", "/api/v1/simple/creator/{username}", creator_profile},
    {"GET", "/api/v1/simple/creator/{username}/status", creator_status},
    {"GET", "/api/v1/simple/creator/{username}/posts", creator_posts},
    {"POST", "/api/v1/simple/creator/search/{username}", creator_search},
    {"GET", "/api/v1/search/creator/{username}", creator_search},
    {"POST", "/api/v1/simple/creator/unlock/{username}", creator_unlock},
    {"POST", "/api/v1/discovery/unlock-profile", creator_discovery_unlock},
    {"GET", "/api/v1/jobs/{job_id}/status", creator_job_status},
    {"GET", "/api/v1/jobs/{job_id}/result", creator_job_result},
    {"GET", "/api/v1/auth/unlocked", creator_auth_unlocked},
    {"GET", "/api/v1/auth/unlocked-profiles", creator_auth_unlocked_profiles},
    {"POST", "/admin/import", creator_admin_import},
    {"POST", "/admin/credits", creator_admin_credits},
    {NULL, NULL, NULL},
};

static const keel_plugin creator_plugin = {
    KEEL_PLUGIN_HEADER,   .name = "creator",        .version = "1.0.0", .init = creator_init,
    .fini = creator_fini, .routes = creator_routes, .requires = NULL,
};

KEEL_EXPORT const keel_plugin *keel_plugin_entry(void)
{
    return &creator_plugin;
}
