/*
 * Unit tests for core/http/acceptor.c: the choice of a lane for a new
 * connection, as pure functions of the lanes' counters, and an acceptor
 * with real libmicrohttpd lanes on 127.0.0.1 (an ephemeral port).  Loops
 * that wait are bounded by attempts; nothing asserts how fast.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http/acceptor.h"
#include "http/mhdpages.h"
#include "util/log.h"
#include "util/time.h"

#include "../loopback.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------ the choice */

static void test_pick_takes_the_clear_lane_with_the_fewest_connections(void **state)
{
    (void)state;
    struct keel__lane_load l[] = {
        {.conns = 3}, {.conns = 5, .active = 1}, {.conns = 2}, {.conns = 1, .fresh = 1}};
    assert_int_equal(keel__lane_pick(l, ARRAY_LEN(l), KEEL__PICK_CLEAR), 2);
    assert_int_equal(keel__lane_pick(l, ARRAY_LEN(l), KEEL__PICK_PROGRESS), 2);
    assert_int_equal(keel__lane_pick(l, ARRAY_LEN(l), KEEL__PICK_ANY), 2);
    /* Only the lanes counted are looked at. */
    assert_int_equal(keel__lane_pick(l, 2, KEEL__PICK_CLEAR), 0);
}

static void test_pick_without_a_clear_lane(void **state)
{
    (void)state;
    struct keel__lane_load l[] = {{.conns = 1, .active = 1},
                                  {.conns = 9, .active = 1, .progress = true},
                                  {.conns = 4, .active = 1, .fresh = 1},
                                  {.conns = 2, .active = 1, .progress = true}};
    assert_int_equal(keel__lane_pick(l, ARRAY_LEN(l), KEEL__PICK_CLEAR), -1);
    /* Among the lanes finishing requests: the least work, then the fewest
     * connections. */
    assert_int_equal(keel__lane_pick(l, ARRAY_LEN(l), KEEL__PICK_PROGRESS), 3);
    /* Any lane: lane 0 has as little work as lane 3 and fewer connections. */
    assert_int_equal(keel__lane_pick(l, ARRAY_LEN(l), KEEL__PICK_ANY), 0);
    l[1].progress = l[3].progress = false;
    assert_int_equal(keel__lane_pick(l, ARRAY_LEN(l), KEEL__PICK_PROGRESS), -1);
}

static void test_lanes_go_out_of_use_from_the_last_while_empty(void **state)
{
    (void)state;
    struct keel__lane_load l[] = {
        {.conns = 3}, {.conns = 0}, {.conns = 2}, {.conns = 0}, {.conns = 0}};
    assert_int_equal(keel__lanes_in_use(l, 5, 1), 3);
    assert_int_equal(keel__lanes_in_use(l, 3, 1), 3);
    /* Never below the lanes started at once. */
    assert_int_equal(keel__lanes_in_use(l, 5, 4), 4);
    l[2].conns = 0;
    assert_int_equal(keel__lanes_in_use(l, 5, 1), 1);
    l[0].conns = 0;
    assert_int_equal(keel__lanes_in_use(l, 5, 1), 1);
}

/* ------------------------------------------------------------ real lanes */

#define MAX_LANES 4

static struct {
    int listen_fd;
    uint16_t port;
    keel__acceptor *acceptor;
    struct keel__lane *lanes[MAX_LANES]; /* in the order started */
    atomic_int nlanes;
    atomic_int holding; /* /hold handlers running */
    atomic_bool release;
    atomic_int last_lane; /* the lane that answered the latest /quick */
} srv;

static int lane_index(const struct keel__lane *lane)
{
    for (int i = 0; i < atomic_load(&srv.nlanes); i++)
        if (srv.lanes[i] == lane)
            return i;
    return -1;
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    (void)uri;
    keel__lane_request_begin(cls, conn, keel__monotonic_ns());
    return NULL; /* the request's *con_cls */
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn, (void)con_cls, (void)toe;
    keel__lane_request_end(cls, false);
}

/* GET /hold holds its lane (a handler that neither returns nor waits on
 * I/O) until the test releases it; anything else is answered at once. */
