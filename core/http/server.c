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

#include "util/log.h"
#include "http/deadline.h"
#include "identity/ratelimit.h"
#include "http/routes.h"
#include "util/counters.h"

struct keel__runtime keel__rt;

struct listener {
    int index; /* enum keel__listener */
    const char *name;
    struct MHD_Daemon *daemon;
    bool loopback;
};

static struct listener listeners[2] = {
    {.index = KEEL__LISTENER_MAIN, .name = "main"},
    {.index = KEEL__LISTENER_ADMIN, .name = "admin"},
};

static atomic_long in_flight;
static atomic_ullong requests_total;
static int access_fd = -1;
static bool access_json;
/* Per-user rate limiting (NULL when limits.rate_per_user is 0) and the
 * request deadlines of the main listener (core/http/deadline.h). */
static keel__ratelimit *ratelimit;
static keel__deadlines *deadlines;

static int64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

long keel__server_in_flight(void)
{
    return atomic_load(&in_flight);
}

unsigned long long keel__server_requests_total(void)
{
    return atomic_load(&requests_total);
}

/* ------------------------------------------------------------ CORS */

static const char *allowed_origin(const char *origin)
{
    if (origin == NULL || keel__rt.conf == NULL)
        return NULL;
    const struct keel__conf *c = keel__rt.conf;
    for (size_t i = 0; i < c->cors.norigins; i++) {
        if (strcmp(c->cors.origins[i], "*") == 0)
            return c->cors.credentials ? origin : "*";
        if (strcasecmp(c->cors.origins[i], origin) == 0)
            return origin;
    }
    return NULL;
}

void keel__cors_headers(const keel_request *req, struct MHD_Response *resp)
{
    if (req->origin == NULL)
        return;
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", req->origin);
    MHD_add_response_header(resp, "Vary", "Origin");
    if (keel__rt.conf->cors.credentials)
        MHD_add_response_header(resp, "Access-Control-Allow-Credentials", "true");
}

/* Preflight: answered by the core for every known path, stubs included. */
static void answer_options(keel_request *req, const char *allow)
{
    const struct keel__conf *c = keel__rt.conf;
    const char *acrm = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                   "Access-Control-Request-Method");
    keel__req_add_header(req, "Allow", allow);
    if (acrm != NULL && req->origin != NULL) {
        char age[24];
        snprintf(age, sizeof age, "%d", c->cors.max_age);
        keel__req_add_header(req, "Access-Control-Allow-Methods", c->cors.methods);
        keel__req_add_header(req, "Access-Control-Allow-Headers", c->cors.headers);
        keel__req_add_header(req, "Access-Control-Max-Age", age);
    }
    keel__respond(req, 204, "", 0);
}

/* ------------------------------------------------------------ auth */

