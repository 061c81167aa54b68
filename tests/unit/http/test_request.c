/*
 * Unit tests for core/http/request.c: the arena, cleanups, the accessors
 * plugins get through the host table (driven through the synthetic-request
 * seam), responding once, what a request records when libmicrohttpd
 * refuses its response (keel__mhd_queue, keel's one call into
 * MHD_queue_response, is wrapped at link time), and the responses parked
 * while a handler runs off its connection's thread (core/http/offload.h).
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <keel/error.h>
#include <keel/plugin.h>

#include "http/request.h"

/* -------------------------------------------------------- the MHD seam */

static enum MHD_Result queue_result = MHD_YES;
static unsigned queued_status;

enum MHD_Result __wrap_keel__mhd_queue(struct MHD_Connection *connection, unsigned int status_code,
                                       struct MHD_Response *response);

enum MHD_Result __wrap_keel__mhd_queue(struct MHD_Connection *connection, unsigned int status_code,
                                       struct MHD_Response *response)
{
    (void)connection;
    (void)response;
    queued_status = status_code;
    return queue_result;
}

/* A request with a (never dereferenced) connection, as the server makes. */
static keel_request *conn_request(void)
{
    static char fake_connection;
    keel_request *req = keel__request_new((struct MHD_Connection *)&fake_connection, 0, "GET",
                                          "/x");
    assert_non_null(req);
    return req;
}

static void on_alarm(int sig)
{
    (void)sig;
    /* A test that loops for ever fails instead of hanging the suite. */
    static const char msg[] = "test_request: timed out\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(1);
}

/* -------------------------------------------------------- arena */

static void test_alloc_is_zeroed_aligned_and_grows(void **state)
{
    (void)state;
    keel_request *req = keel__request_new(NULL, 0, "GET", "/");
    assert_non_null(req);
    for (size_t n = 1; n < 20000; n = n * 3 + 1) {
        unsigned char *p = keel__req_alloc(req, n);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % _Alignof(max_align_t), 0);
        for (size_t i = 0; i < n; i++)
            assert_int_equal(p[i], 0);
        memset(p, 0xab, n);
    }
    keel__request_free(req);
}

/* Sizes near SIZE_MAX must fail, not wrap to a tiny block or loop. */
static void test_alloc_refuses_sizes_that_overflow(void **state)
{
    (void)state;
    signal(SIGALRM, on_alarm);
    alarm(10);
    keel_request *req = keel__request_new(NULL, 0, "GET", "/");
    assert_non_null(req);
    assert_null(keel__req_alloc(req, SIZE_MAX));
    assert_null(keel__req_alloc(req, SIZE_MAX - 3));
    assert_null(keel__req_alloc(req, SIZE_MAX / 2 + 1));
    assert_null(keel__req_alloc(req, SIZE_MAX - sizeof(max_align_t)));
    /* And the arena still works afterwards. */
    assert_non_null(keel__req_alloc(req, 64));
    keel__request_free(req);
    alarm(0);
}

static int order[4];
static int norder;

static void record(void *arg)
{
    order[norder++] = (int)(intptr_t)arg;
}

static void test_cleanups_run_in_reverse(void **state)
{
    (void)state;
    norder = 0;
    keel_request *req = keel__request_new(NULL, 0, "GET", "/");
    assert_non_null(req);
    for (intptr_t i = 1; i <= 3; i++)
        assert_int_equal(keel__req_on_cleanup(req, record, (void *)i), 0);
    keel__request_free(req);
    assert_int_equal(norder, 3);
    assert_int_equal(order[0], 3);
    assert_int_equal(order[1], 2);
    assert_int_equal(order[2], 1);
}

/* -------------------------------------------------------- accessors */

static const char *const headers[] = {"Content-Type", "application/json; charset=utf-8", "X-Thing",
                                      "one", NULL};
static const char *const query[] = {"q", "a+b%21", "bad", "%zz", "nul", "x%00", "empty", "", NULL};

