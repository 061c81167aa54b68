/*
 * Unit tests for the reload transaction (core/plugin/reload.c) with real
 * test plugins from the build tree.  malloc, calloc and realloc are wrapped
 * at link time for the core's objects: each reload is run again and again
 * with the n-th allocation failing, n = 1, 2, ... until one goes through.
 * Whatever fails, the serving table and the slots must be exactly as before
 * and the reload must say ok:false; a failure inside the commit must say
 * stage "commit".
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include <keel/error.h>

#include "conf/conf.h"
#include "http/routes.h"
#include "plugin/hostapi.h"
#include "plugin/loader.h"
#include "plugin/manifest.h"
#include "plugin/registry.h"
#include "util/log.h"

/* -------------------------------------------------------- allocation failure */

static long fail_at;    /* 0: never; else the allocation number that fails */
static long allocs;     /* allocations since arming */
static bool failed_one; /* the armed failure happened */

void *__real_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t size);
void *__wrap_malloc(size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t size);

static bool should_fail(void)
{
    if (fail_at == 0)
        return false;
    if (++allocs != fail_at)
        return false;
    failed_one = true;
    return true;
}

void *__wrap_malloc(size_t size)
{
    return should_fail() ? NULL : __real_malloc(size);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return should_fail() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t size)
{
    return should_fail() ? NULL : __real_realloc(p, size);
}

static void arm(long n)
{
    allocs = 0;
    failed_one = false;
    fail_at = n;
}

static void disarm(void)
{
    fail_at = 0;
}

/* -------------------------------------------------------- fixture */

static char confdir[256];
static char plugin_path[512];

static const char *built_plugin(const char *name, char *out, size_t len)
{
    const char *builddir = getenv("KEEL_BUILDDIR");
    snprintf(out, len, "%s/tests/plugins/.libs/%s.so", builddir ? builddir : ".", name);
    return out;
}

static void write_file(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", confdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A manifest for plugin (its .so at so) with two public GET routes. */
static void write_manifest(const char *conf_name, const char *plugin, const char *so,
                           const char *route1, const char *route2)
{
    char text[2048];
    snprintf(text, sizeof text,
             "{\"plugin\": {\"name\": \"%s\", \"file\": \"%s\", \"routes\": ["
             "{\"method\": \"GET\", \"path\": \"/api/v1/%s/%s\", \"auth\": \"public\"},"
             "{\"method\": \"GET\", \"path\": \"/api/v1/%s/%s\", \"auth\": \"public\"}]}}",
             plugin, so, plugin, route1, plugin, route2);
    write_file(conf_name, text);
}

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb");
    assert_non_null(in);
    FILE *out = fopen(to, "wb");
    assert_non_null(out);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    fclose(out);
}

static int group_setup(void **state)
{
    (void)state;
    int fd = open("/dev/null", O_WRONLY);
    keel__log_set_fd(fd); /* the reloads log a lot of expected failures */
    keel__manifest_install();
    snprintf(confdir, sizeof confdir, "/tmp/keel-test-reload-XXXXXX");
    if (mkdtemp(confdir) == NULL)
        return -1;
    /* The loader's private copies go in here too: a keeld elsewhere on the
     * machine may tidy up copy directories in /tmp it does not know. */
    setenv("TMPDIR", confdir, 1);
    if (keel__loader_init() != 0)
        return -1;
    snprintf(plugin_path, sizeof plugin_path, "%s/testplug.so", confdir);
    char so[512];
    copy_file(built_plugin("versioned_v1", so, sizeof so), plugin_path);
    write_manifest("70-testplug.json", "testplug", plugin_path, "hello", "slow");
    struct keel__conf *conf = NULL;
    char err[512];
    if (keel__conf_load(confdir, &conf, err, sizeof err) != 0) {
        fprintf(stderr, "conf: %s\n", err);
        return -1;
    }
    int rc = keel__plugins_start(conf, keel__host_api(), NULL, 0);
    keel__conf_free(conf);
    return rc;
}

