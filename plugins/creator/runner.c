/*
 * The search-job runner (README.md, "Search jobs and providers").
 *
 * `workers` tasks (default 2) wake every 500 ms, and at once when the search
 * route notifies them, and each claims one runnable job at a time:
 *
 *   queued with next_attempt_at due, or processing with an expired lease
 *     -> processing (attempts + 1, a lease of lease_s seconds, progress 10%)
 *
 * in one UPDATE whose subquery takes the row FOR UPDATE SKIP LOCKED, so two
 * workers, or two keelds on one database, never claim one job, and a job
 * whose keeld was killed is claimed again once its lease runs out.  The
 * runner then fetches the profile from the provider, stores it with the
 * import code (which completes every open job for that name in the same
 * transaction) and computes the AI summary from the posts when the
 * provider sent none.  A provider that does not know the name fails the job
 * with error "not_found"; other failures put it back in the queue with
 * exponential backoff until max_attempts, then fail it with the reason; an
 * unreachable provider (or its open circuit breaker) costs no attempt: jobs
 * wait until it is back.  Every update after the claim checks the lease
 * owner, so a worker that lost its lease cannot overwrite the new owner.
 */
#include "config.h"

#include "runner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "creator.h"

#define RUNNER_PERIOD_MS 500
#define RUNNER_WORKERS_MAX 8
#define RUNNER_WHY_MAX 300
/* Jobs per run: what one run holds stays on its request until it returns,
 * so a long queue is worked through in bounded runs, back to back. */
#define RUNNER_JOBS_PER_RUN 25

struct creator_runner {
    int kind;
    keel_upstream *up;
    long long max_attempts;
    long long backoff_ms;
    long long lease_s;
    long long workers;
    char owner[80]; /* lease owner: this generation of this process */
    keel_metric *completed, *failed, *retried, *waited, *duration;
};

const char creator_ai_summary_sql[] =
    "WITH a AS (SELECT ai_content_category, ai_language_code, ai_sentiment_score"
    "             FROM posts WHERE profile_id = $1 AND ai_analyzed),"
    " c AS (SELECT ai_content_category AS k, count(*) AS n FROM a"
    "        WHERE ai_content_category IS NOT NULL GROUP BY 1),"
    " l AS (SELECT ai_language_code AS k, count(*) AS n FROM a"
    "        WHERE ai_language_code IS NOT NULL GROUP BY 1)"
    " UPDATE profiles p SET ai_analyzed = true,"
    "   ai_primary_content_type = (SELECT k FROM c ORDER BY n DESC, k LIMIT 1),"
    "   ai_content_distribution = (SELECT jsonb_object_agg(k,"
    "       round(n::numeric / (SELECT sum(n) FROM c), 3)) FROM c),"
    "   ai_language_distribution = (SELECT jsonb_object_agg(k,"
    "       round(n::numeric / (SELECT sum(n) FROM l), 3)) FROM l),"
    "   ai_avg_sentiment_score = (SELECT round(avg(ai_sentiment_score)::numeric, 3)::float8 FROM a),"
    "   ai_analyzed_at = now()"
    " WHERE p.id = $1 AND EXISTS (SELECT 1 FROM a)";

static const char claim_sql[] =
    "UPDATE search_jobs j SET status = 'processing', attempts = j.attempts + 1,"
    "   lease_owner = $1, lease_until = now() + make_interval(secs => $2::int),"
    "   progress_percent = 10, progress_message = 'Fetching the profile from the provider',"
    "   updated_at = now()"
    " WHERE j.id = (SELECT id FROM search_jobs"
    "                WHERE (status = 'queued' AND next_attempt_at <= now())"
    "                   OR (status = 'processing' AND (lease_until IS NULL OR lease_until < now()))"
    "                ORDER BY created_at, id FOR UPDATE SKIP LOCKED LIMIT 1)"
    " RETURNING j.id::text AS id, j.username, j.attempts";