static int respond_unauthorized(keel_request *req, int status, const char *why)
{
    keel__req_add_header(req, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
    return keel__respond_json(req, 401,
                              json_pack("{s:{s:s, s:s}}", "detail", "error",
                                        keel__token_status_name(status), "message", why));
}

/*
 * Decides whether the request may reach its route.  Returns true to go on;
 * otherwise a response has been queued.  This is the only place where auth
 * levels are enforced, so no plugin can forget to.
 */
static bool authorize(keel_request *req, const struct keel__route *route)
{
    const char *hdr = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Authorization");

    if (req->listener == KEEL__LISTENER_ADMIN) {
        /* The admin listener trusts loopback; bound elsewhere it wants the
         * admin token on every route. */
        if (listeners[KEEL__LISTENER_ADMIN].loopback)
            return true;
        const char *want = keel__rt.conf->admin.token;
        const char *tok;
        size_t len;
        if (hdr == NULL || keel__auth_bearer(hdr, &tok, &len) != 0) {
            keel__respond_detail(req, 403, "Not authenticated");
            return false;
        }
        if (want == NULL || len != strlen(want) || CRYPTO_memcmp(tok, want, len) != 0) {
            keel__req_add_header(req, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
            keel__respond_detail(req, 401, "Invalid admin token");
            return false;
        }
        return true;
    }

    if (route->auth == KEEL__AUTH_PUBLIC)
        return true;

    const char *tok;
    size_t len;
    if (keel__auth_bearer(hdr, &tok, &len) != 0) {
        keel__respond_detail(req, 403, "Not authenticated");
        return false;
    }
    struct keel__claims claims;
    const char *why = "Invalid token";
    int st = keel__auth_verify(keel__rt.auth, tok, len, time(NULL), &claims, &why);
    if (st != KEEL__TOKEN_OK) {
        respond_unauthorized(req, st, why);
        return false;
    }
    /* Rate limiting comes before the user sync so that a refused request
     * costs no database work; it is keyed by the verified subject, so one
     * user's flood does not touch anyone else's bucket. */
    unsigned wait_s = 0;
    if (ratelimit != NULL &&
        keel__ratelimit_take(ratelimit, claims.sub, monotonic_ns(), &wait_s) == KEEL_EBUSY) {
        keel__claims_clear(&claims);
        char retry[16];
        snprintf(retry, sizeof retry, "%u", wait_s);
        keel__req_add_header(req, "Retry-After", retry);
        keel__respond_detail(req, 429, "Rate limit exceeded");
        return false;
    }
    int rc = keel__usersync_resolve(keel__rt.usersync, &claims, (int64_t)time(NULL),
                                    keel__req_alloc_ctx, req, &req->principal);
    keel__claims_clear(&claims);
    if (rc != 0) {
        keel__respond_detail(req, 503, "Service temporarily unavailable");
        return false;
    }
    req->has_principal = true;
    const char *status = req->principal.status;
    if (status != NULL && strcmp(status, "active") != 0 && strcmp(status, "pending") != 0) {
        keel__respond_detail(req, 403, "Account is not active");
        return false;
    }
    if (route->auth == KEEL__AUTH_ADMIN &&
        (req->principal.role == NULL || strcmp(req->principal.role, "admin") != 0)) {
        keel__respond_detail(req, 403, "Admin privileges required");
        return false;
    }
    return true;
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
        int rc = route->handler(req, route->state);
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

static long body_cap_for(int listener);

/* Called once the whole request (headers and body) has arrived. */
static void finish(keel_request *req)
{
    req->origin = allowed_origin(MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Origin"));

    /* The router decodes the path into this; the decoded path is never
     * longer than the path, which the URI limit bounds. */
    size_t scratch_len = strlen(req->path) + 1;
    req->match_scratch = keel__req_alloc(req, scratch_len);
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
        answer_options(req, allow);
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
        snprintf(msg, sizeof msg, "Request body too large (limit %ld bytes)",
                 body_cap_for(req->listener));
        keel__respond_detail(req, 413, msg);
        return;
    }
    if (!authorize(req, req->route))
        return;
    dispatch(req);
}

/* The admin listener takes bulk imports, so it has its own, larger cap. */
static long body_cap_for(int listener)
{
    if (keel__rt.conf == NULL)
        return 1048576;
    return listener == KEEL__LISTENER_ADMIN ? keel__rt.conf->limits.max_admin_body_bytes
                                            : keel__rt.conf->limits.max_body_bytes;
}

/* What begin() learns from one pass over the request's headers and query. */
struct header_scan {
    size_t header_bytes; /* as sent: "Name: value\r\n" each */
    size_t query_bytes;  /* "k=v&" each */
    unsigned content_lengths, transfer_encodings;
};

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    (void)kind;
    struct header_scan *s = cls;
    s->header_bytes += strlen(key) + (value != NULL ? strlen(value) : 0) + 4;
    if (strcasecmp(key, "Content-Length") == 0)
        s->content_lengths++;
    else if (strcasecmp(key, "Transfer-Encoding") == 0)
        s->transfer_encodings++;
    return MHD_YES;
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
static bool begin(keel_request *req)
{
    req->table = keel__table_acquire();

    /* Header and URI limits.  libmicrohttpd's connection memory is sized
     * above these (start_daemon), so requests between keel's limit and that
     * ceiling get keel's JSON answer; only beyond it does libmicrohttpd
     * answer 431/414 with its own HTML body. */
    const struct keel__conf *c = keel__rt.conf;
    struct header_scan scan = {0};
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, scan_header, &scan);
    MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, scan_query, &scan);
    if (c != NULL && scan.header_bytes > (size_t)c->limits.max_header_bytes) {
        char msg[96];
        snprintf(msg, sizeof msg, "Request headers too large (limit %ld bytes)",
                 c->limits.max_header_bytes);
        keel__respond_detail(req, 431, msg);
        return true;
    }
    if (c != NULL && strlen(req->path) + scan.query_bytes > (size_t)c->limits.max_uri_bytes) {
        char msg[96];
        snprintf(msg, sizeof msg, "URI too long (limit %d bytes)", c->limits.max_uri_bytes);
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
    const char *cl = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Content-Length");
    const char *te = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Transfer-Encoding");
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
    if (cl != NULL) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno != 0 || end == cl || *end != '\0') {
            keel__respond_detail(req, 400, "Invalid Content-Length");
            return true;
        }
        if (n > (unsigned long long)body_cap_for(req->listener)) {
            char msg[96];
            snprintf(msg, sizeof msg, "Request body too large (limit %ld bytes)",
                     body_cap_for(req->listener));
            keel__respond_detail(req, 413, msg);
            return true;
        }
        if (n > 0) {
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
    size_t cap = (size_t)body_cap_for(req->listener);
    size_t drain = keel__rt.conf ? (size_t)keel__rt.conf->limits.max_drain_bytes : 0;
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

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct listener *l = cls;
    keel_request *req = *con_cls;
    if (req == NULL) {
        req = keel__request_new(conn, l->index, method, url);
        if (req == NULL)
            return MHD_NO;
        *con_cls = req;
        atomic_fetch_add(&in_flight, 1);
        atomic_fetch_add_explicit(&requests_total, 1, memory_order_relaxed);
        return begin(req) ? MHD_YES : MHD_NO;
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
    /* The request is complete: the handler's time is not the client's. */
    keel__deadlines_received(conn);
    if (!req->responded)
        finish(req);
    return MHD_YES;
}

/* ------------------------------------------------------------ completion */

/* Writes one access log line.  A single write() on an O_APPEND descriptor
 * keeps lines from concurrent requests whole. */
static void access_write(const char *line, size_t len)
{
    ssize_t w = write(access_fd, line, len);
    (void)w;
}

/* The seconds part of the access log's timestamp, formatted once per second
 * per thread: gmtime_r() and strftime() on every request were a third of
 * the access log's instructions (docs/performance.md). */
static _Thread_local time_t ts_second = (time_t)-1;
static _Thread_local char ts_seconds[32];
static _Thread_local size_t ts_seconds_len;

static void access_log(const keel_request *req, unsigned status, int64_t ns)
{
    if (access_fd < 0)
        return;
    /* ISO 8601 UTC with milliseconds, the same in both formats. */
    char ts[40];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec != ts_second) {
        struct tm tm;
        gmtime_r(&now.tv_sec, &tm);
        ts_seconds_len = strftime(ts_seconds, sizeof ts_seconds, "%Y-%m-%dT%H:%M:%S", &tm);
        ts_second = now.tv_sec;
    }
    long ms = now.tv_nsec / 1000000;
    memcpy(ts, ts_seconds, ts_seconds_len);
    snprintf(ts + ts_seconds_len, sizeof ts - ts_seconds_len, ".%03ldZ", ms);
    const struct keel__route *r = req->route;
    const char *plugin = r && r->plugin ? r->plugin : (r ? "core" : "-");
    unsigned long long gen = r ? (unsigned long long)r->generation : 0;
    const char *user = req->has_principal && req->principal.user_id ? req->principal.user_id
                       : req->has_principal                         ? req->principal.supabase_id
                                                                    : "-";
    if (user == NULL)
        user = "-";
    if (access_json) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:f, s:s, s:I, s:s, s:s}", "time", ts, "method",
                              req->method, "path", req->path, "status", (int)status, "latency_ms",
                              (double)ns / 1e6, "plugin", plugin, "generation", (json_int_t)gen,
                              "user", user, "listener", listeners[req->listener].name);
        /* Nine significant digits keep nanosecond latencies without the
         * binary noise of a full double. */
        char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
        json_decref(o);
        if (s == NULL)
            return;
        /* The line is as long as the request's path (bounded by the
         * listener's header memory limit), so it is sized, not truncated. */
        size_t len = strlen(s);
        char *line = realloc(s, len + 2);
        if (line == NULL) {
            free(s);
            return;
        }
        line[len] = '\n';
        access_write(line, len + 1);
        free(line);
        return;
    }
    /* The latency in microseconds, rounded, printed as milliseconds with
     * three decimals: the digits of "%.3f" without glibc's floating-point
     * formatting, the other big share of the line's cost. */
    long long us = ns > 0 ? (ns + 500) / 1000 : 0;
