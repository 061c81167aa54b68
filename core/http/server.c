#include "config.h"

#include "http/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "util/listen.h"
#include "util/log.h"
#include "conf/conf.h"
#include "http/acceptor.h"
#include "http/accesslog.h"
#include "http/clientaddr.h"
#include "http/authorize.h"
#include "http/body.h"
#include "http/cors.h"
#include "http/deadline.h"
#include "http/edge.h"
#include "http/mhdpages.h"
#include "http/offload.h"
#include "identity/ratelimit.h"
#include "http/routes.h"
#include "util/scoreboard.h"
#include "util/counters.h"
#include "util/blocking.h"
#include "util/text.h"
#include "util/time.h"

struct keel__runtime keel__rt;

struct listener {
    int index; /* enum keel__listener */
    const char *name;
    keel__acceptor *acceptor;
    int fd;      /* listening socket */
    bool own_fd; /* bound here (not inherited): closed by the server */
    bool ipv6;
    bool loopback;
};

static struct listener listeners[2] = {
    {.index = KEEL__LISTENER_MAIN, .name = "main", .fd = -1},
    {.index = KEEL__LISTENER_ADMIN, .name = "admin", .fd = -1},
};

static atomic_long in_flight;
static atomic_ullong requests_total;
/* Per-user rate limiting (NULL when limits.rate_per_user is 0) and the
 * request deadlines of the main listener (core/http/deadline.h). */
static keel__ratelimit *ratelimit;
/* What keel__authorize needs, set up by keel__server_start. */
static struct keel__authorizer authorizer;
static keel__deadlines *deadlines;

long keel__server_in_flight(void)
{
    return atomic_load(&in_flight);
}

long keel__server_connections(void)
{
    return keel__acceptor_connections(listeners[0].acceptor) +
           keel__acceptor_connections(listeners[1].acceptor);
}

unsigned long long keel__server_requests_total(void)
{
    return atomic_load(&requests_total);
}

/* ------------------------------------------------------------ dispatch */

static void serve_stub(keel_request *req, const struct keel__route *route)
{
    keel__req_add_header(req, "X-Keel-Fallback", route->fallback_header);
    if (route->stub_headers != NULL) {
        const char *k;
        json_t *v;
        json_object_foreach(route->stub_headers, k, v) if (json_is_string(v))
            keel__req_add_header(req, k, json_string_value(v));
    }
    keel__respond(req, route->stub_status, route->stub_body, route->stub_len);
}

static void dispatch(keel_request *req)
{
    const struct keel__route *route = req->route;
    if (route->core_handler != NULL) {
        route->core_handler(req);
    } else if (route->handler != NULL) {
        /* Recorded for the supervisor: a crash or a hang in here is
         * blamed on this plugin, generation, route and request. */
        keel__plugin_call_enter_text(&route->sb_text, route->generation, KEEL__CALL_HANDLER,
                                     req->id);
        int rc = route->handler(req, route->state);
        keel__plugin_call_leave();
        if (!req->responded) {
            keel__log(KEEL_LOG_ERROR, route->plugin,
                      "req=%llu %s %s: handler returned %d (%s) without a response",
                      (unsigned long long)req->id, req->method, req->path, rc, keel_strerror(rc));
            keel__respond_detail(req, 500, "Internal Server Error");
        }
    } else {
        serve_stub(req, route);
    }
    if (!req->responded)
        keel__respond_detail(req, 500, "Internal Server Error");
}

/* Authorizes and runs the route's handler, on a lane or a pool thread;
 * notes whether it waited on I/O (the route's score, on_completed). */
static void serve(keel_request *req)
{
    const struct keel__blocking *b = keel__blocking_counter;
    unsigned waits = b != NULL ? atomic_load_explicit(&b->waits, memory_order_relaxed) : 0;
    if (keel__authorize(req, req->route->auth, &authorizer))
        dispatch(req);
    req->waited = b != NULL && atomic_load_explicit(&b->waits, memory_order_relaxed) != waits;
}

/* On a pool thread (core/http/offload.h).  The response is parked on the
 * request; once the connection is resumed its lane queues it (on_access)
 * and may complete and free the request: nothing here touches it after. */
