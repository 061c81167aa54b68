/*
 * The request object the core builds for every HTTP request.  Plugins see it
 * as the opaque keel_request and use host accessors; core modules include
 * this header.
 *
 * Memory: everything hanging off a request comes from its arena or is
 * registered on its cleanup list, both released by keel__request_free() when
 * libmicrohttpd reports the request completed, so an early return cannot
 * leak a PGresult, json_t or jwt_t.
 */
#ifndef KEEL_CORE_HTTP_REQUEST_H
#define KEEL_CORE_HTTP_REQUEST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <microhttpd.h>

#include <keel/plugin.h>

#include "http/router.h"
#include "identity/usersync.h"

struct keel__arena_block;
struct keel__cleanup;
struct keel__table;
struct keel__route;
struct keel__spool;

/* A refusal at the edge (core/http/edge.h): HTTP status and the detail
 * message (static text).  Here because every request keeps one. */
struct keel__edge_verdict {
    unsigned status; /* 0 = accepted */
    const char *detail;
};

/* One header as libmicrohttpd handed it out: pointers into its buffer.  The
 * lengths are keel__edge_check_fields()'s (core/http/edge.h) to fill in, as
 * it checks them.  Here because a request keeps its fields and
 * keel__req_header() reads them. */
struct keel__edge_field {
    const char *name;
    const char *value;
    size_t name_len;
    size_t value_len;
};

struct keel__header {
    char *name;
    char *value;
    size_t name_len;
    struct keel__header *next;
};

/*
 * A test seam for keel-plugin-check (tools/keel-plugin-check.c), which drives
 * plugin handlers through the real host API without libmicrohttpd.  A request
 * whose conn is NULL and whose synthetic points here reads its headers and
 * query arguments from these tables, and keel__respond() records the
 * response here instead of queueing it on a connection.  Requests from the
 * server always have a connection and a NULL synthetic, so their path only
 * gains one pointer test.  The tables and this struct are owned by the
 * caller and must outlive the request; the recorded body lives in the
 * request's arena, so read it before keel__request_free().
 */
struct keel__synthetic {
    /* "name", "value", "name", "value", ..., NULL; names are compared
     * without regard to case, like libmicrohttpd does.  Query values are
     * raw (percent-encoded), as they would appear in the URL. */
    const char *const *headers;
    const char *const *query;
    unsigned responses; /* every attempt to respond, including refused repeats */
    unsigned status;    /* of the response that was recorded */
    char *body;         /* NUL-terminated copy of its body, or NULL */
    size_t body_len;
};

/* The value of name in a synthetic name/value table, or NULL. */
const char *keel__synthetic_lookup(const char *const *table, const char *name);

struct keel_request {
    struct MHD_Connection *conn;       /* NULL only for synthetic requests */
    struct keel__synthetic *synthetic; /* see struct keel__synthetic; NULL normally */
    int listener;                      /* enum keel__listener */
    const char *method;
    const char *path; /* without query string */
    /* The request target as sent (query included, up to a NUL if it held
     * one), from libmicrohttpd's URI log callback (core/http/edge.h). */
    const char *target;
    size_t target_len;
    struct keel__edge_verdict target_verdict; /* keel__edge_check_target() */
    /* The header fields in the order received, with their lengths, once
     * keel__edge_check_request has collected and accepted them (in the
     * request's memory); none before, and none for a head it refused.
     * keel__req_header() looks them up instead of libmicrohttpd's list. */
    const struct keel__edge_field *fields;
    size_t nfields;
    /* Bit n set when a collected field's name is n bytes long (n < 64; bit
     * 0 for longer names): keel__req_header() answers "absent" for a name
     * of no collected length without walking the fields. */
    uint64_t field_lengths;
    uint64_t id;
    /* See core/http/clientaddr.h: X-Request-Id and who sent the request;
     * identified once keel__request_identify() has set them ("-" before). */
    bool identified;
    char request_id[129];
    char client_addr[47];
    /* Run once, when the answer is queued or at the latest when the request
     * is freed: gives back what counts the request as in flight (its
     * max_per_ip slot, http/clientaddr.c). */
    void (*on_answered)(keel_request *req);
    int64_t start_ns;

    /* Routing: the table snapshot this request was dispatched on holds a
     * reference to the plugin generation until the request completes. */
    struct keel__table *table;
    const struct keel__route *route;
    struct keel__route_match match;
    char *match_scratch;

    /* Body, accumulated up to the configured cap, and how deep a JSON body
     * may nest (0: KEEL__JSON_DEPTH_DEFAULT). */
    char *body;
    size_t body_len;
    size_t body_cap;
    bool body_too_large;
    json_t *json_body;
    struct keel__spool *spool; /* a streamed body's file (core/http/body.h), or NULL */
    size_t line_pos;           /* keel__body_line() on an in-memory body */
    int max_json_depth;

    /* Authentication. */
    bool has_principal;
    struct keel__principal principal;

    /* Response. */
    bool responded;
    unsigned status;
    /* Run off the event loop (core/http/offload.h): the connection is
     * suspended, so the response is parked here and its lane queues it
     * once the connection is resumed (keel__request_unpark). */
    bool parking;
    bool offloaded; /* it went to the pool (its lane was cleared of it) */
    bool waited;    /* its handler waited on I/O (util/blocking.h) */
    struct MHD_Response *parked;
    struct keel__header *headers; /* extra response headers */
    const char *origin;           /* allowed CORS origin to echo, or NULL */