static long long conf_ll(const json_t *o, const char *key, long long def, long long min,
                         long long max, int *rc)
{
    const json_t *v = json_object_get(o, key);

    if (v == NULL || json_is_null(v))
        return def;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        creator_host->log(NULL, KEEL_LOG_ERROR, "config.provider.%s: expected an integer %lld-%lld",
                          key, min, max);
        *rc = KEEL_ECONFIG;
        return def;
    }
    return (long long)json_integer_value(v);
}

/* Runs one statement of the runner; logs failures. */
static int runner_sql(keel_request *req, const char *what, const char *sql, int n,
                      const char *const *params, keel_db_result **res)
{
    int rc = creator_host->db_query(req, sql, n, params, res);

    if (rc != 0)
        creator_log_db(req, rc, what);
    return rc;
}

static void finish_failed(struct creator_runner *r, keel_request *req, const char *id,
                          const char *error, const char *message)
{
    keel_db_result *res = NULL;

    if (runner_sql(req, "fail job",
                   "UPDATE search_jobs SET status = 'failed', error = $3, progress_percent = 100,"
                   "   progress_message = $4, lease_owner = NULL, lease_until = NULL,"
                   "   updated_at = now()"
                   " WHERE id = $1::uuid AND lease_owner = $2 AND status = 'processing'",
                   4, (const char *const[]){id, r->owner, error, message}, &res) == 0 &&
        creator_host->db_affected(res) == 1)
        creator_host->metric_observe(r->failed, 1);
}

/* Puts the job back in the queue; counts no attempt when it only waits. */
static void requeue(struct creator_runner *r, keel_request *req, const char *id, long long attempts,
                    bool wait, const char *why)
{
    char delay[32], message[RUNNER_WHY_MAX + 32];
    long long ms = r->backoff_ms;
    keel_db_result *res = NULL;

    for (long long i = 1; !wait && i < attempts && ms < 3600000; i++)
        ms *= 2;
    snprintf(delay, sizeof delay, "%lld", ms);
    snprintf(message, sizeof message, "%s: %s", wait ? "Waiting for the provider" : "Retrying",
             why);
    runner_sql(
        req, "requeue job",
        "UPDATE search_jobs SET status = 'queued', progress_percent = 0,"
        "   attempts = CASE WHEN $4::boolean THEN greatest(attempts - 1, 0) ELSE attempts END,"
        "   next_attempt_at = now() + make_interval(secs => $3::float8 / 1000),"
        "   progress_message = $5, error = CASE WHEN $4::boolean THEN error ELSE $6 END,"
        "   lease_owner = NULL, lease_until = NULL, updated_at = now()"
        " WHERE id = $1::uuid AND lease_owner = $2 AND status = 'processing'",
        6, (const char *const[]){id, r->owner, delay, wait ? "true" : "false", message, why}, &res);
    creator_host->metric_observe(wait ? r->waited : r->retried, 1);
}

