/*
 * Authorization: the one place where a route's auth level is enforced, after
 * the route is known and before any handler runs, so no plugin can forget
 * it (docs/architecture.md).  Bearer tokens are verified locally, the user
 * is rate limited and synced, and the principal is set on the request.
 */
#ifndef KEEL_CORE_HTTP_AUTHORIZE_H
#define KEEL_CORE_HTTP_AUTHORIZE_H

#include <stdbool.h>

#include "http/request.h"
#include "identity/auth.h"
#include "identity/ratelimit.h"
#include "identity/usersync.h"

struct keel__authorizer {
    const keel__auth *auth;
    keel__usersync *usersync;
    keel__ratelimit *ratelimit; /* NULL: no per-user rate limit */
    /* The admin listener is bound to loopback and trusts it; otherwise every
     * admin route wants admin_token as a bearer token. */
    bool admin_loopback;
    const char *admin_token;
};

/*
 * Decides whether req may reach a route of the given level (enum
 * keel__auth_level) on its listener.  Returns true to go on (the principal is
 * set for user and admin routes); otherwise a response has been queued: 403
 * without a token, 401 for a bad one, 429 over the rate limit, 503 with
 * Retry-After when the server itself failed (memory).
 */
bool keel__authorize(keel_request *req, int level, const struct keel__authorizer *a);

#endif
