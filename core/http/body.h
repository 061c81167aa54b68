/*
 * Admin request bodies: how much each may hold, how many may arrive at
 * once, and the ones that never sit in memory.
 *
 * The admin listener takes bulk NDJSON imports.  Holding such a body in
 * memory made its cap a memory budget per request, and concurrent requests
 * multiplied it.  So every admin route gets the small cap
 * limits.max_admin_body_bytes, except routes whose manifest says
 * "body": "stream": their body is written to an unlinked temporary file as
 * it arrives (up to limits.max_admin_stream_bytes) and the handler reads it
 * back one line at a time (keel_host.req_body_line) through a buffer of at
 * most limits.max_body_line_bytes.  At most limits.max_admin_bodies admin
 * requests with a body are received at once; more get 503 with
 * Retry-After.
 */
#ifndef KEEL_CORE_HTTP_BODY_H
#define KEEL_CORE_HTTP_BODY_H

#include <stdbool.h>
#include <stddef.h>

#include <keel/common.h>
#include <keel/plugin.h>

struct keel__spool;

/*
 * Called once the headers of a request with a body are in (has_body).  On
 * the admin listener: refuses (queues 503) when max_admin_bodies are
 * already arriving, and opens a spool when the route streams its body.
 * Returns false when a response was queued or the spool could not be
 * opened (then a 503 was queued too).
 */
bool keel__body_admit(keel_request *req, bool has_body);

/* The cap for req's body: main, admin, or admin streamed. */
long keel__body_cap(const keel_request *req);

/* Appends to req's spool.  Returns 0 or KEEL_EIO. */
int keel__spool_write(struct keel__spool *s, const char *data, size_t len) KEEL_WARN_UNUSED;

/*
 * The next line of req's body, without its "\n" (a "\r" before it is
 * kept).  *line stays valid until the next call.  Returns 1 with a line, 0
 * at the end, KEEL_ETOOBIG for a line longer than limits.max_body_line_bytes
 * (skipped: the next call reads the line after it), KEEL_EIO when the spool
 * cannot be read.  Works on in-memory bodies too.
 */
int keel__body_line(keel_request *req, const char **line, size_t *len);

#endif