static keel_request *synthetic(struct keel__synthetic *syn, const char *method, const char *path)
{
    memset(syn, 0, sizeof *syn);
    syn->headers = headers;
    syn->query = query;
    keel_request *req = keel__request_new(NULL, 0, method, path);
    assert_non_null(req);
    req->synthetic = syn;
    return req;
}

/* Looked up from the fields the edge check collected: first match in the
 * order received, any case; a name of no collected length, a longer name
 * than 63 bytes and a same-length other name each answer right. */
static void test_header_fields(void **state)
{
    (void)state;
    static char conn_stub;
    keel_request *req = keel__request_new((struct MHD_Connection *)(void *)&conn_stub, 0, "GET",
                                          "/");
    assert_non_null(req);
    const char *lng = "X-A-Header-Name-Longer-Than-Sixty-Three-Bytes-For-The-Last-Bucket-Of-All";
    struct keel__edge_field f[] = {
        {.name = "Host", .value = "a", .name_len = 4},
        {.name = "x-request-id", .value = "first", .name_len = 12},
        {.name = lng, .value = "long", .name_len = strlen(lng)},
        {.name = "X-Request-Id", .value = "second", .name_len = 12},
    };
    keel__req_set_fields(req, f, sizeof f / sizeof f[0]);
    assert_string_equal(keel__req_header(req, "host"), "a");
    assert_string_equal(keel__req_header(req, "X-Request-ID"), "first");
    assert_string_equal(keel__req_header(req, lng), "long");
    assert_null(keel__req_header(req, "Content-Type")); /* 12 bytes, another name */
    assert_null(keel__req_header(req, "Origin"));       /* no 6-byte name */
    assert_null(keel__req_header(
        req, "X-Another-Header-Name-Longer-Than-Sixty-Three-Bytes-Not-Sent-At-All"));
    keel__req_set_fields(req, f, 1);
    assert_null(keel__req_header(req, "X-Request-Id"));
    assert_null(keel__req_header(req, lng));
    req->conn = NULL; /* not a connection to give back */
    req->synthetic = NULL;
    keel__request_free(req);
}

static void test_accessors(void **state)
{
    (void)state;
    struct keel__synthetic syn;
    keel_request *req = synthetic(&syn, "POST", "/api/v1/x/caf%C3%A9");
    static const char *names[] = {"word"};
    static const char *values[] = {"café"};
    req->match.nparams = 1;
    req->match.names[0] = names[0];
    req->match.values[0] = values[0];

    assert_string_equal(keel__req_method(req), "POST");
    assert_string_equal(keel__req_path(req), "/api/v1/x/caf%C3%A9");
    assert_string_equal(keel__req_param(req, "word"), "café");
    assert_null(keel__req_param(req, "other"));
    assert_string_equal(keel__req_header(req, "x-thing"), "one");
    assert_null(keel__req_header(req, "X-Missing"));

    const char *v = NULL;
    assert_int_equal(keel__req_query_arg(req, "q", &v), 0);
    assert_string_equal(v, "a b!");
    assert_string_equal(keel__req_query(req, "q"), "a b!");
    assert_int_equal(keel__req_query_arg(req, "missing", &v), KEEL_ENOTFOUND);
    assert_null(v);
    assert_int_equal(keel__req_query_arg(req, "bad", &v), KEEL_EINVAL);
    assert_null(v);
    assert_null(keel__req_query(req, "bad"));
    assert_int_equal(keel__req_query_arg(req, "nul", &v), KEEL_EINVAL);
    assert_int_equal(keel__req_query_arg(req, "empty", &v), 0);
    assert_string_equal(v, "");

    size_t len = 99;
    assert_null(keel__req_body(req, &len));
    assert_int_equal(len, 0);
    req->body = strdup("{\"a\":1}");
    req->body_len = 7;
    assert_string_equal(keel__req_body(req, &len), "{\"a\":1}");
    assert_int_equal(len, 7);

    json_t *body = NULL;
    assert_int_equal(keel__req_json_body(req, &body), 0);
    assert_int_equal(json_integer_value(json_object_get(body, "a")), 1);
    json_t *again = NULL;
    assert_int_equal(keel__req_json_body(req, &again), 0);
    assert_ptr_equal(body, again); /* parsed once, owned by the request */
    assert_int_equal(syn.responses, 0);

    assert_null(keel__req_user(req, KEEL_USER_EMAIL));
    req->has_principal = true;
    req->principal.email = "a@b.c";
    req->principal.synced = true;
    assert_string_equal(keel__req_user(req, KEEL_USER_EMAIL), "a@b.c");
    assert_string_equal(keel__req_user(req, KEEL_USER_SYNCED), "1");
    assert_null(keel__req_user(req, 99));
    keel__request_free(req);
}

