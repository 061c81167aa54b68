/*
 * Unit tests for core/http/authorize.c, the one place where route auth
 * levels are enforced, driven through the synthetic-request seam with a real
 * keel__auth and a user sync without a database.  keel__auth_verify is
 * wrapped at link time so a verification that runs out of memory can be
 * tried.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>
#include <time.h>

#include <keel/error.h>

#include "conf/conf.h"
#include "http/authorize.h"
#include "http/request.h"
#include "identity/auth.h"
#include "identity/usersync.h"

/* -------------------------------------------------------- the verify seam */

static int forced_status = KEEL__TOKEN_OK;
static bool forcing;

int __real_keel__auth_verify(const keel__auth *a, const char *token, size_t len, time_t now,
                             struct keel__claims *claims, const char **why);
int __wrap_keel__auth_verify(const keel__auth *a, const char *token, size_t len, time_t now,
                             struct keel__claims *claims, const char **why);

int __wrap_keel__auth_verify(const keel__auth *a, const char *token, size_t len, time_t now,
                             struct keel__claims *claims, const char **why)
{
    if (!forcing)
        return __real_keel__auth_verify(a, token, len, now, claims, why);
    memset(claims, 0, sizeof *claims);
    *why = "Invalid token";
    return forced_status;
}

/* -------------------------------------------------------- fixture */

struct fixture {
    keel__auth *auth;
    keel__usersync *usersync;
    struct keel__authorizer authz;
    struct keel__synthetic syn;
    const char *headers[8];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    struct keel__auth_conf ac = {.audience = "authenticated",
                                 .leeway_s = 30,
                                 .max_token_bytes = 8192};
    assert_int_equal(keel__auth_new(&ac, &f->auth), 0);
    static const unsigned char secret[] = "test-secret-test-secret-test-secret";
    assert_int_equal(keel__auth_add_hs256(f->auth, NULL, secret, sizeof secret - 1), 0);
    struct keel__usersync_conf uc = {.ttl_s = 0, .max_entries = 0};
    assert_int_equal(keel__usersync_new(&uc, NULL, &f->usersync), 0);
    f->authz =
        (struct keel__authorizer){.auth = f->auth, .usersync = f->usersync, .admin_loopback = true};
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    keel__usersync_free(f->usersync);
    keel__auth_free(f->auth);
    free(f);
    forcing = false;
    return 0;
}

static keel_request *request(struct fixture *f, int listener, const char *authorization)
{
    memset(&f->syn, 0, sizeof f->syn);
    size_t n = 0;
    if (authorization != NULL) {
        f->headers[n++] = "Authorization";
        f->headers[n++] = authorization;
    }
    f->headers[n] = NULL;
    f->syn.headers = f->headers;
    keel_request *req = keel__request_new(NULL, listener, "GET", "/x");
    assert_non_null(req);
    req->synthetic = &f->syn;
    return req;
}

/* The value of a response header the request will send, or NULL. */
static const char *response_header(const keel_request *req, const char *name)
{
    for (const struct keel__header *h = req->headers; h != NULL; h = h->next)
        if (strcmp(h->name, name) == 0)
            return h->value;
    return NULL;
}

/* -------------------------------------------------------- tests */

static void test_public_routes_need_nothing(void **state)
{
    struct fixture *f = *state;
    keel_request *req = request(f, KEEL__LISTENER_MAIN, NULL);
    assert_true(keel__authorize(req, KEEL__AUTH_PUBLIC, &f->authz));
    assert_int_equal(f->syn.responses, 0);
    keel__request_free(req);
}

static void test_missing_and_bad_tokens(void **state)
{
    struct fixture *f = *state;
    keel_request *req = request(f, KEEL__LISTENER_MAIN, NULL);
    assert_false(keel__authorize(req, KEEL__AUTH_USER, &f->authz));
    assert_int_equal(f->syn.status, 403);
    keel__request_free(req);

    req = request(f, KEEL__LISTENER_MAIN, "Bearer not.a.token");
    assert_false(keel__authorize(req, KEEL__AUTH_USER, &f->authz));
    assert_int_equal(f->syn.status, 401);
    assert_non_null(strstr(f->syn.body, "malformed_token"));
    assert_non_null(response_header(req, "WWW-Authenticate"));
    keel__request_free(req);
}

/* Running out of memory while verifying is the server's fault: 503 with
 * Retry-After, never a 401 telling the client its token is bad. */
static void test_out_of_memory_in_verification_is_503(void **state)
{
    struct fixture *f = *state;
    forcing = true;
    forced_status = KEEL_ENOMEM;
    keel_request *req = request(f, KEEL__LISTENER_MAIN, "Bearer a.b.c");
    assert_false(keel__authorize(req, KEEL__AUTH_USER, &f->authz));
    assert_int_equal(f->syn.responses, 1);
    assert_int_equal(f->syn.status, 503);
    assert_non_null(response_header(req, "Retry-After"));
    assert_null(response_header(req, "WWW-Authenticate"));
    keel__request_free(req);

    /* A token that is merely invalid still gets its 401. */
    forced_status = KEEL__TOKEN_EXPIRED;
    req = request(f, KEEL__LISTENER_MAIN, "Bearer a.b.c");
    assert_false(keel__authorize(req, KEEL__AUTH_USER, &f->authz));
    assert_int_equal(f->syn.status, 401);
    assert_non_null(strstr(f->syn.body, "token_expired"));
    keel__request_free(req);
}

static void test_admin_listener_off_loopback_wants_the_token(void **state)
{
    struct fixture *f = *state;
    f->authz.admin_loopback = false;
    f->authz.admin_token = "s3cret";
    keel_request *req = request(f, KEEL__LISTENER_ADMIN, "Bearer s3cret");
    assert_true(keel__authorize(req, KEEL__AUTH_ADMIN, &f->authz));
    keel__request_free(req);
    req = request(f, KEEL__LISTENER_ADMIN, "Bearer s3cre");
    assert_false(keel__authorize(req, KEEL__AUTH_ADMIN, &f->authz));
    assert_int_equal(f->syn.status, 401);
    keel__request_free(req);
    req = request(f, KEEL__LISTENER_ADMIN, NULL);
    assert_false(keel__authorize(req, KEEL__AUTH_ADMIN, &f->authz));
    assert_int_equal(f->syn.status, 403);
    keel__request_free(req);
    f->authz.admin_loopback = true;
    req = request(f, KEEL__LISTENER_ADMIN, NULL);
    assert_true(keel__authorize(req, KEEL__AUTH_ADMIN, &f->authz));
    keel__request_free(req);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_public_routes_need_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_and_bad_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_memory_in_verification_is_503, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_listener_off_loopback_wants_the_token, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
