/*
 * Unit tests for core/plugin/hostapi.c: the host table a plugin gets, driven
 * through the synthetic-request seam.  The database layer is replaced at
 * link time (keel__db_acquire/release/exec and PQclear are wrapped), so the
 * tests see exactly which statements keep a result and when each result is
 * cleared.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include <libpq-fe.h>

#include <keel/error.h>
#include <keel/plugin.h>

#include "data/db.h"
#include "http/request.h"
#include "http/server.h"
#include "plugin/hostapi.h"

/* -------------------------------------------------------- the database seam */

static long pg_live;      /* PGresults made and not yet cleared */
static long pg_kept;      /* statements run with somewhere to put the result */
static long pg_discarded; /* statements run with out == NULL */
static int exec_result;   /* what the next statements return */
static char last_sql[64];
static int fake_db, fake_conn;

int __wrap_keel__db_acquire(keel__db *db, keel__db_conn **out, char *err, size_t errlen);
void __wrap_keel__db_release(keel__db *db, keel__db_conn *conn);
int __wrap_keel__db_exec(keel__db *db, keel__db_conn *conn, const char *sql, int nparams,
                         const char *const *params, PGresult **out, char *err, size_t errlen);
void __real_PQclear(PGresult *res);
void __wrap_PQclear(PGresult *res);

int __wrap_keel__db_acquire(keel__db *db, keel__db_conn **out, char *err, size_t errlen)
{
    (void)db;
    (void)err;
    (void)errlen;
    *out = (keel__db_conn *)&fake_conn;
    return 0;
}

void __wrap_keel__db_release(keel__db *db, keel__db_conn *conn)
{
    (void)db;
    (void)conn;
}

int __wrap_keel__db_exec(keel__db *db, keel__db_conn *conn, const char *sql, int nparams,
                         const char *const *params, PGresult **out, char *err, size_t errlen)
{
    (void)db;
    (void)conn;
    (void)nparams;
    (void)params;
    snprintf(last_sql, sizeof last_sql, "%s", sql);
    if (exec_result != 0) {
        snprintf(err, errlen, "failed on purpose");
        if (out != NULL)
            *out = NULL;
        return exec_result;
    }
    if (out == NULL) {
        /* The real keel__db_exec clears the result before returning. */
        pg_discarded++;
        return 0;
    }
    *out = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    assert_non_null(*out);
    pg_live++;
    pg_kept++;
    return 0;
}

void __wrap_PQclear(PGresult *res)
{
    if (res != NULL)
        pg_live--;
    __real_PQclear(res);
}

/* -------------------------------------------------------- fixture */

static const keel_host *host;

static int setup(void **state)
{
    (void)state;
    host = keel__host_api();
    keel__rt.db = (keel__db *)&fake_db;
    pg_live = pg_kept = pg_discarded = 0;
    exec_result = 0;
    return 0;
}

static keel_request *request(struct keel__synthetic *syn)
{
    memset(syn, 0, sizeof *syn);
    keel_request *req = keel__request_new(NULL, 0, "POST", "/api/v1/x/import");
    assert_non_null(req);
    req->synthetic = syn;
    return req;
}

/* -------------------------------------------------------- the table */

static void test_table_is_complete_and_versioned(void **state)
{
    (void)state;
    assert_int_equal(host->size, sizeof(keel_host));
    assert_int_equal(host->abi_major, KEEL_ABI_MAJOR);
    assert_int_equal(host->abi_minor, KEEL_ABI_MINOR);
    assert_true(KEEL_HOST_HAS(host, db_result_free));
    assert_true(KEEL_HOST_HAS(host, req_query_arg));
    /* Every member is set: a NULL would crash a plugin that trusts its ABI. */
    const void *const *m = (const void *const *)&host->log;
    size_t n = (sizeof(keel_host) - offsetof(keel_host, log)) / sizeof(void *);
    for (size_t i = 0; i < n; i++)
        assert_non_null(m[i]);
}

