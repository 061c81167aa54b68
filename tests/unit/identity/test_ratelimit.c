/* Unit tests for core/identity/ratelimit.c.  Time is passed explicitly (nanoseconds),
 * so nothing here sleeps or depends on how fast the machine is. */
#include "config.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <keel/error.h>

#include "identity/ratelimit.h"

#define S 1000000000LL
#define MS 1000000LL

#define ALICE "0b9f6a5e-3c41-4f0e-9d7a-2a6f1c8e4b21"
#define BOB "7d3c2b1a-9e8f-4a6b-8c5d-1e2f3a4b5c6d"

static keel__ratelimit *make(unsigned rate, unsigned burst, size_t max_keys)
{
    struct keel__ratelimit_conf c = {.rate = rate, .burst = burst, .max_keys = max_keys};
    keel__ratelimit *rl = NULL;
    assert_int_equal(keel__ratelimit_new(&c, &rl), 0);
    assert_non_null(rl);
    return rl;
}

/* Takes n tokens at time t and returns how many were granted. */
static int take_n(keel__ratelimit *rl, const char *key, int64_t t, int n)
{
    int ok = 0;
    for (int i = 0; i < n; i++) {
        unsigned ra;
        if (keel__ratelimit_take(rl, key, t, &ra) == 0)
            ok++;
    }
    return ok;
}

static void test_rate_zero_is_refused(void **state)
{
    (void)state;
    struct keel__ratelimit_conf c = {.rate = 0, .burst = 5};
    keel__ratelimit *rl = (keel__ratelimit *)1;
    assert_int_equal(keel__ratelimit_new(&c, &rl), KEEL_EINVAL);
    assert_null(rl);
}

static void test_burst_then_refused_with_retry_after(void **state)
{
    (void)state;
    keel__ratelimit *rl = make(10, 5, 0);
    int64_t t = 1000 * S;
    assert_int_equal(take_n(rl, ALICE, t, 5), 5);
    unsigned ra = 0;
    assert_int_equal(keel__ratelimit_take(rl, ALICE, t, &ra), KEEL_EBUSY);
    /* A token is back 100 ms later; Retry-After is whole seconds, at least 1. */
    assert_int_equal(ra, 1);
    /* Exactly one token after one interval, not more. */
    assert_int_equal(take_n(rl, ALICE, t + 100 * MS, 3), 1);
    keel__ratelimit_free(rl);
}

static void test_burst_defaults_to_rate(void **state)
{
    (void)state;
    keel__ratelimit *rl = make(3, 0, 0);
    assert_int_equal(take_n(rl, ALICE, 5 * S, 10), 3);
    keel__ratelimit_free(rl);
}

static void test_refill_never_exceeds_burst(void **state)
{
    (void)state;
    keel__ratelimit *rl = make(2, 4, 0);
    int64_t t = 50 * S;
    assert_int_equal(take_n(rl, ALICE, t, 4), 4);
    /* An hour of silence refills to the burst, not to 7200 tokens. */
    assert_int_equal(take_n(rl, ALICE, t + 3600 * S, 100), 4);
    keel__ratelimit_free(rl);
}

static void test_sustained_rate_is_held(void **state)
{
    (void)state;
    keel__ratelimit *rl = make(5, 1, 0);
    /* Ten requests a second for ten seconds: half of them pass. */
    int granted = 0;
    int64_t t0 = 10 * S;
    for (int i = 0; i < 100; i++)
        granted += take_n(rl, ALICE, t0 + i * 100 * MS, 1);
    assert_int_equal(granted, 50);
    keel__ratelimit_free(rl);
}

