/*
 * Unit tests for core/http/accesslog.c: the per-thread buffers lose,
 * duplicate and tear no line, whether lines leave by a full buffer, by the
 * flusher, by a thread's exit, by a reopen (log rotation) or by close.
 * Waits are bounded by attempts; nothing asserts how fast.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "http/accesslog.h"
#include "http/request.h"

#define WRITERS 4
#define LINES 3000
#define ROTATIONS 5

static char dir[64];

static void path_of(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", dir, name);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/keel-accesslog-XXXXXX");
    return mkdtemp(dir) != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Appends the file's bytes to *all (grown with realloc). */
static void slurp(const char *path, char **all, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return;
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        *all = realloc(*all, *len + n + 1);
        assert_non_null(*all);
        memcpy(*all + *len, chunk, n);
        *len += n;
        (*all)[*len] = '\0';
    }
    fclose(f);
}

/* Line j of writer t: its number, then padding of a length that varies so
 * that lines straddle buffer boundaries at every offset. */
static size_t make_line(char *buf, size_t size, int t, int j)
{
    int pad = (j * 37 + t * 11) % 200;
    int n =
        snprintf(buf, size, "w%d l%d %.*s end\n", t, j, pad,
                 "................................................................................"
                 "................................................................................"
                 "........................................");
    return (size_t)n;
}

static void *writer(void *arg)
{
    int t = (int)(intptr_t)arg;
    char line[512];
    for (int j = 0; j < LINES; j++)
        keel__access_log_line(line, make_line(line, sizeof line, t, j));
    /* Ending the thread writes what is left in its buffer. */
    return NULL;
}

static void test_rotation_under_load_loses_nothing(void **state)
{
    (void)state;
    char live[128];
    path_of(live, sizeof live, "access.log");
    assert_int_equal(keel__access_log_open(live, false), 0);

    pthread_t th[WRITERS];
    for (int t = 0; t < WRITERS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, writer, (void *)(intptr_t)t), 0);
    /* logrotate's way: rename, then ask for a reopen. */
    for (int r = 0; r < ROTATIONS; r++) {
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
        char old[128], name[32];
        snprintf(name, sizeof name, "access.log.%d", r);
        path_of(old, sizeof old, name);
        assert_int_equal(rename(live, old), 0);
        keel__access_log_reopen();
    }
    for (int t = 0; t < WRITERS; t++)
        pthread_join(th[t], NULL);
    keel__access_log_close();

    char *all = NULL;
    size_t len = 0;
    for (int r = 0; r < ROTATIONS; r++) {
        char old[128], name[32];
        snprintf(name, sizeof name, "access.log.%d", r);
        path_of(old, sizeof old, name);
        slurp(old, &all, &len);
    }
    slurp(live, &all, &len);
    assert_non_null(all);

    /* Every line whole and present once: count each writer's lines, which
     * must come in order within the writer (a thread's buffer is written
     * in order). */
    int next[WRITERS] = {0};
    char expect[512];
    char *p = all;
    size_t lines = 0;
    while (*p != '\0') {
        char *nl = strchr(p, '\n');
        assert_non_null(nl);
        int t = -1, j = -1;
        assert_int_equal(sscanf(p, "w%d l%d ", &t, &j), 2);
        assert_true(t >= 0 && t < WRITERS);
        size_t n = make_line(expect, sizeof expect, t, j);
        assert_int_equal((size_t)(nl + 1 - p), n);
        assert_memory_equal(p, expect, n);
        /* Lines of one writer may sit in two files; within the
         * concatenation of the files in rotation order they stay ordered. */
        assert_int_equal(j, next[t]);
        next[t]++;
        lines++;
        p = nl + 1;
    }
    assert_int_equal(lines, (size_t)WRITERS * LINES);
    free(all);
}

static void test_flusher_writes_without_close(void **state)
{
    (void)state;
    char path[128];
    path_of(path, sizeof path, "flusher.log");
    assert_int_equal(keel__access_log_open(path, false), 0);
    const char line[] = "one line\n";
    keel__access_log_line(line, sizeof line - 1);
    /* This thread stays alive and its buffer is far from full: only the
     * flusher can write the line.  Up to 10 s, far past its 100 ms. */
    struct stat st = {0};
    for (int i = 0; i < 1000 && (stat(path, &st) != 0 || st.st_size == 0); i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(st.st_size, (off_t)(sizeof line - 1));
    keel__access_log_close();
    /* Closed: lines go nowhere and nothing breaks. */
    keel__access_log_line(line, sizeof line - 1);
    keel__access_log_flush();
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, (off_t)(sizeof line - 1));
}

