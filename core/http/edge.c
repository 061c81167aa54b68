#include "config.h"

#include "http/edge.h"

#include <arpa/inet.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include <microhttpd.h>

#include "conf/conf.h"
#include "http/request.h"
#include "http/runtime.h"
#include "util/text.h"

static const struct keel__edge_verdict accepted = {0, NULL};

static struct keel__edge_verdict refuse(unsigned status, const char *detail)
{
    return (struct keel__edge_verdict){status, detail};
}

static bool is_tchar(unsigned char c)
{
    return (keel__byte_class[c] & KEEL__BYTE_TCHAR) != 0;
}

/* The length of s when it is a token, 0 when it is not (or empty). */
static size_t token_len(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (is_tchar(*p)) /* NUL is not a tchar */
        p++;
    return *p == '\0' ? (size_t)(p - (const unsigned char *)s) : 0;
}

/* Whether one of the 8 bytes of w is below n or DEL (util/text.h). */
static bool word_below_or_del(uint64_t w, unsigned char n)
{
    return (keel__word_below(w, n) | keel__word_equal(w, 0x7f)) != 0;
}

/* Whether the 8 bytes at p hold no control character but tab, and no DEL:
 * the word at once, byte by byte only when it has a tab or worse. */
static bool value_word_ok(const char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    if (!word_below_or_del(w, 0x20))
        return true;
    for (size_t j = 0; j < 8; j++) {
        unsigned char c = (unsigned char)p[j];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

/* The length of s when it holds no control character but tab, -1 when it
 * does: one pass for the check and the length the caller needs anyway.
 * Sixteen bytes a step with SSE2 (a bearer token is hundreds of bytes),
 * else eight: a word with a byte below 0x20 (tab included) or DEL is looked
 * at byte by byte. */
static ptrdiff_t value_len(const char *s)
{
    size_t n = strlen(s), i = 0;
#ifdef __SSE2__
    const __m128i ctl_max = _mm_set1_epi8(0x1f), tab = _mm_set1_epi8('\t'),
                  del_byte = _mm_set1_epi8(0x7f);
    for (; i + 16 <= n; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
        /* v <= 0x1f, unsigned, and not a tab; or DEL. */
        __m128i ctl = _mm_cmpeq_epi8(_mm_min_epu8(v, ctl_max), v);
        __m128i bad = _mm_or_si128(_mm_andnot_si128(_mm_cmpeq_epi8(v, tab), ctl),
                                   _mm_cmpeq_epi8(v, del_byte));
        if (_mm_movemask_epi8(bad) != 0)
            return -1;
    }
#endif
    for (; i + 8 <= n; i += 8)
        if (!value_word_ok(s + i))
            return -1;
    /* The last bytes of a value of 8 or more: the word that ends with
     * them, overlapping what was checked (a Host value is 9-21 bytes). */
    if (i < n && n >= 8)
        return value_word_ok(s + n - 8) ? (ptrdiff_t)n : -1;
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return -1;
    }
    return (ptrdiff_t)n;
}

bool keel__edge_is_token(const char *s)
{
    return s != NULL && token_len(s) > 0;
}

bool keel__edge_value_ok(const char *s)
{
    return value_len(s) >= 0;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static bool prefix_ci(const char *s, const char *prefix)
{
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

struct keel__edge_verdict keel__edge_check_target(const char *target, size_t len)
{
    /* Eight bytes a step: a path is tens of bytes, on every request. */
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, target + i, 8);
        if (word_below_or_del(w, 0x21)) /* a control character, a space or DEL */
            return refuse(400, "Request target contains a control character or space");
    }
    for (; i < len; i++) {
        unsigned char c = (unsigned char)target[i];
        if (c <= 0x20 || c == 0x7f)
            return refuse(400, "Request target contains a control character or space");
    }
    if (len == 0 || !(target[0] == '/' || (len == 1 && target[0] == '*') ||
                      prefix_ci(target, "http://") || prefix_ci(target, "https://")))
        return refuse(400, "Request target must be a path starting with /");
    return accepted;
}

struct keel__edge_verdict keel__edge_check_line(const char *method, const char *target,
                                                size_t target_len, const char *version)
{
    /* One separator (the space libmicrohttpd turned into a NUL) between
     * the pieces: more means the target held a NUL that cut it short, or
     * the method did. */
    if (target != method + strlen(method) + 1 || version != target + target_len + 1)
        return refuse(400, "Request target contains a NUL byte");
    if (strcmp(version, "HTTP/1.1") != 0 && strcmp(version, "HTTP/1.0") != 0)
        return refuse(505, "HTTP version not supported (only HTTP/1.0 and HTTP/1.1)");
    return accepted;
}

/* Bytes libmicrohttpd left between two pieces it handed out: each must be
 * a separator it wrote (NUL) or optional whitespace.  Returns false when
 * the gap is empty or holds anything else. */
static bool only_separators(const char *from, const char *to, bool ows_allowed)
{
    for (const char *p = from; p < to; p++)
        if (*p != '\0' && !(ows_allowed && is_ows(*p)))
            return false;
    return true;
}

static bool gap_ok(const char *from, const char *to, bool ows_allowed)
{
    return to > from && only_separators(from, to, ows_allowed);
}

struct keel__edge_verdict keel__edge_check_fields(const char *version, const char *end,
                                                  struct keel__edge_field *f, size_t n)
{
    const char *prev = version + strlen(version);
    unsigned hosts = 0;
    if (prev >= end)
        return refuse(400, "Malformed request head");
    for (size_t i = 0; i < n; i++) {
        const char *name = f[i].name, *value = f[i].value ? f[i].value : "";
        size_t nlen = token_len(name);
        if (nlen == 0)
            return refuse(400, "Invalid header name (whitespace before the colon or not a token)");
        ptrdiff_t checked = value_len(value);
        if (checked < 0)
            return refuse(400, "Header value contains a control character");
        size_t vlen = (size_t)checked;
        /* The end of the previous line: CRLF or LF, both written as NULs;
         * after a value also its trailing whitespace. */
        if (name < prev || name >= end || !gap_ok(prev, name, i > 0))
            return refuse(400, "Malformed header line (NUL byte or line folding)");
        const char *name_end = name + nlen;
        if (vlen == 0 && (value <= name_end || value >= end)) {
            /* An empty value may be handed out as a pointer elsewhere. */
            prev = name_end + 1;
        } else {
            /* The colon (a NUL now), then optional whitespace. */
            if (value <= name_end || value + vlen > end || *name_end != '\0' ||
                !only_separators(name_end + 1, value, true))
                return refuse(400, "Malformed header line (NUL byte or line folding)");
            prev = value + vlen;
        }
        if (prev > end)
            return refuse(400, "Malformed request head");
        f[i].name_len = nlen;
        f[i].value_len = vlen;
        if (nlen == 4 && strcasecmp(name, "Host") == 0)
            hosts++;
    }
    /* The last line end and the empty line. */
    if (!gap_ok(prev, end, true))
        return refuse(400, "Malformed header line (NUL byte or line folding)");
    if (hosts > 1)
        return refuse(400, "Request has more than one Host header");
    if (hosts == 0 && strcmp(version, "HTTP/1.1") == 0)
        return refuse(400, "Request has no Host header");
    return accepted;
}

const char *keel__edge_origin_path(const char *target)
{
    const char *p;
    if (target[0] == '/')
        return target; /* origin form, nearly every request */
    if (prefix_ci(target, "http://"))
        p = target + 7;
    else if (prefix_ci(target, "https://"))
        p = target + 8;
    else
        return target;
    const char *slash = strchr(p, '/');
    return slash != NULL ? slash : "/";
}

/* host equals name, or name ":" port. */
static bool host_is(const char *host, const char *name, int port)
{
    size_t n = strlen(name);
    if (n == 0 || strncasecmp(host, name, n) != 0)
        return false;
    if (host[n] == '\0')
        return true;
    char p[16];
    snprintf(p, sizeof p, ":%d", port);
    return strcmp(host + n, p) == 0;
}

/* The same for an address literal, bracketed when it is IPv6. */
static bool host_is_literal(const char *host, const char *addr, int port)
{
    if (strchr(addr, ':') == NULL)
        return host_is(host, addr, port);
    char br[INET6_ADDRSTRLEN + 3];
    snprintf(br, sizeof br, "[%s]", addr);
    return host_is(host, br, port);
}

bool keel__edge_admin_host_ok(const struct keel__edge_admin *a, const char *host)
{
    if (host == NULL || *host == '\0')
        return false;
    if (a->host != NULL && host_is_literal(host, a->host, a->port))
        return true;
    if (a->local != NULL && host_is_literal(host, a->local, a->port))
        return true;
    if (a->loopback && host_is(host, "localhost", a->port))
        return true;
    for (size_t i = 0; i < a->nnames; i++)
        if (host_is_literal(host, a->names[i], a->port))
            return true;
    return false;
}

static bool json_media_type(const char *ct)
{
    if (ct == NULL)
        return false;
    while (is_ows(*ct))
        ct++;
    static const char *const types[] = {"application/json", "application/x-ndjson"};
    for (size_t i = 0; i < 2; i++) {
        size_t n = strlen(types[i]);
        if (strncasecmp(ct, types[i], n) != 0)
            continue;
        const char *rest = ct + n;
        while (is_ows(*rest))
            rest++;
        if (*rest == '\0' || *rest == ';')
            return true;
    }
    return false;
}

struct keel__edge_verdict keel__edge_check_admin(const struct keel__edge_admin *a,
                                                 const char *method, const char *host,
                                                 const char *origin, const char *content_type)
{
    /* No Host is only possible on HTTP/1.0 (the field check refuses it on
     * 1.1); such a client is not a browser. */
    if (host != NULL && !keel__edge_admin_host_ok(a, host))
        return refuse(421, "Host not served by the admin listener");
    if (origin != NULL)
        return refuse(403, "Cross-origin requests are refused on the admin listener");
    bool write = strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0 &&
                 strcmp(method, "OPTIONS") != 0;
    if (write && !json_media_type(content_type))
        return refuse(415, "Admin requests that change state need Content-Type application/json "
                           "(or application/x-ndjson)");
    return accepted;
}

/* ------------------------------------------------------------ libmicrohttpd */

struct collect {
    struct keel__edge_field *f;
    size_t n, max;
};

static enum MHD_Result collect_field(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    (void)kind;
    struct collect *c = cls;
    if (c->n == c->max)
        return MHD_NO;
    c->f[c->n++] = (struct keel__edge_field){.name = key, .value = value};
    return MHD_YES;
}

const char *keel__edge_escape(keel_request *req, const char *s, size_t n)
{
    char *out = keel__req_alloc(req, 4 * n + 1);
    if (out == NULL)
        return s;
    char *o = out;
    for (const char *p = s; p < s + n; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c == 0x7f || c == '\\')
            o += snprintf(o, 5, "\\x%02x", c);
        else
            *o++ = (char)c;
    }
    *o = '\0';
    return out;
}

