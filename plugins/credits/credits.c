/*
 * The credits plugin: the caller's wallet as the frontend's header and
 * billing pages read it.
 *
 *   GET /api/v1/credits/balance       the wallet
 *   GET /api/v1/credits/transactions  the ledger, newest first, paged
 *   GET /api/v1/credits/pricing       what each action costs
 *
 * Configuration ("config" of conf.d/70-credits.json):
 *   unlock_cost        credits per profile unlock  1..1000000, default 25
 *   unlock_days        days an unlock lasts        1..3650,    default 30
 *   monthly_allowance  credits granted per month   0..1000000, default 0
 * The unlock figures are what the creator plugin charges; keep the two
 * files in step.  A bad value fails init and the manifest's stubs serve.
 *
 * Reads never answer 5xx for the database: when it is unavailable (or the
 * caller was not synced) the route answers 200 with zeros or an empty list,
 * "success": false, an "error" and X-Keel-Degraded: database.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <keel/plugin.h>

struct credits_conf {
    long long unlock_cost;
    long long unlock_days;
    long long monthly_allowance;
};

static const keel_host *credits_host;

#define CREDITS_DB_ERROR "Database connectivity issues"

/* ISO 8601 UTC rendering of a timestamptz inside SQL text. */
#define CREDITS_ISO(col) "to_char((" col ") AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

static const char *col(const keel_db_result *res, int row, const char *name)
{
    int c = credits_host->db_column(res, name);

    return c < 0 ? NULL : credits_host->db_value(res, row, c);
}

/* A whole decimal integer without blanks or trailing bytes. */
static bool parse_ll(const char *s, long long *out)
{
    const char *p = s;
    char *end = NULL;
    long long v;

    if (s == NULL)
        return false;
    if (*p == '+' || *p == '-')
        p++;
    if (!isdigit((unsigned char)*p))
        return false;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    *out = v;
    return true;
}

static json_t *json_text(const char *v)
{
    json_t *j = v != NULL ? json_string(v) : NULL;

    return j != NULL ? j : json_null();
}

static json_t *json_int(const char *v)
{
    long long n;

    return parse_ll(v, &n) ? json_integer((json_int_t)n) : json_null();
}

static int respond(keel_request *req, unsigned status, json_t *body)
{
    if (body == NULL)
        return credits_host->respond_error(req, 500, "Out of memory");
    return credits_host->respond_json(req, status, body);
}

static void log_db(keel_request *req, int rc, const char *what)
{
    const char *detail = credits_host->db_last_error(req);

    credits_host->log(req, rc == KEEL_EDB_UNAVAILABLE ? KEEL_LOG_WARN : KEEL_LOG_ERROR,
                      "%s: %s%s%s", what, keel_strerror(rc),
                      detail != NULL && *detail != '\0' ? ": " : "", detail != NULL ? detail : "");
}

/* The caller's local user id, or NULL when the user sync failed. */
static const char *user_id(keel_request *req)
{
    const char *id = credits_host->req_user(req, KEEL_USER_ID);

    return id != NULL && *id != '\0' ? id : NULL;
}

/* Adds "success": false, the error and the degraded header to body. */
static int degraded(keel_request *req, json_t *body)
{
    if (body != NULL && json_object_update_new(body, json_pack("{s:b,s:s}", "success", 0, "error",
                                                               CREDITS_DB_ERROR)) != 0) {
        json_decref(body);
        body = NULL;
    }
    credits_host->set_header(req, "X-Keel-Degraded", "database");
    return respond(req, 200, body);
}

/* ------------------------------------------------------------------ balance */

static json_t *balance_body(long long balance, long long allowance, const char *package,
                            const char *cycle_start, const char *status)
{
    return json_pack("{s:b,s:I,s:I,s:I,s:s,s:s?,s:s}", "success", 1, "current_balance",
                     (json_int_t)balance, "balance", (json_int_t)balance, "monthly_allowance",
                     (json_int_t)allowance, "package_name", package, "billing_cycle_start",
                     cycle_start, "wallet_status", status);
}

