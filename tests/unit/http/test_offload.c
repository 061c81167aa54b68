/*
 * Unit tests for core/http/offload.c: the wait score that decides which
 * routes leave the serving threads, and the pool that runs them.  Loops
 * that wait are bounded by attempts; nothing asserts how fast.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>

#include <keel/error.h>

#include "http/offload.h"
#include "util/blocking.h"

static unsigned run(unsigned v, bool waited, int times)
{
    for (int i = 0; i < times; i++)
        v = keel__offload_score(v, waited);
    return v;
}

static void test_three_waits_in_a_row_turn_it_on(void **state)
{
    (void)state;
    unsigned v = run(0, true, 2);
    assert_false(keel__offload_on(v));
    v = keel__offload_score(v, true);
    assert_true(keel__offload_on(v));
    assert_true(v & KEEL__OFFLOAD_SEEN_BIT);
}

static void test_a_wait_a_second_among_quick_requests_stays_off(void **state)
{
    (void)state;
    /* A cache refreshed once in a while: one wait, then many quick ones. */
    unsigned v = 0;
    for (int round = 0; round < 50; round++) {
        v = keel__offload_score(v, true);
        assert_false(keel__offload_on(v));
        v = run(v, false, 40);
    }
    assert_false(v & KEEL__OFFLOAD_SEEN_BIT);
}

static void test_quick_requests_bring_it_back_with_hysteresis(void **state)
{
    (void)state;
    unsigned v = run(0, true, 30); /* near the top */
    assert_true(keel__offload_on(v));
    int quick = 0;
    while (keel__offload_on(v) && quick < 1000) {
        unsigned s = v & KEEL__OFFLOAD_SCORE_MASK;
        v = keel__offload_score(v, false);
        quick++;
        /* Between OFF and ON it stays where it was. */
        if ((v & KEEL__OFFLOAD_SCORE_MASK) >= KEEL__OFFLOAD_OFF)
            assert_true(keel__offload_on(v));
        assert_true((v & KEEL__OFFLOAD_SCORE_MASK) <= s);
    }
    assert_false(keel__offload_on(v));
    assert_in_range(quick, 17, 40);
    assert_true(v & KEEL__OFFLOAD_SEEN_BIT); /* said once, not again */
    /* One wait from just under OFF does not turn it on again; two do. */
    v = keel__offload_score(v, true);
    assert_false(keel__offload_on(v));
    v = keel__offload_score(v, true);
    assert_true(keel__offload_on(v));
}

static void test_waiting_half_the_time_goes(void **state)
{
    (void)state;
    unsigned v = 0;
    for (int i = 0; i < 40; i++)
        v = keel__offload_score(keel__offload_score(v, true), false);
    assert_true(keel__offload_on(v));
    assert_true((v & KEEL__OFFLOAD_SCORE_MASK) <= 1024);
}

/* ------------------------------------------------------------ the pool */

struct gate {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int started, open, done;
    bool counted; /* the job saw a blocking counter of its own */
};

static void held_job(void *arg)
{
    struct gate *g = arg;
    pthread_mutex_lock(&g->lock);
    g->started++;
    g->counted = keel__blocking_counter != NULL;
    pthread_cond_broadcast(&g->cond);
    while (!g->open)
        pthread_cond_wait(&g->cond, &g->lock);
    g->done++;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

static bool wait_count(struct gate *g, int *field, int want)
{
    bool ok = true;
    pthread_mutex_lock(&g->lock);
    while (*field < want && ok) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 10;
        ok = pthread_cond_timedwait(&g->cond, &g->lock, &until) == 0;
    }
    pthread_mutex_unlock(&g->lock);
    return ok;
}

static void test_pool_runs_jobs_side_by_side(void **state)
{
    (void)state;
    struct gate g = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    keel__offload_init(4);
    /* Three jobs that hold their threads until the gate opens all start:
     * one held job never queues another behind it. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(keel__offload_submit(held_job, &g), 0);
    assert_true(wait_count(&g, &g.started, 3));
    assert_true(g.counted);
    assert_int_equal(keel__offload_pending(), 3);
    assert_int_equal(keel__offload_threads(), 3);
    /* Past the bound (4 threads) jobs queue until a thread is free. */
    assert_int_equal(keel__offload_submit(held_job, &g), 0);
    assert_int_equal(keel__offload_submit(held_job, &g), 0);
    assert_true(wait_count(&g, &g.started, 4));
    assert_int_equal(keel__offload_threads(), 4);
    pthread_mutex_lock(&g.lock);
    assert_int_equal(g.started, 4);
    g.open = 1;
    pthread_cond_broadcast(&g.cond);
    pthread_mutex_unlock(&g.lock);
    assert_true(wait_count(&g, &g.done, 5));
    for (int i = 0; i < 1000 && keel__offload_pending() > 0; i++) {
        struct timespec ts = {0, 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(keel__offload_pending(), 0);
    assert_int_equal(keel__offload_total(), 5);
    assert_int_equal(keel__offload_stop(), 0);
    /* Stopped: nothing is taken. */
    assert_int_equal(keel__offload_submit(held_job, &g), KEEL_ENOMEM);
}

/* A job that says it is finishing (it hands its connection back next),
 * then holds its thread until the gate opens. */
static void finishing_job(void *arg)
{
    keel__offload_finishing();
    held_job(arg);
}

/* A finishing job's thread counts as idle: a job submitted meanwhile (the
 * connection's next request) waits for that thread instead of starting a
 * second one. */
static void test_finishing_thread_takes_the_next_job(void **state)
{
    (void)state;
    struct gate g = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    keel__offload_finishing(); /* not a pool thread: nothing */
    keel__offload_init(4);
    assert_int_equal(keel__offload_submit(finishing_job, &g), 0);
    assert_true(wait_count(&g, &g.started, 1));
    assert_int_equal(keel__offload_submit(held_job, &g), 0);
    assert_int_equal(keel__offload_threads(), 1);
    pthread_mutex_lock(&g.lock);
    g.open = 1;
    pthread_cond_broadcast(&g.cond);
    pthread_mutex_unlock(&g.lock);
    assert_true(wait_count(&g, &g.done, 2));
    assert_int_equal(keel__offload_threads(), 1);
    for (int i = 0; i < 1000 && keel__offload_pending() > 0; i++) {
        struct timespec ts = {0, 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(keel__offload_pending(), 0);
    assert_int_equal(keel__offload_stop(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_three_waits_in_a_row_turn_it_on),
        cmocka_unit_test(test_a_wait_a_second_among_quick_requests_stays_off),
        cmocka_unit_test(test_quick_requests_bring_it_back_with_hysteresis),
        cmocka_unit_test(test_waiting_half_the_time_goes),
        cmocka_unit_test(test_pool_runs_jobs_side_by_side),
        cmocka_unit_test(test_finishing_thread_takes_the_next_job),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
