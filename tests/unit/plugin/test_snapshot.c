/*
 * Unit tests for core/plugin/snapshot.c: who frees a route table.  A
 * snapshot holds its manifest's JSON (route documentation, named schemas,
 * fallback headers) by reference, and those counts may only change under
 * the registry lock: the request that drops the last reference to a retired
 * table, on a thread of its own, must leave them alone, and the next publish
 * must free what it left.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include <keel/error.h>

#include "http/routes.h"
#include "plugin/loader.h"
#include "plugin/manifest.h"
#include "plugin/snapshot.h"
#include "util/counters.h"

/* One documented route with a fallback that sends a header of its own. */
static const char manifest_text[] =
    "{\"name\": \"docs\", \"file\": \"/nonexistent/docs.so\","
    " \"schemas\": {\"Thing\": {\"type\": \"object\"}},"
    " \"routes\": [{\"method\": \"GET\", \"path\": \"/api/v1/docs/thing\","
    " \"auth\": \"public\", \"summary\": \"A thing\","
    " \"responses\": {\"200\": {\"description\": \"The thing\","
    " \"schema\": {\"$ref\": \"#/components/schemas/Thing\"}}},"
    " \"fallback\": {\"status\": 503, \"headers\": {\"Retry-After\": \"5\"},"
    " \"body\": {\"detail\": \"down: ${reason}\"}}}]}";

static struct keel__manifest manifest;
static atomic_ullong requests;

static int setup(void **state)
{
    (void)state;
    json_t *obj = json_loads(manifest_text, 0, NULL);
    assert_non_null(obj);
    char err[512];
    int rc = keel__manifest_parse(obj, "docs.json", "/nonexistent", &manifest, err, sizeof err);
    json_decref(obj);
    if (rc != 0)
        fail_msg("manifest refused: %s", err);
    assert_non_null(manifest.schemas);
    assert_non_null(manifest.routes[0].doc);
    assert_non_null(manifest.routes[0].fallback_headers);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    keel__manifest_clear(&manifest);
    keel__metrics_free();
    return 0;
}

/* The plugin is down: its route is a stub, which keeps the headers too. */
static struct keel__snapshot *build(uint64_t serial)
{
    struct keel__slot_view v = {
        .name = "docs",
        .manifest = &manifest,
        .reason = KEEL__REASON_LOAD_FAILED,
        .requests = &requests,
    };
    long conflict;
    char err[256];
    struct keel__snapshot *s = keel__snapshot_build(NULL, 0, &v, 1, serial, &conflict, err,
                                                    sizeof err);
    assert_non_null(s);
    return s;
}

/* The references held on each of the manifest's trees. */
struct counts {
    size_t doc, schemas, headers;
};

static struct counts counts_now(void)
{
    return (struct counts){manifest.routes[0].doc->refcount, manifest.schemas->refcount,
                           manifest.routes[0].fallback_headers->refcount};
}

static void assert_counts(struct counts c, size_t doc, size_t schemas, size_t headers)
{
    assert_int_equal(c.doc, doc);
    assert_int_equal(c.schemas, schemas);
    assert_int_equal(c.headers, headers);
}

/* A lane finishing the last request on a table. */
static void *release_on_lane(void *arg)
{
    keel__table_release(arg, NULL);
    return NULL;
}

