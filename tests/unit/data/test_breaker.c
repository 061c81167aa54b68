/* Unit tests for core/data/breaker.c.  Time is passed explicitly, so nothing
 * here sleeps or depends on how fast the machine is. */
#include "config.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "data/breaker.h"
#include "util/log.h"

#define THRESHOLD 3
#define OPEN_MS 1000

static int setup(void **state)
{
    keel__log_set_level(KEEL_LOG_ERROR);
    keel__breaker *b = keel__breaker_new(THRESHOLD, OPEN_MS);
    assert_non_null(b);
    *state = b;
    return 0;
}

static int teardown(void **state)
{
    keel__breaker_free(*state);
    return 0;
}

/* Drives a fresh breaker into the open state at time t. */
static void open_at(keel__breaker *b, int64_t t)
{
    for (int i = 0; i < THRESHOLD; i++)
        keel__breaker_failure(b, t);
    assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_OPEN);
}

static void test_starts_closed(void **state)
{
    keel__breaker *b = *state;
    assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_CLOSED);
    assert_true(keel__breaker_allow(b, 0));
    assert_false(keel__breaker_try_probe(b, 0));
    for (int s = 0; s < 3; s++)
        assert_int_equal(keel__breaker_transitions(b, s), 0);
}

static void test_opens_after_threshold(void **state)
{
    keel__breaker *b = *state;
    for (int i = 0; i < THRESHOLD - 1; i++) {
        keel__breaker_failure(b, 100);
        assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_CLOSED);
        assert_true(keel__breaker_allow(b, 100));
    }
    keel__breaker_failure(b, 100);
    assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_OPEN);
    assert_false(keel__breaker_allow(b, 100));
    assert_int_equal(keel__breaker_transitions(b, KEEL__BREAKER_OPEN), 1);
}

static void test_success_resets_run(void **state)
{
    keel__breaker *b = *state;
    /* Failures that are not consecutive never open it. */
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < THRESHOLD - 1; i++)
            keel__breaker_failure(b, 100);
        keel__breaker_success(b);
    }
    assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_CLOSED);
    assert_int_equal(keel__breaker_transitions(b, KEEL__BREAKER_OPEN), 0);
    /* And after the reset it takes the full threshold again. */
    for (int i = 0; i < THRESHOLD - 1; i++)
        keel__breaker_failure(b, 100);
    assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_CLOSED);
    keel__breaker_failure(b, 100);
    assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_OPEN);
}

static void test_open_refuses_until_open_ms(void **state)
{
    keel__breaker *b = *state;
    open_at(b, 5000);
    assert_false(keel__breaker_allow(b, 5000));
    assert_false(keel__breaker_allow(b, 5000 + OPEN_MS / 2));
    assert_false(keel__breaker_allow(b, 5000 + OPEN_MS - 1));
    assert_false(keel__breaker_try_probe(b, 5000 + OPEN_MS - 1));
    assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_OPEN);
    /* Further failures while open do not push the deadline out. */
    keel__breaker_failure(b, 5000 + OPEN_MS - 1);
    assert_true(keel__breaker_allow(b, 5000 + OPEN_MS));
    assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_HALF_OPEN);
}

static void test_success_while_open_is_ignored(void **state)
{
    keel__breaker *b = *state;
    open_at(b, 0);
    keel__breaker_success(b);
    assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_OPEN);
    assert_false(keel__breaker_allow(b, 1));
}

static void test_single_probe_sequential(void **state)
{
    keel__breaker *b = *state;
    open_at(b, 0);
    assert_true(keel__breaker_allow(b, OPEN_MS));
    for (int i = 0; i < 100; i++) {
        assert_false(keel__breaker_allow(b, OPEN_MS + i));
        assert_false(keel__breaker_try_probe(b, OPEN_MS + i));
    }
    assert_int_equal(keel__breaker_transitions(b, KEEL__BREAKER_HALF_OPEN), 1);
}

struct race {
    keel__breaker *b;
    pthread_barrier_t *start;
    int64_t now;
    int use_try_probe;
    int won;
};

static void *race_thread(void *arg)
{
    struct race *r = arg;
    pthread_barrier_wait(r->start);
    /* Each thread asks many times so that the race is actually contended
     * rather than decided by which thread was created first. */
    for (int i = 0; i < 1000; i++) {
        bool ok = r->use_try_probe ? keel__breaker_try_probe(r->b, r->now)
                                   : keel__breaker_allow(r->b, r->now);
        if (ok)
            r->won++;
    }
    return NULL;
}

static int run_race(keel__breaker *b, int64_t now, int use_try_probe)
{
    enum { N = 16 };
    pthread_t tid[N];
    struct race r[N];
    pthread_barrier_t start;
    assert_int_equal(pthread_barrier_init(&start, NULL, N), 0);
    for (int i = 0; i < N; i++) {
        r[i] = (struct race){.b = b, .start = &start, .now = now, .use_try_probe = use_try_probe};
        assert_int_equal(pthread_create(&tid[i], NULL, race_thread, &r[i]), 0);
    }
    int winners = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(pthread_join(tid[i], NULL), 0);
        winners += r[i].won;
    }
    pthread_barrier_destroy(&start);
    return winners;
}