static void test_long_line_keeps_order(void **state)
{
    (void)state;
    char path[128];
    path_of(path, sizeof path, "long.log");
    assert_int_equal(keel__access_log_open(path, false), 0);
    size_t big_len = 3 * KEEL__ACCESSLOG_BUFFER;
    char *big = malloc(big_len);
    assert_non_null(big);
    memset(big, 'x', big_len - 1);
    big[big_len - 1] = '\n';
    keel__access_log_line("first\n", 6);
    keel__access_log_line(big, big_len);
    keel__access_log_line("last\n", 5);
    keel__access_log_close();
    char *all = NULL;
    size_t len = 0;
    slurp(path, &all, &len);
    assert_int_equal(len, 6 + big_len + 5);
    assert_memory_equal(all, "first\n", 6);
    assert_memory_equal(all + 6, big, big_len);
    assert_memory_equal(all + 6 + big_len, "last\n", 5);
    free(all);
    free(big);
}

/* Request lines (keel__access_log), formatted in place in the thread's
 * buffer, in order and whole across many buffers; a line longer than a
 * buffer takes the separate path and still lands between its neighbours. */
static void test_request_lines_in_order(void **state)
{
    (void)state;
    char path[128];
    path_of(path, sizeof path, "requests.log");
    assert_int_equal(keel__access_log_open(path, false), 0);
    enum { N = 1200, LONG_EVERY = 300 };
    size_t long_len = KEEL__ACCESSLOG_BUFFER + 100;
    char *target = malloc(long_len + 64);
    assert_non_null(target);
    for (int i = 0; i < N; i++) {
        size_t pad = i % LONG_EVERY == LONG_EVERY - 1 ? long_len : (size_t)(i * 7) % 90;
        int n = snprintf(target, 64, "/p/%d/", i);
        memset(target + n, 'a' + i % 26, pad);
        target[n + pad] = '\0';
        keel_request *req = keel__request_new(NULL, 0, "GET", target);
        assert_non_null(req);
        keel__access_log(req, 200 + i % 300, req->start_ns + 1234567, "main");
        keel__request_free(req);
    }
    keel__access_log_close();
    char *all = NULL;
    size_t len = 0;
    slurp(path, &all, &len);
    char *line = all;
    for (int i = 0; i < N; i++) {
        char *end = strchr(line, '\n');
        assert_non_null(end);
        *end = '\0';
        size_t pad = i % LONG_EVERY == LONG_EVERY - 1 ? long_len : (size_t)(i * 7) % 90;
        char want[64];
        snprintf(want, sizeof want, " main GET /p/%d/", i);
        char *at = strstr(line, want);
        if (at == NULL)
            fail_msg("line %d is not request %d: %.80s", i, i, line);
        char *p = at + strlen(want);
        for (size_t k = 0; k < pad; k++)
            if (p[k] != 'a' + i % 26)
                fail_msg("line %d: path byte %zu is '%c'", i, k, p[k]);
        snprintf(want, sizeof want, " %03d 1.235ms plugin=- gen=0 user=- client=- rid=-",
                 200 + i % 300);
        assert_string_equal(p + pad, want);
        line = end + 1;
    }
    assert_ptr_equal(line, all + len);
    free(all);
    free(target);
}

static void test_off_and_unopenable(void **state)
{
    (void)state;
    assert_int_equal(keel__access_log_open("off", false), 0);
    keel__access_log_line("x\n", 2);
    keel__access_log_reopen();
    keel__access_log_close();
    char path[160];
    path_of(path, sizeof path, "no-such-dir/access.log");
    assert_true(keel__access_log_open(path, false) < 0);
    keel__access_log_line("x\n", 2);
    keel__access_log_close();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rotation_under_load_loses_nothing),
        cmocka_unit_test(test_flusher_writes_without_close),
        cmocka_unit_test(test_long_line_keeps_order),
        cmocka_unit_test(test_request_lines_in_order),
        cmocka_unit_test(test_off_and_unopenable),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