/* A smaller table (an older host) does not have the 1.1 members. */
static void test_host_has_checks_the_size(void **state)
{
    (void)state;
    keel_host older = *host;
    older.size = (uint32_t)offsetof(keel_host, db_result_free);
    assert_false(KEEL_HOST_HAS(&older, db_result_free));
    assert_true(KEEL_HOST_HAS(&older, db_affected));
}

static void test_respond_checks_status_and_headers(void **state)
{
    (void)state;
    struct keel__synthetic syn;
    keel_request *req = request(&syn);
    assert_int_equal(host->respond_json(req, 99, json_object()), KEEL_EINVAL);
    assert_int_equal(host->respond_error(req, 600, "x"), KEEL_EINVAL);
    assert_int_equal(host->set_header(req, "X-A", "b\r\nX-Evil: 1"), KEEL_EINVAL);
    assert_int_equal(host->set_header(req, "X:A", "b"), KEEL_EINVAL);
    assert_int_equal(host->set_header(req, "X-A", "b"), 0);
    assert_int_equal(syn.responses, 0);
    assert_int_equal(host->respond_error(req, 409, "taken"), 0);
    assert_int_equal(syn.status, 409);
    assert_string_equal(syn.body, "{\"detail\":\"taken\"}");
    keel__request_free(req);
}

/* respond_pack (ABI 1.4) writes what json_pack would have built; a format
 * it cannot write is answered 500 rather than queued half-written. */
static void test_respond_pack(void **state)
{
    (void)state;
    struct keel__synthetic syn;
    keel_request *req = request(&syn);
    assert_int_equal(host->respond_pack(req, 600, "{}"), KEEL_EINVAL);
    assert_int_equal(syn.responses, 0);
    assert_int_equal(host->respond_pack(req, 201, "{s:s, s:s?, s:i, s:[b,n]}", "name",
                                        "caf\xc3\xa9", "email", NULL, "n", 7, "flags", 1),
                     0);
    assert_int_equal(syn.status, 201);
    assert_string_equal(syn.body,
                        "{\"name\":\"caf\xc3\xa9\",\"email\":null,\"n\":7,\"flags\":[true,null]}");
    keel__request_free(req);

    req = request(&syn);
    assert_int_equal(host->respond_pack(req, 200, "{s:s}", "name", NULL), KEEL_EINVAL);
    assert_int_equal(syn.status, 500);
    assert_string_equal(syn.body, "{\"detail\":\"Internal Server Error\"}");
    keel__request_free(req);
}

/* -------------------------------------------------------- results */

struct import {
    int lines;
    bool keep_and_free; /* run each line with a result, then free it */
};

static int import_in_tx(keel_db_tx *tx, void *arg)
{
    const struct import *im = arg;
    for (int i = 0; i < im->lines; i++) {
        keel_db_result *res = NULL;
        int rc = host->db_tx_query(tx, "INSERT INTO t VALUES ($1)", 0, NULL,
                                   im->keep_and_free ? &res : NULL);
        if (rc != 0)
            return rc;
        if (res != NULL)
            host->db_result_free(res);
        /* Never more than one result alive at a time. */
        assert_true(pg_live <= 1);
        assert_true(keel__host_results_live() <= 1);
    }
    return 0;
}

/* Statements run for their effect (out == NULL), BEGIN and COMMIT included,
 * keep nothing: memory does not grow with the number of lines. */
static void test_results_without_out_are_never_kept(void **state)
{
    (void)state;
    struct keel__synthetic syn;
    keel_request *req = request(&syn);
    struct import small = {.lines = 10}, big = {.lines = 5000};
    assert_int_equal(host->db_transaction(req, import_in_tx, &small), 0);
    size_t after_small = keel__request_arena_bytes(req);
    assert_int_equal(host->db_transaction(req, import_in_tx, &big), 0);
    assert_int_equal(keel__request_arena_bytes(req), after_small);
    assert_int_equal(pg_kept, 0);
    assert_int_equal(pg_discarded, 10 + 5000 + 2 * 2); /* lines, BEGIN and COMMIT twice */
    assert_int_equal(pg_live, 0);
    assert_int_equal(keel__host_results_live(), 0);
    keel__request_free(req);
}

