/* Unit tests for core/http/router.c. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <keel/error.h>

#include "http/router.h"

/* Distinct addresses to register as route data. */
static int tag_a, tag_b, tag_c, tag_d, tag_e;

struct lookup {
    int rc;
    struct keel__route_match m;
    char scratch[512];
    char allow[128];
};

static int lookup(const keel__router *r, const char *method, const char *path, struct lookup *l)
{
    memset(l, 0, sizeof *l);
    l->rc = keel__router_match(r, method, path, &l->m, l->scratch, sizeof l->scratch, l->allow,
                               sizeof l->allow);
    return l->rc;
}

static const char *param(const struct lookup *l, const char *name)
{
    for (size_t i = 0; i < l->m.nparams; i++)
        if (strcmp(l->m.names[i], name) == 0)
            return l->m.values[i];
    return NULL;
}

static void add_ok(keel__router *r, const char *method, const char *tmpl, const char *owner,
                   void *data)
{
    char err[256] = "";
    int rc = keel__router_add(r, method, tmpl, owner, data, err, sizeof err);
    if (rc != 0)
        fail_msg("adding %s %s: %s", method, tmpl, err);
}

static void test_literal_beats_param(void **state)
{
    (void)state;
    keel__router *r = keel__router_new();
    struct lookup l;
    assert_non_null(r);
    /* Registered param first, so order cannot explain the result. */
    add_ok(r, "GET", "/api/v1/simple/creator/{username}", "creator", &tag_a);
    add_ok(r, "GET", "/api/v1/simple/creator/unlocked", "creator", &tag_b);
    add_ok(r, "GET", "/api/v1/simple/creator/{username}/status", "creator", &tag_c);

    assert_int_equal(lookup(r, "GET", "/api/v1/simple/creator/unlocked", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_b);
    assert_int_equal(l.m.nparams, 0);
    assert_string_equal(l.m.template_path, "/api/v1/simple/creator/unlocked");

    assert_int_equal(lookup(r, "GET", "/api/v1/simple/creator/someone", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_a);
    assert_int_equal(l.m.nparams, 1);
    assert_string_equal(l.m.names[0], "username");
    assert_string_equal(l.m.values[0], "someone");
    assert_string_equal(l.m.template_path, "/api/v1/simple/creator/{username}");

    /* "unlocked" as a username still reaches the /status route by backtracking. */
    assert_int_equal(lookup(r, "GET", "/api/v1/simple/creator/unlocked/status", &l),
                     KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_c);
    assert_string_equal(param(&l, "username"), "unlocked");
    keel__router_free(r);
}

static void test_backtracking(void **state)
{
    (void)state;
    keel__router *r = keel__router_new();
    struct lookup l;
    add_ok(r, "GET", "/a/{x}/c", "p1", &tag_a);
    add_ok(r, "GET", "/a/b/{y}", "p2", &tag_b);
    add_ok(r, "GET", "/a/b/d/e", "p3", &tag_c);

    /* Literal "b" is tried first at depth 2 and "/a/b/{y}" matches. */
    assert_int_equal(lookup(r, "GET", "/a/b/c", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_b);
    assert_string_equal(param(&l, "y"), "c");

    assert_int_equal(lookup(r, "GET", "/a/z/c", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_a);
    assert_string_equal(param(&l, "x"), "z");

    /* "/a/b/d" goes down the literal branch, which has "/a/b/d/e" but no
     * route at "/a/b/d" itself; "/a/b/{y}" then answers. */
    assert_int_equal(lookup(r, "GET", "/a/b/d", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_b);
    assert_string_equal(param(&l, "y"), "d");

    /* Dead end in the literal subtree forces a return to the param branch. */
    add_ok(r, "GET", "/a/b/q/z", "p4", &tag_d);
    add_ok(r, "GET", "/a/{x}/q/w", "p5", &tag_e);
    assert_int_equal(lookup(r, "GET", "/a/b/q/w", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_e);
    assert_string_equal(param(&l, "x"), "b");
    assert_int_equal(l.m.nparams, 1);

    assert_int_equal(lookup(r, "GET", "/a/b/c/d/e", &l), KEEL__MATCH_NOT_FOUND);
    keel__router_free(r);
}

static void test_backtracking_past_wrong_method(void **state)
{
    (void)state;
    keel__router *r = keel__router_new();
    struct lookup l;
    add_ok(r, "POST", "/c/unlock/{username}", "creator", &tag_a);
    add_ok(r, "GET", "/c/{username}/status", "creator", &tag_b);

    /* "/c/unlock/status" matches POST /c/unlock/{username} by path but not
     * by method; the search goes on and finds the GET route. */
    assert_int_equal(lookup(r, "GET", "/c/unlock/status", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_b);
    assert_string_equal(param(&l, "username"), "unlock");

    assert_int_equal(lookup(r, "POST", "/c/unlock/status", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_a);
    assert_string_equal(param(&l, "username"), "status");

    /* Both templates match the path: Allow is their union. */
    assert_int_equal(lookup(r, "DELETE", "/c/unlock/status", &l), KEEL__MATCH_NO_METHOD);
    assert_string_equal(l.allow, "GET, POST, OPTIONS");
    keel__router_free(r);
}

static void test_param_decoding(void **state)
{
    (void)state;
    keel__router *r = keel__router_new();
    struct lookup l;
    add_ok(r, "GET", "/u/{name}", "p", &tag_a);
    add_ok(r, "GET", "/u/{name}/posts/{post_id}", "p", &tag_b);
    add_ok(r, "GET", "/lit/AB", "p", &tag_c);

    assert_int_equal(lookup(r, "GET", "/u/john%2Edoe", &l), KEEL__MATCH_OK);
    assert_string_equal(param(&l, "name"), "john.doe");
    assert_int_equal(lookup(r, "GET", "/u/%41b%63", &l), KEEL__MATCH_OK);
    assert_string_equal(param(&l, "name"), "Abc");
    assert_int_equal(lookup(r, "GET", "/u/a%20b+c", &l), KEEL__MATCH_OK);
    assert_string_equal(param(&l, "name"), "a b+c"); /* '+' is not a space in a path */
    assert_int_equal(lookup(r, "GET", "/u/%c3%a9t%C3%A9", &l), KEEL__MATCH_OK);
    assert_string_equal(param(&l, "name"), "\xc3\xa9t\xc3\xa9");

    assert_int_equal(lookup(r, "GET", "/u/x%5Fy/posts/42", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_b);
    assert_int_equal(l.m.nparams, 2);
    assert_string_equal(l.m.names[0], "name");
    assert_string_equal(l.m.values[0], "x_y");
    assert_string_equal(l.m.names[1], "post_id");
    assert_string_equal(l.m.values[1], "42");

    /* Literals are compared with the decoded segment. */
    assert_int_equal(lookup(r, "GET", "/lit/%41%42", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_c);
    assert_int_equal(lookup(r, "GET", "/%6Cit/AB", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_c);
    keel__router_free(r);
}

static void test_rejections(void **state)
{
    (void)state;
    keel__router *r = keel__router_new();
    struct lookup l;
    add_ok(r, "GET", "/u/{name}", "p", &tag_a);
    add_ok(r, "GET", "/u/{name}/x", "p", &tag_b);
    add_ok(r, "GET", "/", "p", &tag_c);

    assert_int_equal(lookup(r, "GET", "/u/ok", &l), KEEL__MATCH_OK);
    assert_int_equal(lookup(r, "GET", "/", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_c);

    static const char *const bad[] = {
        "/u/a%00b",
        "/u/a%2Fb",
        "/u/a%2fb",
        "/u/..",
        "/u/.",
        "/u/%2E%2E",
        "/u/%2e",
        "/u/..%2Fx",
        "/u/%",
        "/u/a%4",
        "/u/a%zz",
        "/u/a%g0",
        "/u/",
        "/u//x",
        "//u/a",
        "/u/a/",
        "/u/../u/a",
        "u/a",
        "",
        "/u/./x",
        "/u/%2E./x",
        /* Not UTF-8: a lone continuation byte, a truncated sequence, an
         * overlong '/', a surrogate, past U+10FFFF, raw Latin-1. */
        "/u/%80",
        "/u/a%C3",
        "/u/%C0%AF",
        "/u/%ED%A0%80",
        "/u/%F4%90%80%80",
        "/u/caf\xe9",
        "/u/%ff%fe",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (lookup(r, "GET", bad[i], &l) != KEEL__MATCH_NOT_FOUND)
            fail_msg("path \"%s\" gave %d, expected NOT_FOUND", bad[i], l.rc);
        assert_string_equal(l.allow, "");
    }
    assert_int_equal(keel__router_match(r, "GET", NULL, &l.m, l.scratch, sizeof l.scratch, NULL, 0),
                     KEEL__MATCH_NOT_FOUND);

    /* A "." inside a segment is an ordinary character. */
    assert_int_equal(lookup(r, "GET", "/u/.a", &l), KEEL__MATCH_OK);
    assert_string_equal(param(&l, "name"), ".a");
    assert_int_equal(lookup(r, "GET", "/u/...", &l), KEEL__MATCH_OK);
    assert_string_equal(param(&l, "name"), "...");

    /* Too many segments. */
    char longpath[256] = "";
    size_t used = 0;
    for (int i = 0; i < KEEL__ROUTER_MAX_SEGMENTS + 1; i++)
        used += (size_t)snprintf(longpath + used, sizeof longpath - used, "/s");
    assert_int_equal(lookup(r, "GET", longpath, &l), KEEL__MATCH_NOT_FOUND);

    /* A scratch buffer that is too small fails closed; strlen + 1 suffices. */
    const char *p = "/u/abcdef/x";
    char small[8], exact[12];
    struct keel__route_match m;
    assert_int_equal(keel__router_match(r, "GET", p, &m, small, sizeof small, NULL, 0),
                     KEEL__MATCH_NOT_FOUND);
    assert_int_equal(sizeof exact, strlen(p) + 1);
    assert_int_equal(keel__router_match(r, "GET", p, &m, exact, sizeof exact, NULL, 0),
                     KEEL__MATCH_OK);
    assert_string_equal(m.values[0], "abcdef");
    keel__router_free(r);
}

static void test_not_found_vs_no_method(void **state)
{
    (void)state;
    keel__router *r = keel__router_new();
    struct lookup l;
    add_ok(r, "GET", "/things/{id}", "p", &tag_a);
    add_ok(r, "DELETE", "/things/{id}", "p", &tag_b);
    add_ok(r, "PATCH", "/things/{id}", "p", &tag_c);
    add_ok(r, "POST", "/things", "p", &tag_d);

    assert_int_equal(lookup(r, "GET", "/nothing", &l), KEEL__MATCH_NOT_FOUND);
    assert_string_equal(l.allow, "");
    /* A prefix of a template is not a match. */
    assert_int_equal(lookup(r, "GET", "/things/1/more", &l), KEEL__MATCH_NOT_FOUND);

    assert_int_equal(lookup(r, "PUT", "/things/7", &l), KEEL__MATCH_NO_METHOD);
    assert_string_equal(l.allow, "GET, PATCH, DELETE, OPTIONS");
    assert_int_equal(lookup(r, "GET", "/things", &l), KEEL__MATCH_NO_METHOD);
    assert_string_equal(l.allow, "POST, OPTIONS");
    /* Unknown and lower-case methods are just methods without routes. */
    assert_int_equal(lookup(r, "BREW", "/things", &l), KEEL__MATCH_NO_METHOD);
    assert_string_equal(l.allow, "POST, OPTIONS");
    assert_int_equal(lookup(r, "post", "/things", &l), KEEL__MATCH_NO_METHOD);

    assert_int_equal(lookup(r, "DELETE", "/things/7", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_b);

    /* A short allow buffer keeps whole entries only. */
    char allow[12];
    struct keel__route_match m;
    char scratch[64];
    assert_int_equal(keel__router_match(r, "PUT", "/things/7", &m, scratch, sizeof scratch, allow,
                                        sizeof allow),
                     KEEL__MATCH_NO_METHOD);
    assert_string_equal(allow, "GET, PATCH");
    keel__router_free(r);
}

/* The methods of every template matching a path, without naming a method;
 * and a path far longer than any fixed buffer matches with a scratch sized
 * from it. */
static void test_methods_for_path(void **state)
{
    (void)state;
    keel__router *r = keel__router_new();
    assert_non_null(r);
    add_ok(r, "GET", "/u/{name}", "a", &tag_a);
    add_ok(r, "DELETE", "/u/{name}", "a", &tag_a);
    add_ok(r, "POST", "/u/me", "b", &tag_b);
    char scratch[64], allow[128];
    assert_int_equal(keel__router_methods(r, "/u/me", scratch, sizeof scratch, allow, sizeof allow),
                     KEEL__MATCH_OK);
    assert_string_equal(allow, "GET, POST, DELETE, OPTIONS");
    assert_int_equal(keel__router_methods(r, "/u/x", scratch, sizeof scratch, allow, sizeof allow),
                     KEEL__MATCH_OK);
    assert_string_equal(allow, "GET, DELETE, OPTIONS");
    assert_int_equal(keel__router_methods(r, "/v", scratch, sizeof scratch, allow, sizeof allow),
                     KEEL__MATCH_NOT_FOUND);
    assert_string_equal(allow, "");

    char path[4100] = "/u/";
    memset(path + 3, 'x', 4000);
    path[4003] = '\0';
    char big[4100];
    struct keel__route_match m;
    assert_int_equal(keel__router_match(r, "GET", path, &m, big, strlen(path) + 1, NULL, 0),
                     KEEL__MATCH_OK);
    assert_int_equal(strlen(m.values[0]), 4000);
    /* One byte short of what the path needs is not enough. */
    assert_int_equal(keel__router_match(r, "GET", path, &m, big, 4000, NULL, 0),
                     KEEL__MATCH_NOT_FOUND);
    keel__router_free(r);
}

static void test_conflicts(void **state)
{
    (void)state;
    keel__router *r = keel__router_new();
    char err[256];
    add_ok(r, "GET", "/api/v1/x/{name}", "a", &tag_a);

    /* Same shape, other parameter name: conflict naming both. */
    err[0] = '\0';
    assert_int_equal(keel__router_add(r, "GET", "/api/v1/x/{id}", "b", &tag_b, err, sizeof err),
                     KEEL_EROUTES);
    assert_string_equal(err, "route GET /api/v1/x/{id} of plugin \"b\" conflicts with "
                             "GET /api/v1/x/{name} of plugin \"a\"");

    /* Same path, other method: fine.  Other shape: fine. */
    add_ok(r, "POST", "/api/v1/x/{id}", "b", &tag_b);
    add_ok(r, "GET", "/api/v1/x/literal", "b", &tag_c);
    add_ok(r, "GET", "/api/v1/x/{id}/y", "b", &tag_d);
    assert_int_equal(keel__router_add(r, "GET", "/api/v1/x/literal", "c", NULL, err, sizeof err),
                     KEEL_EROUTES);
    assert_non_null(strstr(err, "of plugin \"b\""));

    /* The failed add left nothing behind: the first route still answers. */
    struct lookup l;
    assert_int_equal(lookup(r, "GET", "/api/v1/x/foo", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_a);
    assert_string_equal(l.m.names[0], "name");
    assert_int_equal(lookup(r, "POST", "/api/v1/x/foo", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_b);
    assert_string_equal(l.m.names[0], "id");
    keel__router_free(r);
}

static void test_bad_templates(void **state)
{
    (void)state;
    keel__router *r = keel__router_new();
    char err[256];
    static const char *const bad[] = {
        "",         "x/y",    "/x/",
        "//x",      "/x//y",  "/{}",
        "/{1a}",    "/{a-b}", "/{a",
        "/a}",      "/x{a}",  "/{a}x",
        "/{a}/{a}", "/.",     "/x/..",
        "/x y",     "/x%20y", "/x?y",
        "/x#y",     "/\x01",  "/{abcdefghijklmnopqrstuvwxyz0123456}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        if (keel__router_add(r, "GET", bad[i], "p", NULL, err, sizeof err) != KEEL_EINVAL)
            fail_msg("template \"%s\" was accepted", bad[i]);
        assert_true(err[0] != '\0');
        assert_int_equal(keel__router_check_template(bad[i], err, sizeof err), KEEL_EINVAL);
    }
    assert_int_equal(keel__router_add(r, "GET", NULL, "p", NULL, err, sizeof err), KEEL_EINVAL);
    assert_int_equal(keel__router_add(r, "FETCH", "/x", "p", NULL, err, sizeof err), KEEL_EINVAL);
    assert_int_equal(keel__router_add(r, "get", "/x", "p", NULL, err, sizeof err), KEEL_EINVAL);

    /* Limits: 8 parameters and 32 segments are fine, one more is not. */
    assert_int_equal(
        keel__router_check_template("/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}", err, sizeof err), 0);
    assert_int_equal(keel__router_check_template("/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}", err,
                                                 sizeof err),
                     KEEL_EINVAL);
    char tmpl[256] = "";
    size_t used = 0;
    for (int i = 0; i < KEEL__ROUTER_MAX_SEGMENTS; i++)
        used += (size_t)snprintf(tmpl + used, sizeof tmpl - used, "/s");
    assert_int_equal(keel__router_check_template(tmpl, err, sizeof err), 0);
    snprintf(tmpl + used, sizeof tmpl - used, "/s");
    assert_int_equal(keel__router_check_template(tmpl, err, sizeof err), KEEL_EINVAL);

    assert_int_equal(keel__router_check_template("/a:b/@c/x.y/~_-!$&'()*+,;=", err, sizeof err), 0);
    assert_int_equal(keel__router_check_template("/", err, sizeof err), 0);
    assert_int_equal(keel__router_check_template("/{_x9}", NULL, 0), 0);
    keel__router_free(r);
}

struct listing {
    char text[1024];
    size_t used;
    int count;
};

static void collect(void *ctx, const char *method, const char *tmpl, void *data)
{
    struct listing *li = ctx;
    (void)data;
    li->count++;
    li->used += (size_t)snprintf(li->text + li->used, sizeof li->text - li->used, "%s %s;", method,
                                 tmpl);
}

static void test_each(void **state)
{
    (void)state;
    keel__router *r = keel__router_new();
    struct listing li = {.used = 0};
    add_ok(r, "POST", "/b", "p", NULL);
    add_ok(r, "GET", "/a/{x}", "p", NULL);
    add_ok(r, "GET", "/", "p", NULL);
    keel__router_each(r, collect, &li);
    assert_int_equal(li.count, 3);
    assert_string_equal(li.text, "POST /b;GET /a/{x};GET /;");
    keel__router_free(r);
    keel__router_free(NULL);
}

static void test_many_routes(void **state)
{
    (void)state;
    keel__router *r = keel__router_new();
    static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE"};
    enum { GROUPS = 200 };
    static int data[GROUPS][5];
    char tmpl[128], path[128];

    /* Insert in an order that is not sorted, to exercise sorted insertion. */
    for (int k = 0; k < GROUPS; k++) {
        int g = (k * 37) % GROUPS;
        for (int mi = 0; mi < 5; mi++) {
            snprintf(tmpl, sizeof tmpl, "/api/v1/group%03d/{id}/item", g);
            add_ok(r, methods[mi], tmpl, "many", &data[g][mi]);
        }
        snprintf(tmpl, sizeof tmpl, "/api/v1/group%03d/special/item", g);
        add_ok(r, "GET", tmpl, "many", &data[g][0] + 0);
    }
    struct lookup l;
    for (int g = 0; g < GROUPS; g++) {
        for (int mi = 0; mi < 5; mi++) {
            snprintf(path, sizeof path, "/api/v1/group%03d/v%d/item", g, g * 10 + mi);
            assert_int_equal(lookup(r, methods[mi], path, &l), KEEL__MATCH_OK);
            assert_ptr_equal(l.m.data, &data[g][mi]);
            char want[32];
            snprintf(want, sizeof want, "v%d", g * 10 + mi);
            assert_string_equal(param(&l, "id"), want);
        }
        /* GET on the literal is the literal's (the exact-path table,
         * grown many times over here); POST falls back to {id}. */
        snprintf(path, sizeof path, "/api/v1/group%03d/special/item", g);
        assert_int_equal(lookup(r, "GET", path, &l), KEEL__MATCH_OK);
        assert_ptr_equal(l.m.data, &data[g][0]);
        assert_int_equal(l.m.nparams, 0);
        assert_int_equal(lookup(r, "POST", path, &l), KEEL__MATCH_OK);
        assert_ptr_equal(l.m.data, &data[g][1]);
        assert_string_equal(param(&l, "id"), "special");
    }
    assert_int_equal(lookup(r, "GET", "/api/v1/group200/x/item", &l), KEEL__MATCH_NOT_FOUND);
    assert_int_equal(lookup(r, "HEAD", "/api/v1/group007/x/item", &l), KEEL__MATCH_NO_METHOD);
    assert_string_equal(l.allow, "GET, POST, PUT, PATCH, DELETE, OPTIONS");
    keel__router_free(r);
}

/* Paths spelled as a template without parameters take the exact-path
 * table; what it answers must be what the search answers. */
static void test_exact_paths(void **state)
{
    (void)state;
    keel__router *r = keel__router_new();
    struct lookup l;
    assert_non_null(r);
    add_ok(r, "GET", "/", "core", &tag_a);
    add_ok(r, "GET", "/api/v1/example/hello", "example", &tag_b);
    add_ok(r, "POST", "/api/v1/example/{word}", "example", &tag_c);
    add_ok(r, "DELETE", "/api/v1/example/hello", "example", &tag_d);

    assert_int_equal(lookup(r, "GET", "/", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_a);
    assert_int_equal(lookup(r, "GET", "/api/v1/example/hello", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_b);
    assert_int_equal(l.m.nparams, 0);
    assert_string_equal(l.m.template_path, "/api/v1/example/hello");
    assert_int_equal(lookup(r, "DELETE", "/api/v1/example/hello", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_d);
    /* The same path spelled with escapes decodes to the same route. */
    assert_int_equal(lookup(r, "GET", "/api/v1/example/h%65llo", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_b);
    /* A method the literal lacks goes on to the parameter template... */
    assert_int_equal(lookup(r, "POST", "/api/v1/example/hello", &l), KEEL__MATCH_OK);
    assert_ptr_equal(l.m.data, &tag_c);
    assert_string_equal(param(&l, "word"), "hello");
    /* ...and one no template takes lists every template's methods. */
    assert_int_equal(lookup(r, "PUT", "/api/v1/example/hello", &l), KEEL__MATCH_NO_METHOD);
    assert_string_equal(l.allow, "GET, POST, DELETE, OPTIONS");
    assert_int_equal(lookup(r, "BREW", "/api/v1/example/hello", &l), KEEL__MATCH_NO_METHOD);
    /* Near spellings are not the template. */
    assert_int_equal(lookup(r, "GET", "/api/v1/example/hello/", &l), KEEL__MATCH_NOT_FOUND);
    assert_int_equal(lookup(r, "GET", "/api/v1/example/hell", &l), KEEL__MATCH_NO_METHOD);
    assert_int_equal(lookup(r, "GET", "/api/v1/example//hello", &l), KEEL__MATCH_NOT_FOUND);
    assert_int_equal(lookup(r, "GET", "/API/v1/example/hello", &l), KEEL__MATCH_NOT_FOUND);
    keel__router_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literal_beats_param),
        cmocka_unit_test(test_backtracking),
        cmocka_unit_test(test_backtracking_past_wrong_method),
        cmocka_unit_test(test_param_decoding),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_not_found_vs_no_method),
        cmocka_unit_test(test_methods_for_path),
        cmocka_unit_test(test_conflicts),
        cmocka_unit_test(test_bad_templates),
        cmocka_unit_test(test_each),
        cmocka_unit_test(test_many_routes),
        cmocka_unit_test(test_exact_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
