/* Unit tests for core/plugin/tasks.c, core/plugin/plugin_metrics.c and the
 * configuration side of core/net/upstream.c: what may be registered when,
 * how tasks run and stop, and how plugin metrics render. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "data/breaker.h"
#include "util/time.h"
#include "net/upstream.h"
#include "plugin/plugin_metrics.h"
#include "plugin/tasks.h"
#include "util/log.h"

static atomic_int runs;
static atomic_int saw_stop;

static int count_run(keel_task *task, keel_request *req, void *arg)
{
    (void)arg;
    assert_non_null(req);
    atomic_fetch_add(&runs, 1);
    /* A long run that honours the stop flag through task_sleep. */
    if (keel__host_task_sleep(task, 60000))
        atomic_store(&saw_stop, 1);
    return 0;
}

static void test_registration_only_during_init(void **state)
{
    (void)state;
    keel_task *t = NULL;
    keel_metric *m = NULL;
    keel_upstream *u = NULL;
    json_t *cfg = json_pack("{s:s}", "url", "http://127.0.0.1:9");
    assert_int_equal(keel__host_task_add("tick", 10, count_run, NULL, &t), KEEL_EINVAL);
    assert_null(t);
    assert_int_equal(keel__host_metric_add(KEEL_METRIC_COUNTER, "p_x_total", "x", &m), KEEL_EINVAL);
    assert_int_equal(keel__host_upstream_add("up", cfg, &u), KEEL_EINVAL);
    assert_int_equal(keel__host_plugin_note("x"), KEEL_EINVAL);
    json_decref(cfg);
}

static void test_task_names_and_duplicates(void **state)
{
    (void)state;
    keel__gen_init_begin("p", 1);
    assert_int_equal(keel__host_task_add("Bad Name", 10, count_run, NULL, NULL), KEEL_EINVAL);
    assert_int_equal(keel__host_task_add("", 10, count_run, NULL, NULL), KEEL_EINVAL);
    assert_int_equal(keel__host_task_add("ok", 10, NULL, NULL, NULL), KEEL_EINVAL);
    assert_int_equal(keel__host_task_add("ok", 10, count_run, NULL, NULL), 0);
    assert_int_equal(keel__host_task_add("ok", 10, count_run, NULL, NULL), KEEL_EINVAL);
    struct keel__gen_res *res = keel__gen_init_end(true);
    assert_int_equal(keel__gen_ntasks(res), 1);
    keel__gen_free(res); /* never started: nothing to join */
}

static void test_failed_init_drops_what_it_registered(void **state)
{
    (void)state;
    keel__gen_init_begin("p", 1);
    assert_int_equal(keel__host_task_add("a", 10, count_run, NULL, NULL), 0);
    assert_null(keel__gen_init_end(false));
    assert_null(keel__gen_registering());
}

