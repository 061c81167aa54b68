/*
 * Byte-level checks on a request's head, run once libmicrohttpd has parsed
 * it and before keel routes it (docs/reliability.md, "Request framing").
 *
 * libmicrohttpd 0.9.75 is lenient where a front proxy and keel could
 * disagree about where a request ends or what it asks for: it keeps a
 * header named "Content-Length " (space before the colon) as a header of
 * its own, hands over a request target cut at a raw NUL, keeps bare CR and
 * cuts values at NUL, unfolds obsolete line folding into odd names, and
 * passes any "HTTP/x.y" version.  Its API shows only the NUL-terminated
 * strings, so these checks also look at the raw header block: libmicrohttpd
 * parses the request line and headers in place in its read buffer, turning
 * each CR, LF and header colon into a NUL and handing out pointers into
 * that buffer.  Every byte of the block between the pieces it handed out
 * must then be one of those separators (or optional whitespace); any other
 * byte is something it hid (the rest of a value after a NUL, a folded
 * continuation line).  The pure checks below take those pieces as pointers
 * and lengths, so the unit tests build such blocks by hand.
 *
 * Every refusal is answered by the caller with keel's JSON and
 * "Connection: close": after a malformed head the next request on the
 * connection cannot be trusted to start where libmicrohttpd thinks.
 */
#ifndef KEEL_CORE_HTTP_EDGE_H
#define KEEL_CORE_HTTP_EDGE_H

#include <stdbool.h>
#include <stddef.h>

#include <keel/common.h>
#include <keel/plugin.h>

#include "http/request.h"

/* struct keel__edge_verdict (a refusal) and struct keel__edge_field (one
 * collected header) are in http/request.h, which keeps them per request;
 * edge.c reads the request, so the include points this way. */

/* True when s is a non-empty RFC 9110 token (a valid header name). */
bool keel__edge_is_token(const char *s);

/* True when a header value holds no control byte other than HTAB. */
bool keel__edge_value_ok(const char *s);

/*
 * The request target as the URI log callback sees it (up to the first NUL,
 * before libmicrohttpd splits off the query in place).  Refuses (400) a
 * control byte, a space or DEL, and a target that is neither origin-form
 * ("/..."), absolute-form ("http://host/...") nor "*".
 */
struct keel__edge_verdict keel__edge_check_target(const char *target, size_t len);

/*
 * The request line once parsed.  method, target and version point into one
 * buffer; target_len is the length keel__edge_check_target() saw.  Refuses
 * (400) anything between the pieces but one separator (a NUL in the target
 * or the method leaves more); answers 505 for a version other than HTTP/1.0
 * and HTTP/1.1.
 */
struct keel__edge_verdict keel__edge_check_line(const char *method, const char *target,
                                                size_t target_len, const char *version);

/*
 * The header block: fields in the order received, `version` as above and
 * end = one past the head's last byte (the request line starts the head).
 * Refuses (400) a name that is not a token, a value with a control byte,
 * bytes hidden between fields (a NUL inside a value, obsolete line
 * folding), fields out of order or outside the block, and a missing (on
 * HTTP/1.1) or repeated Host.  Sets each field's name_len and value_len
 * (up to a field it refuses).
 */
struct keel__edge_verdict keel__edge_check_fields(const char *version, const char *end,
                                                  struct keel__edge_field *f, size_t n);

/* The path of an absolute-form target ("http://h/p?q" -> "/p?q"; "/" when
 * there is none); any other target is returned as it is. */
const char *keel__edge_origin_path(const char *target);

/* What the admin listener answers to: the address it is bound to and the
 * names configured for it. */
struct keel__edge_admin {
    const char *host;  /* configured bind address (name or literal) */
    const char *local; /* the connection's local address literal, or NULL */
    int port;
    bool loopback;
    const char *const *names; /* admin.allowed_hosts */
    size_t nnames;
};

/* True when a Host header value names the admin listener. */
bool keel__edge_admin_host_ok(const struct keel__edge_admin *a, const char *host);

/*
 * The admin listener's rules against cross-site use from a browser: a Host
 * that is not the listener's (421, DNS rebinding), any Origin header (403),
 * a write (any method but GET, HEAD, OPTIONS) without a JSON or NDJSON
 * Content-Type (415; text/plain and form types need no CORS preflight).
 * host, origin and content_type may be NULL (absent).
 */
struct keel__edge_verdict keel__edge_check_admin(const struct keel__edge_admin *a,
                                                 const char *method, const char *host,
                                                 const char *origin, const char *content_type);

/*
 * Runs every check above on a request from libmicrohttpd: req->target,
 * req->target_len and req->target_verdict must be set from the URI log
 * callback, req->method and req->path from the access handler.  On success an absolute-form target's
 * path replaces req->path.  On a refused target req->path becomes the whole
 * target with its control bytes escaped, so the access log shows what was
 * sent.
 */
struct keel__edge_verdict keel__edge_check_request(keel_request *req, const char *version);

/* s[0..len) in the request's memory with control bytes, space, DEL and
 * backslash written as \xNN (for the access log); s itself when memory
 * runs out. */
const char *keel__edge_escape(keel_request *req, const char *s, size_t len);

#endif