static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls)
{
    (void)method, (void)version, (void)upload;
    if (*con_cls == NULL) { /* the headers: the answer comes with the next call */
        *con_cls = cls;
        return MHD_YES;
    }
    *upload_size = 0;
    if (strcmp(url, "/hold") == 0) {
        atomic_fetch_add(&srv.holding, 1);
        for (int i = 0; i < 3000 && !atomic_load(&srv.release); i++)
            nap_ms(5);
        atomic_fetch_sub(&srv.holding, 1);
    } else {
        atomic_store(&srv.last_lane, lane_index(cls));
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(2, (void *)"ok",
                                                             MHD_RESPMEM_PERSISTENT);
    enum MHD_Result q = keel__mhd_queue(conn, 200, r);
    MHD_destroy_response(r);
    return q;
}

static struct MHD_Daemon *start_lane(struct keel__lane *lane)
{
    int i = atomic_load(&srv.nlanes);
    if (i >= MAX_LANES)
        return NULL;
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_NO_LISTEN_SOCKET | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_EPOLL, 0,
        NULL, NULL, on_access, lane, MHD_OPTION_URI_LOG_CALLBACK, on_uri, lane,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, lane, MHD_OPTION_NOTIFY_CONNECTION,
        keel__lane_notify, lane, MHD_OPTION_END);
    if (d != NULL) {
        srv.lanes[i] = lane;
        atomic_store(&srv.nlanes, i + 1);
    }
    return d;
}

static int start(void)
{
    memset(&srv, 0, sizeof srv);
    keel__log_set_level(KEEL_LOG_ERROR);
    if (keel__mhd_pages_init(8192, 4096) != 0)
        return -1;
    srv.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (srv.listen_fd < 0 || bind(srv.listen_fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(srv.listen_fd, 64) != 0 ||
        getsockname(srv.listen_fd, (struct sockaddr *)&sa, &sl) != 0)
        return -1;
    srv.port = ntohs(sa.sin_port);
    struct keel__acceptor_conf conf = {.name = "test",
                                       .fd = srv.listen_fd,
                                       .lanes = 1,
                                       .max_lanes = MAX_LANES,
                                       .start_lane = start_lane};
    return keel__acceptor_start(&conf, &srv.acceptor);
}

static int teardown(void **state)
{
    (void)state;
    atomic_store(&srv.release, true);
    keel__acceptor_stop(srv.acceptor);
    srv.acceptor = NULL;
    if (srv.listen_fd >= 0)
        close(srv.listen_fd);
    return 0;
}

static void send_get(int fd, const char *path)
{
    char req[128];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
}

/* Reads one whole answer (its body is "ok", the last two bytes). */
static void read_answer(int fd)
{
    char buf[1024];
    size_t len = 0;
    while (len < 2 || memcmp(buf + len - 2, "ok", 2) != 0) {
        ssize_t r = recv(fd, buf + len, sizeof buf - len, 0);
        assert_true(r > 0);
        len += (size_t)r;
        assert_true(len < sizeof buf);
    }
    assert_non_null(strstr(buf, "200"));
}

/*
 * Lanes started while handlers held the others stay started, but once they
 * hold no connection they get no new one while the first lane is clear:
 * connections opened after a burst of held handlers share one thread, as
 * before the burst, instead of being split over every thread it left.
 */
static void test_lanes_started_for_held_handlers_go_out_of_use_once_empty(void **state)
{
    (void)state;
    assert_int_equal(start(), 0);
    int held[3];
    for (int i = 0; i < 3; i++) {
        held[i] = loopback_dial(srv.port);
        send_get(held[i], "/hold");
        for (int k = 0; k < 1000 && atomic_load(&srv.holding) < i + 1; k++)
            nap_ms(5);
        assert_int_equal(atomic_load(&srv.holding), i + 1);
    }
    /* Each held lane made the acceptor start another. */
    assert_int_equal(atomic_load(&srv.nlanes), 3);
    atomic_store(&srv.release, true);
    for (int i = 0; i < 3; i++) {
        read_answer(held[i]);
        close(held[i]);
    }
    for (int k = 0; k < 1000 && keel__acceptor_connections(srv.acceptor) != 0; k++)
        nap_ms(5);
    assert_int_equal(keel__acceptor_connections(srv.acceptor), 0);

    /* Kept-alive connections, one after another: every one on lane 0
     * (before, each went to the clear lane with the fewest connections). */
    int fds[4];
    for (int i = 0; i < 4; i++) {
        fds[i] = loopback_dial(srv.port);
        send_get(fds[i], "/quick");
        read_answer(fds[i]);
        assert_int_equal(atomic_load(&srv.last_lane), 0);
    }
    assert_int_equal(keel__acceptor_connections(srv.acceptor), 4);
    assert_int_equal(atomic_load(&srv.nlanes), 3);
    for (int i = 0; i < 4; i++)
        close(fds[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pick_takes_the_clear_lane_with_the_fewest_connections),
        cmocka_unit_test(test_pick_without_a_clear_lane),
        cmocka_unit_test(test_lanes_go_out_of_use_from_the_last_while_empty),
        cmocka_unit_test_teardown(test_lanes_started_for_held_handlers_go_out_of_use_once_empty,
                                  teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
