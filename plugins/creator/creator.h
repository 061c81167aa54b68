/*
 * The creator plugin's internal interface: the route handlers (creator API,
 * job status, admin import and credits, as the web frontend calls them) and the
 * helpers they share.  Nothing here is exported from the shared object; the
 * only exported symbol is keel_plugin_entry() in creator.c.
 *
 * Every handler talks to the host through creator_host (set once by init)
 * and follows the same failure rules:
 *  - a database that is unavailable (or a caller whose local user id is
 *    unknown because the user sync failed) turns a read into 200 with the
 *    route's degraded body and `X-Keel-Degraded: database`, and a write into
 *    503 with `Retry-After: 5`;
 *  - any other database failure is logged at error level with context and
 *    handled the same way, so the plugin never answers 500 for the database.
 */
#ifndef KEEL_PLUGINS_CREATOR_CREATOR_H
#define KEEL_PLUGINS_CREATOR_CREATOR_H

#include <pthread.h>
#include <stdbool.h>
#include <time.h>

#include <jansson.h>

#include <keel/plugin.h>

/*
 * system/stats' cache (read.c), one per generation in each worker process:
 * the counts last read and the monotonic time taken just before the query
 * that read them, so an answer from the cache reflects the database as of
 * at most stats_cache_ms earlier.  Handlers run concurrently: every field is
 * read and written under lock.
 */
struct creator_stats_cache {
    pthread_mutex_t lock;
    bool valid; /* false until the first read is stored */
    struct timespec read_at;
    long long counts[2][2]; /* [profiles|posts][total|ai] */
};

/* The plugin's configuration, one copy per generation (the handler state). */
struct creator_conf {
    long long unlock_cost;         /* credits per unlock, default 25 */
    long long unlock_days;         /* days an unlock lasts, default 30 */
    long long max_posts;           /* posts embedded in a full search answer, default 50 */
    long long stats_cache_ms;      /* system/stats staleness bound, default 1000; 0 = none */
    long long unlock_sweep_s;      /* unlocked counts' sweep period, default 30; 0 = none */
    struct creator_runner *runner; /* NULL when no provider is configured */
    struct creator_stats_cache stats;
    keel_metric *stats_reads; /* system/stats queries sent (cache misses); may be NULL */
};

/* The host table, set by init before any handler runs. */
extern const keel_host *creator_host;

/* The degraded-read header and the 503 write answer (see the file comment). */
#define CREATOR_DEGRADED_HEADER "X-Keel-Degraded"
#define CREATOR_DB_ERROR "Database connectivity issues"
#define CREATOR_WRITE_UNAVAILABLE "Service temporarily unavailable - database connectivity issues"

/* ISO 8601 UTC rendering of a timestamptz column inside SQL text. */
#define CREATOR_ISO(col) "to_char((" col ") AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/*
 * The caller's ($1) exact number of unexpired unlocks, from the per-user
 * count the database keeps (migrations/0003_unlock_counts.sql): the row's
 * live count less the grants that expired since its last sweep, which the
 * (user_id, expires_at) index finds.  No row means no grants.
 */
#define CREATOR_UNLOCKED_TOTAL                                                                     \
    "coalesce((SELECT c.live - (SELECT count(*) FROM user_profile_access x"                        \
    " WHERE x.user_id = $1 AND x.expires_at > c.swept_to AND x.expires_at <= now())"               \
    " FROM user_unlock_counts c WHERE c.user_id = $1), 0)"

/* The caller's unexpired unlocks, newest first, one page ($1 user id, $2
 * limit, $3 offset): the tail of every query that lists them, after the
 * profile columns the caller picks from p.  Each row also carries the
 * caller's total (CREATOR_UNLOCKED_TOTAL, computed once per statement), so
 * a page and its total take one round trip. */
#define CREATOR_UNLOCKED_PAGE_TAIL                                                                          \
    CREATOR_UNLOCKED_TOTAL                                                                                  \
    " AS total, " CREATOR_ISO("a.granted_at") " AS unlocked_at, " CREATOR_ISO(                              \
        "a.expires_at") " AS expires_at,"                                                                   \
                        " ceil(extract(epoch FROM a.expires_at - now()) / 86400)::bigint AS days_remaining" \
                        "  FROM user_profile_access a JOIN profiles p ON p.id = a.profile_id"               \
                        " WHERE a.user_id = $1 AND a.expires_at > now()"                                    \
                        " ORDER BY a.granted_at DESC, a.id DESC"                                            \
                        " LIMIT $2 OFFSET $3"

