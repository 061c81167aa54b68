/*
 * Unlocking a profile (the creator API): POST /unlock/{username} and
 * POST /api/v1/discovery/unlock-profile {"username"} or {"profile_id"} (the
 * frontend sends the profile's id).
 *
 * Unlocking spends money, so everything happens in one transaction that
 * first locks the caller's wallet row (SELECT ... FOR UPDATE).  Concurrent
 * unlocks by one user therefore run one after another; the second one sees
 * the grant the first committed and charges nothing.  The debit, the ledger
 * row and the grant commit together or not at all.  A refusal (unknown
 * profile, too few credits) is a positive code from the callback, which
 * makes the host roll back; the answer is built after the transaction.
 */
#include "config.h"

#include "creator.h"

#include <stdio.h>
#include <string.h>

/* What the transaction callback returns besides database error codes.
 * UNLOCK_OK commits (spent tells a new grant from an unexpired one); the
 * positive refusals make the host roll back. */
enum unlock_outcome { UNLOCK_OK = 0, UNLOCK_NOT_FOUND = 1, UNLOCK_INSUFFICIENT = 2 };

struct unlock_tx {
    /* In. */
    const struct creator_conf *conf;
    const char *user_id;
    const char *username;   /* one of username and profile_id is set */
    const char *profile_id; /* a validated UUID */
    /* Out; reset at the start of every attempt because the host may retry. */
    long long balance;
    long long spent;
    long long days_remaining;
    char expires_at[40];
    char found_id[40];
    char found_name[40];
};

/* The grant's end and whole days left, for the answer. */
#define UNLOCK_EXPIRY                                                                              \
    CREATOR_ISO("expires_at")                                                                      \
    " AS expires_at, ceil(extract(epoch FROM expires_at - now()) / 86400)::bigint AS days_left"

static bool copy_text(char *dst, size_t size, const char *src)
{
    size_t len = src != NULL ? strlen(src) : 0;

    if (src == NULL || len >= size)
        return false;
    memcpy(dst, src, len + 1);
    return true;
}