static void local_address(struct MHD_Connection *conn, char *out, size_t outlen, bool *loopback)
{
    *out = '\0';
    *loopback = false;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn,
                                                                 MHD_CONNECTION_INFO_CONNECTION_FD);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (ci == NULL || getsockname(ci->connect_fd, (struct sockaddr *)&ss, &sl) != 0)
        return;
    if (ss.ss_family == AF_INET) {
        const struct in_addr *a = &((const struct sockaddr_in *)&ss)->sin_addr;
        inet_ntop(AF_INET, a, out, (socklen_t)outlen);
        *loopback = (ntohl(a->s_addr) >> 24) == 127;
    } else if (ss.ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)&ss)->sin6_addr;
        inet_ntop(AF_INET6, a, out, (socklen_t)outlen);
        *loopback = IN6_IS_ADDR_LOOPBACK(a);
    }
}

struct keel__edge_verdict keel__edge_check_request(keel_request *req, const char *version)
{
    struct keel__edge_verdict v = req->target_verdict;
    if (v.status == 0)
        v = keel__edge_check_line(req->method, req->target, req->target_len, version);
    if (v.status != 0) {
        /* The target runs up to the separator before the version. */
        if (version > req->target)
            req->path = keel__edge_escape(req, req->target, (size_t)(version - 1 - req->target));
        return v;
    }
    req->path = keel__edge_origin_path(req->path);