/* --- database rows -> JSON ----------------------------------------------- */

/* The text of column `name` in `row`, or NULL (SQL NULL or no such column). */
const char *creator_col(const keel_db_result *res, int row, const char *name);
/* Parses a whole decimal integer; false on anything else. */
bool creator_parse_ll(const char *s, long long *out);
/* JSON of a database text value; SQL NULL (or invalid UTF-8) -> null. */
json_t *creator_json_text(const char *v);
/* JSON integer of a bigint column; NULL or unparsable -> null. */
json_t *creator_json_int(const char *v);
/* JSON real of a double precision column; NULL, NaN or infinite -> null. */
json_t *creator_json_real(const char *v);
/* JSON boolean of a boolean column ('t'); NULL -> null. */
json_t *creator_json_bool(const char *v);
/* JSON value of a json/jsonb column's text; NULL or unparsable -> null. */
json_t *creator_json_doc(const char *v);

/* One JSON member read from a result column: key = convert(text of column). */
struct creator_column {
    const char *key;
    const char *column;
    json_t *(*convert)(const char *v);
};
/*
 * Sets the members of cols (a table ending in an entry whose key is NULL) on
 * obj from `row`, in table order.  Returns obj, or NULL when obj is NULL or
 * memory runs out (obj is then released), so the result of json_object()
 * can be passed straight in.
 */
json_t *creator_set_columns(json_t *obj, const keel_db_result *res, int row,
                            const struct creator_column *cols);
/* Adds ai as obj's "ai_analysis" member.  Takes both references; returns
 * obj, or NULL (both released) when either is NULL or memory runs out. */
json_t *creator_with_ai(json_t *obj, json_t *ai);
/* A list: per row of res, the members of cols, plus (ai_cols not NULL) an
 * "ai_analysis" object with the members of ai_cols; column numbers are
 * looked up once, on the first row.  New reference, or NULL when memory
 * runs out. */
json_t *creator_rows(const keel_db_result *res, const struct creator_column *cols,
                     const struct creator_column *ai_cols);

/* The base profile fields of the creator API from a row with the columns
 * id, username, full_name, biography, followers_count, following_count,
 * posts_count, is_verified, is_private, profile_pic_url.  New reference. */
json_t *creator_profile_base(const keel_db_result *res, int row);
/* The posts of res as in the search answer (columns of
 * CREATOR_POST_COLUMNS), a list as creator_rows makes. */
json_t *creator_posts_json(const keel_db_result *res);
/* The select list creator_posts_json() reads, for table alias "po". */
#define CREATOR_POST_COLUMNS                                                                       \
    "po.id, po.shortcode, po.caption, po.likes_count, po.comments_count, "                         \
    "po.engagement_rate, po.display_url, " CREATOR_ISO(                                            \
        "po.taken_at") " AS taken_at, "                                                            \
                       "po.ai_content_category, po.ai_sentiment, po.ai_sentiment_score, po.ai_language_code"
/* The select list creator_profile_base() reads, for table alias "p". */
#define CREATOR_PROFILE_COLUMNS                                                                    \
    "p.id, p.username, p.full_name, p.biography, p.followers_count, "                              \
    "p.following_count, p.posts_count, p.is_verified, p.is_private, p.profile_pic_url"

/*
 * The caller's unlocked total for a page read with CREATOR_UNLOCKED_PAGE_TAIL
 * (res): taken from its first row, or, when the page is empty, asked of the
 * database on its own.  0 or a KEEL_EDB_* code.
 */
int creator_unlocked_total(keel_request *req, const char *uid, const keel_db_result *res,
                           long long *total);

/* {"page","page_size","total","total_pages","has_next","has_previous"}. */
json_t *creator_pagination(long long page, long long page_size, long long total);
/* OFFSET for a page, saturating instead of overflowing for absurd pages. */
long long creator_page_offset(long long page, long long page_size);

/* --- request validation -------------------------------------------------- */

/*
 * Validates a username (1-30 of [A-Za-z0-9._]) and returns a lowercased copy
 * in request memory.  On failure returns NULL and appends a 422 error entry
 * with loc [loc_kind, loc_name] to errors (a JSON array).
 */
const char *creator_username(keel_request *req, const char *raw, json_t *errors,
                             const char *loc_kind, const char *loc_name);
