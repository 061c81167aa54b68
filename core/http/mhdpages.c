/*
 * libmicrohttpd's own answers, in keel's JSON.
 *
 * libmicrohttpd refuses some requests itself, before keel's handler runs
 * (a request line without a version, a header line without a colon, an
 * unparseable Content-Length, a head larger than the connection memory) or
 * in the middle of a body (a chunk-size line longer than the read buffer).
 * It answers those with a short HTML page, and 0.9.75 has no option or
 * callback that sees the page before it is sent.  It does queue each page
 * through its exported MHD_queue_response, called through the PLT, so the
 * dynamic linker binds that call to the first definition in the process:
 * keeld defines the symbol below, replaces the page with keel's JSON body
 * (and a chunk line too long, which libmicrohttpd reports as its own 500,
 * with the client's 413), and hands the result to libmicrohttpd's function.
 *
 * keel's own responses never come through here: keel__mhd_queue() calls
 * libmicrohttpd's function directly.  tests/integration/test_edge.py sends
 * each of these requests as raw bytes and checks the JSON, so a
 * libmicrohttpd that binds the call internally would be noticed.
 */
#include "config.h"

#include "http/mhdpages.h"

#include <ctype.h>
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "util/log.h"

typedef enum MHD_Result (*queue_fn)(struct MHD_Connection *, unsigned int, struct MHD_Response *);

static _Atomic(queue_fn) real_queue;
/* The limits named in the 431 and 414 answers (set before serving). */
static long max_header_bytes;
static int max_uri_bytes;

static int find_real_queue(void)
{
    if (atomic_load(&real_queue) != NULL)
        return 0;
    queue_fn fn = (queue_fn)dlsym(RTLD_NEXT, "MHD_queue_response");
    if (fn == NULL || fn == MHD_queue_response) {
        keel__log(KEEL_LOG_ERROR, "core", "libmicrohttpd's MHD_queue_response not found: %s",
                  fn == NULL ? dlerror() : "it resolves to keel's own");
        return KEEL_EINVAL;
    }
    atomic_store(&real_queue, fn);
    return 0;
}

int keel__mhd_pages_init(long header_limit, int uri_limit)
{
    max_header_bytes = header_limit;
    max_uri_bytes = uri_limit;
    return find_real_queue();
}

enum MHD_Result keel__mhd_queue(struct MHD_Connection *conn, unsigned int status,
                                struct MHD_Response *resp)
{
    queue_fn fn = atomic_load(&real_queue);
    if (fn == NULL) {
        if (find_real_queue() != 0)
            return MHD_NO;
        fn = atomic_load(&real_queue);
    }
    return fn(conn, status, resp);
}

static bool is_chunked(struct MHD_Connection *conn)
{
    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Transfer-Encoding");
    return te != NULL && strcasecmp(te, "chunked") == 0;
}

static bool length_is_digits(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

/* What keel says for a status libmicrohttpd chose; *status may change. */
static void describe(struct MHD_Connection *conn, unsigned *status, char *out, size_t n)
{
    const char *length = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");

    switch (*status) {
    case 400:
        if (length != NULL && !length_is_digits(length))
            snprintf(out, n, "Content-Length is not a decimal number of bytes");
        else
            snprintf(out, n, "Malformed request line or header line");
        return;
    case 413:
        snprintf(out, n, "Content-Length too large");
        return;
    case 414:
        snprintf(out, n, "URI too long (limit %d bytes)", max_uri_bytes);
        return;
    case 431:
        snprintf(out, n, "Request headers too large (limit %ld bytes)", max_header_bytes);
        return;
    case 505:
        snprintf(out, n, "HTTP version not supported (only HTTP/1.0 and HTTP/1.1)");
        return;
    case 500:
        /* keel takes every body byte it is offered, so the one way a body
         * fills libmicrohttpd's read buffer is a chunk-size line (the size
         * plus its extensions) that does not fit: the client's doing. */
        if (is_chunked(conn)) {
            *status = 413;
            snprintf(out, n, "Chunk size line (size and extensions) too long");
            return;
        }
        snprintf(out, n, "Internal Server Error");
        return;
    default: {
        const char *phrase = MHD_get_reason_phrase_for(*status);
        snprintf(out, n, "%s", phrase != NULL && *phrase != '\0' ? phrase : "Error");
        return;
    }
    }
}

/* libmicrohttpd's own call for its built-in pages (see the top): visible,
 * and exported from keeld by its link flags. */
KEEL_EXPORT enum MHD_Result MHD_queue_response(struct MHD_Connection *conn, unsigned int status,
                                               struct MHD_Response *page)
{
    unsigned sent = status;
    char detail[128], body[192];

    describe(conn, &sent, detail, sizeof detail);
    int len = snprintf(body, sizeof body, "{\"detail\":\"%s\"}", detail);
    struct MHD_Response *resp = MHD_create_response_from_buffer((size_t)len, body,
                                                                MHD_RESPMEM_MUST_COPY);
    if (resp == NULL) /* keep libmicrohttpd's page rather than none */
        return keel__mhd_queue(conn, status, page);
    MHD_add_response_header(resp, "Content-Type", "application/json");
    enum MHD_Result r = keel__mhd_queue(conn, sent, resp);
    MHD_destroy_response(resp);
    keel__log(KEEL_LOG_DEBUG, "core", "libmicrohttpd refused a request: %u, answered %u (%s)",
              status, sent, detail);
    return r;
}