static void run_parked(void *arg)
{
    keel_request *req = arg;
    struct MHD_Connection *conn = req->conn;
    serve(req);
    /* The connection's next request may be parked before this thread is
     * back in the pool. */
    keel__offload_finishing();
    MHD_resume_connection(conn);
}

/* The request leaves its lane for the pool: the lane goes on with its
 * other connections meanwhile. */
static void park(keel_request *req, struct keel__lane *lane)
{
    req->parking = true;
    req->offloaded = true;
    MHD_suspend_connection(req->conn);
    keel__lane_request_park(lane);
    if (keel__offload_submit(run_parked, req) != 0)
        run_parked(req); /* no pool thread to be had: here, as before */
}

/* The route's wait score (http/offload.h), or NULL for a route that runs
 * no handler (a stub) or has no metrics record (out of memory). */
static atomic_uint *wait_score(const struct keel__route *route)
{
    if (route == NULL || route->metrics == NULL ||
        (route->handler == NULL && route->core_handler == NULL))
        return NULL;
    return &route->metrics->wait_score;
}

/* Whether the route's requests run in the pool now. */
static bool offloading(const struct keel__route *route)
{
    const atomic_uint *score = wait_score(route);
    return score != NULL && keel__offload_on(atomic_load_explicit(score, memory_order_relaxed));
}

/* Moves the route's score by one request that ended after ns (on_completed). */
static void observe_waits(const keel_request *req, int64_t ns)
{
    atomic_uint *score = wait_score(req->route);
    if (score == NULL)
        return;
    unsigned was = atomic_load_explicit(score, memory_order_relaxed);
    unsigned now = keel__offload_score(was, req->waited || ns > KEEL__OFFLOAD_SLOW_NS);
    if (now == was)
        return;
    atomic_store_explicit(score, now, memory_order_relaxed);
    if ((now & KEEL__OFFLOAD_SEEN_BIT) && !(was & KEEL__OFFLOAD_SEEN_BIT))
        keel__log(KEEL_LOG_INFO, "core",
                  "%s %s waits on I/O or takes over %lld ms: its requests now run off the "
                  "serving threads while it does",
                  req->route->method, req->route->path_template,
                  (long long)(KEEL__OFFLOAD_SLOW_NS / 1000000));
}

/* Called once the whole request (headers and body) has arrived. */
static void finish(keel_request *req, struct keel__lane *lane)
{
    keel__cors_decide(req, &keel__rt.cors);

    /* The router decodes the path into this; the decoded path is never
     * longer than the path, which the URI limit bounds. */
    size_t scratch_len = strlen(req->path) + 1;
    req->match_scratch = keel__req_alloc_raw(req, scratch_len);
    if (req->match_scratch == NULL) {
        keel__respond_detail(req, 503, "Service temporarily unavailable");
        return;
    }
    const keel__router *router = req->table ? req->table->routers[req->listener] : NULL;
    char allow[256];
    if (strcmp(req->method, "OPTIONS") == 0) {
        /* OPTIONS itself is never a route; list what the path takes. */
        if (keel__router_methods(router, req->path, req->match_scratch, scratch_len, allow,
                                 sizeof allow) != KEEL__MATCH_OK) {
            keel__respond_detail(req, 404, "Not Found");
            return;
        }
        keel__cors_preflight(req, &keel__rt.cors, allow);
        return;
    }
    struct keel__route_match m;
    int mr = keel__router_match(router, req->method, req->path, &m, req->match_scratch, scratch_len,
                                allow, sizeof allow);
    if (mr == KEEL__MATCH_NOT_FOUND) {
        keel__respond_detail(req, 404, "Not Found");
        return;
    }
    if (mr == KEEL__MATCH_NO_METHOD) {
        keel__req_add_header(req, "Allow", allow);
        keel__respond_detail(req, 405, "Method Not Allowed");
        return;
    }
    req->match = m;
    req->route = m.data;
    keel__route_begin(req->route);

    if (req->body_too_large) {
        char msg[96];
        snprintf(msg, sizeof msg, "Request body too large (limit %ld bytes)", keel__body_cap(req));
        keel__respond_detail(req, 413, msg);
        return;
    }
    if (offloading(req->route))
        park(req, lane);
    else
        serve(req);
}