static void test_json_body_refusals_answer_once(void **state)
{
    (void)state;
    static const char *const plain[] = {"Content-Type", "text/plain", NULL};
    struct keel__synthetic syn;
    keel_request *req = synthetic(&syn, "POST", "/");
    syn.headers = plain;
    json_t *body = (json_t *)1;
    assert_int_equal(keel__req_json_body(req, &body), KEEL_EINVAL);
    assert_null(body);
    assert_int_equal(syn.status, 415);
    keel__request_free(req);

    req = synthetic(&syn, "POST", "/");
    req->body = strdup("[1]");
    req->body_len = 3;
    assert_int_equal(keel__req_json_body(req, &body), KEEL_EINVAL);
    assert_int_equal(syn.status, 400);
    assert_non_null(strstr(syn.body, "JSON object"));
    keel__request_free(req);

    req = synthetic(&syn, "POST", "/");
    req->max_json_depth = 2;
    req->body = strdup("{\"a\":{\"b\":{\"c\":1}}}");
    req->body_len = strlen(req->body);
    assert_int_equal(keel__req_json_body(req, &body), KEEL_EINVAL);
    assert_int_equal(syn.status, 400);
    assert_non_null(strstr(syn.body, "deeper than 2"));
    keel__request_free(req);
}

static void test_respond_once(void **state)
{
    (void)state;
    struct keel__synthetic syn;
    keel_request *req = synthetic(&syn, "GET", "/");
    assert_int_equal(keel__respond_detail(req, 404, "Nope"), 0);
    assert_int_equal(keel__respond_detail(req, 200, "Again"), KEEL_ERESPONDED);
    assert_int_equal(syn.responses, 2);
    assert_int_equal(syn.status, 404);
    assert_string_equal(syn.body, "{\"detail\":\"Nope\"}");
    keel__request_free(req);
}

/* -------------------------------------------------------- what is recorded */

static void test_status_recorded_is_what_was_sent(void **state)
{
    (void)state;
    queue_result = MHD_YES;
    keel_request *req = conn_request();
    assert_int_equal(keel__respond_detail(req, 201, "made"), 0);
    assert_int_equal(queued_status, 201);
    assert_int_equal(keel__request_final_status(req, true), 201);
    /* The client left before the response went out. */
    assert_int_equal(keel__request_final_status(req, false), 201);
    keel__request_free(req);

    req = conn_request();
    assert_int_equal(keel__request_final_status(req, false), 499);
    keel__request_free(req);
}

static void test_refused_response_is_not_recorded_as_sent(void **state)
{
    (void)state;
    queue_result = MHD_NO;
    keel_request *req = conn_request();
    assert_int_equal(keel__respond_detail(req, 200, "never sent"), KEEL_EIO);
    /* Nothing was sent: metrics and the access log record a server error,
     * never the 200 that did not go out. */
    assert_int_equal(keel__request_final_status(req, true), 500);
    assert_int_equal(keel__request_final_status(req, false), 500);
    /* And no second attempt is made on the connection. */
    queued_status = 0;
    assert_int_equal(keel__respond_detail(req, 500, "again"), KEEL_ERESPONDED);
    assert_int_equal(queued_status, 0);
    keel__request_free(req);
    queue_result = MHD_YES;
}