#define ACCESS_TEXT(buf, size)                                                                     \
    snprintf(buf, size, "%s %s %s %s %u %lld.%03lldms plugin=%s gen=%llu user=%s\n", ts,           \
             listeners[req->listener].name, req->method, req->path, status, us / 1000, us % 1000,  \
             plugin, gen, user)
    char stack[1024];
    char *line = stack;
    int n = ACCESS_TEXT(stack, sizeof stack);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof stack) {
        /* A long path: format again into a buffer that fits the line. */
        line = malloc((size_t)n + 1);
        if (line == NULL)
            return;
        ACCESS_TEXT(line, (size_t)n + 1);
    }
#undef ACCESS_TEXT
    access_write(line, (size_t)n);
    if (line != stack)
        free(line);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    keel_request *req = *con_cls;
    if (req == NULL)
        return;
    *con_cls = NULL;
    int64_t ns = keel__request_elapsed_ns(req);
    /* A request that never got a response (client gone) counts as 499, the
     * status proxies use for that, so it is visible in metrics. */
    unsigned status = req->responded ? req->status : 499;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && !req->responded)
        status = 499;
    keel__metrics_observe(req->route ? req->route->metrics : NULL, status, ns);
    access_log(req, status, ns);
    keel__request_free(req);
    atomic_fetch_sub(&in_flight, 1);
    /* A kept-alive connection now waits for its next request, on a clock. */
    keel__deadlines_rearm(conn);
}

