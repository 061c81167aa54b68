/* The supervisor's merges of the workers' answers (core/process/merge.c). */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "process/merge.h"

static void metrics_sum_max_min(void **state)
{
    (void)state;
    const char *a = "# HELP keel_requests_in_flight x\n# TYPE keel_requests_in_flight gauge\n"
                    "keel_requests_in_flight 2\n"
                    "# HELP keel_plugin_up y\n# TYPE keel_plugin_up gauge\n"
                    "keel_plugin_up{plugin=\"a\"} 1\n"
                    "# HELP keel_reloads_total z\n# TYPE keel_reloads_total counter\n"
                    "keel_reloads_total{result=\"ok\"} 3\n"
                    "# HELP keel_http_request_duration_seconds h\n"
                    "# TYPE keel_http_request_duration_seconds histogram\n"
                    "keel_http_request_duration_seconds_sum{route=\"/x\"} 0.25\n";
    const char *b = "# HELP keel_requests_in_flight x\n# TYPE keel_requests_in_flight gauge\n"
                    "keel_requests_in_flight 5\n"
                    "# HELP keel_plugin_up y\n# TYPE keel_plugin_up gauge\n"
                    "keel_plugin_up{plugin=\"a\"} 0\n"
                    "keel_plugin_up{plugin=\"b\"} 1\n"
                    "# HELP keel_reloads_total z\n# TYPE keel_reloads_total counter\n"
                    "keel_reloads_total{result=\"ok\"} 3\n"
                    "# HELP keel_http_request_duration_seconds h\n"
                    "# TYPE keel_http_request_duration_seconds histogram\n"
                    "keel_http_request_duration_seconds_sum{route=\"/x\"} 0.5\n";
    const char *parts[] = {a, b};
    char *m = keel__merge_metrics(parts, 2);
    assert_non_null(m);
    assert_non_null(strstr(m, "keel_requests_in_flight 7\n"));
    assert_non_null(strstr(m, "keel_plugin_up{plugin=\"a\"} 0\n"));
    assert_non_null(strstr(m, "keel_plugin_up{plugin=\"b\"} 1\n"));
    assert_non_null(strstr(m, "keel_reloads_total{result=\"ok\"} 3\n"));
    assert_non_null(
        strstr(m, "keel_http_request_duration_seconds_sum{route=\"/x\"} 0.750000000\n"));
    /* HELP and TYPE once per family, samples right after them. */
    const char *help = strstr(m, "# HELP keel_plugin_up");
    assert_non_null(help);
    assert_null(strstr(help + 1, "# HELP keel_plugin_up"));
    assert_true(strstr(m, "keel_plugin_up{plugin=\"b\"}") < strstr(m, "# HELP keel_reloads_total"));
    free(m);
}

static void describe_worst_state_and_sums(void **state)
{
    (void)state;
    json_t *a = json_loads("{\"plugins\":[{\"name\":\"p\",\"state\":\"loaded\",\"requests\":2,"
                           "\"in_flight\":1},{\"name\":\"q\",\"state\":\"loaded\",\"requests\":1,"
                           "\"in_flight\":0}]}",
                           0, NULL);
    json_t *b = json_loads("{\"plugins\":[{\"name\":\"p\",\"state\":\"fallback\",\"reason\":"
                           "\"init_failed\",\"requests\":3,\"in_flight\":0},{\"name\":\"q\","
                           "\"state\":\"loaded\",\"requests\":4,\"in_flight\":2}]}",
                           0, NULL);
    json_t *parts[] = {a, b, NULL};
    json_t *d = keel__merge_describe(parts, 3);
    json_t *p = json_array_get(json_object_get(d, "plugins"), 0);
    json_t *q = json_array_get(json_object_get(d, "plugins"), 1);
    assert_string_equal(json_string_value(json_object_get(p, "state")), "fallback");
    assert_string_equal(json_string_value(json_object_get(p, "reason")), "init_failed");
    assert_int_equal(json_integer_value(json_object_get(p, "requests")), 5);
    assert_int_equal(json_integer_value(json_object_get(q, "in_flight")), 2);
    assert_int_equal(json_integer_value(json_object_get(q, "requests")), 5);
    json_decref(d);
    json_decref(a);
    json_decref(b);
}

static void reload_ok_only_everywhere(void **state)
{
    (void)state;
    json_t *a = json_loads("{\"ok\":true,\"results\":[{\"plugin\":\"p\",\"ok\":true,\"stage\":"
                           "\"commit\"}]}",
                           0, NULL);
    json_t *b = json_loads("{\"ok\":false,\"results\":[{\"plugin\":\"p\",\"ok\":false,\"stage\":"
                           "\"init\",\"error\":\"boom\"}]}",
                           0, NULL);
    json_t *parts[] = {a, b};
    json_t *r = keel__merge_reload(parts, 2);
    assert_false(json_is_true(json_object_get(r, "ok")));
    json_t *p = json_array_get(json_object_get(r, "results"), 0);
    assert_false(json_is_true(json_object_get(p, "ok")));
    assert_string_equal(json_string_value(json_object_get(p, "stage")), "init");
    json_decref(r);
    json_t *u = json_loads("{\"ok\":false,\"unknown\":true,\"results\":[]}", 0, NULL);
    json_t *parts2[] = {a, u};
    r = keel__merge_reload(parts2, 2);
    assert_true(json_is_true(json_object_get(r, "unknown")));
    json_decref(r);
    json_decref(u);
    json_decref(a);
    json_decref(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(metrics_sum_max_min),
        cmocka_unit_test(describe_worst_state_and_sums),
        cmocka_unit_test(reload_ok_only_everywhere),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
