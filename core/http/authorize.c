#include "config.h"

#include "http/authorize.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "conf/conf.h"
#include "util/log.h"
#include "util/time.h"

static int respond_unauthorized(keel_request *req, int status, const char *why)
{
    keel__req_add_header(req, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
    return keel__respond_json(req, 401,
                              json_pack("{s:{s:s, s:s}}", "detail", "error",
                                        keel__token_status_name(status), "message", why));
}

/* 503 with Retry-After: the server could not decide, through no fault of
 * the client's credentials. */
static bool unavailable(keel_request *req)
{
    keel__req_add_header(req, "Retry-After", "1");
    keel__respond_detail(req, 503, "Service temporarily unavailable");
    return false;
}

bool keel__authorize(keel_request *req, int level, const struct keel__authorizer *a)
{
    const char *hdr = keel__req_header(req, "Authorization");

    if (req->listener == KEEL__LISTENER_ADMIN) {
        /* The admin listener trusts loopback; bound elsewhere it wants the
         * admin token on every route. */
        if (a->admin_loopback)
            return true;
        const char *want = a->admin_token;
        const char *tok;
        size_t len;
        if (hdr == NULL || keel__auth_bearer(hdr, &tok, &len) != 0) {
            keel__respond_detail(req, 403, "Not authenticated");
            return false;
        }
        if (want == NULL || len != strlen(want) || CRYPTO_memcmp(tok, want, len) != 0) {
            keel__req_add_header(req, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
            keel__respond_detail(req, 401, "Invalid admin token");
            return false;
        }
        return true;
    }

    if (level == KEEL__AUTH_PUBLIC)
        return true;

    const char *tok;
    size_t len;
    if (keel__auth_bearer(hdr, &tok, &len) != 0) {
        keel__respond_detail(req, 403, "Not authenticated");
        return false;
    }
    struct keel__claims claims;
    const char *why = "Invalid token";
    int st = keel__auth_verify(a->auth, tok, len, time(NULL), &claims, &why);
    if (st < 0) {
        /* Memory ran out: the server's fault, not the token's. */
        keel__log(KEEL_LOG_ERROR, "core", "req=%llu: token verification failed: %s",
                  (unsigned long long)req->id, keel_strerror(st));
        return unavailable(req);
    }
    if (st != KEEL__TOKEN_OK) {
        respond_unauthorized(req, st, why);
        return false;
    }
    /* Rate limiting comes before the user sync so that a refused request
     * costs no database work; it is keyed by the verified subject, so one
     * user's flood does not touch anyone else's bucket. */
    unsigned wait_s = 0;
    if (a->ratelimit != NULL && keel__ratelimit_take(a->ratelimit, claims.sub, keel__monotonic_ns(),
                                                     &wait_s) == KEEL_EBUSY) {
        keel__claims_clear(&claims);
        char retry[16];
        snprintf(retry, sizeof retry, "%u", wait_s);
        keel__req_add_header(req, "Retry-After", retry);
        keel__respond_detail(req, 429, "Rate limit exceeded");
        return false;
    }
    int rc = keel__usersync_resolve(a->usersync, &claims, (int64_t)time(NULL), keel__req_alloc_ctx,
                                    req, &req->principal);
    keel__claims_clear(&claims);
    if (rc != 0)
        return unavailable(req);
    req->has_principal = true;
    const char *status = req->principal.status;
    if (status != NULL && strcmp(status, "active") != 0 && strcmp(status, "pending") != 0) {
        keel__respond_detail(req, 403, "Account is not active");
        return false;
    }
    if (level == KEEL__AUTH_ADMIN &&
        (req->principal.role == NULL || strcmp(req->principal.role, "admin") != 0)) {
        keel__respond_detail(req, 403, "Admin privileges required");
        return false;
    }
    return true;
}