    /* Database. */
    /* Result wrappers freed early by the plugin, reused by the next
     * statement so that freeing keeps the request's memory flat. */
    struct keel_db_result *spare_results;
    /* The last upstream_request failure (arena string), or NULL. */
    char *upstream_error;

    struct keel__arena_block *arena;
    struct keel__cleanup *cleanups;

    /* Text buffers last: keel__request_new zeroes the fields above and
     * only terminates these. */
    char db_error[256];
};

/* method is NULL while only the request line is in (the URI log callback);
 * the server sets it once the headers are. */
keel_request *keel__request_new(struct MHD_Connection *conn, int listener, const char *method,
                                const char *url);
/* Queues the response parked while the request ran off the event loop, on
 * the connection's own thread.  Returns 0, KEEL_ENOMEM when none was
 * parked, or KEEL_EIO (recorded as 500). */
int keel__request_unpark(keel_request *req);
/* Runs cleanups in reverse order, drops the table reference, frees everything. */
void keel__request_free(keel_request *req);

/* The status metrics and the access log record for req once it ended:
 * what was sent, 499 when nothing was because the client left (or never
 * asked: completed_ok false), 500 when a response could not be queued. */
unsigned keel__request_final_status(const keel_request *req, bool completed_ok);

/* The request's clock starts again now: latency counts from the moment its
 * headers are in, not from its request line (a slow client's own time). */
void keel__request_restart_clock(keel_request *req);

/* Request-lifetime allocation (zeroed), aligned for any type.  NULL when
 * memory runs out or size is absurd (beyond SIZE_MAX / 4). */
void *keel__req_alloc(keel_request *req, size_t size);
/* The same, not zeroed: for memory the caller fills at once. */
void *keel__req_alloc_raw(keel_request *req, size_t size);
/* Bytes the request's arena has taken from malloc so far (for tests). */
size_t keel__request_arena_bytes(const keel_request *req);
/* Matches the usersync allocator signature: ctx is the request. */
void *keel__req_alloc_ctx(void *ctx, size_t size);
char *keel__req_strdup(keel_request *req, const char *s);
int keel__req_on_cleanup(keel_request *req, void (*fn)(void *), void *arg);

/* The default of limits.max_json_depth. */
#define KEEL__JSON_DEPTH_DEFAULT 32

/*
 * Accessors.  The host API table (core/plugin/hostapi.c) hands these to
 * plugins as they are; include/keel/plugin.h documents each.  The core's own
 * routes call them directly.
 */
const char *keel__req_method(const keel_request *req);
const char *keel__req_path(const keel_request *req);
const char *keel__req_param(const keel_request *req, const char *name);
const char *keel__req_query(const keel_request *req, const char *name);
int keel__req_query_arg(const keel_request *req, const char *name, const char **value);
const char *keel__req_header(const keel_request *req, const char *name);
/* Gives req the n fields the edge check accepted (f stays the caller's, in
 * the request's memory), for keel__req_header(). */
void keel__req_set_fields(keel_request *req, const struct keel__edge_field *f, size_t n);
const char *keel__req_body(const keel_request *req, size_t *len);
/* Parses the body once (415/413/400 queued on failure); *out owned by req. */
int keel__req_json_body(keel_request *req, json_t **out);
/* A field (enum keel_user_field) of the request's principal, or NULL. */
const char *keel__req_user(const keel_request *req, int field);

/*
 * The request-independent part of req_json_body: parses len bytes of body
 * strictly (duplicate keys, invalid UTF-8 and \u0000 refused by jansson),
 * refuses containers nested more than max_depth deep and anything but an
 * object.  Returns 0 with *out a new reference, or KEEL_EINVAL with a
 * message for the client in msg (*out NULL).  Pure: the fuzz harness calls it.
 */
int keel__json_body_parse(const char *body, size_t len, int max_depth, json_t **out, char *msg,
                          size_t msglen);

/* Counts the response in keel_degraded_responses_total when its headers say
 * it was degraded or a fallback (at completion). */
void keel__req_count_degraded(const keel_request *req);
/* Adds a response header (copied). */
int keel__req_add_header(keel_request *req, const char *name, const char *value);

/*
 * Queues a response: body bytes are copied; the extra headers (CORS ones
 * among them, added by the server once the origin is known) and
 * Content-Type application/json are added.  Only the first call per request
 * takes effect; later ones return KEEL_ERESPONDED.
 */
int keel__respond(keel_request *req, unsigned status, const char *body, size_t len);
/* Serialises body (stolen) compactly and queues it. */
int keel__respond_json(keel_request *req, unsigned status, json_t *body);
/* {"detail": detail}. */
int keel__respond_detail(keel_request *req, unsigned status, const char *detail);
/* Queues the JSON a json_pack()-style format describes, written without a
 * tree (util/jsonout.h: keel__json_vpack; 'O' values are only read, so a
 * tree other threads also read may be written).  A format or value that
 * cannot be written is logged and answered 500, and KEEL_EINVAL returned
 * (KEEL_ENOMEM when memory ran out). */
int keel__respond_packv(keel_request *req, unsigned status, const char *fmt, va_list ap);
int keel__respond_pack(keel_request *req, unsigned status, const char *fmt, ...);
/* Queues resp (taken over, NULL counts as out of memory) with the extra
 * headers and content_type, for bodies libmicrohttpd streams itself. */
int keel__respond_mhd(keel_request *req, unsigned status, struct MHD_Response *resp,
                      const char *content_type);
/* Queues body (malloc'd, always taken over) with its own Content-Type. */
int keel__respond_owned(keel_request *req, unsigned status, const char *content_type, char *body,
                        size_t len);

#endif