/* Runs one claimed job to its next state. */
static void run_job(struct creator_runner *r, keel_request *req, const char *id,
                    const char *username, long long attempts)
{
    const keel_host *h = creator_host;
    char why[RUNNER_WHY_MAX];
    json_t *line = NULL;
    keel_db_result *res = NULL;
    struct timespec t0, t1;
    int got, rc;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    got = creator_provider_fetch(req, r->kind, r->up, username, &line, why, sizeof why);
    if (got == CREATOR_FETCH_NOT_FOUND) {
        h->log(req, KEEL_LOG_INFO, "job %s: the provider does not know %s", id, username);
        finish_failed(r, req, id, "not_found", "Profile not found");
        return;
    }
    if (got == CREATOR_FETCH_WAIT) {
        requeue(r, req, id, attempts, true, why);
        return;
    }
    if (got == CREATOR_FETCH_RETRY) {
        h->log(req, KEEL_LOG_WARN, "job %s (%s), attempt %lld of %lld: %s", id, username, attempts,
               r->max_attempts, why);
        if (attempts >= r->max_attempts)
            finish_failed(r, req, id, why, "Failed after retries");
        else
            requeue(r, req, id, attempts, false, why);
        return;
    }
    /* Still ours?  A lease that ran out means another worker has it now. */
    if (runner_sql(req, "job progress",
                   "UPDATE search_jobs SET progress_percent = 60,"
                   "   progress_message = 'Storing the profile and its posts', updated_at = now()"
                   " WHERE id = $1::uuid AND lease_owner = $2 AND status = 'processing'",
                   2, (const char *const[]){id, r->owner}, &res) != 0 ||
        h->db_affected(res) != 1)
        return;
    rc = creator_import_doc(req, line, true, why, sizeof why);
    if (rc == KEEL_EINVAL) {
        h->log(req, KEEL_LOG_WARN, "job %s: the provider's data for %s was refused: %s", id,
               username, why);
        finish_failed(r, req, id, "invalid_provider_data", why);
        return;
    }
    if (rc != 0) {
        /* The database is the problem: the lease brings the job back. */
        h->log(req, KEEL_LOG_WARN, "job %s: storing %s failed: %s", id, username, why);
        return;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    h->metric_observe(r->completed, 1);
    h->metric_observe(r->duration,
                      (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    h->log(req, KEEL_LOG_INFO, "job %s: %s stored from the provider", id, username);
}

static int runner_task(keel_task *task, keel_request *req, void *arg)
{
    struct creator_runner *r = arg;
    const keel_host *h = creator_host;
    char lease[24];

    snprintf(lease, sizeof lease, "%lld", r->lease_s);
    for (int done = 0; !h->task_stopping(task); done++) {
        keel_db_result *res = NULL;
        char id[64], username[64];
        long long attempts = 0;

        if (done == RUNNER_JOBS_PER_RUN) {
            h->task_notify(task); /* the next run starts at once */
            return 0;
        }
        /* While the breaker is open every call would fail at once: leave
         * the jobs queued (and their attempts unspent) until it closes. */
        if (h->upstream_open(r->up))
            return 0;
        if (runner_sql(req, "claim job", claim_sql, 2, (const char *const[]){r->owner, lease},
                       &res) != 0)
            return 0;
        if (h->db_rows(res) != 1)
            return 0;

        snprintf(id, sizeof id, "%s", creator_col(res, 0, "id"));
        snprintf(username, sizeof username, "%s", creator_col(res, 0, "username"));
        if (!creator_parse_ll(creator_col(res, 0, "attempts"), &attempts))
            attempts = 1;
        run_job(r, req, id, username, attempts);
    }
    return 0;
}

int creator_runner_init(const keel_host *host, const json_t *provider, struct creator_runner **out)
{
    struct creator_runner *r;
    const char *kind;
    json_t *upconf;
    int rc = 0;

    *out = NULL;
    if (provider == NULL || json_is_null(provider)) {
        host->log(NULL, KEEL_LOG_INFO,
                  "no provider configured: search jobs stay queued for `keelctl import`");
        if (KEEL_HOST_HAS(host, plugin_note))
            host->plugin_note("job runner off: no provider configured (config.provider); "
                              "search jobs stay queued for keelctl import");
        return 0;
    }
    if (!KEEL_HOST_HAS(host, task_add) || !KEEL_HOST_HAS(host, upstream_add) ||
        !KEEL_HOST_HAS(host, metric_add)) {
        host->log(NULL, KEEL_LOG_ERROR, "config.provider needs a host with tasks and upstreams");
        return KEEL_EUNSUPPORTED;
    }
    if (!json_is_object(provider)) {
        host->log(NULL, KEEL_LOG_ERROR, "config.provider: expected an object");
        return KEEL_ECONFIG;
    }
    kind = json_string_value(json_object_get(provider, "kind"));
    if (kind == NULL || (strcmp(kind, "keel") != 0 && strcmp(kind, "apify") != 0)) {
        host->log(NULL, KEEL_LOG_ERROR, "config.provider.kind: expected \"keel\" or \"apify\"");
        return KEEL_ECONFIG;
    }
    r = calloc(1, sizeof *r);
    if (r == NULL)
        return KEEL_ENOMEM;
    r->kind = strcmp(kind, "apify") == 0 ? CREATOR_PROVIDER_APIFY : CREATOR_PROVIDER_KEEL;
    long long timeout_ms = conf_ll(provider, "timeout_ms", 10000, 100, 300000, &rc);
    r->max_attempts = conf_ll(provider, "max_attempts", 3, 1, 20, &rc);
    r->backoff_ms = conf_ll(provider, "backoff_ms", 1000, 0, 600000, &rc);
    r->workers = conf_ll(provider, "workers", 2, 1, RUNNER_WORKERS_MAX, &rc);
    /* The lease must outlast an attempt, or a slow fetch would let a second
     * worker take the job while the first still runs it. */
    r->lease_s = conf_ll(provider, "lease_s", 60, 2, 86400, &rc);
    if (rc == 0 && r->lease_s * 1000 < 2 * timeout_ms + 1000) {
        host->log(NULL, KEEL_LOG_ERROR,
                  "config.provider.lease_s (%lld) must be at least twice timeout_ms plus a second",
                  r->lease_s);
        rc = KEEL_ECONFIG;
    }
    snprintf(r->owner, sizeof r->owner, "keeld-%ld-%lx-%lld", (long)getpid(),
             (unsigned long)(uintptr_t)r, (long long)time(NULL));

    /* One HTTP attempt per job attempt: the job's own backoff spaces them. */
    upconf = json_pack(
        "{s:O?,s:O?,s:I,s:I,s:i,s:i,s:i}", "url", json_object_get(provider, "url"), "token_env",
        json_object_get(provider, "token_env"), "timeout_ms", (json_int_t)timeout_ms, "max_bytes",
        (json_int_t)conf_ll(provider, "max_bytes", 8 * 1024 * 1024, 1024, 64 * 1024 * 1024, &rc),
        "retries", 0, "breaker_failures", 3, "breaker_open_ms", 2000);
    if (rc == 0 && upconf == NULL)
        rc = KEEL_ENOMEM;
    if (rc == 0)
        rc = host->upstream_add("provider", upconf, &r->up);
    json_decref(upconf);
    if (rc == 0)
        rc = host->metric_add(KEEL_METRIC_COUNTER, "creator_jobs_completed_total",
                              "Search jobs the runner completed.", &r->completed);
    if (rc == 0)
        rc = host->metric_add(KEEL_METRIC_COUNTER, "creator_jobs_failed_total",
                              "Search jobs the runner failed.", &r->failed);
    if (rc == 0)
        rc = host->metric_add(KEEL_METRIC_COUNTER, "creator_jobs_retried_total",
                              "Job attempts that failed and were queued again.", &r->retried);
    if (rc == 0)
        rc = host->metric_add(KEEL_METRIC_COUNTER, "creator_jobs_waited_total",
                              "Job attempts put back because the provider was unreachable.",
                              &r->waited);
    if (rc == 0)
        rc = host->metric_add(KEEL_METRIC_HISTOGRAM, "creator_job_duration_seconds",
                              "Time from fetch to stored profile, per completed job.",
                              &r->duration);
    for (long long i = 0; rc == 0 && i < r->workers; i++) {
        char name[32];

        snprintf(name, sizeof name, "job-runner-%lld", i + 1);
        rc = host->task_add(name, RUNNER_PERIOD_MS, runner_task, r, NULL);
    }
    if (rc != 0) {
        free(r);
        return rc;
    }
    if (KEEL_HOST_HAS(host, plugin_note)) {
        char note[200];

        snprintf(note, sizeof note, "job runner on: provider kind %s, %lld worker(s)", kind,
                 r->workers);
        host->plugin_note(note);
    }
    host->log(NULL, KEEL_LOG_INFO,
              "job runner: provider kind %s, %lld worker(s), %lld attempt(s), lease %lld s", kind,
              r->workers, r->max_attempts, r->lease_s);
    *out = r;
    return 0;
}

void creator_runner_free(struct creator_runner *r)
{
    free(r);
}