/* The {username} path parameter checked by creator_username().  When it is
 * invalid, answers 422 (or 500 without memory), stores what the handler
 * returns in *rc and returns NULL. */
const char *creator_path_username(keel_request *req, int *rc);
/* Reads ?page (>= 1, default 1) and ?page_size (1-100, default
 * default_size), appending a 422 entry per bad argument to errors. */
void creator_page_args(keel_request *req, long long default_size, long long *page,
                       long long *page_size, json_t *errors);
/* Reads ?limit (1-100) and ?offset (>= 0), the frontend's spelling of a
 * page.  *given is true when either was sent; defaults are default_size, 0. */
void creator_limit_args(keel_request *req, long long default_size, long long *limit,
                        long long *offset, bool *given, json_t *errors);
/* True for the 8-4-4-4-12 hex form of a UUID (either case). */
bool creator_is_uuid(const char *s);
/* Appends {"loc":[kind,name],"msg":msg,"type":type} to errors. */
void creator_add_error(json_t *errors, const char *kind, const char *name, const char *msg,
                       const char *type);
/* Answers 422 {"detail": errors}; takes ownership of errors. */
int creator_reject(keel_request *req, json_t *errors);

/* --- failure answers ----------------------------------------------------- */

/* The caller's local user id, or NULL when the user sync failed. */
const char *creator_user_id(keel_request *req);
/* Logs a database failure of `what` (error level, warn when unavailable). */
void creator_log_db(keel_request *req, int rc, const char *what);
/* Answers a read's degraded body with 200 and X-Keel-Degraded: database:
 * {"success": false, <fields>, "error": CREATOR_DB_ERROR, "message": message}.
 * fields is the route's own members (an object, stolen; NULL answers 500). */
int creator_degraded(keel_request *req, json_t *fields, const char *message);
/* Answers 503 {"detail": ...} with Retry-After: 5. */
int creator_unavailable(keel_request *req);
/* Answers a JSON body (stolen), or 500 when building it ran out of memory. */
int creator_respond(keel_request *req, unsigned status, json_t *body);

/* --- import and the job runner (admin.c, runner.c, provider.c) ----------- */

/*
 * Stores one profile line (the POST /admin/import format, already parsed)
 * in one transaction and completes the open search jobs for its username,
 * exactly as the import route does.  summarize: when the line has no "ai",
 * the profile's AI summary is computed from its stored posts.  Returns 0,
 * KEEL_EINVAL (the line is invalid; err says why) or a KEEL_EDB_* code.
 */
int creator_import_doc(keel_request *req, const json_t *doc, bool summarize, char *err,
                       size_t errlen);
/* SQL ($1 = profile id) computing a profile's AI summary from its posts. */
extern const char creator_ai_summary_sql[];

/* The unlocked counts' sweep task (portfolio.c), run every unlock_sweep_s
 * seconds when the host has tasks. */
int creator_sweep_task(keel_task *task, keel_request *req, void *arg);

struct creator_runner;
/* Reads config.provider and registers the runner's tasks, upstream and
 * metrics; with no provider, notes that jobs stay queued.  0 or a code. */
int creator_runner_init(const keel_host *host, const json_t *provider, struct creator_runner **out);
void creator_runner_free(struct creator_runner *r);

/* --- route handlers ------------------------------------------------------ */

int creator_stats(keel_request *req, void *state);
int creator_unlocked(keel_request *req, void *state);
int creator_profile(keel_request *req, void *state);
int creator_status(keel_request *req, void *state);
int creator_posts(keel_request *req, void *state);
int creator_job_status(keel_request *req, void *state);
int creator_search(keel_request *req, void *state);
int creator_job_result(keel_request *req, void *state);
int creator_auth_unlocked(keel_request *req, void *state);
int creator_auth_unlocked_profiles(keel_request *req, void *state);

/*
 * The answer a search for username by user uid gives now: full analytics,
 * a preview, or (queue true) a search job; queue false answers 404 for a
 * profile that is not stored.  Used by the search routes and by a finished
 * job's result.
 */
int creator_search_answer(keel_request *req, const struct creator_conf *conf, const char *uid,
                          const char *username, bool queue);
int creator_unlock(keel_request *req, void *state);
int creator_discovery_unlock(keel_request *req, void *state);
int creator_admin_import(keel_request *req, void *state);
int creator_admin_credits(keel_request *req, void *state);

#endif /* KEEL_PLUGINS_CREATOR_CREATOR_H */