    const union MHD_ConnectionInfo *hs =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    /* The number of headers is bounded by libmicrohttpd's connection memory. */
    int count = MHD_get_connection_values(req->conn, MHD_HEADER_KIND, NULL, NULL);
    struct collect c = {.max = count > 0 ? (size_t)count : 0};
    if (c.max > 0 && (c.f = keel__req_alloc(req, c.max * sizeof *c.f)) == NULL)
        return refuse(503, "Service temporarily unavailable");
    if (c.max > 0)
        MHD_get_connection_values(req->conn, MHD_HEADER_KIND, collect_field, &c);
    /* The head starts with the method (leading empty lines are not
     * counted in its size). */
    const char *end = hs != NULL ? req->method + hs->header_size : NULL;
    if (end == NULL || end <= version)
        return refuse(400, "Malformed request head");
    v = keel__edge_check_fields(version, end, c.f, c.n);
    if (v.status != 0)
        return v;
    keel__req_set_fields(req, c.f, c.n);
    if (req->listener != KEEL__LISTENER_ADMIN)
        return v;

    const struct keel__server_conf *conf = &keel__rt.server;
    char local[INET6_ADDRSTRLEN];
    struct keel__edge_admin a = {.host = conf->admin_host,
                                 .local = local,
                                 .port = conf->admin_port,
                                 .names = conf->admin_allowed_hosts,
                                 .nnames = conf->admin_nallowed_hosts};
    local_address(req->conn, local, sizeof local, &a.loopback);
    return keel__edge_check_admin(&a, req->method, keel__req_header(req, "Host"),
                                  keel__req_header(req, "Origin"),
                                  keel__req_header(req, "Content-Type"));
}