/* What begin() learns from one pass over the request's headers and query. */
struct header_scan {
    size_t header_bytes; /* as sent: "Name: value\r\n" each */
    size_t query_bytes;  /* "k=v&" each */
    unsigned content_lengths, transfer_encodings;
    const char *content_length, *transfer_encoding; /* the first of each */
};

/* The lengths are the edge check's (keel__edge_check_fields). */
static void scan_header(struct header_scan *s, const struct keel__edge_field *f)
{
    s->header_bytes += f->name_len + f->value_len + 4;
    if (f->name_len == sizeof "Content-Length" - 1 && strcasecmp(f->name, "Content-Length") == 0) {
        if (s->content_lengths++ == 0)
            s->content_length = f->value;
    } else if (f->name_len == sizeof "Transfer-Encoding" - 1 &&
               strcasecmp(f->name, "Transfer-Encoding") == 0) {
        if (s->transfer_encodings++ == 0)
            s->transfer_encoding = f->value;
    }
}

static enum MHD_Result scan_query(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    (void)kind;
    struct header_scan *s = cls;
    s->query_bytes += strlen(key) + (value != NULL ? strlen(value) + 1 : 0) + 1;
    return MHD_YES;
}

/* First call: the headers are in.  Refuse what must be refused before the
 * body is read.  Responses queued here make libmicrohttpd answer at once and
 * close the connection without reading the body. */
static bool begin(keel_request *req, const char *version)
{
    /* Malformed heads (smuggling attempts, NUL bytes, a foreign Host on
     * the admin listener) are refused before anything else looks at them,
     * and the connection is closed: its next bytes cannot be trusted.  The
     * check comes first so that what follows reads the fields it collected;
     * its verdict is answered after the address limit's. */
    struct keel__edge_verdict v = keel__edge_check_request(req, version);
    if (keel__request_identify(req, keel__deadlines_peer(req->conn)) != 0) {
        keel__respond_detail(req, 429, "Too many concurrent requests from this address");
        return true;
    }
    req->table = keel__table_acquire();
    if (v.status != 0) {
        keel__req_add_header(req, "Connection", "close");
        keel__respond_detail(req, v.status, v.detail);
        return true;
    }

    /* Header and URI limits.  libmicrohttpd's connection memory is sized
     * above these (start_daemon), so requests between keel's limit and that
     * ceiling get keel's JSON answer; only beyond it does libmicrohttpd
     * answer 431/414 with its own HTML body. */
    const struct keel__limits_conf *c = &keel__rt.limits;
    struct header_scan scan = {0};
    /* The fields the edge check collected: no second walk of
     * libmicrohttpd's list. */
    for (size_t i = 0; i < req->nfields; i++)
        scan_header(&scan, &req->fields[i]);
    MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, scan_query, &scan);
    if (scan.header_bytes > (size_t)c->max_header_bytes) {
        char msg[96];
        snprintf(msg, sizeof msg, "Request headers too large (limit %ld bytes)",
                 c->max_header_bytes);
        keel__respond_detail(req, 431, msg);
        return true;
    }
    if (strlen(req->path) + scan.query_bytes > (size_t)c->max_uri_bytes) {
        char msg[96];
        snprintf(msg, sizeof msg, "URI too long (limit %d bytes)", c->max_uri_bytes);
        keel__respond_detail(req, 414, msg);
        return true;
    }

    /* Framing: exactly one way to find the end of the body, or the request
     * is refused before a byte of it is read (no request smuggling through
     * disagreeing lengths). */
    if (scan.content_lengths > 1 || scan.transfer_encodings > 1) {
        keel__respond_detail(req, 400,
                             "Request has more than one Content-Length or Transfer-Encoding");
        return true;
    }
    const char *cl = scan.content_length, *te = scan.transfer_encoding;
    if (cl != NULL && te != NULL) {
        keel__respond_detail(req, 400, "Request has both Content-Length and Transfer-Encoding");
        return true;
    }
    /* libmicrohttpd decodes only "chunked"; with any other coding it would
     * read the body until the client closes, so refuse it here (RFC 9112
     * 6.1: 501 for a transfer coding the server does not understand). */
    if (te != NULL && strcasecmp(te, "chunked") != 0) {
        keel__respond_detail(req, 501, "Transfer-Encoding not supported (only chunked)");
        return true;
    }
    unsigned long long n = 0;
    if (cl != NULL) {
        char *end;
        errno = 0;
        n = strtoull(cl, &end, 10);
        if (errno != 0 || end == cl || *end != '\0') {
            keel__respond_detail(req, 400, "Invalid Content-Length");
            return true;
        }
    }
    /* Admin bodies: how many at once, and whether this one is spooled. */
    if (!keel__body_admit(req, n > 0 || te != NULL))
        return true;
    if (cl != NULL) {
        if (n > (unsigned long long)keel__body_cap(req)) {
            char msg[96];
            snprintf(msg, sizeof msg, "Request body too large (limit %ld bytes)",
                     keel__body_cap(req));
            keel__respond_detail(req, 413, msg);
            return true;
        }
        if (n > 0 && req->spool == NULL) {
            req->body = malloc((size_t)n + 1);
            if (req->body == NULL)
                return false;
            req->body_cap = (size_t)n;
        }
    }
    return true;
}

