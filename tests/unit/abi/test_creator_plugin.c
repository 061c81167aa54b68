/*
 * Unit tests for the creator plugin, loaded through the real loader and host
 * table and driven through the synthetic-request seam (the one
 * keel-plugin-check uses), with no database configured: input validation
 * answers 422, reads answer their degraded 200 bodies with X-Keel-Degraded,
 * writes answer 503 with Retry-After, and every handler answers exactly once.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <keel/error.h>

#include "conf/conf.h"
#include "http/request.h"
#include "http/server.h"
#include "plugin/hostapi.h"
#include "plugin/loader.h"
#include "plugin/manifest.h"
#include "util/log.h"

static char tmpdir[128];
static struct keel__manifest manifest;
static struct keel__generation *gen;

static int group_setup(void **state)
{
    (void)state;
    keel__log_set_fd(open("/dev/null", O_WRONLY));
    snprintf(tmpdir, sizeof tmpdir, "/tmp/keel-test-creator-XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    /* The loader's private copies stay out of a shared /tmp. */
    setenv("TMPDIR", tmpdir, 1);
    if (keel__loader_init() != 0)
        return -1;
    const char *src = getenv("KEEL_SRCDIR");
    const char *build = getenv("KEEL_BUILDDIR");
    char path[1024], plugin_dir[1024];
    snprintf(path, sizeof path, "%s/conf.d/60-creator.json", src ? src : ".");
    snprintf(plugin_dir, sizeof plugin_dir, "%s/.libs", build ? build : ".");
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (root == NULL) {
        fprintf(stderr, "%s: %s\n", path, jerr.text);
        return -1;
    }
    char err[512];
    int rc = keel__manifest_parse(json_object_get(root, "plugin"), path, plugin_dir, &manifest, err,
                                  sizeof err);
    json_decref(root);
    if (rc != 0) {
        fprintf(stderr, "manifest: %s\n", err);
        return -1;
    }
    keel__rt.db = NULL; /* no database: the degraded paths */
    struct keel__load_error le;
    if (keel__generation_load(&manifest, 1, keel__host_api(), &gen, &le) != 0) {
        fprintf(stderr, "load: %s\n", le.message);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    keel__generation_unref(gen);
    keel__manifest_clear(&manifest);
    keel__loader_shutdown();
    return rmdir(tmpdir);
}

struct call {
    struct keel__synthetic syn;
    keel_request *req;
    json_t *body; /* the response, parsed */
};

static const char *const json_headers[] = {"Content-Type", "application/json", NULL};

/* Runs method+template with {username} (or {job_id}) set to param, query
 * (raw name/value pairs, NULL-terminated) and a JSON body, as an active
 * user (an admin for /admin routes). */
static void call(struct call *c, const char *method, const char *tmpl, const char *param,
                 const char *const *query, const char *body)
{
    memset(c, 0, sizeof *c);
    keel_handler_fn h = keel__generation_handler(gen, method, tmpl);
    assert_non_null(h);
    c->syn.headers = body ? json_headers : NULL;
    c->syn.query = query;
    c->req = keel__request_new(NULL, 0, method, tmpl);
    assert_non_null(c->req);
    c->req->synthetic = &c->syn;
    if (param != NULL) {
        const char *open = strchr(tmpl, '{');
        assert_non_null(open);
        size_t n = (size_t)(strchr(open, '}') - open - 1);
        char *name = keel__req_alloc(c->req, n + 1);
        memcpy(name, open + 1, n);
        c->req->match.names[0] = name;
        c->req->match.values[0] = param;
        c->req->match.nparams = 1;
    }
    if (body != NULL) {
        c->req->body = strdup(body);
        c->req->body_len = strlen(body);
    }
    struct keel__principal *p = &c->req->principal;
    p->user_id = "00000000-0000-4000-8000-00000000c0de";
    p->supabase_id = "00000000-0000-4000-8000-0000000000ab";
    p->email = "unit@keel.invalid";
    p->role = strncmp(tmpl, "/admin/", 7) == 0 ? "admin" : "user";
    p->status = "active";
    p->tier = "free";
    p->synced = true;
    c->req->has_principal = true;
    h(c->req, gen->state);
    assert_int_equal(c->syn.responses, 1);
    json_error_t jerr;
    c->body = json_loadb(c->syn.body, c->syn.body_len, 0, &jerr);
    assert_non_null(c->body);
}

static const char *header(const struct call *c, const char *name)
{
    for (const struct keel__header *h = c->req->headers; h != NULL; h = h->next)
        if (strcasecmp(h->name, name) == 0)
            return h->value;
    return NULL;
}

static void done(struct call *c)
{
    json_decref(c->body);
    keel__request_free(c->req);
}

/* The loc of the first validation error, as "a.b". */
static void assert_422_at(struct call *c, const char *where, const char *name)
{
    assert_int_equal(c->syn.status, 422);
    json_t *first = json_array_get(json_object_get(c->body, "detail"), 0);
    json_t *loc = json_object_get(first, "loc");
    assert_string_equal(json_string_value(json_array_get(loc, 0)), where);
    assert_string_equal(json_string_value(json_array_get(loc, 1)), name);
}