/*
 * The wallet has no billing columns of its own: the package is the user's
 * subscription tier and the cycle starts on the first of the month (UTC).
 * A wallet that does not exist yet holds 0 and is active.
 */
static int credits_balance(keel_request *req, void *state)
{
    const struct credits_conf *conf = state;
    const char *tier = credits_host->req_user(req, KEEL_USER_TIER);
    keel_db_result *res = NULL;
    long long balance = 0;
    const char *uid;
    int rc;

    if (tier == NULL || *tier == '\0')
        tier = "free";
    if ((uid = user_id(req)) == NULL)
        return degraded(req, balance_body(0, conf->monthly_allowance, tier, NULL, "active"));
    rc = credits_host->db_query(
        req,
        "SELECT (SELECT balance FROM credit_wallets WHERE user_id = $1) AS balance,"
        "       " CREDITS_ISO("date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE "
                              "'UTC'") " AS cycle_start",
        1, (const char *const[]){uid}, &res);
    if (rc != 0) {
        log_db(req, rc, "credit balance");
        return degraded(req, balance_body(0, conf->monthly_allowance, tier, NULL, "active"));
    }
    if (!parse_ll(col(res, 0, "balance"), &balance))
        balance = 0;
    return respond(req, 200,
                   balance_body(balance, conf->monthly_allowance, tier, col(res, 0, "cycle_start"),
                                "active"));
}

/* ------------------------------------------------------------- transactions */

/* One ?name=N argument in [min, max]; records a 422 entry when invalid. */
static void page_arg(keel_request *req, const char *name, long long min, long long max,
                     long long *value, json_t *errors)
{
    const char *raw = credits_host->req_query(req, name);
    char msg[80];
    long long v;

    if (raw == NULL)
        return;
    if (!parse_ll(raw, &v)) {
        json_array_append_new(errors, json_pack("{s:[s,s],s:s,s:s}", "loc", "query", name, "msg",
                                                "value is not a valid integer", "type",
                                                "type_error.integer"));
        return;
    }
    if (v < min || v > max) {
        snprintf(msg, sizeof msg, "ensure this value is between %lld and %lld", min, max);
        json_array_append_new(errors, json_pack("{s:[s,s],s:s,s:s}", "loc", "query", name, "msg",
                                                msg, "type", "value_error.number.out_of_range"));
        return;
    }
    *value = v;
}

static json_t *pagination(long long page, long long page_size, long long total)
{
    long long pages = total > 0 ? total / page_size + (total % page_size != 0) : 0;

    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:b,s:b}", "page", (json_int_t)page, "page_size",
                     (json_int_t)page_size, "total", (json_int_t)total, "total_count",
                     (json_int_t)total, "total_pages", (json_int_t)pages, "has_next",
                     page<pages, "has_previous", page> 1);
}

static json_t *transaction_json(const keel_db_result *res, int row)
{
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o}", "id", json_int(col(res, row, "id")), "amount",
                     json_int(col(res, row, "amount")), "type", json_text(col(res, row, "kind")),
                     "description", json_text(col(res, row, "reason")), "created_at",
                     json_text(col(res, row, "created_at")), "balance_after",
                     json_int(col(res, row, "balance_after")));
}

static int transactions_degraded(keel_request *req)
{
    return degraded(req, json_pack("{s:[]}", "transactions"));
}