/*
 * Stores a piece of the body.  A declared Content-Length over the cap never
 * gets here (begin() answered 413).  A chunked body is counted as it comes:
 * libmicrohttpd 0.9.75 takes no response while a body is being read
 * (MHD_queue_response fails until the request is complete), so once the
 * count passes the cap keel stops storing, reads on and throws away up to
 * limits.max_drain_bytes more, and answers 413 when the body ends.  Returns
 * false when the body goes on past that: the connection is then closed
 * without an answer.  body_len keeps counting after the cap so the drain is
 * bounded.
 */
static bool append_body(keel_request *req, const char *data, size_t len)
{
    size_t cap = (size_t)keel__body_cap(req);
    size_t drain = (size_t)keel__rt.limits.max_drain_bytes;
    if (req->spool != NULL && !req->body_too_large && req->body_len + len <= cap) {
        if (keel__spool_write(req->spool, data, len) != 0)
            return false;
        req->body_len += len;
        return true;
    }
    if (req->body_too_large) {
        req->body_len += len;
        return req->body_len <= cap + drain;
    }
    if (req->body_len + len > cap) {
        req->body_too_large = true;
        free(req->body);
        req->body = NULL;
        req->body_len += len;
        req->body_cap = 0;
        return req->body_len <= cap + drain;
    }
    if (req->body_len + len > req->body_cap) {
        size_t want = req->body_cap ? req->body_cap * 2 : 4096;
        while (want < req->body_len + len)
            want *= 2;
        if (want > cap)
            want = cap;
        char *grown = realloc(req->body, want + 1);
        if (grown == NULL)
            return false;
        req->body = grown;
        req->body_cap = want;
    }
    memcpy(req->body + req->body_len, data, len);
    req->body_len += len;
    req->body[req->body_len] = '\0';
    return true;
}