static void test_notified_task_runs_and_stops_when_asked(void **state)
{
    (void)state;
    atomic_store(&runs, 0);
    atomic_store(&saw_stop, 0);
    keel_task *t = NULL;
    keel__gen_init_begin("p", 1);
    assert_int_equal(keel__host_task_add("wake", 0, count_run, NULL, &t), 0);
    struct keel__gen_res *res = keel__gen_init_end(true);
    assert_non_null(t);
    assert_false(keel__host_task_stopping(t));
    keel__gen_start(res);
    keel__host_task_notify(t);
    for (int i = 0; i < 2000 && atomic_load(&runs) == 0; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(atomic_load(&runs), 1);
    /* The run sleeps for 60 s unless stopped: stopping must wake it. */
    int64_t t0 = keel__now_ms();
    assert_int_equal(keel__gen_stop(res, 5000), 0);
    assert_true(keel__now_ms() - t0 < 5000);
    assert_int_equal(atomic_load(&saw_stop), 1);
    keel__gen_free(res);
}

static void test_metric_names_belong_to_the_plugin(void **state)
{
    (void)state;
    keel_metric *m = NULL;
    keel__gen_init_begin("my-plug", 1);
    assert_int_equal(keel__host_metric_add(KEEL_METRIC_COUNTER, "other_total", "x", &m),
                     KEEL_EINVAL);
    assert_int_equal(keel__host_metric_add(KEEL_METRIC_COUNTER, "my_plug", "x", &m), KEEL_EINVAL);
    assert_int_equal(keel__host_metric_add(KEEL_METRIC_COUNTER, "my_plug_Bad", "x", &m),
                     KEEL_EINVAL);
    assert_int_equal(keel__host_metric_add(7, "my_plug_x", "x", &m), KEEL_EINVAL);
    assert_int_equal(keel__host_metric_add(KEEL_METRIC_COUNTER, "my_plug_x_total", "x", &m), 0);
    keel_metric *again = NULL;
    assert_int_equal(keel__host_metric_add(KEEL_METRIC_COUNTER, "my_plug_x_total", "x", &again), 0);
    assert_ptr_equal(m, again); /* a reload keeps the series */
    assert_int_equal(keel__host_metric_add(KEEL_METRIC_GAUGE, "my_plug_x_total", "x", &again),
                     KEEL_EEXISTS);
    keel__gen_free(keel__gen_init_end(true));
    keel__gen_init_begin("requests", 1);
    assert_int_equal(keel__host_metric_add(KEEL_METRIC_COUNTER, "requests_total", "x", &m),
                     KEEL_EINVAL); /* keel_plugin_requests_total is the core's */
    keel__gen_free(keel__gen_init_end(true));
}

static void test_metrics_render_consistently(void **state)
{
    (void)state;
    keel_metric *c = NULL, *g = NULL, *h = NULL;
    keel__gen_init_begin("rp", 1);
    assert_int_equal(keel__host_metric_add(KEEL_METRIC_COUNTER, "rp_done_total", "Done.", &c), 0);
    assert_int_equal(keel__host_metric_add(KEEL_METRIC_GAUGE, "rp_depth", "Depth.", &g), 0);
    assert_int_equal(keel__host_metric_add(KEEL_METRIC_HISTOGRAM, "rp_seconds", "Time.", &h), 0);
    keel__gen_free(keel__gen_init_end(true));
    keel__host_metric_observe(c, 2);
    keel__host_metric_observe(c, -5); /* a counter never goes down */
    keel__host_metric_observe(g, 7);
    keel__host_metric_observe(g, 3);
    keel__host_metric_observe(h, 0.002);
    keel__host_metric_observe(h, 100); /* past the last bound: +Inf only */
    char *text = keel__plugin_metrics_render();
    assert_non_null(text);
    assert_non_null(strstr(text, "# TYPE keel_plugin_rp_done_total counter\n"
                                 "keel_plugin_rp_done_total{plugin=\"rp\"} 2\n"));
    assert_non_null(strstr(text, "keel_plugin_rp_depth{plugin=\"rp\"} 3\n"));
    assert_non_null(strstr(text, "keel_plugin_rp_seconds_bucket{plugin=\"rp\",le=\"0.001\"} 0\n"
                                 "keel_plugin_rp_seconds_bucket{plugin=\"rp\",le=\"0.005\"} 1\n"));
    assert_non_null(strstr(text, "keel_plugin_rp_seconds_bucket{plugin=\"rp\",le=\"30\"} 1\n"
                                 "keel_plugin_rp_seconds_bucket{plugin=\"rp\",le=\"+Inf\"} 2\n"));
    assert_non_null(strstr(text, "keel_plugin_rp_seconds_count{plugin=\"rp\"} 2\n"));
    free(text);
}

static void test_upstream_config_is_checked(void **state)
{
    (void)state;
    keel_upstream *u = NULL;
    keel__gen_init_begin("up", 1);
    json_t *bad_url = json_pack("{s:s}", "url", "ftp://x");
    json_t *bad_timeout = json_pack("{s:s,s:i}", "url", "http://x", "timeout_ms", 0);
    json_t *bad_token = json_pack("{s:s,s:i}", "url", "http://x", "token_env", 5);
    json_t *good = json_pack("{s:s,s:s}", "url", "http://127.0.0.1:9/base/", "token_env",
                             "KEEL_TEST_SURELY_UNSET_TOKEN");
    assert_int_equal(keel__host_upstream_add("u", bad_url, &u), KEEL_ECONFIG);
    assert_int_equal(keel__host_upstream_add("u", bad_timeout, &u), KEEL_ECONFIG);
    assert_int_equal(keel__host_upstream_add("u", bad_token, &u), KEEL_ECONFIG);
    assert_int_equal(keel__host_upstream_add("bad name", good, &u), KEEL_EINVAL);
    assert_int_equal(keel__host_upstream_add("u", good, &u), 0);
    assert_non_null(u);
    assert_false(keel__host_upstream_open(u));
    json_t *d = keel__upstream_describe(u);
    assert_string_equal(json_string_value(json_object_get(d, "url")), "http://127.0.0.1:9/base");
    assert_string_equal(json_string_value(json_object_get(d, "breaker")), "closed");
    json_decref(d);
    keel__gen_free(keel__gen_init_end(true)); /* frees the upstream too */
    json_decref(bad_url);
    json_decref(bad_timeout);
    json_decref(bad_token);
    json_decref(good);
}

static void test_breaker_refusing_does_not_claim_the_probe(void **state)
{
    (void)state;
    keel__breaker *b = keel__breaker_new(1, 1000);
    assert_false(keel__breaker_refusing(b, 0));
    keel__breaker_failure(b, 0);
    assert_true(keel__breaker_refusing(b, 500));
    assert_false(keel__breaker_refusing(b, 1000)); /* due: a call would probe */
    assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_OPEN);
    assert_true(keel__breaker_allow(b, 1000)); /* the probe is still there to take */
    assert_true(keel__breaker_refusing(b, 1001));
    keel__breaker_free(b);
}

int main(void)
{
    keel__log_set_level(KEEL_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registration_only_during_init),
        cmocka_unit_test(test_task_names_and_duplicates),
        cmocka_unit_test(test_failed_init_drops_what_it_registered),
        cmocka_unit_test(test_notified_task_runs_and_stops_when_asked),
        cmocka_unit_test(test_metric_names_belong_to_the_plugin),
        cmocka_unit_test(test_metrics_render_consistently),
        cmocka_unit_test(test_upstream_config_is_checked),
        cmocka_unit_test(test_breaker_refusing_does_not_claim_the_probe),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    keel__plugin_metrics_free();
    return rc;
}
