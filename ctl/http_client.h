/*
 * keelctl's blocking HTTP client, on libcurl: one request per connection
 * ("Connection: close"), plain http:// only (the admin listener speaks
 * nothing else), no redirects, every answer capped at max_body.
 *
 * Every function that can fail returns 0 or a negative KEEL_E* code and, on
 * failure, writes a one-line human-readable message into the caller's err
 * buffer that names the URL and, where one exists, the errno text.
 */
#ifndef KEEL_CTL_HTTP_CLIENT_H
#define KEEL_CTL_HTTP_CLIENT_H

#include <stddef.h>

#include <keel/common.h>

/* Default limits; a request may override each of them. */
#define HTTP_DEFAULT_CONNECT_TIMEOUT_MS 10000
#define HTTP_DEFAULT_IO_TIMEOUT_MS 300000
#define HTTP_DEFAULT_MAX_BODY ((size_t)64 * 1024 * 1024)

/* A parsed "http://host[:port][/prefix]" URL.  Plain storage, nothing to free. */
struct http_url {
    char text[2048];     /* normalised form: http://authority/prefix */
    char host[256];      /* what getaddrinfo gets: no IPv6 brackets */
    char authority[300]; /* what the Host header gets: [v6]:port */
    char port[6];        /* decimal, default 80 */
    char prefix[1024];   /* "" or "/a/b" with no trailing slash */
};

/* One request.  Nothing here is owned by the client. */
struct http_request {
    const char *method;       /* "GET", "POST" */
    const char *target;       /* "/admin/plugins?x=y"; appended to the URL prefix */
    const char *bearer_token; /* NULL or "" for none; must be header-safe */
    const char *content_type; /* NULL: no Content-Type header */
    const char *body;         /* may be NULL when body_len is 0 */
    size_t body_len;          /* sent as Content-Length for every POST/PUT/PATCH */
    const char *user_agent;   /* NULL: "keelctl" */
    int connect_timeout_ms;   /* 0: HTTP_DEFAULT_CONNECT_TIMEOUT_MS */
    int io_timeout_ms;        /* 0: HTTP_DEFAULT_IO_TIMEOUT_MS; idle time per read/write */
    size_t max_body;          /* 0: HTTP_DEFAULT_MAX_BODY; larger answers fail */
};

struct http_header_field {
    char *name;  /* as received */
    char *value; /* surrounding whitespace removed */
};

/* A complete response.  Owned by the caller; release with http_response_free(). */
struct http_response {
    int status;
    char *reason;
    struct http_header_field *headers;
    size_t nheaders;
    char *body;      /* always NUL-terminated (the NUL is not counted) */
    size_t body_len; /* the body after chunked decoding */
};

/*
 * Parses text into url.  Accepts http://host[:port][/prefix] where host is a
 * name, an IPv4 address or a bracketed IPv6 address; a missing scheme means
 * http.  https://, user info, queries and fragments are refused with a message
 * in err.  Returns 0, KEEL_EUNSUPPORTED (https) or KEEL_EINVAL.
 */
int http_url_parse(struct http_url *url, const char *text, char *err,
                   size_t errlen) KEEL_WARN_UNUSED;

/*
 * Sends req to url and reads the whole response into resp (which need not be
 * initialised).  Returns 0 for any well-formed HTTP answer, whatever its
 * status.  On failure resp holds nothing that needs freeing and the return
 * value says what failed: KEEL_EIO (could not resolve, connect, send or
 * receive), KEEL_ETIMEOUT, KEEL_ETOOBIG (body over max_body), KEEL_EINVAL
 * (malformed response or request), KEEL_EUNSUPPORTED (a transfer coding we
 * do not speak), KEEL_ENOMEM.
 */
int http_request_perform(const struct http_url *url, const struct http_request *req,
                         struct http_response *resp, char *err, size_t errlen) KEEL_WARN_UNUSED;

/* The value of the first header called name (case-insensitive), or NULL. */
const char *http_response_header(const struct http_response *resp, const char *name);

/* Frees what resp owns and zeroes it; safe on a zeroed or already freed resp. */
void http_response_free(struct http_response *resp);

#endif /* KEEL_CTL_HTTP_CLIENT_H */