/* The URI log callback: the request line is in, the headers are not.  The
 * request object starts here so that it sees the target before
 * libmicrohttpd splits it, and so that a request libmicrohttpd refuses
 * itself later (headers too large, a bad Content-Length) still reaches the
 * access log and metrics. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    struct keel__lane *lane = cls;
    const struct listener *l = lane->cls;
    keel_request *req = keel__request_new(conn, l->index, NULL, uri);
    if (req == NULL)
        return NULL;
    /* Counted until on_completed: the acceptor hands new connections to
     * lanes with nothing in progress (core/http/acceptor.h). */
    keel__lane_request_begin(lane, conn, req->start_ns);
    req->max_json_depth = keel__rt.limits.max_json_depth;
    req->target = uri;
    req->target_len = strlen(uri);
    req->target_verdict = keel__edge_check_target(uri, req->target_len);
    atomic_fetch_add(&in_flight, 1);
    atomic_fetch_add_explicit(&requests_total, 1, memory_order_relaxed);
    return req;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    keel_request *req = *con_cls;
    if (req == NULL)
        return MHD_NO; /* on_uri ran out of memory */
    if (req->method == NULL) {
        req->method = method;
        req->path = url;
        keel__request_restart_clock(req);
        keel__lane_request_started(cls, req->start_ns);
        return begin(req, version) ? MHD_YES : MHD_NO;
    }
    if (*upload_data_size != 0) {
        if (!req->responded && !append_body(req, upload_data, *upload_data_size)) {
            keel__log(KEEL_LOG_INFO, "core",
                      "req=%llu %s %s: body still coming after %zu bytes (cap plus drain "
                      "limit); closing the connection",
                      (unsigned long long)req->id, req->method, req->path, req->body_len);
            return MHD_NO;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    /* Back from the pool: the response waits on the request.  Nothing
     * parked (out of memory) or nothing queued closes the connection. */
    if (req->parking)
        return keel__request_unpark(req) == 0 ? MHD_YES : MHD_NO;
    /* The request is complete: the handler's time is not the client's. */
    keel__deadlines_received(conn);
    if (!req->responded)
        finish(req, cls);
    return MHD_YES;
}

/* ------------------------------------------------------------ completion */

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    keel_request *req = *con_cls;
    if (req == NULL)
        return;
    *con_cls = NULL;
    keel__lane_request_end(cls, req->offloaded);
    /* One clock read for the request's latency and the connection's next
     * deadline. */
    int64_t end_ns = keel__monotonic_ns();
    int64_t ns = end_ns - req->start_ns;
    observe_waits(req, ns);
    unsigned status = keel__request_final_status(req, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
    if (!req->responded) {
        /* libmicrohttpd may have answered it itself: record what it sent. */
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_HTTP_STATUS);
        if (ci != NULL && ci->http_status >= 100)
            status = ci->http_status;
    }
    if (req->method == NULL) { /* refused before its headers were in */
        req->method = "-";
        req->path = keel__edge_escape(req, req->target, req->target_len);
    }
    keel__metrics_observe(req->route ? req->route->metrics : NULL, status, ns);
    keel__req_count_degraded(req);
    keel__access_log(req, status, end_ns, listeners[req->listener].name);
    keel__request_free(req);
    atomic_fetch_sub(&in_flight, 1);
    /* A kept-alive connection now waits for its next request, on a clock. */
    keel__deadlines_rearm(conn, end_ns);
}

/* ------------------------------------------------------------ daemons */

static void mhd_log(void *cls, const char *fmt, va_list ap) KEEL_PRINTF(2, 0);

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    keel__trim_newlines(line, 0);
    keel__log(KEEL_LOG_DEBUG, "mhd", "%s", line);
}

/* Keep the URL exactly as sent: the router decodes path parameters itself
 * (refusing %00 and %2F) and plugins get decoded query values from the host. */
static size_t keep_escaped(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    return strlen(s);
}

static bool is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a);
    }
    return false;
}

/* Threads a listener may add to make up for those held by handlers. */
#define MAX_SPARE_THREADS 32
/* Threads running the requests of routes that wait (http/offload.h), for
 * both listeners: the requests waiting on I/O at once, before more queue. */
#define MAX_OFFLOAD_THREADS 64
/* libmicrohttpd's connection memory never goes below this: the request line,
 * a few headers and the answer's head. */
#define CONN_MEMORY_MIN (8 * 1024)

static void close_listener(struct listener *l)
{
    keel__acceptor_stop(l->acceptor);
    l->acceptor = NULL;
    if (l->own_fd && l->fd >= 0)
        close(l->fd);
    l->fd = -1;
}

/* The daemon of one lane (core/http/acceptor.h): one thread, no listening
 * socket of its own; the acceptor hands it connections. */