static void test_retry_after_is_whole_seconds_rounded_up(void **state)
{
    (void)state;
    /* One token a second, no burst. */
    keel__ratelimit *rl = make(1, 1, 0);
    int64_t t = 7 * S;
    unsigned ra = 99;
    assert_int_equal(keel__ratelimit_take(rl, ALICE, t, &ra), 0);
    assert_int_equal(ra, 0);
    assert_int_equal(keel__ratelimit_take(rl, ALICE, t, &ra), KEEL_EBUSY);
    assert_int_equal(ra, 1);
    assert_int_equal(keel__ratelimit_take(rl, ALICE, t + 999 * MS, &ra), KEEL_EBUSY);
    assert_int_equal(ra, 1);
    assert_int_equal(keel__ratelimit_take(rl, ALICE, t + S, &ra), 0);
    keel__ratelimit_free(rl);

    /* A slow rate: 1 per second with the bucket drained by a burst of 3
     * means the third refused request waits a whole second, not 0. */
    rl = make(1, 3, 0);
    assert_int_equal(take_n(rl, BOB, t, 3), 3);
    assert_int_equal(keel__ratelimit_take(rl, BOB, t + 1, &ra), KEEL_EBUSY);
    assert_int_equal(ra, 1);
    keel__ratelimit_free(rl);
}

static void test_other_users_are_unaffected(void **state)
{
    (void)state;
    keel__ratelimit *rl = make(1, 2, 0);
    int64_t t = 3 * S;
    assert_int_equal(take_n(rl, ALICE, t, 50), 2);
    assert_int_equal(take_n(rl, BOB, t, 2), 2);
    unsigned ra;
    assert_int_equal(keel__ratelimit_take(rl, BOB, t, &ra), KEEL_EBUSY);
    keel__ratelimit_free(rl);
}

static void test_bad_keys(void **state)
{
    (void)state;
    keel__ratelimit *rl = make(1, 1, 0);
    unsigned ra = 7;
    char longkey[KEEL__RATELIMIT_MAX_KEY + 2];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    assert_int_equal(keel__ratelimit_take(rl, "", 0, &ra), KEEL_EINVAL);
    assert_int_equal(keel__ratelimit_take(rl, NULL, 0, &ra), KEEL_EINVAL);
    assert_int_equal(keel__ratelimit_take(rl, longkey, 0, &ra), KEEL_EINVAL);
    assert_int_equal(ra, 0);
    /* The longest allowed key works. */
    longkey[KEEL__RATELIMIT_MAX_KEY] = '\0';
    assert_int_equal(keel__ratelimit_take(rl, longkey, 0, &ra), 0);
    assert_int_equal(keel__ratelimit_size(rl), 1);
    keel__ratelimit_free(rl);
}

static void test_clock_going_back_grants_nothing_extra(void **state)
{
    (void)state;
    keel__ratelimit *rl = make(1, 2, 0);
    assert_int_equal(take_n(rl, ALICE, 100 * S, 2), 2);
    assert_int_equal(take_n(rl, ALICE, 90 * S, 5), 0);
    assert_int_equal(take_n(rl, ALICE, 101 * S, 5), 1);
    keel__ratelimit_free(rl);
}

static void test_size_is_bounded_and_lru_is_evicted(void **state)
{
    (void)state;
    /* 16 keys fit in one shard, so the LRU order is exact. */
    keel__ratelimit *rl = make(1, 1, 16);
    int64_t t = 20 * S;
    char key[32];
    for (int i = 0; i < 16; i++) {
        snprintf(key, sizeof key, "user-%02d", i);
        assert_int_equal(take_n(rl, key, t, 1), 1);
    }
    assert_int_equal(keel__ratelimit_size(rl), 16);
    /* user-00 is used again (and refused), so user-01 is now the oldest. */
    assert_int_equal(take_n(rl, "user-00", t, 1), 0);
    assert_int_equal(take_n(rl, "newcomer", t, 1), 1);
    assert_int_equal(keel__ratelimit_size(rl), 16);
    /* user-01 was dropped: it starts again with a full bucket. */
    assert_int_equal(take_n(rl, "user-01", t, 1), 1);
    /* user-00 was kept: still empty. */
    assert_int_equal(take_n(rl, "user-00", t, 1), 0);
    assert_int_equal(keel__ratelimit_size(rl), 16);

    /* Many more keys than the bound never grow the table past it. */
    keel__ratelimit_free(rl);
    rl = make(1, 1, 1000);
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        take_n(rl, key, t, 1);
    }
    assert_true(keel__ratelimit_size(rl) <= 1000);
    assert_true(keel__ratelimit_size(rl) >= 900);
    keel__ratelimit_free(rl);
}

