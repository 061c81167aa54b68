#include "config.h"

#include "http_client.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <keel/error.h>

/* Limits on what the server may send besides the body. */
#define MAX_HEAD_BYTES (64 * 1024)
#define MAX_HEADERS 128
#define MAX_CHUNK_LINE 4096
#define MAX_TRAILER_BYTES (64 * 1024)

static void KEEL_PRINTF(3, 4) set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------ buffers */

/* A growable byte buffer with a hard maximum, so that nothing the server
 * sends can make us allocate without bound. */
struct buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max;
};

static int buf_append(struct buf *b, const void *data, size_t len)
{
    if (len > b->max - b->len)
        return KEEL_ETOOBIG;
    /* Always keep room for a terminating NUL so the body can be a C string. */
    size_t need = b->len + len + 1;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        char *p = realloc(b->data, cap);
        if (p == NULL)
            return KEEL_ENOMEM;
        b->data = p;
        b->cap = cap;
    }
    if (len > 0)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

static void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* -------------------------------------------------------------------- URLs */

static bool is_host_char(int c)
{
    return isalnum(c) || c == '-' || c == '.' || c == '_';
}

/* Characters allowed in the path prefix without escaping (RFC 3986 pchar
 * plus '/'); anything else would have to be percent-encoded by the user. */
static bool is_path_char(int c)
{
    return isalnum(c) || strchr("-._~!$&'()*+,;=:@/%", c) != NULL;
}

int http_url_parse(struct http_url *url, const char *text, char *err, size_t errlen)
{
    memset(url, 0, sizeof *url);
    if (text == NULL || *text == '\0') {
        set_err(err, errlen, "empty admin URL");
        return KEEL_EINVAL;
    }
    const char *p = text;
    const char *sep = strstr(text, "://");
    if (sep != NULL) {
        size_t slen = (size_t)(sep - text);
        if (slen == 5 && strncasecmp(text, "https", 5) == 0) {
            set_err(err, errlen,
                    "%s: https is not supported; keelctl speaks plain http to the admin "
                    "listener (reach a remote one through an SSH tunnel or a local proxy)",
                    text);
            return KEEL_EUNSUPPORTED;
        }
        if (slen != 4 || strncasecmp(text, "http", 4) != 0) {
            set_err(err, errlen, "%s: unsupported URL scheme (only http:// is supported)", text);
            return KEEL_EINVAL;
        }
        p = sep + 3;
    }

    /* The authority runs up to the first '/', or to the end. */
    const char *auth_end = p + strcspn(p, "/?#");
    if (*auth_end == '?' || *auth_end == '#' || strpbrk(auth_end, "?#") != NULL) {
        set_err(err, errlen, "%s: the admin URL may not contain a query or a fragment", text);
        return KEEL_EINVAL;
    }
    if (memchr(p, '@', (size_t)(auth_end - p)) != NULL) {
        set_err(err, errlen,
                "%s: user information in the admin URL is not supported "
                "(use --token)",
                text);
        return KEEL_EINVAL;
    }

    const char *host = p;
    const char *host_end;
    const char *after_host;
    bool v6 = false;
    if (*p == '[') {
        host = p + 1;
        host_end = memchr(host, ']', (size_t)(auth_end - host));
        if (host_end == NULL || host_end == host) {
            set_err(err, errlen, "%s: unterminated or empty IPv6 address", text);
            return KEEL_EINVAL;
        }
        for (const char *q = host; q < host_end; q++)
            if (!isxdigit((unsigned char)*q) && *q != ':' && *q != '.') {
                set_err(err, errlen, "%s: invalid IPv6 address", text);
                return KEEL_EINVAL;
            }
        after_host = host_end + 1;
        v6 = true;
    } else {
        host_end = p;
        while (host_end < auth_end && *host_end != ':')
            host_end++;
        if (host_end == host) {
            set_err(err, errlen, "%s: missing host name", text);
            return KEEL_EINVAL;
        }
        for (const char *q = host; q < host_end; q++)
            if (!is_host_char((unsigned char)*q)) {
                set_err(err, errlen, "%s: invalid character in host name", text);
                return KEEL_EINVAL;
            }
        after_host = host_end;
    }
    size_t host_len = (size_t)(host_end - host);
    if (host_len >= sizeof url->host) {
        set_err(err, errlen, "%s: host name too long", text);
        return KEEL_EINVAL;
    }
    memcpy(url->host, host, host_len);
    url->host[host_len] = '\0';

    long port = 80;
    if (after_host < auth_end) {
        if (*after_host != ':' || after_host + 1 == auth_end) {
            set_err(err, errlen, "%s: expected :PORT after the host", text);
            return KEEL_EINVAL;
        }
        port = 0;
        for (const char *q = after_host + 1; q < auth_end; q++) {
            if (!isdigit((unsigned char)*q) || port > 65535) {
                set_err(err, errlen, "%s: invalid port", text);
                return KEEL_EINVAL;
            }
            port = port * 10 + (*q - '0');
        }
        if (port < 1 || port > 65535) {
            set_err(err, errlen, "%s: port out of range 1-65535", text);
            return KEEL_EINVAL;
        }
    }
    snprintf(url->port, sizeof url->port, "%ld", port);
    snprintf(url->authority, sizeof url->authority, v6 ? "[%s]:%s" : "%s:%s", url->host, url->port);

    /* Keep the prefix without trailing slashes so that prefix + "/admin/..."
     * never produces "//". */
    size_t plen = strlen(auth_end);
    while (plen > 0 && auth_end[plen - 1] == '/')
        plen--;
    for (size_t i = 0; i < plen; i++)
        if (!is_path_char((unsigned char)auth_end[i])) {
            set_err(err, errlen, "%s: invalid character in the URL path", text);
            return KEEL_EINVAL;
        }
    if (plen >= sizeof url->prefix) {
        set_err(err, errlen, "%s: URL path too long", text);
        return KEEL_EINVAL;
    }
    memcpy(url->prefix, auth_end, plen);
    url->prefix[plen] = '\0';
    snprintf(url->text, sizeof url->text, "http://%s%s", url->authority, url->prefix);
    return 0;
}