static struct MHD_Daemon *start_lane(struct keel__lane *lane)
{
    const struct listener *l = lane->cls;
    const struct keel__server_conf *c = &keel__rt.server;
    const struct keel__limits_conf *lim = &keel__rt.limits;
    unsigned flags = MHD_USE_NO_LISTEN_SOCKET | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
#ifdef __linux__
    flags |= MHD_USE_EPOLL;
#else
    flags |= MHD_USE_POLL;
#endif
    if (l->ipv6)
        flags |= MHD_USE_IPv6;
    struct MHD_OptionItem opts[16];
    size_t n = 0;
    /* The logger must come first or MHD prints early messages itself. */
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)mhd_log, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, lane};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_URI_LOG_CALLBACK, (intptr_t)on_uri, lane};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t)keep_escaped, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT,
                                        (intptr_t)(unsigned)c->connection_timeout_s, NULL};
    /* The acceptor enforces the limits over all lanes; this only keeps
     * libmicrohttpd's own default (about a thousand) out of the way. */
    if (lim->max_connections > 0)
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT,
                                            (intptr_t)(unsigned)lim->max_connections, NULL};
    /* libmicrohttpd keeps the request line and headers in this per-connection
     * memory, refuses (431/414, answered in keel's JSON by http/mhdpages.c)
     * what does not fit, and clears all of it between the requests of a
     * connection: every KiB costs time on every request (docs/performance.md,
     * round 5).  The header limit plus the URI limit: a request at either
     * limit fits with room for its answer; one at both limits at once needs
     * more (libmicrohttpd adds 56 bytes per header) and is refused 431 in the
     * same words as keel's own. */
    size_t mem = (size_t)lim->max_header_bytes + (size_t)lim->max_uri_bytes;
    if (mem < CONN_MEMORY_MIN)
        mem = CONN_MEMORY_MIN;
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_MEMORY_LIMIT, (intptr_t)mem, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)keel__lane_notify,
                                        lane};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    return MHD_start_daemon(flags, 0, NULL, NULL, on_access, lane, MHD_OPTION_ARRAY, opts,
                            MHD_OPTION_END);
}

/*
 * threads lanes to begin with, up to max_threads when handlers hold them
 * (core/http/acceptor.h).  Without trusted proxies the per-address limit
 * counts connections here; with them it counts requests per client
 * (core/http/clientaddr.h), since connections come from the proxies.
 */
static int start_listener(struct listener *l, const char *host, int port, unsigned threads,
                          unsigned max_threads)
{
    int inherited = keel__rt.listen_inherited ? keel__rt.listen_fds[l->index] : -1;
    l->own_fd = inherited < 0;
    l->fd = inherited >= 0 ? inherited : keel__listen_tcp(l->name, host, port);
    if (l->fd < 0)
        return KEEL_EIO;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(l->fd, (struct sockaddr *)&ss, &sl) == 0) {
        l->loopback = is_loopback((const struct sockaddr *)&ss);
        l->ipv6 = ss.ss_family == AF_INET6;
    }
    /* Before the daemon starts, so no admin request can see it unset. */
    if (l->index == KEEL__LISTENER_ADMIN)
        authorizer.admin_loopback = l->loopback;
    const struct keel__limits_conf *lim = &keel__rt.limits;
    struct keel__acceptor_conf ac = {
        .name = l->name,
        .fd = l->fd,
        .lanes = threads,
        .max_lanes = max_threads,
        .max_connections = lim->max_connections,
        .max_per_ip = keel__rt.server.ntrusted_proxies == 0 ? lim->max_per_ip : 0,
        .start_lane = start_lane,
        .cls = l,
    };
    if (l->index == KEEL__LISTENER_MAIN && deadlines != NULL) {
        ac.chain_notify = keel__deadlines_notify;
        ac.chain_cls = deadlines;
    }
    int rc = keel__acceptor_start(&ac, &l->acceptor);
    if (rc != 0) {
        log_error("%s listener: cannot start its threads on %s:%d", l->name, host, port);
        if (l->own_fd)
            close(l->fd);
        l->fd = -1;
        return rc;
    }
    log_info("%s listener on %s:%d (%u thread%s, up to %u while handlers hold them)", l->name, host,
             port, threads, threads == 1 ? "" : "s", max_threads);
    return 0;
}