static int credits_transactions(keel_request *req, void *state)
{
    json_t *errors = json_array();
    json_t *list;
    keel_db_result *res = NULL;
    long long page = 1, page_size = 20, total = 0;
    char limit[24], offset[24];
    const char *uid;
    int rc;

    if (errors == NULL)
        return respond(req, 500, NULL);
    page_arg(req, "page", 1, 1000000, &page, errors);
    page_arg(req, "page_size", 1, 100, &page_size, errors);
    if (json_array_size(errors) > 0)
        return respond(req, 422, json_pack("{s:o}", "detail", errors));
    json_decref(errors);

    if ((uid = user_id(req)) == NULL)
        return transactions_degraded(req);
    rc = credits_host->db_query(req,
                                "SELECT count(*) AS n FROM credit_transactions WHERE user_id = $1",
                                1, (const char *const[]){uid}, &res);
    if (rc != 0) {
        log_db(req, rc, "credit ledger count");
        return transactions_degraded(req);
    }
    if (!parse_ll(col(res, 0, "n"), &total))
        total = 0;
    snprintf(limit, sizeof limit, "%lld", page_size);
    snprintf(offset, sizeof offset, "%lld", (page - 1) * page_size);
    /* The (user_id, created_at DESC) index gives the order; id breaks ties
     * between entries of one transaction. */
    rc = credits_host->db_query(
        req,
        "SELECT id, amount, kind, reason, balance_after,"
        "       " CREDITS_ISO("created_at") " AS created_at"
                                            "  FROM credit_transactions WHERE user_id = $1"
                                            " ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
        3, (const char *const[]){uid, limit, offset}, &res);
    if (rc != 0) {
        log_db(req, rc, "credit ledger");
        return transactions_degraded(req);
    }
    list = json_array();
    for (int i = 0; list != NULL && i < credits_host->db_rows(res); i++)
        json_array_append_new(list, transaction_json(res, i));
    return respond(req, 200,
                   json_pack("{s:b,s:o,s:o}", "success", 1, "transactions", list, "pagination",
                             pagination(page, page_size, total)));
}

/* ------------------------------------------------------------------ pricing */

static int credits_pricing(keel_request *req, void *state)
{
    const struct credits_conf *conf = state;

    return respond(req, 200,
                   json_pack("{s:b,s:[{s:s,s:I,s:I,s:s}]}", "success", 1, "actions", "action",
                             "profile_unlock", "cost", (json_int_t)conf->unlock_cost,
                             "duration_days", (json_int_t)conf->unlock_days, "description",
                             "Full analytics and posts of one creator profile"));
}

/* --------------------------------------------------------------- descriptor */

static int conf_int(const json_t *config, const char *key, long long min, long long max,
                    long long *value)
{
    const json_t *v = json_object_get(config, key);

    if (v == NULL)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        credits_host->log(NULL, KEEL_LOG_ERROR, "config.%s: expected an integer %lld-%lld", key,
                          min, max);
        return KEEL_ECONFIG;
    }
    *value = (long long)json_integer_value(v);
    return 0;
}

static int credits_init(const keel_host *host, const json_t *config, void **state)
{
    struct credits_conf *conf;
    int rc;

    if (!KEEL_HOST_HAS(host, db_last_error) || !KEEL_HOST_HAS(host, log))
        return KEEL_EUNSUPPORTED;
    credits_host = host;
    conf = calloc(1, sizeof *conf);
    if (conf == NULL)
        return KEEL_ENOMEM;
    conf->unlock_cost = 25;
    conf->unlock_days = 30;
    if (config != NULL &&
        ((rc = conf_int(config, "unlock_cost", 1, 1000000, &conf->unlock_cost)) != 0 ||
         (rc = conf_int(config, "unlock_days", 1, 3650, &conf->unlock_days)) != 0 ||
         (rc = conf_int(config, "monthly_allowance", 0, 1000000, &conf->monthly_allowance)) != 0)) {
        free(conf);
        return rc;
    }
    *state = conf;
    return 0;
}

static void credits_fini(void *state)
{
    free(state);
}

static const keel_route credits_routes[] = {
    {"GET", "/api/v1/credits/balance", credits_balance},
    {"GET", "/api/v1/credits/transactions", credits_transactions},
    {"GET", "/api/v1/credits/pricing", credits_pricing},
    {NULL, NULL, NULL},
};

static const char *const credits_requires[] = {"log", "request", "response", "user", "db", NULL};

static const keel_plugin credits_plugin = {
    KEEL_PLUGIN_HEADER,           .name = "credits",    .version = "1.0.0",
    .init = credits_init,         .fini = credits_fini, .routes = credits_routes,
    .requires = credits_requires,
};

KEEL_EXPORT const keel_plugin *keel_plugin_entry(void)
{
    return &credits_plugin;
}