static void test_last_reference_on_a_lane_leaves_json_counts_to_the_next_publish(void **state)
{
    (void)state;
    struct counts base = counts_now();
    assert_counts(base, 1, 1, 1);

    keel__snapshot_publish(build(1));
    assert_counts(counts_now(), 2, 2, 2);
    /* A request takes the table, then a reload replaces it. */
    struct keel__table *held = keel__table_acquire();
    assert_non_null(held);
    assert_int_equal(held->serial, 1);
    keel__snapshot_publish(build(2));
    assert_counts(counts_now(), 3, 3, 3);

    /* The request ends on another thread: the table is retired there, but
     * its JSON keeps every reference it had. */
    pthread_t lane;
    assert_int_equal(pthread_create(&lane, NULL, release_on_lane, held), 0);
    assert_int_equal(pthread_join(lane, NULL), 0);
    assert_counts(counts_now(), 3, 3, 3);

    /* The next publish frees it, and the table it replaces, nobody holding
     * that one. */
    keel__snapshot_publish(build(3));
    assert_counts(counts_now(), 2, 2, 2);
    struct keel__table *t = keel__table_acquire();
    assert_int_equal(t->serial, 3);
    keel__table_release(t, NULL);

    keel__snapshot_publish(NULL);
    assert_null(keel__table_acquire());
    assert_counts(counts_now(), 1, 1, 1);
}

static void test_a_table_never_published_is_freed_at_once(void **state)
{
    (void)state;
    struct keel__snapshot *s = build(1);
    assert_counts(counts_now(), 2, 2, 2);
    keel__snapshot_discard(s);
    assert_counts(counts_now(), 1, 1, 1);
}

static void count_record(void *ctx, const struct keel__route_metrics *m)
{
    (void)m;
    ++*(size_t *)ctx;
}

/* The check before a load: the routers alone, the same verdict as a build,
 * and nothing of the manifest referenced or the metrics touched. */
static void test_conflicts_checks_the_routes_alone(void **state)
{
    (void)state;
    struct keel__slot_view v[2] = {
        {.name = "docs",
         .manifest = &manifest,
         .reason = KEEL__REASON_LOAD_FAILED,
         .requests = &requests},
        {.name = "other",
         .manifest = &manifest,
         .reason = KEEL__REASON_LOAD_FAILED,
         .requests = &requests,
         .candidate = true},
    };
    long conflict = 7;
    char err[256] = "";
    assert_int_equal(keel__snapshot_conflicts(NULL, 0, v, 1, &conflict, err, sizeof err), 0);
    assert_int_equal(conflict, -1);
    assert_counts(counts_now(), 1, 1, 1);

    /* A route checked, never served, gets no metrics record (it would show
     * in /metrics). */
    struct keel__manifest fresh;
    json_t *obj = json_loads("{\"name\": \"fresh\", \"file\": \"/nonexistent/f.so\","
                             " \"routes\": [{\"method\": \"GET\", \"path\": \"/fresh\","
                             " \"auth\": \"public\"}]}",
                             0, NULL);
    assert_int_equal(keel__manifest_parse(obj, "f.json", "/nonexistent", &fresh, err, sizeof err),
                     0);
    json_decref(obj);
    struct keel__slot_view f = {.name = "fresh", .manifest = &fresh, .requests = &requests};
    size_t before = 0, after = 0;
    keel__metrics_each(count_record, &before);
    assert_int_equal(keel__snapshot_conflicts(NULL, 0, &f, 1, &conflict, err, sizeof err), 0);
    keel__metrics_each(count_record, &after);
    assert_int_equal(after, before);
    keel__manifest_clear(&fresh);

    assert_int_equal(keel__snapshot_conflicts(NULL, 0, v, 2, &conflict, err, sizeof err),
                     KEEL_EROUTES);
    assert_int_equal(conflict, 1);
    if (strstr(err, "docs") == NULL || strstr(err, "other") == NULL)
        fail_msg("the conflict does not name both plugins: %s", err);
    assert_counts(counts_now(), 1, 1, 1);

    /* keel__snapshot_build says the same. */
    assert_null(keel__snapshot_build(NULL, 0, v, 2, 1, &conflict, err, sizeof err));
    assert_int_equal(conflict, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_last_reference_on_a_lane_leaves_json_counts_to_the_next_publish),
        cmocka_unit_test(test_a_table_never_published_is_freed_at_once),
        cmocka_unit_test(test_conflicts_checks_the_routes_alone),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
