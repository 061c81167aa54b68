/*
 * Unit tests for core/http/deadline.c, against a real libmicrohttpd daemon on
 * 127.0.0.1 (an ephemeral port) in the mode keeld uses (epoll, thread pool).
 * Loops that wait are bounded by attempts; nothing asserts how fast.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <keel/error.h>

#include "http/deadline.h"
#include "util/log.h"
#include "util/time.h"

#include "../loopback.h"

struct server {
    struct MHD_Daemon *daemon;
    keel__deadlines *deadlines;
    uint16_t port;
    atomic_int open_requests; /* handler called, completion not yet */
};

static struct server srv;

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls)
{
    (void)cls, (void)url, (void)method, (void)version, (void)upload;
    if (*con_cls == NULL) {
        *con_cls = &srv;
        atomic_fetch_add(&srv.open_requests, 1);
        return MHD_YES;
    }
    if (*upload_size != 0) {
        *upload_size = 0;
        return MHD_YES;
    }
    keel__deadlines_received(conn);
    struct MHD_Response *r = MHD_create_response_from_buffer(2, (void *)"ok",
                                                             MHD_RESPMEM_PERSISTENT);
    enum MHD_Result q = MHD_queue_response(conn, 200, r);
    MHD_destroy_response(r);
    return q;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)toe;
    if (*con_cls != NULL)
        atomic_fetch_sub(&srv.open_requests, 1);
    *con_cls = NULL;
    keel__deadlines_rearm(conn, keel__monotonic_ns());
}

static int start(int bound_s)
{
    memset(&srv, 0, sizeof srv);
    keel__log_set_level(KEEL_LOG_ERROR);
    if (keel__deadlines_start(bound_s, &srv.deadlines) != 0)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    srv.daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC, 0, NULL, NULL, on_access,
        NULL, MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)2,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
        NULL, MHD_OPTION_NOTIFY_CONNECTION, keel__deadlines_notify, srv.deadlines, MHD_OPTION_END);
    if (srv.daemon == NULL)
        return -1;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv.daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv.port = di ? di->port : 0;
    return srv.port ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    if (srv.daemon != NULL)
        MHD_stop_daemon(srv.daemon);
    keel__deadlines_stop(srv.deadlines);
    srv.daemon = NULL;
    srv.deadlines = NULL;
    return 0;
}

/* True once the server has closed fd (EOF or reset), within attempts x 100 ms. */
static bool closed_by_server(int fd, int attempts)
{
    for (int i = 0; i < attempts; i++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) > 0) {
            char buf[256];
            ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno == ECONNRESET))
                return true;
        }
    }
    return false;
}

static void test_bad_bound_is_refused(void **state)
{
    (void)state;
    keel__deadlines *d = (keel__deadlines *)&srv;
    assert_int_equal(keel__deadlines_start(0, &d), KEEL_EINVAL);
    assert_null(d);
    keel__deadlines_stop(NULL);
    assert_int_equal(keel__deadlines_closed(NULL), 0);
}

static void test_slow_drip_is_closed_at_the_bound(void **state)
{
    (void)state;
    assert_int_equal(start(1), 0);
    int fd = loopback_dial(srv.port);
    loopback_send(fd, "GET / HTTP/1.1\r\nHost: x\r\nX-Drip: ");
    /* A byte every 200 ms keeps libmicrohttpd's inactivity timer happy;
     * only the deadline can end this. */
    bool closed = false;
    for (int i = 0; i < 50 && !closed; i++) {
        nap_ms(200);
        if (send(fd, "a", 1, MSG_NOSIGNAL) != 1)
            closed = true;
        else
            closed = closed_by_server(fd, 1);
    }
    assert_true(closed);
    /* The client can see the close before the sweeper has counted it (under
     * valgrind, by a long way): wait for the count, within a bound. */
    for (int i = 0; i < 100 && keel__deadlines_closed(srv.deadlines) == 0; i++)
        nap_ms(50);
    assert_int_equal(keel__deadlines_closed(srv.deadlines), 1);
    close(fd);
}

static void test_complete_requests_are_served_and_idle_keepalive_is_bounded(void **state)
{
    (void)state;
    assert_int_equal(start(1), 0);
    int fd = loopback_dial(srv.port);
    char buf[512];
    for (int i = 0; i < 3; i++) {
        loopback_send(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        assert_true(n > 0);
        buf[n] = '\0';
        assert_non_null(strstr(buf, "200 OK"));
    }
    /* Then silence on the kept-alive connection: the clock restarted at the
     * last response, so it is closed. */
    assert_true(closed_by_server(fd, 50));
    close(fd);
    assert_true(keel__deadlines_watched(srv.deadlines) <= 1);
}

static void test_client_gone_mid_body_is_noticed(void **state)
{
    (void)state;
    /* A bound far away: only the peer-gone check can end these. */
    assert_int_equal(start(600), 0);
    for (int i = 0; i < 10; i++) {
        int fd = loopback_dial(srv.port);
        loopback_send(fd,
                      "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"partial\":");
        close(fd);
    }
    int open = -1;
    for (int i = 0; i < 100 && open != 0; i++) {
        nap_ms(100);
        open = atomic_load(&srv.open_requests);
    }
    assert_int_equal(open, 0);
    assert_int_equal(keel__deadlines_closed(srv.deadlines), 0); /* none counted as late */
    for (int i = 0; i < 100 && keel__deadlines_watched(srv.deadlines) != 0; i++)
        nap_ms(100);
    assert_int_equal(keel__deadlines_watched(srv.deadlines), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_bound_is_refused),
        cmocka_unit_test_teardown(test_slow_drip_is_closed_at_the_bound, teardown),
        cmocka_unit_test_teardown(test_complete_requests_are_served_and_idle_keepalive_is_bounded,
                                  teardown),
        cmocka_unit_test_teardown(test_client_gone_mid_body_is_noticed, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