/* ------------------------------------------------------------ threads */

struct race {
    keel__ratelimit *rl;
    atomic_int granted;
    const char *key;
};

static void *racer(void *arg)
{
    struct race *r = arg;
    for (int i = 0; i < 5000; i++) {
        unsigned ra;
        if (keel__ratelimit_take(r->rl, r->key, 42 * S, &ra) == 0)
            atomic_fetch_add(&r->granted, 1);
    }
    return NULL;
}

static void test_concurrent_takes_grant_exactly_the_burst(void **state)
{
    (void)state;
    struct race r = {.rl = make(1, 100, 0), .key = ALICE};
    atomic_init(&r.granted, 0);
    pthread_t th[8];
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&th[i], NULL, racer, &r), 0);
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&r.granted), 100);
    keel__ratelimit_free(r.rl);
}

static keel__ratelimit *make_shared(unsigned rate, unsigned burst)
{
    struct keel__ratelimit_conf c = {.rate = rate, .burst = burst, .max_keys = 1024};
    keel__ratelimit *rl = NULL;
    assert_int_equal(keel__ratelimit_new_shared(&c, &rl), 0);
    assert_non_null(rl);
    return rl;
}

/* The shared table: the same GCRA answers, and racing threads still get
 * exactly the burst. */
static void test_shared_burst_refill_and_races(void **state)
{
    (void)state;
    keel__ratelimit *rl = make_shared(10, 5);
    int64_t t = 1000 * S;
    assert_int_equal(take_n(rl, ALICE, t, 5), 5);
    unsigned ra = 0;
    assert_int_equal(keel__ratelimit_take(rl, ALICE, t, &ra), KEEL_EBUSY);
    assert_int_equal(ra, 1);
    assert_int_equal(take_n(rl, ALICE, t + 100 * MS, 3), 1);
    assert_int_equal(take_n(rl, BOB, t, 5), 5);
    assert_int_equal(keel__ratelimit_size(rl), 2);
    keel__ratelimit_free(rl);

    struct race r = {.rl = make_shared(1, 100), .key = ALICE};
    atomic_init(&r.granted, 0);
    pthread_t th[8];
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&th[i], NULL, racer, &r), 0);
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&r.granted), 100);
    keel__ratelimit_free(r.rl);
}

/* What a forked process takes is gone for the parent: one budget for the
 * whole server. */
static void test_shared_across_fork(void **state)
{
    (void)state;
    keel__ratelimit *rl = make_shared(1, 4);
    int64_t t = 50 * S;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int took = take_n(rl, ALICE, t, 3);
        /* Unmaps the child's view only; the parent's stays. */
        keel__ratelimit_free(rl);
        _exit(took == 3 ? 0 : 1);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(take_n(rl, ALICE, t, 4), 1);
    keel__ratelimit_free(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_zero_is_refused),
        cmocka_unit_test(test_burst_then_refused_with_retry_after),
        cmocka_unit_test(test_burst_defaults_to_rate),
        cmocka_unit_test(test_refill_never_exceeds_burst),
        cmocka_unit_test(test_sustained_rate_is_held),
        cmocka_unit_test(test_retry_after_is_whole_seconds_rounded_up),
        cmocka_unit_test(test_other_users_are_unaffected),
        cmocka_unit_test(test_bad_keys),
        cmocka_unit_test(test_clock_going_back_grants_nothing_extra),
        cmocka_unit_test(test_size_is_bounded_and_lru_is_evicted),
        cmocka_unit_test(test_concurrent_takes_grant_exactly_the_burst),
        cmocka_unit_test(test_shared_burst_refill_and_races),
        cmocka_unit_test(test_shared_across_fork),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