static int import_freed(keel_db_tx *tx, void *arg)
{
    return import_in_tx(tx, arg);
}

/* Results freed with db_result_free are cleared at once and their memory is
 * reused, so a long import holds one result and a flat arena. */
static void test_freed_results_are_cleared_at_once(void **state)
{
    (void)state;
    struct keel__synthetic syn;
    keel_request *req = request(&syn);
    struct import small = {.lines = 10, .keep_and_free = true};
    struct import big = {.lines = 5000, .keep_and_free = true};
    keel_db_result *res;
    assert_int_equal(host->db_query(req, "SELECT 1", 0, NULL, &res), 0);
    assert_int_equal(pg_live, 1);
    host->db_result_free(res);
    assert_int_equal(pg_live, 0);
    assert_int_equal(host->db_transaction(req, import_freed, &small), 0);
    size_t after_small = keel__request_arena_bytes(req);
    assert_int_equal(host->db_transaction(req, import_freed, &big), 0);
    assert_true(keel__request_arena_bytes(req) <= after_small + 4096);
    assert_int_equal(pg_live, 0);
    keel__request_free(req);
}

static void test_unfreed_results_go_with_the_request(void **state)
{
    (void)state;
    struct keel__synthetic syn;
    keel_request *req = request(&syn);
    keel_db_result *a, *b;
    assert_int_equal(host->db_query(req, "SELECT 1", 0, NULL, &a), 0);
    assert_int_equal(host->db_query(req, "SELECT 2", 0, NULL, &b), 0);
    assert_int_equal(pg_live, 2);
    assert_int_equal(keel__host_results_live(), 2);
    host->db_result_free(a);
    /* A freed result reads as empty instead of crashing. */
    assert_int_equal(host->db_rows(a), 0);
    assert_null(host->db_value(a, 0, 0));
    assert_int_equal(host->db_column(a, "x"), -1);
    assert_int_equal(host->db_affected(a), 0);
    host->db_result_free(NULL);
    keel__request_free(req);
    assert_int_equal(pg_live, 0);
    assert_int_equal(keel__host_results_live(), 0);
}

static int tx_returns(keel_db_tx *tx, void *arg)
{
    (void)tx;
    return *(int *)arg;
}

/* db_transaction passes the callback's own codes through and retries a
 * conflict a bounded number of times. */
static void test_transaction_codes(void **state)
{
    (void)state;
    struct keel__synthetic syn;
    keel_request *req = request(&syn);
    int code = KEEL_ENOTFOUND;
    assert_int_equal(host->db_transaction(req, tx_returns, &code), KEEL_ENOTFOUND);
    assert_string_equal(last_sql, "BEGIN");
    code = KEEL_EDB_CONFLICT;
    long before = pg_discarded;
    assert_int_equal(host->db_transaction(req, tx_returns, &code), KEEL_EDB_CONFLICT);
    assert_int_equal(pg_discarded - before, 3); /* three BEGINs, no COMMIT */
    code = 0;
    exec_result = KEEL_EDB_UNAVAILABLE;
    assert_int_equal(host->db_transaction(req, tx_returns, &code), KEEL_EDB_UNAVAILABLE);
    assert_string_equal(host->db_last_error(req), "failed on purpose");
    keel_db_result *res = (keel_db_result *)1;
    assert_int_equal(host->db_query(req, "SELECT 1", 0, NULL, &res), KEEL_EDB_UNAVAILABLE);
    assert_null(res);
    exec_result = 0;
    keel__request_free(req);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_table_is_complete_and_versioned, setup),
        cmocka_unit_test_setup(test_host_has_checks_the_size, setup),
        cmocka_unit_test_setup(test_respond_checks_status_and_headers, setup),
        cmocka_unit_test_setup(test_respond_pack, setup),
        cmocka_unit_test_setup(test_results_without_out_are_never_kept, setup),
        cmocka_unit_test_setup(test_freed_results_are_cleared_at_once, setup),
        cmocka_unit_test_setup(test_unfreed_results_go_with_the_request, setup),
        cmocka_unit_test_setup(test_transaction_codes, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