static int unlock_in_tx(keel_db_tx *tx, void *arg)
{
    struct unlock_tx *u = arg;
    const keel_host *h = creator_host;
    keel_db_result *res = NULL;
    char cost[24], days[24], balance[24];
    const char *profile_id;
    int rc;

    u->balance = 0;
    u->spent = 0;
    u->days_remaining = 0;
    u->expires_at[0] = '\0';
    snprintf(cost, sizeof cost, "%lld", u->conf->unlock_cost);
    snprintf(days, sizeof days, "%lld", u->conf->unlock_days);

    if (u->profile_id != NULL)
        rc = h->db_tx_query(tx, "SELECT id, username FROM profiles WHERE id = $1::uuid", 1,
                            (const char *const[]){u->profile_id}, &res);
    else
        rc = h->db_tx_query(tx, "SELECT id, username FROM profiles WHERE username = $1", 1,
                            (const char *const[]){u->username}, &res);
    if (rc != 0)
        return rc;
    if (h->db_rows(res) == 0)
        return UNLOCK_NOT_FOUND;
    profile_id = creator_col(res, 0, "id");
    if (!copy_text(u->found_id, sizeof u->found_id, profile_id) ||
        !copy_text(u->found_name, sizeof u->found_name, creator_col(res, 0, "username")))
        return KEEL_EDB_BUG;

    /* The lock that serialises one user's unlocks.  No wallet row means a
     * balance of 0; such a caller can only be refused, so nothing to lock. */
    rc = h->db_tx_query(tx, "SELECT balance FROM credit_wallets WHERE user_id = $1 FOR UPDATE", 1,
                        (const char *const[]){u->user_id}, &res);
    if (rc != 0)
        return rc;
    if (h->db_rows(res) > 0 && !creator_parse_ll(creator_col(res, 0, "balance"), &u->balance))
        return KEEL_EDB_BUG;

    /* Read after the lock: in READ COMMITTED this statement sees a grant
     * committed by the unlock we waited for. */
    rc = h->db_tx_query(tx,
                        "SELECT " UNLOCK_EXPIRY "  FROM user_profile_access"
                        " WHERE user_id = $1 AND profile_id = $2 AND expires_at > now()",
                        2, (const char *const[]){u->user_id, profile_id}, &res);
    if (rc != 0)
        return rc;
    if (h->db_rows(res) > 0) {
        if (!copy_text(u->expires_at, sizeof u->expires_at, creator_col(res, 0, "expires_at")) ||
            !creator_parse_ll(creator_col(res, 0, "days_left"), &u->days_remaining))
            return KEEL_EDB_BUG;
        return UNLOCK_OK;
    }

    if (u->balance < u->conf->unlock_cost)
        return UNLOCK_INSUFFICIENT;

    rc = h->db_tx_query(tx,
                        "UPDATE credit_wallets SET balance = balance - $2, updated_at = now()"
                        " WHERE user_id = $1 RETURNING balance",
                        2, (const char *const[]){u->user_id, cost}, &res);
    if (rc != 0)
        return rc;
    if (h->db_rows(res) != 1 || !creator_parse_ll(creator_col(res, 0, "balance"), &u->balance))
        return KEEL_EDB_BUG;
    snprintf(balance, sizeof balance, "%lld", u->balance);

    rc = h->db_tx_query(tx,
                        "INSERT INTO credit_transactions"
                        "   (user_id, amount, balance_after, kind, reason, reference)"
                        " VALUES ($1, -($2::bigint), $3, 'unlock', 'Profile unlock', $4)",
                        4, (const char *const[]){u->user_id, cost, balance, u->found_name}, &res);
    if (rc != 0)
        return rc;

    /* An expired grant is renewed in place (the pair is unique). */
    rc = h->db_tx_query(tx,
                        "INSERT INTO user_profile_access"
                        "   (user_id, profile_id, granted_at, expires_at, credits_spent)"
                        " VALUES ($1, $2, now(), now() + make_interval(days => $3::int), $4)"
                        " ON CONFLICT (user_id, profile_id) DO UPDATE"
                        "   SET granted_at = now(), expires_at = EXCLUDED.expires_at,"
                        "       credits_spent = EXCLUDED.credits_spent"
                        " RETURNING " UNLOCK_EXPIRY,
                        4, (const char *const[]){u->user_id, profile_id, days, cost}, &res);
    if (rc != 0)
        return rc;
    if (h->db_rows(res) != 1 ||
        !copy_text(u->expires_at, sizeof u->expires_at, creator_col(res, 0, "expires_at")) ||
        !creator_parse_ll(creator_col(res, 0, "days_left"), &u->days_remaining))
        return KEEL_EDB_BUG;
    u->spent = u->conf->unlock_cost;
    return UNLOCK_OK;
}

/* The 200 answer: the contract's keys plus the frontend's names for them. */
static json_t *unlock_body(const struct unlock_tx *u)
{
    return json_pack("{s:b,s:b,s:s,s:s,s:I,s:I,s:I,s:s,s:s,s:I,s:s}", "success", 1, "unlocked", 1,
                     "profile_id", u->found_id, "username", u->found_name, "credits_spent",
                     (json_int_t)u->spent, "credits_charged", (json_int_t)u->spent, "balance",
                     (json_int_t)u->balance, "expires_at", u->expires_at, "access_expires_at",
                     u->expires_at, "days_remaining", (json_int_t)u->days_remaining, "message",
                     u->spent > 0 ? "Profile unlocked" : "Profile already unlocked");
}

/* 402 with a readable detail: the frontend shows `detail` and looks for
 * "Insufficient credits" in it; the numbers are beside it for programs. */