/* ------------------------------------------------------------ daemons */

static void mhd_log(void *cls, const char *fmt, va_list ap) KEEL_PRINTF(2, 0);

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
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

static int start_daemon(struct listener *l, const char *host, int port, unsigned threads)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE};
    struct addrinfo *ai = NULL;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int gai = getaddrinfo(host, portstr, &hints, &ai);
    if (gai != 0) {
        log_error("%s listener: cannot resolve %s: %s", l->name, host, gai_strerror(gai));
        return KEEL_ECONFIG;
    }
    l->loopback = is_loopback(ai->ai_addr);
    const struct keel__conf *c = keel__rt.conf;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
#ifdef __linux__
    flags |= MHD_USE_EPOLL;
#else
    flags |= MHD_USE_POLL;
#endif
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_OptionItem opts[16];
    size_t n = 0;
    /* The logger must come first or MHD prints early messages itself. */
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)mhd_log, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, ai->ai_addr};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t)keep_escaped, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT,
                                        (intptr_t)(unsigned)c->server.connection_timeout_s, NULL};
    if (threads > 1)
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE, (intptr_t)threads, NULL};
    if (c->limits.max_connections > 0)
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT,
                                            (intptr_t)(unsigned)c->limits.max_connections, NULL};
    if (c->limits.max_per_ip > 0)
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                                            (intptr_t)(unsigned)c->limits.max_per_ip, NULL};
    /* libmicrohttpd keeps the request line and headers in this per-connection
     * memory and answers 431/414 itself (HTML body) when they do not fit.
     * Twice keel's own limits (at least MHD's default of 32 KiB) leaves room
     * for begin() to answer requests past those limits with JSON. */
    size_t mem = 2 * ((size_t)c->limits.max_header_bytes + (size_t)c->limits.max_uri_bytes);
    if (mem < 32 * 1024)
        mem = 32 * 1024;
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_MEMORY_LIMIT, (intptr_t)mem, NULL};
    if (l->index == KEEL__LISTENER_MAIN && deadlines != NULL)
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION,
                                            (intptr_t)keel__deadlines_notify, deadlines};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};

    l->daemon = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_access, l, MHD_OPTION_ARRAY,
                                 opts, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (l->daemon == NULL) {
        log_error("%s listener: cannot listen on %s:%d (address in use or not permitted)", l->name,
                  host, port);
        return KEEL_EIO;
    }
    log_info("%s listener on %s:%d (%u worker thread%s)", l->name, host, port, threads,
             threads == 1 ? "" : "s");
    return 0;
}