static void test_single_probe_many_threads(void **state)
{
    keel__breaker *b = *state;
    for (int round = 0; round < 50; round++) {
        int64_t t = (int64_t)round * 10 * OPEN_MS;
        open_at(b, t);
        assert_int_equal(run_race(b, t + OPEN_MS, round & 1), 1);
        assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_HALF_OPEN);
        /* Put it back to closed for the next round. */
        keel__breaker_success(b);
        assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_CLOSED);
    }
    assert_int_equal(keel__breaker_transitions(b, KEEL__BREAKER_HALF_OPEN), 50);
}

static void test_probe_success_closes(void **state)
{
    keel__breaker *b = *state;
    open_at(b, 0);
    assert_true(keel__breaker_allow(b, OPEN_MS));
    keel__breaker_success(b);
    assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_CLOSED);
    assert_true(keel__breaker_allow(b, OPEN_MS));
    assert_true(keel__breaker_allow(b, OPEN_MS));
    /* The failure run starts again from zero after closing. */
    for (int i = 0; i < THRESHOLD - 1; i++)
        keel__breaker_failure(b, OPEN_MS);
    assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_CLOSED);
}

static void test_probe_failure_reopens(void **state)
{
    keel__breaker *b = *state;
    open_at(b, 0);
    assert_true(keel__breaker_allow(b, OPEN_MS));
    /* One failure in half-open is enough; it does not wait for a run. */
    keel__breaker_failure(b, OPEN_MS + 10);
    assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_OPEN);
    /* A fresh open period counted from the probe's failure. */
    assert_false(keel__breaker_allow(b, OPEN_MS + 10 + OPEN_MS - 1));
    assert_true(keel__breaker_allow(b, OPEN_MS + 10 + OPEN_MS));
    assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_HALF_OPEN);
}

static void test_lost_probe_is_replaced(void **state)
{
    keel__breaker *b = *state;
    open_at(b, 0);
    assert_true(keel__breaker_allow(b, OPEN_MS));
    /* The probe's owner never reports.  Within open_ms nobody else gets in;
     * after it, exactly one more probe is let through. */
    assert_false(keel__breaker_allow(b, 2 * OPEN_MS - 1));
    assert_true(keel__breaker_try_probe(b, 2 * OPEN_MS));
    assert_false(keel__breaker_allow(b, 2 * OPEN_MS));
    assert_int_equal(keel__breaker_transitions(b, KEEL__BREAKER_HALF_OPEN), 2);
}

static void test_transition_counters(void **state)
{
    keel__breaker *b = *state;
    int64_t t = 0;
    /* open -> half_open -> open -> half_open -> closed, twice over. */
    for (int cycle = 0; cycle < 2; cycle++) {
        open_at(b, t);
        t += OPEN_MS;
        assert_true(keel__breaker_allow(b, t));
        keel__breaker_failure(b, t);
        t += OPEN_MS;
        assert_true(keel__breaker_allow(b, t));
        keel__breaker_success(b);
    }
    assert_int_equal(keel__breaker_transitions(b, KEEL__BREAKER_OPEN), 4);
    assert_int_equal(keel__breaker_transitions(b, KEEL__BREAKER_HALF_OPEN), 4);
    assert_int_equal(keel__breaker_transitions(b, KEEL__BREAKER_CLOSED), 2);
    assert_int_equal(keel__breaker_transitions(b, 7), 0);
    assert_int_equal(keel__breaker_transitions(b, -1), 0);
}

static void test_state_names(void **state)
{
    (void)state;
    assert_string_equal(keel__breaker_state_name(KEEL__BREAKER_CLOSED), "closed");
    assert_string_equal(keel__breaker_state_name(KEEL__BREAKER_OPEN), "open");
    assert_string_equal(keel__breaker_state_name(KEEL__BREAKER_HALF_OPEN), "half_open");
    assert_string_equal(keel__breaker_state_name(42), "unknown");
}

static void test_degenerate_config(void **state)
{
    (void)state;
    /* A threshold below one still means "open on the first failure", and a
     * zero open period makes the very next call the probe. */
    keel__breaker *b = keel__breaker_new(0, 0);
    assert_non_null(b);
    keel__breaker_failure(b, 50);
    assert_int_equal(keel__breaker_state(b), KEEL__BREAKER_OPEN);
    assert_true(keel__breaker_allow(b, 50));
    assert_false(keel__breaker_allow(b, 49));
    keel__breaker_free(b);
}

static void test_now_ms_monotonic(void **state)
{
    (void)state;
    int64_t a = keel__now_ms();
    int64_t c = keel__now_ms();
    assert_true(a >= 0);
    assert_true(c >= a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_starts_closed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_opens_after_threshold, setup, teardown),
        cmocka_unit_test_setup_teardown(test_success_resets_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_refuses_until_open_ms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_success_while_open_is_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_single_probe_sequential, setup, teardown),
        cmocka_unit_test_setup_teardown(test_single_probe_many_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_success_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_failure_reopens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_probe_is_replaced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transition_counters, setup, teardown),
        cmocka_unit_test(test_state_names),
        cmocka_unit_test(test_degenerate_config),
        cmocka_unit_test(test_now_ms_monotonic),
    };
    return cmocka_run_group_tests_name("breaker", tests, NULL, NULL);
}