static int unlock_refused(keel_request *req, const struct unlock_tx *u)
{
    char detail[128];

    snprintf(detail, sizeof detail, "Insufficient credits: %lld required, %lld available",
             u->conf->unlock_cost, u->balance);
    return creator_respond(
        req, 402,
        json_pack("{s:s,s:s,s:I,s:I}", "detail", detail, "error", "insufficient_credits",
                  "required", (json_int_t)u->conf->unlock_cost, "balance", (json_int_t)u->balance));
}

/* Runs the unlock of one profile (by validated username or profile id) and
 * answers. */
static int unlock_profile(keel_request *req, const struct creator_conf *conf, const char *username,
                          const char *profile_id)
{
    struct unlock_tx u = {.conf = conf, .username = username, .profile_id = profile_id};
    const char *who = username != NULL ? username : profile_id;
    char what[80];
    int rc;

    if ((u.user_id = creator_user_id(req)) == NULL) {
        creator_host->log(req, KEEL_LOG_WARN, "unlock %s: caller has no local user id", who);
        return creator_unavailable(req);
    }
    rc = creator_host->db_transaction(req, unlock_in_tx, &u);
    switch (rc) {
    case UNLOCK_OK:
        creator_host->log(req, KEEL_LOG_INFO, "unlock %s: credits_spent=%lld balance=%lld",
                          u.found_name, u.spent, u.balance);
        return creator_respond(req, 200, unlock_body(&u));
    case UNLOCK_NOT_FOUND:
        return creator_host->respond_error(req, 404, "Profile not found");
    case UNLOCK_INSUFFICIENT:
        return unlock_refused(req, &u);
    default:
        snprintf(what, sizeof what, "unlock %s", who);
        creator_log_db(req, rc, what);
        return creator_unavailable(req);
    }
}

int creator_unlock(keel_request *req, void *state)
{
    const char *username;
    int rc;

    if ((username = creator_path_username(req, &rc)) == NULL)
        return rc;
    return unlock_profile(req, state, username, NULL);
}

/* Reads body member `key` as a string without embedded NULs; NULL (with a
 * 422 entry) when present but not such a string. */
static const char *body_text(json_t *body, const char *key, json_t *errors)
{
    json_t *value = json_object_get(body, key);

    if (value == NULL)
        return NULL;
    if (!json_is_string(value)) {
        creator_add_error(errors, "body", key, "str type expected", "type_error.str");
        return NULL;
    }
    /* An embedded \u0000 would otherwise cut the value short silently. */
    if (json_string_length(value) != strlen(json_string_value(value))) {
        creator_add_error(errors, "body", key, "must not contain NUL characters", "value_error");
        return NULL;
    }
    return json_string_value(value);
}

int creator_discovery_unlock(keel_request *req, void *state)
{
    json_t *body = NULL, *errors;
    const char *raw_name, *profile_id, *username = NULL;

    /* On failure the host has already answered 400/413/415. */
    if (creator_host->req_json_body(req, &body) != 0)
        return 0;
    if ((errors = json_array()) == NULL)
        return creator_respond(req, 500, NULL);
    if (!json_is_object(body))
        body = NULL;
    raw_name = body_text(body, "username", errors);
    profile_id = body_text(body, "profile_id", errors);
    if (json_array_size(errors) > 0)
        return creator_reject(req, errors);
    /* profile_id wins when both are sent: it names one row exactly. */
    if (profile_id != NULL) {
        if (!creator_is_uuid(profile_id)) {
            creator_add_error(errors, "body", "profile_id", "value is not a valid uuid",
                              "type_error.uuid");
            return creator_reject(req, errors);
        }
        json_decref(errors);
        return unlock_profile(req, state, NULL, profile_id);
    }
    if (raw_name == NULL) {
        creator_add_error(errors, "body", "username", "field required: username or profile_id",
                          "value_error.missing");
        return creator_reject(req, errors);
    }
    username = creator_username(req, raw_name, errors, "body", "username");
    if (username == NULL)
        return creator_reject(req, errors);
    json_decref(errors);
    return unlock_profile(req, state, username, NULL);
}