/* ------------------------------------------------------------ socket layer */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is ready for events or timeout_ms passes.  Returns 1 when
 * ready, 0 on timeout, -1 with errno set on error. */
static int wait_fd(int fd, short events, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = events};
        long long left = deadline - now_ms();
        if (left < 0)
            left = 0;
        int n = poll(&pfd, 1, (int)left);
        if (n > 0)
            return 1;
        if (n == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

/* Connects one address without blocking longer than timeout_ms.  Returns
 * the socket, or -1 with errno set. */
static int connect_one(const struct addrinfo *ai, int timeout_ms)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0)
        return -1;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
        return fd;
    if (errno != EINPROGRESS && errno != EINTR)
        goto fail;
    int r = wait_fd(fd, POLLOUT, timeout_ms);
    if (r == 0) {
        errno = ETIMEDOUT;
        goto fail;
    }
    if (r < 0)
        goto fail;
    int soerr = 0;
    socklen_t slen = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &slen) < 0)
        goto fail;
    if (soerr != 0) {
        errno = soerr;
        goto fail;
    }
    return fd;

fail:;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

static int open_connection(const struct http_url *url, int timeout_ms, char *err, size_t errlen)
{
    struct addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(url->host, url->port, &hints, &res);
    bool retry = gai == EAI_NONAME || gai == EAI_FAMILY;
#ifdef EAI_ADDRFAMILY
    retry = retry || gai == EAI_ADDRFAMILY;
#endif
    if (retry) {
        /* AI_ADDRCONFIG hides loopback-only families on hosts without an
         * external address; retry without it before giving up. */
        hints.ai_flags = AI_NUMERICSERV;
        gai = getaddrinfo(url->host, url->port, &hints, &res);
    }
    if (gai != 0) {
        set_err(err, errlen, "cannot connect to %s: cannot resolve host %s: %s", url->text,
                url->host, gai == EAI_SYSTEM ? strerror(errno) : gai_strerror(gai));
        return KEEL_EIO;
    }
    int fd = -1;
    int last_errno = ECONNREFUSED;
    for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
        fd = connect_one(ai, timeout_ms);
        if (fd < 0)
            last_errno = errno;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        set_err(err, errlen, "cannot connect to %s: %s", url->text, strerror(last_errno));
        return last_errno == ETIMEDOUT ? KEEL_ETIMEOUT : KEEL_EIO;
    }
    /* The request goes out in one sendmsg() when possible; no reason to let
     * Nagle hold back its tail. */
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Sends all of iov[0..iovcnt).  Returns 0, or a negative errno. */
static int send_all(int fd, struct iovec *iov, int iovcnt, int timeout_ms)
{
    while (iovcnt > 0) {
        if (iov->iov_len == 0) {
            iov++;
            iovcnt--;
            continue;
        }
        struct msghdr msg = {0};
        msg.msg_iov = iov;
        msg.msg_iovlen = (size_t)iovcnt;
        /* MSG_NOSIGNAL: a server that hangs up early must give us EPIPE,
         * not kill the process with SIGPIPE. */
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return -errno;
            int r = wait_fd(fd, POLLOUT, timeout_ms);
            if (r == 0)
                return -ETIMEDOUT;
            if (r < 0)
                return -errno;
            continue;
        }
        size_t left = (size_t)n;
        while (iovcnt > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

/* ----------------------------------------------------------- response parser */

enum framing { FRAME_NONE, FRAME_LENGTH, FRAME_CHUNKED, FRAME_EOF };
enum chunk_state { CHUNK_SIZE, CHUNK_DATA, CHUNK_DATA_END, CHUNK_TRAILER, CHUNK_DONE };

/* Incremental parser state: bytes are fed as they arrive so that a response
 * framed by Content-Length or chunked encoding is complete as soon as its
 * last byte is in, without waiting for the server to close. */
struct parser {
    struct http_response *resp;
    struct buf head; /* bytes of the status line and headers */
    bool head_done;
    struct buf body;
    enum framing framing;
    size_t content_length;
    enum chunk_state cstate;
    size_t chunk_left;
    char line[MAX_CHUNK_LINE];
    size_t line_len;
    size_t trailer_bytes;
    bool complete;
    char *err;
    size_t errlen;
    const char *url_text;
};

static char *dup_range(const char *s, size_t len)
{
    char *p = malloc(len + 1);
    if (p != NULL) {
        memcpy(p, s, len);
        p[len] = '\0';
    }
    return p;
}

static void free_headers(struct http_response *resp)
{
    for (size_t i = 0; i < resp->nheaders; i++) {
        free(resp->headers[i].name);
        free(resp->headers[i].value);
    }
    free(resp->headers);
    resp->headers = NULL;
    resp->nheaders = 0;
    free(resp->reason);
    resp->reason = NULL;
}

static int malformed(struct parser *ps, const char *what)
{
    set_err(ps->err, ps->errlen, "malformed response from %s: %s", ps->url_text, what);
    return KEEL_EINVAL;
}

static bool is_token_char(int c)
{
    return isalnum(c) || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Parses a decimal Content-Length value, refusing signs, blanks and overflow. */
static int parse_length(const char *s, size_t *out)
{
    if (*s == '\0')
        return -1;
    size_t v = 0;
    for (; *s; s++) {
        if (!isdigit((unsigned char)*s))
            return -1;
        unsigned d = (unsigned)(*s - '0');
        if (v > (SIZE_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Parses the status line and header lines in head[0..len) (the blank line
 * excluded) into ps->resp and decides how the body is framed. */
static int parse_head(struct parser *ps, char *head, size_t len)
{
    struct http_response *resp = ps->resp;
    free_headers(resp);
    resp->status = 0;

    char *end = head + len;
    char *line = head;
    bool first = true;
    bool have_length = false;
    bool chunked = false;
    size_t length = 0;

    while (line < end) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        char *eol = nl ? nl : end;
        char *next = nl ? nl + 1 : end;
        if (eol > line && eol[-1] == '\r')
            eol--;
        *eol = '\0';
        for (char *q = line; q < eol; q++)
            if (*q == '\0' || (*q == '\r'))
                return malformed(ps, "control character in the header block");

        if (first) {
            first = false;
            /* "HTTP/1.x SSS reason" */
            if (strncmp(line, "HTTP/1.", 7) != 0 || !isdigit((unsigned char)line[7]) ||
                line[8] != ' ')
                return malformed(ps, "not an HTTP/1.x status line");
            const char *s = line + 9;
            if (!isdigit((unsigned char)s[0]) || !isdigit((unsigned char)s[1]) ||
                !isdigit((unsigned char)s[2]) || (s[3] != ' ' && s[3] != '\0'))
                return malformed(ps, "bad status code");
            resp->status = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
            if (resp->status < 100 || resp->status > 599)
                return malformed(ps, "status code out of range");
            const char *reason = s[3] == ' ' ? s + 4 : "";
            resp->reason = dup_range(reason, strlen(reason));
            if (resp->reason == NULL)
                return KEEL_ENOMEM;
            line = next;
            continue;
        }

        if (*line == ' ' || *line == '\t')
            return malformed(ps, "obsolete header line folding");
        char *colon = strchr(line, ':');
        if (colon == NULL || colon == line)
            return malformed(ps, "header line without a name");
        for (char *q = line; q < colon; q++)
            if (!is_token_char((unsigned char)*q))
                return malformed(ps, "invalid header name");
        char *value = colon + 1;
        while (*value == ' ' || *value == '\t')
            value++;
        char *vend = value + strlen(value);
        while (vend > value && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        *vend = '\0';
        if (resp->nheaders == MAX_HEADERS)
            return malformed(ps, "too many header fields");
        struct http_header_field *h = realloc(resp->headers,
                                              (resp->nheaders + 1) * sizeof *resp->headers);
        if (h == NULL)
            return KEEL_ENOMEM;
        resp->headers = h;
        h[resp->nheaders].name = dup_range(line, (size_t)(colon - line));
        h[resp->nheaders].value = dup_range(value, (size_t)(vend - value));
        resp->nheaders++;
        if (h[resp->nheaders - 1].name == NULL || h[resp->nheaders - 1].value == NULL)
            return KEEL_ENOMEM;

        size_t name_len = (size_t)(colon - line);
        if (name_len == 14 && strncasecmp(line, "Content-Length", 14) == 0) {
            size_t v;
            if (parse_length(value, &v) < 0)
                return malformed(ps, "invalid Content-Length");
            if (have_length && v != length)
                return malformed(ps, "conflicting Content-Length headers");
            have_length = true;
            length = v;
        } else if (name_len == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0) {
            /* We never send TE or Accept-Encoding, so chunked is the only
             * coding a conforming server may use. */
            if (strcasecmp(value, "chunked") != 0) {
                set_err(ps->err, ps->errlen,
                        "response from %s uses Transfer-Encoding '%s', "
                        "which keelctl does not support",
                        ps->url_text, value);
                return KEEL_EUNSUPPORTED;
            }
            chunked = true;
        }
        line = next;
    }
    if (first)
        return malformed(ps, "empty status line");

    if (resp->status == 204 || resp->status == 304 || resp->status < 200) {
        ps->framing = FRAME_NONE;
    } else if (chunked) {
        /* RFC 9112 6.3: Transfer-Encoding overrides Content-Length. */
        ps->framing = FRAME_CHUNKED;
        ps->cstate = CHUNK_SIZE;
    } else if (have_length) {
        if (length > ps->body.max) {
            set_err(ps->err, ps->errlen, "response from %s is too large (%zu bytes, limit %zu)",
                    ps->url_text, length, ps->body.max);
            return KEEL_ETOOBIG;
        }
        ps->framing = FRAME_LENGTH;
        ps->content_length = length;
    } else {
        ps->framing = FRAME_EOF;
    }
    return 0;
}

static int too_big(struct parser *ps)
{
    set_err(ps->err, ps->errlen, "response from %s is larger than the limit of %zu bytes",
            ps->url_text, ps->body.max);
    return KEEL_ETOOBIG;
}

/* Collects one CRLF- (or LF-) terminated line of chunk framing into ps->line.
 * Returns the number of bytes consumed; sets *done when the line is whole. */
static int chunk_line(struct parser *ps, const char *data, size_t len, size_t *used, bool *done)
{
    const char *nl = memchr(data, '\n', len);
    size_t take = nl ? (size_t)(nl - data) + 1 : len;
    if (ps->line_len + take >= sizeof ps->line)
        return malformed(ps, "chunk framing line too long");
    memcpy(ps->line + ps->line_len, data, take);
    ps->line_len += take;
    *used = take;
    *done = nl != NULL;
    if (*done) {
        size_t n = ps->line_len - 1; /* drop LF */
        if (n > 0 && ps->line[n - 1] == '\r')
            n--;
        ps->line[n] = '\0';
        ps->line_len = 0;
    }
    return 0;
}

static int feed_chunked(struct parser *ps, const char *data, size_t len)
{
    while (len > 0 && ps->cstate != CHUNK_DONE) {
        size_t used = 0;
        bool done = false;
        int rc;
        switch (ps->cstate) {
        case CHUNK_SIZE: {
            if ((rc = chunk_line(ps, data, len, &used, &done)) < 0)
                return rc;
            if (!done)
                break;
            /* "hex-size [; extensions]" */
            const char *s = ps->line;
            size_t size = 0;
            int digits = 0;
            for (; isxdigit((unsigned char)*s); s++, digits++) {
                int c = tolower((unsigned char)*s);
                int d = isdigit(c) ? c - '0' : c - 'a' + 10;
                if (size > (SIZE_MAX - (size_t)d) / 16)
                    return too_big(ps);
                size = size * 16 + (size_t)d;
            }
            while (*s == ' ' || *s == '\t')
                s++;
            if (digits == 0 || (*s != '\0' && *s != ';'))
                return malformed(ps, "bad chunk size line");
            if (size > ps->body.max - ps->body.len)
                return too_big(ps);
            if (size == 0) {
                ps->cstate = CHUNK_TRAILER;
            } else {
                ps->chunk_left = size;
                ps->cstate = CHUNK_DATA;
            }
            break;
        }
        case CHUNK_DATA:
            used = len < ps->chunk_left ? len : ps->chunk_left;
            if ((rc = buf_append(&ps->body, data, used)) < 0)
                return rc == KEEL_ETOOBIG ? too_big(ps) : rc;
            ps->chunk_left -= used;
            if (ps->chunk_left == 0)
                ps->cstate = CHUNK_DATA_END;
            break;
        case CHUNK_DATA_END:
            if ((rc = chunk_line(ps, data, len, &used, &done)) < 0)
                return rc;
            if (done) {
                if (ps->line[0] != '\0')
                    return malformed(ps, "chunk data longer than its size");
                ps->cstate = CHUNK_SIZE;
            }
            break;
        case CHUNK_TRAILER:
            if ((rc = chunk_line(ps, data, len, &used, &done)) < 0)
                return rc;
            ps->trailer_bytes += used;
            if (ps->trailer_bytes > MAX_TRAILER_BYTES)
                return malformed(ps, "trailer section too large");
            /* Trailer fields carry nothing keelctl needs; skip them. */
            if (done && ps->line[0] == '\0')
                ps->cstate = CHUNK_DONE;
            break;
        case CHUNK_DONE:
            break;
        }
        data += used;
        len -= used;
    }
    if (ps->cstate == CHUNK_DONE)
        ps->complete = true;
    return 0;
}

static int feed_body(struct parser *ps, const char *data, size_t len)
{
    int rc;
    switch (ps->framing) {
    case FRAME_NONE:
        ps->complete = true;
        return 0;
    case FRAME_CHUNKED:
        return feed_chunked(ps, data, len);
    case FRAME_LENGTH: {
        size_t want = ps->content_length - ps->body.len;
        /* Bytes past Content-Length are not ours to interpret; drop them. */
        if (len > want)
            len = want;
        if ((rc = buf_append(&ps->body, data, len)) < 0)
            return rc == KEEL_ETOOBIG ? too_big(ps) : rc;
        if (ps->body.len == ps->content_length)
            ps->complete = true;
        return 0;
    }
    case FRAME_EOF:
        if ((rc = buf_append(&ps->body, data, len)) < 0)
            return rc == KEEL_ETOOBIG ? too_big(ps) : rc;
        return 0;
    }
    return 0;
}

/* Finds the blank line that ends the header block; returns the offset of
 * the first body byte, or 0 when the block is not complete yet. */
static size_t find_head_end(const char *s, size_t len, size_t *head_len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '\n')
            continue;
        if (i + 1 < len && s[i + 1] == '\n') {
            *head_len = i;
            return i + 2;
        }
        if (i + 2 < len && s[i + 1] == '\r' && s[i + 2] == '\n') {
            *head_len = i;
            return i + 3;
        }
    }
    return 0;
}

static int feed(struct parser *ps, const char *data, size_t len)
{
    while (!ps->head_done) {
        size_t before = ps->head.len;
        size_t room = ps->head.max - ps->head.len;
        size_t take = len < room ? len : room;
        int rc = buf_append(&ps->head, data, take);
        if (rc < 0)
            return rc;
        /* Rescan a few old bytes: the blank line may straddle two reads. */
        size_t from = before > 3 ? before - 3 : 0;
        size_t head_len = 0;
        size_t body_at = find_head_end(ps->head.data + from, ps->head.len - from, &head_len);
        if (body_at == 0) {
            if (ps->head.len == ps->head.max)
                return malformed(ps, "header block larger than 64 KiB");
            return 0;
        }
        head_len += from;
        body_at += from;
        /* Data after the blank line that came with this read. */
        size_t consumed = body_at - before;
        data += consumed;
        len -= consumed;
        if ((rc = parse_head(ps, ps->head.data, head_len)) < 0)
            return rc;
        ps->head.len = 0;
        if (ps->resp->status >= 100 && ps->resp->status < 200) {
            if (ps->resp->status == 101)
                return malformed(ps, "unexpected protocol switch");
            /* An interim answer (100 Continue, 103 Early Hints): the real
             * one follows. */
            continue;
        }
        ps->head_done = true;
        if (ps->framing == FRAME_NONE || (ps->framing == FRAME_LENGTH && ps->content_length == 0))
            ps->complete = true;
    }
    if (ps->complete)
        return 0;
    return feed_body(ps, data, len);
}

/* ------------------------------------------------------------------ request */

static bool header_safe(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

static int build_head(struct buf *out, const struct http_url *url, const struct http_request *req)
{
    char line[4096];
    int rc = 0;
    bool has_body = req->body_len > 0 || strcmp(req->method, "POST") == 0 ||
                    strcmp(req->method, "PUT") == 0 || strcmp(req->method, "PATCH") == 0;
#define ADD(...)                                                                                   \
    do {                                                                                           \
        int n_ = snprintf(line, sizeof line, __VA_ARGS__);                                         \
        if (n_ < 0 || (size_t)n_ >= sizeof line)                                                   \
            return KEEL_EINVAL;                                                                    \
        if ((rc = buf_append(out, line, (size_t)n_)) < 0)                                          \
            return rc;                                                                             \
    } while (0)
    if ((rc = buf_append(out, req->method, strlen(req->method))) < 0 ||
        (rc = buf_append(out, " ", 1)) < 0 ||
        (rc = buf_append(out, url->prefix, strlen(url->prefix))) < 0 ||
        (rc = buf_append(out, req->target, strlen(req->target))) < 0)
        return rc;
    ADD(" HTTP/1.1\r\nHost: %s\r\n", url->authority);
    ADD("User-Agent: %s\r\n", req->user_agent ? req->user_agent : "keelctl");
    ADD("Accept: application/json\r\nConnection: close\r\n");
    if (req->bearer_token != NULL && *req->bearer_token != '\0')
        ADD("Authorization: Bearer %s\r\n", req->bearer_token);
    if (req->content_type != NULL)
        ADD("Content-Type: %s\r\n", req->content_type);
    if (has_body)
        ADD("Content-Length: %zu\r\n", req->body_len);
    ADD("\r\n");
#undef ADD
    return 0;
}

int http_request_perform(const struct http_url *url, const struct http_request *req,
                         struct http_response *resp, char *err, size_t errlen)
{
    memset(resp, 0, sizeof *resp);
    if (req->method == NULL || req->target == NULL || req->target[0] != '/' ||
        !header_safe(req->method) || !header_safe(req->target) ||
        strpbrk(req->method, " ") != NULL || strpbrk(req->target, " ") != NULL ||
        (req->bearer_token != NULL && !header_safe(req->bearer_token)) ||
        (req->content_type != NULL && !header_safe(req->content_type)) ||
        (req->user_agent != NULL && !header_safe(req->user_agent)) ||
        (req->body == NULL && req->body_len > 0)) {
        set_err(err, errlen, "invalid request for %s (control characters or a bad target)",
                url->text);
        return KEEL_EINVAL;
    }
    int connect_ms = req->connect_timeout_ms > 0 ? req->connect_timeout_ms
                                                 : HTTP_DEFAULT_CONNECT_TIMEOUT_MS;
    int io_ms = req->io_timeout_ms > 0 ? req->io_timeout_ms : HTTP_DEFAULT_IO_TIMEOUT_MS;

    struct buf head = {.max = 64 * 1024};
    int rc = build_head(&head, url, req);
    if (rc < 0) {
        buf_free(&head);
        set_err(err, errlen, "request for %s is too large or out of memory", url->text);
        return rc == KEEL_ENOMEM ? rc : KEEL_EINVAL;
    }

    int fd = open_connection(url, connect_ms, err, errlen);
    if (fd < 0) {
        buf_free(&head);
        return fd;
    }

    struct iovec iov[2] = {
        {.iov_base = head.data, .iov_len = head.len},
        {.iov_base = (void *)req->body, .iov_len = req->body_len},
    };
    int send_rc = send_all(fd, iov, 2, io_ms);
    buf_free(&head);
    /* A server may answer (say, 413) and hang up before reading the whole
     * body; that answer is still worth reading, so a failed send only
     * becomes the error if no response follows. */

    struct parser ps = {
        .resp = resp,
        .head = {.max = MAX_HEAD_BYTES},
        .body = {.max = req->max_body > 0 ? req->max_body : HTTP_DEFAULT_MAX_BODY},
        .err = err,
        .errlen = errlen,
        .url_text = url->text,
    };
    char chunk[64 * 1024];
    rc = 0;
    if (send_rc == -ETIMEDOUT) {
        set_err(err, errlen, "timed out sending the request to %s", url->text);
        rc = KEEL_ETIMEOUT;
    }
    while (rc == 0 && !ps.complete) {
        ssize_t n = recv(fd, chunk, sizeof chunk, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                int r = wait_fd(fd, POLLIN, io_ms);
                if (r == 0) {
                    set_err(err, errlen, "timed out after %d s waiting for %s to answer",
                            io_ms / 1000, url->text);
                    rc = KEEL_ETIMEOUT;
                } else if (r < 0) {
                    set_err(err, errlen, "error waiting for %s: %s", url->text, strerror(errno));
                    rc = KEEL_EIO;
                }
                continue;
            }
            if (send_rc < 0 && !ps.head_done)
                set_err(err, errlen, "cannot send the request to %s: %s", url->text,
                        strerror(-send_rc));
            else
                set_err(err, errlen, "error reading the response from %s: %s", url->text,
                        strerror(errno));
            rc = KEEL_EIO;
            break;
        }
        if (n == 0) {
            if (ps.head_done && ps.framing == FRAME_EOF) {
                /* Framed by the close itself: this is the normal end. */
            } else if (send_rc < 0 && !ps.head_done && ps.head.len == 0) {
                set_err(err, errlen, "cannot send the request to %s: %s", url->text,
                        strerror(-send_rc));
                rc = KEEL_EIO;
            } else {
                set_err(err, errlen, "%s closed the connection %s", url->text,
                        ps.head_done || ps.head.len > 0 ? "before the response was complete"
                                                        : "without answering");
                rc = KEEL_EIO;
            }
            break;
        }
        rc = feed(&ps, chunk, (size_t)n);
    }
    close(fd);
    buf_free(&ps.head);
    if (rc < 0) {
        buf_free(&ps.body);
        http_response_free(resp);
        return rc;
    }
    if (ps.body.data == NULL) {
        /* Hand out an empty string rather than NULL, as documented. */
        if (buf_append(&ps.body, "", 0) < 0) {
            http_response_free(resp);
            set_err(err, errlen, "out of memory");
            return KEEL_ENOMEM;
        }
    }
    resp->body = ps.body.data;
    resp->body_len = ps.body.len;
    return 0;
}

const char *http_response_header(const struct http_response *resp, const char *name)
{
    for (size_t i = 0; i < resp->nheaders; i++)
        if (strcasecmp(resp->headers[i].name, name) == 0)
            return resp->headers[i].value;
    return NULL;
}

void http_response_free(struct http_response *resp)
{
    if (resp == NULL)
        return;
    free_headers(resp);
    free(resp->body);
    memset(resp, 0, sizeof *resp);
}