static int group_teardown(void **state)
{
    (void)state;
    keel__plugins_stop();
    keel__loader_shutdown();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", confdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* What a reload must leave alone when it fails: the plugin list without the
 * bookkeeping of reloads themselves. */
static char *state_of_slots(void)
{
    json_t *d = keel__plugins_describe();
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(d, "plugins"), i, p)
    {
        json_object_del(p, "reloads");
        json_object_del(p, "last_reload");
    }
    char *text = json_dumps(d, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(d);
    assert_non_null(text);
    return text;
}

static uint64_t serving_serial(void)
{
    struct keel__table *t = keel__table_acquire();
    assert_non_null(t);
    uint64_t serial = t->serial;
    keel__table_release(t, NULL);
    return serial;
}

/*
 * Runs reload(only) with the n-th allocation failing for n = 1, 2, ...; every
 * failed attempt must change nothing.  Returns the number of attempts that
 * failed at the commit stage; *tries is how many failures were injected.
 */
static int reload_under_failures(const char *only, bool strict, int *tries)
{
    int commit_failures = 0;
    *tries = 0;
    for (long n = 1; n < 100000; n++) {
        char *before = state_of_slots();
        uint64_t serial = serving_serial();
        bool unknown = false;
        arm(n);
        json_t *r = keel__plugins_reload(only, &unknown);
        disarm();
        bool injected = failed_one;
        assert_false(unknown);
        if (r == NULL) {
            /* Only an injected failure may lose the answer itself. */
            assert_true(injected);
        }
        bool ok = r != NULL && json_is_true(json_object_get(r, "ok"));
        if (!injected) {
            assert_true(ok);
            json_decref(r);
            free(before);
            return commit_failures;
        }
        (*tries)++;
        if (ok) {
            /* The failure hit something that may fail quietly (a metrics
             * record): the reload went through. */
            assert_int_not_equal(serving_serial(), serial);
        } else {
            bool at_commit = false, any_ok = false;
            size_t i;
            json_t *res;
            json_array_foreach(json_object_get(r, "results"), i, res)
            {
                bool res_ok = json_is_true(json_object_get(res, "ok"));
                any_ok = any_ok || res_ok;
                /* A plugin that succeeded reports stage "commit" too. */
                if (!res_ok &&
                    strcmp(json_string_value(json_object_get(res, "stage")), "commit") == 0)
                    at_commit = true;
            }
            /* A failed commit fails every plugin of the reload. */
            if (at_commit || strict)
                assert_false(any_ok);
            commit_failures += at_commit;
            /* A serving plugin keeps serving whatever failed; a plugin that
             * never loaded may move to its new manifest's stubs, unless the
             * commit itself failed. */
            if (strict || at_commit) {
                char *after = state_of_slots();
                assert_string_equal(after, before);
                assert_int_equal(serving_serial(), serial);
                free(after);
            }
        }
        json_decref(r);
        free(before);
    }
    fail_msg("reload never went through");
    return commit_failures;
}

/* -------------------------------------------------------- tests */

static void test_reload_ok(void **state)
{
    (void)state;
    char *before = state_of_slots();
    uint64_t serial = serving_serial();
    bool unknown = true;
    json_t *r = keel__plugins_reload("testplug", &unknown);
    assert_non_null(r);
    assert_false(unknown);
    assert_true(json_is_true(json_object_get(r, "ok")));
    assert_int_not_equal(serving_serial(), serial);
    char *after = state_of_slots();
    assert_string_not_equal(after, before);
    free(after);
    json_decref(r);
    free(before);
    assert_null(keel__plugins_reload("nosuch", &unknown));
    assert_true(unknown);
}

static void test_every_allocation_failure_leaves_everything_as_it_was(void **state)
{
    (void)state;
    int tries = 0;
    int at_commit = reload_under_failures("testplug", true, &tries);
    assert_true(tries > 10);
    /* The commit's own allocations (slot array, snapshot) were among those
     * that failed, and each was reported as a commit failure. */
    assert_true(at_commit > 0);
}

/* The figures /metrics renders come from the slots; while a reload holds the
 * registry lock, the list and the figures are those the last start, reload or
 * read left, answered without waiting. */
static void test_stats_follow_the_slots_and_do_not_wait_for_a_reload(void **state)
{
    (void)state;
    struct keel__plugin_stats *st;
    size_t n;
    assert_int_equal(keel__plugins_stats(&st, &n), 0);
    assert_int_equal(n, 1);
    json_t *d = keel__plugins_describe();
    json_t *p = json_array_get(json_object_get(d, "plugins"), 0);
    assert_string_equal(st[0].name, "testplug");
    assert_true(st[0].up);
    assert_int_equal(st[0].generation, json_integer_value(json_object_get(p, "generation")));
    assert_int_equal(st[0].reloads, json_integer_value(json_object_get(p, "reloads")));
    assert_int_equal(st[0].in_flight, 0);
    json_decref(d);
    uint64_t generation = st[0].generation;
    uint64_t reloads = st[0].reloads;
    free(st);

    bool unknown = false;
    json_decref(keel__plugins_reload("testplug", &unknown));
    /* The next reload is running: the lock is held. */
    pthread_mutex_lock(&keel__reg.lock);
    int rc = keel__plugins_stats(&st, &n);
    d = keel__plugins_describe();
    pthread_mutex_unlock(&keel__reg.lock);
    assert_int_equal(rc, 0);
    assert_int_equal(n, 1);
    assert_int_equal(st[0].generation, generation + 1);
    assert_int_equal(st[0].reloads, reloads + 1);
    free(st);
    assert_true(json_is_true(json_object_get(d, "reload_in_progress")));
    p = json_array_get(json_object_get(d, "plugins"), 0);
    assert_int_equal(json_integer_value(json_object_get(p, "generation")), generation + 1);
    json_decref(d);
}

/* A new plugin appearing in conf.d: when the commit fails, its slot must not
 * be left behind. */
static void test_new_plugin_commit_failure_leaves_no_slot(void **state)
{
    (void)state;
    char so[512], path[600];
    snprintf(path, sizeof path, "%s/abi11.so", confdir);
    copy_file(built_plugin("abi11", so, sizeof so), path);
    write_manifest("80-abi11.json", "abi11", path, "status", "query");
    int tries = 0;
    int at_commit = reload_under_failures(NULL, false, &tries);
    assert_true(tries > 10);
    assert_true(at_commit > 0);
    json_t *d = keel__plugins_describe();
    json_t *list = json_object_get(d, "plugins");
    assert_int_equal(json_array_size(list), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 1), "state")),
                        "loaded");
    json_decref(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reload_ok),
        cmocka_unit_test(test_every_allocation_failure_leaves_everything_as_it_was),
        cmocka_unit_test(test_stats_follow_the_slots_and_do_not_wait_for_a_reload),
        cmocka_unit_test(test_new_plugin_commit_failure_leaves_no_slot),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