int keel__server_start(void)
{
    const struct keel__server_conf *c = &keel__rt.server;
    const struct keel__limits_conf *lim = &keel__rt.limits;
    if (keel__mhd_pages_init(lim->max_header_bytes, lim->max_uri_bytes) != 0)
        return KEEL_EINVAL;
    keel__access_log_open(c->access_log, c->access_json);
    if (lim->rate_per_user > 0 && keel__ratelimit_server_wide() != NULL) {
        /* In a worker: the supervisor's table, shared by every worker. */
        ratelimit = keel__ratelimit_server_wide();
        log_info("rate limit: %d request(s)/s per user, burst %d (one bucket per user, shared "
                 "by every worker)",
                 lim->rate_per_user, lim->rate_burst > 0 ? lim->rate_burst : lim->rate_per_user);
    } else if (lim->rate_per_user > 0) {
        struct keel__ratelimit_conf rc_conf = {.rate = (unsigned)lim->rate_per_user,
                                               .burst = (unsigned)lim->rate_burst};
        if (keel__ratelimit_new(&rc_conf, &ratelimit) != 0) {
            log_error("cannot set up rate limiting");
            return KEEL_ENOMEM;
        }
        log_info("rate limit: %d request(s)/s per user, burst %d", lim->rate_per_user,
                 lim->rate_burst > 0 ? lim->rate_burst : lim->rate_per_user);
    }
    authorizer.auth = keel__rt.auth;
    authorizer.usersync = keel__rt.usersync;
    authorizer.ratelimit = ratelimit;
    authorizer.admin_token = c->admin_token;
    /* The bound on receiving a request is the connection timeout: what
     * libmicrohttpd applies to silence, keel applies to slowness. */
    if (keel__deadlines_start(c->connection_timeout_s, &deadlines) != 0) {
        log_warn("request deadlines are off: slow clients are bounded only by inactivity");
    } else {
        /* A little short of full, so a slot is always free to accept into. */
        long max = keel__rt.limits.max_connections;
        keel__deadlines_evict_at(deadlines, max - (max >= 64 ? max / 64 : 1));
    }
    /* Handlers that wait run off the serving threads (http/offload.h). */
    keel__offload_init(MAX_OFFLOAD_THREADS);
    /* Threads held by handlers that do not return (until the hang watchdog
     * replaces the worker) are made up for, up to MAX_SPARE_THREADS more. */
    unsigned threads = c->threads > 0 ? (unsigned)c->threads : 1;
    int rc = start_listener(&listeners[0], c->host, c->port, threads, threads + MAX_SPARE_THREADS);
    if (rc == 0) {
        /* The admin listener serves a handful of ops requests: two threads,
         * more while some wait on a reload. */
        rc = start_listener(&listeners[1], c->admin_host, c->admin_port, 2, 2 + 8);
        if (rc != 0)
            close_listener(&listeners[0]);
    }
    if (rc != 0) {
        keel__access_log_close();
        keel__deadlines_stop(deadlines);
        deadlines = NULL;
        if (ratelimit != keel__ratelimit_server_wide())
            keel__ratelimit_free(ratelimit);
        ratelimit = NULL;
        return rc;
    }
    if (!listeners[1].loopback && (c->admin_token == NULL || *c->admin_token == '\0'))
        log_warn("admin listener %s:%d is not loopback and has no admin.token: every admin "
                 "request will be refused",
                 c->admin_host, c->admin_port);
    return 0;
}

void keel__server_reopen_logs(void)
{
    keel__access_log_reopen();
}

void keel__server_quiesce(void)
{
    /* Stop accepting first, then let in-flight requests finish.  A socket
     * inherited from the supervisor is shared with the other workers and
     * the supervisor: shutting it down would refuse their connections too,
     * so it is only left alone (the supervisor closes the listeners when it
     * stops); one of this process's own is shut down (new connections are
     * refused) and closed when the server stops. */
    for (size_t i = 0; i < 2; i++) {
        keel__acceptor_quiesce(listeners[i].acceptor);
        if (listeners[i].own_fd && listeners[i].fd >= 0)
            shutdown(listeners[i].fd, SHUT_RDWR);
    }
}

void keel__server_stop(int timeout_s)
{
    keel__server_quiesce();
    int64_t until = keel__monotonic_ns() + (int64_t)timeout_s * 1000000000;
    for (;;) {
        long n = keel__server_in_flight();
        if (n == 0)
            break;
        if (keel__monotonic_ns() >= until) {
            log_warn("shutdown deadline of %d s passed with %ld request(s) still running",
                     timeout_s, n);
            break;
        }
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    /* libmicrohttpd cannot stop a daemon with a connection suspended: with
     * a request still running in the pool the lanes are left as they are
     * (the process is on its way out), with what the access log holds
     * written out. */
    if (keel__offload_stop() > 0) {
        keel__access_log_flush();
        return;
    }
    for (size_t i = 0; i < 2; i++)
        close_listener(&listeners[i]);
    keel__deadlines_stop(deadlines);
    deadlines = NULL;
    if (ratelimit != keel__ratelimit_server_wide())
        keel__ratelimit_free(ratelimit);
    ratelimit = NULL;
    keel__access_log_close();
}
