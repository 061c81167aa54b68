/*
 * Search jobs as the frontend polls them: GET /api/v1/jobs/{job_id}/status
 * and, once the job is done, GET /api/v1/jobs/{job_id}/result.
 *
 * The table stores a finished job as 'complete'; the jobs API says
 * "completed", the word the frontend polls for (the profile status route
 * keeps "complete", it describes the profile, not the job).  The job
 * runner's columns (error, progress_percent, progress_message) are read
 * through to_jsonb(), so this file works whether or not the table has them.
 */
#include "config.h"

#include "creator.h"

#include <string.h>

/*
 * The job row with the API's words; $1 job id, $2 the caller.  A finished
 * job is at 100% whatever a runner last wrote; an open one shows the
 * runner's progress when the table has it, else a figure for its state.
 */
#define JOB_SELECT                                                                                 \
    "SELECT j.id, j.username,"                                                                     \
    "       CASE j.status WHEN 'complete' THEN 'completed' ELSE j.status END AS status,"           \
    "       CASE WHEN j.status IN ('complete', 'failed') THEN 100"                                 \
    "            ELSE COALESCE((to_jsonb(j) ->> 'progress_percent')::int,"                         \
    "                          CASE j.status WHEN 'queued' THEN 0 ELSE 50 END)"                    \
    "       END AS progress_percent,"                                                              \
    "       CASE j.status WHEN 'complete' THEN 'Profile ready'"                                    \
    "            ELSE COALESCE(to_jsonb(j) ->> 'progress_message',"                                \
    "                          CASE j.status WHEN 'queued' THEN 'Waiting for a worker'"            \
    "                                        WHEN 'processing' THEN 'Fetching the profile'"        \
    "                                        ELSE 'Search failed' END)"                            \
    "       END AS progress_message,"                                                              \
    "       CASE WHEN j.status = 'failed'"                                                         \
    "            THEN COALESCE(to_jsonb(j) ->> 'error', 'search failed') END AS error,"            \
    "       " CREATOR_ISO(                                                                         \
        "j.created_at") " AS created_at,"                                                          \
                        "       " CREATOR_ISO(                                                     \
                            "j.updated_at") " AS updated_at"                                       \
                                            "  FROM search_jobs j WHERE j.id = $1 AND j.user_id = $2"

static const struct creator_column job_columns[] = {
    {"job_id", "id", creator_json_text},
    {"status", "status", creator_json_text},
    {"progress_percent", "progress_percent", creator_json_int},
    {"progress_message", "progress_message", creator_json_text},
    {"username", "username", creator_json_text},
    {"created_at", "created_at", creator_json_text},
    {"updated_at", "updated_at", creator_json_text},
    {"error", "error", creator_json_text},
    {NULL, NULL, NULL},
};

static int job_degraded(keel_request *req, const char *job_id)
{
    return creator_degraded(req,
                            json_pack("{s:s,s:s,s:s}", "job_id", job_id, "job_type",
                                      "creator_search", "status", "unknown"),
                            "Job status temporarily unavailable - database connection issues");
}

/*
 * Validates {job_id} and reads the caller's job.  Returns true with *res
 * holding one row; otherwise it has answered (422, degraded 200 or 404) and
 * stored the handler's return value in *rc.
 */
static bool job_lookup(keel_request *req, const char **uid, keel_db_result **res, int *rc)
{
    const char *job_id = creator_host->req_param(req, "job_id");

    if (!creator_is_uuid(job_id)) {
        json_t *errors = json_array();

        creator_add_error(errors, "path", "job_id", "value is not a valid uuid", "type_error.uuid");
        *rc = creator_reject(req, errors);
        return false;
    }
    if ((*uid = creator_user_id(req)) == NULL) {
        *rc = job_degraded(req, job_id);
        return false;
    }
    /* The primary key finds the row; user_id makes another user's job look
     * exactly like a missing one. */
    *rc = creator_host->db_query(req, JOB_SELECT, 2, (const char *const[]){job_id, *uid}, res);
    if (*rc != 0) {
        creator_log_db(req, *rc, "job status");
        *rc = job_degraded(req, job_id);
        return false;
    }
    if (creator_host->db_rows(*res) == 0) {
        *rc = creator_host->respond_error(req, 404, "Job not found");
        return false;
    }
    return true;
}

int creator_job_status(keel_request *req, void *state)
{
    keel_db_result *res = NULL;
    const char *uid;
    json_t *body;
    int rc;

    if (!job_lookup(req, &uid, &res, &rc))
        return rc;
    body = creator_set_columns(json_pack("{s:b,s:s}", "success", 1, "job_type", "creator_search"),
                               res, 0, job_columns);
    return creator_respond(req, 200, body);
}

int creator_job_result(keel_request *req, void *state)
{
    keel_db_result *res = NULL;
    const char *uid, *status, *username;
    int rc;

    if (!job_lookup(req, &uid, &res, &rc))
        return rc;
    status = creator_col(res, 0, "status");
    username = creator_col(res, 0, "username");
    if (status != NULL && strcmp(status, "failed") == 0)
        return creator_respond(req, 200,
                               json_pack("{s:b,s:s,s:s?,s:o}", "success", 0, "status", "failed",
                                         "username", username, "error",
                                         creator_json_text(creator_col(res, 0, "error"))));
    if (status == NULL || strcmp(status, "completed") != 0 || username == NULL)
        return creator_respond(req, 409,
                               json_pack("{s:s,s:s}", "detail", "Job not finished", "status",
                                         status != NULL ? status : "unknown"));
    return creator_search_answer(req, state, uid, username, false);
}