static void open_access_log(void)
{
    const char *dest = keel__rt.conf->log.access_log;
    access_json = keel__rt.conf->log.access_format != NULL &&
                  strcmp(keel__rt.conf->log.access_format, "json") == 0;
    if (dest == NULL || *dest == '\0' || strcmp(dest, "off") == 0)
        access_fd = -1;
    else if (strcmp(dest, "-") == 0)
        access_fd = 2;
    else {
        access_fd = open(dest, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (access_fd < 0)
            log_error("cannot open access log %s: %s; access log off", dest, strerror(errno));
    }
}

int keel__server_start(void)
{
    const struct keel__conf *c = keel__rt.conf;
    open_access_log();
    if (c->limits.rate_per_user > 0) {
        struct keel__ratelimit_conf rc_conf = {.rate = (unsigned)c->limits.rate_per_user,
                                               .burst = (unsigned)c->limits.rate_burst};
        if (keel__ratelimit_new(&rc_conf, &ratelimit) != 0) {
            log_error("cannot set up rate limiting");
            return KEEL_ENOMEM;
        }
        log_info("rate limit: %d request(s)/s per user, burst %d", c->limits.rate_per_user,
                 c->limits.rate_burst > 0 ? c->limits.rate_burst : c->limits.rate_per_user);
    }
    /* The bound on receiving a request is the connection timeout: what
     * libmicrohttpd applies to silence, keel applies to slowness. */
    if (keel__deadlines_start(c->server.connection_timeout_s, &deadlines) != 0)
        log_warn("request deadlines are off: slow clients are bounded only by inactivity");
    int rc = start_daemon(&listeners[0], c->server.host, c->server.port,
                          (unsigned)keel__rt.threads);
    if (rc == 0) {
        /* The admin listener serves a handful of ops requests: two threads. */
        rc = start_daemon(&listeners[1], c->admin.host, c->admin.port, 2);
        if (rc != 0) {
            MHD_stop_daemon(listeners[0].daemon);
            listeners[0].daemon = NULL;
        }
    }
    if (rc != 0) {
        keel__deadlines_stop(deadlines);
        deadlines = NULL;
        keel__ratelimit_free(ratelimit);
        ratelimit = NULL;
        return rc;
    }
    if (!listeners[1].loopback && (c->admin.token == NULL || *c->admin.token == '\0'))
        log_warn("admin listener %s:%d is not loopback and has no admin.token: every admin "
                 "request will be refused",
                 c->admin.host, c->admin.port);
    return 0;
}

void keel__server_stop(int timeout_s)
{
    /* Stop accepting first, then let in-flight requests finish.  The
     * workers drop the quiesced socket from their epoll sets on their own
     * time, so it is only shut down here (new connections are refused) and
     * closed once the daemons have stopped: closing it now would let its
     * number be reused under a worker's epoll_ctl. */
    MHD_socket quiesced[2] = {MHD_INVALID_SOCKET, MHD_INVALID_SOCKET};
    for (size_t i = 0; i < 2; i++) {
        if (listeners[i].daemon == NULL)
            continue;
        quiesced[i] = MHD_quiesce_daemon(listeners[i].daemon);
        if (quiesced[i] != MHD_INVALID_SOCKET)
            shutdown(quiesced[i], SHUT_RDWR);
    }
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        long n = keel__server_in_flight();
        if (n == 0)
            break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec >= timeout_s) {
            log_warn("shutdown deadline of %d s passed with %ld request(s) still running",
                     timeout_s, n);
            break;
        }
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    for (size_t i = 0; i < 2; i++) {
        if (listeners[i].daemon != NULL)
            MHD_stop_daemon(listeners[i].daemon);
        listeners[i].daemon = NULL;
        if (quiesced[i] != MHD_INVALID_SOCKET)
            close(quiesced[i]);
    }
    keel__deadlines_stop(deadlines);
    deadlines = NULL;
    keel__ratelimit_free(ratelimit);
    ratelimit = NULL;
    if (access_fd > 2)
        close(access_fd);
    access_fd = -1;
}