/* -------------------------------------------------------- parked responses */

static void test_parked_response_is_queued_once_by_unpark(void **state)
{
    (void)state;
    queue_result = MHD_YES;
    queued_status = 0;
    keel_request *req = conn_request();
    req->parking = true; /* the handler runs off the connection's thread */
    assert_int_equal(keel__respond_detail(req, 202, "later"), 0);
    /* Parked, not queued: the connection is suspended. */
    assert_int_equal(queued_status, 0);
    assert_non_null(req->parked);
    assert_int_equal(keel__respond_detail(req, 500, "again"), KEEL_ERESPONDED);
    /* Back on its thread: queued with the status it was given. */
    assert_int_equal(keel__request_unpark(req), 0);
    assert_int_equal(queued_status, 202);
    assert_null(req->parked);
    assert_false(req->parking);
    assert_int_equal(keel__request_final_status(req, true), 202);
    keel__request_free(req);
}

static void test_parked_response_refused_or_missing(void **state)
{
    (void)state;
    /* libmicrohttpd refuses it at unpark: recorded as 500, not as sent. */
    queue_result = MHD_NO;
    keel_request *req = conn_request();
    req->parking = true;
    assert_int_equal(keel__respond_detail(req, 200, "never sent"), 0);
    assert_int_equal(keel__request_unpark(req), KEEL_EIO);
    assert_int_equal(keel__request_final_status(req, true), 500);
    keel__request_free(req);
    queue_result = MHD_YES;

    /* Nothing parked (the handler's response could not be made). */
    req = conn_request();
    req->parking = true;
    assert_int_equal(keel__request_unpark(req), KEEL_ENOMEM);
    keel__request_free(req);

    /* A second response made by hand (a streamed body) is refused too,
     * parked or not, and dropped: the first one stays. */
    req = conn_request();
    req->parking = true;
    assert_int_equal(keel__respond_detail(req, 201, "first"), 0);
    struct MHD_Response *parked = req->parked;
    struct MHD_Response *second = MHD_create_response_from_buffer(2, "no", MHD_RESPMEM_PERSISTENT);
    assert_int_equal(keel__respond_mhd(req, 200, second, "text/plain"), KEEL_ERESPONDED);
    assert_ptr_equal(req->parked, parked);
    assert_int_equal(keel__request_unpark(req), 0);
    assert_int_equal(queued_status, 201);
    second = MHD_create_response_from_buffer(2, "no", MHD_RESPMEM_PERSISTENT);
    assert_int_equal(keel__respond_mhd(req, 200, second, "text/plain"), KEEL_ERESPONDED);
    assert_int_equal(queued_status, 201);
    keel__request_free(req);

    /* The connection ended before it was unparked: freeing the request
     * drops the parked response (no leak under valgrind or ASan). */
    req = conn_request();
    req->parking = true;
    assert_int_equal(keel__respond_detail(req, 200, "orphaned"), 0);
    assert_non_null(req->parked);
    keel__request_free(req);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_is_zeroed_aligned_and_grows),
        cmocka_unit_test(test_alloc_refuses_sizes_that_overflow),
        cmocka_unit_test(test_cleanups_run_in_reverse),
        cmocka_unit_test(test_header_fields),
        cmocka_unit_test(test_accessors),
        cmocka_unit_test(test_json_body_refusals_answer_once),
        cmocka_unit_test(test_respond_once),
        cmocka_unit_test(test_status_recorded_is_what_was_sent),
        cmocka_unit_test(test_refused_response_is_not_recorded_as_sent),
        cmocka_unit_test(test_parked_response_is_queued_once_by_unpark),
        cmocka_unit_test(test_parked_response_refused_or_missing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
