/*
 * Unlocking a profile (the creator API): POST /unlock/{username} and
 * POST /api/v1/discovery/unlock-profile {"username"}.
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
    const char *username;
    /* Out; reset at the start of every attempt because the host may retry. */
    long long balance;
    long long spent;
    char expires_at[40];
};

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
    u->expires_at[0] = '\0';
    snprintf(cost, sizeof cost, "%lld", u->conf->unlock_cost);
    snprintf(days, sizeof days, "%lld", u->conf->unlock_days);

    rc = h->db_tx_query(tx, "SELECT id FROM profiles WHERE username = $1", 1,
                        (const char *const[]){u->username}, &res);
    if (rc != 0)
        return rc;
    if (h->db_rows(res) == 0)
        return UNLOCK_NOT_FOUND;
    profile_id = creator_col(res, 0, "id");

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
    rc = h->db_tx_query(
        tx,
        "SELECT " CREATOR_ISO(
            "expires_at") " AS expires_at"
                          "  FROM user_profile_access"
                          " WHERE user_id = $1 AND profile_id = $2 AND expires_at > now()",
        2, (const char *const[]){u->user_id, profile_id}, &res);
    if (rc != 0)
        return rc;
    if (h->db_rows(res) > 0) {
        if (!copy_text(u->expires_at, sizeof u->expires_at, creator_col(res, 0, "expires_at")))
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
                        4, (const char *const[]){u->user_id, cost, balance, u->username}, &res);
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
                        " RETURNING " CREATOR_ISO("expires_at") " AS expires_at",
                        4, (const char *const[]){u->user_id, profile_id, days, cost}, &res);
    if (rc != 0)
        return rc;
    if (h->db_rows(res) != 1 ||
        !copy_text(u->expires_at, sizeof u->expires_at, creator_col(res, 0, "expires_at")))
        return KEEL_EDB_BUG;
    u->spent = u->conf->unlock_cost;
    return UNLOCK_OK;
}

/* Runs the unlock for a validated username and answers. */
static int unlock_profile(keel_request *req, const struct creator_conf *conf, const char *username)
{
    struct unlock_tx u = {.conf = conf, .username = username};
    char what[80];
    int rc;

    if ((u.user_id = creator_user_id(req)) == NULL) {
        creator_host->log(req, KEEL_LOG_WARN, "unlock %s: caller has no local user id", username);
        return creator_unavailable(req);
    }
    rc = creator_host->db_transaction(req, unlock_in_tx, &u);
    switch (rc) {
    case UNLOCK_OK:
        creator_host->log(req, KEEL_LOG_INFO, "unlock %s: credits_spent=%lld balance=%lld",
                          username, u.spent, u.balance);
        return creator_respond(
            req, 200,
            json_pack("{s:b,s:b,s:s,s:I,s:I,s:s,s:s}", "success", 1, "unlocked", 1, "username",
                      username, "credits_spent", (json_int_t)u.spent, "balance",
                      (json_int_t)u.balance, "expires_at", u.expires_at, "message",
                      u.spent > 0 ? "Profile unlocked" : "Profile already unlocked"));
    case UNLOCK_NOT_FOUND:
        return creator_host->respond_error(req, 404, "Profile not found");
    case UNLOCK_INSUFFICIENT:
        return creator_respond(
            req, 402,
            json_pack("{s:{s:s,s:I,s:I}}", "detail", "error", "insufficient_credits", "required",
                      (json_int_t)conf->unlock_cost, "balance", (json_int_t)u.balance));
    default:
        snprintf(what, sizeof what, "unlock %s", username);
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
    return unlock_profile(req, state, username);
}

int creator_discovery_unlock(keel_request *req, void *state)
{
    json_t *body = NULL, *value, *errors;
    const char *username = NULL;

    /* On failure the host has already answered 400/413/415. */
    if (creator_host->req_json_body(req, &body) != 0)
        return 0;
    if ((errors = json_array()) == NULL)
        return creator_respond(req, 500, NULL);
    value = json_is_object(body) ? json_object_get(body, "username") : NULL;
    if (value == NULL)
        creator_add_error(errors, "body", "username", "field required", "value_error.missing");
    else if (!json_is_string(value))
        creator_add_error(errors, "body", "username", "str type expected", "type_error.str");
    else if (json_string_length(value) != strlen(json_string_value(value)))
        /* An embedded \u0000 would otherwise cut the name short silently. */
        creator_add_error(errors, "body", "username",
                          "username may contain only letters, digits, '.' and '_'", "value_error");
    else
        username = creator_username(req, json_string_value(value), errors, "body", "username");
    if (username == NULL)
        return creator_reject(req, errors);
    json_decref(errors);
    return unlock_profile(req, state, username);
}