static void test_bad_usernames_are_422(void **state)
{
    (void)state;
    struct call c;
    char long_name[2001];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    static const char *const bad[] = {"x' OR 1=1 --", "", "a b", NULL};
    call(&c, "GET", "/api/v1/simple/creator/{username}", long_name, NULL, NULL);
    assert_422_at(&c, "path", "username");
    done(&c);
    for (size_t i = 0; bad[i] != NULL; i++) {
        call(&c, "POST", "/api/v1/simple/creator/unlock/{username}", bad[i], NULL, NULL);
        assert_422_at(&c, "path", "username");
        done(&c);
    }
}

static void test_bad_page_arguments_are_422(void **state)
{
    (void)state;
    struct call c;
    static const char *const not_int[] = {"page", "abc", NULL};
    static const char *const too_big[] = {"page_size", "101", NULL};
    call(&c, "GET", "/api/v1/simple/creator/unlocked", NULL, not_int, NULL);
    assert_422_at(&c, "query", "page");
    done(&c);
    call(&c, "GET", "/api/v1/simple/creator/unlocked", NULL, too_big, NULL);
    assert_422_at(&c, "query", "page_size");
    done(&c);
}

static void test_reads_degrade_without_a_database(void **state)
{
    (void)state;
    struct call c;
    call(&c, "GET", "/api/v1/simple/creator/system/stats", NULL, NULL, NULL);
    assert_int_equal(c.syn.status, 200);
    assert_string_equal(header(&c, "X-Keel-Degraded"), "database");
    assert_non_null(json_object_get(c.body, "stats"));
    done(&c);
    call(&c, "GET", "/api/v1/simple/creator/unlocked", NULL, NULL, NULL);
    assert_int_equal(c.syn.status, 200);
    assert_string_equal(header(&c, "X-Keel-Degraded"), "database");
    assert_true(json_is_false(json_object_get(c.body, "success")));
    done(&c);
}

static void test_writes_are_503_with_retry_after(void **state)
{
    (void)state;
    struct call c;
    call(&c, "POST", "/api/v1/simple/creator/unlock/{username}", "some_creator", NULL, NULL);
    assert_int_equal(c.syn.status, 503);
    assert_non_null(header(&c, "Retry-After"));
    assert_non_null(json_object_get(c.body, "detail"));
    done(&c);
    call(&c, "POST", "/admin/credits", NULL, NULL,
         "{\"email\":\"unit@keel.invalid\",\"amount\":5}");
    assert_int_equal(c.syn.status, 503);
    done(&c);
    /* Validation still comes first. */
    call(&c, "POST", "/admin/credits", NULL, NULL, "{\"amount\":5}");
    assert_422_at(&c, "body", "email");
    done(&c);
}

/* What a test finaliser was handed, and whether it takes the work. */
static struct {
    void (*fn)(void *);
    void *arg;
    int calls;
    int answer;
} handed;

static int test_finaliser(void (*fn)(void *), void *arg)
{
    handed.fn = fn;
    handed.arg = arg;
    handed.calls++;
    return handed.answer;
}

/* The last reference of a generation goes to the finaliser when one is set
 * (the generation stays loaded until the finaliser runs the work), and is
 * finalised in place when the finaliser declines or none is set. */
static void test_last_reference_goes_to_the_finaliser(void **state)
{
    (void)state;
    long live = keel__generations_live();
    struct keel__generation *g2 = NULL;
    struct keel__load_error le;
    assert_int_equal(keel__generation_load(&manifest, 2, keel__host_api(), &g2, &le), 0);
    assert_int_equal(keel__generations_live(), live + 1);
    memset(&handed, 0, sizeof handed);
    keel__generation_set_finaliser(test_finaliser);
    keel__generation_ref(g2);
    keel__generation_unref(g2); /* not the last: nothing handed over */
    assert_int_equal(handed.calls, 0);
    keel__generation_unref(g2);
    assert_int_equal(handed.calls, 1);
    assert_ptr_equal(handed.arg, g2);
    assert_int_equal(keel__generations_live(), live + 1);
    handed.fn(handed.arg);
    assert_int_equal(keel__generations_live(), live);

    /* A finaliser that cannot take it: finalised here. */
    struct keel__generation *g3 = NULL;
    assert_int_equal(keel__generation_load(&manifest, 3, keel__host_api(), &g3, &le), 0);
    handed.answer = -1;
    keel__generation_unref(g3);
    assert_int_equal(handed.calls, 2);
    assert_int_equal(keel__generations_live(), live);

    /* None set: finalised here. */
    keel__generation_set_finaliser(NULL);
    struct keel__generation *g4 = NULL;
    assert_int_equal(keel__generation_load(&manifest, 4, keel__host_api(), &g4, &le), 0);
    keel__generation_unref(g4);
    assert_int_equal(handed.calls, 2);
    assert_int_equal(keel__generations_live(), live);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_usernames_are_422),
        cmocka_unit_test(test_bad_page_arguments_are_422),
        cmocka_unit_test(test_reads_degrade_without_a_database),
        cmocka_unit_test(test_writes_are_503_with_retry_after),
        cmocka_unit_test(test_last_reference_goes_to_the_finaliser),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
