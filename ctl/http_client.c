#include "config.h"

#include "http_client.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include <keel/error.h>

/*
 * keelctl's HTTP transport is libcurl (the same library keeld's upstream
 * client uses); this file keeps keelctl's own rules on top of it: the admin
 * URL syntax and its messages, timeouts, a cap on every answer, and error
 * messages that name the URL.
 */

/* Limits on what the server may send besides the body. */
#define MAX_HEADERS 128
#define MAX_HEAD_BYTES (64 * 1024)

static void KEEL_PRINTF(3, 4) set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
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

/* ------------------------------------------------------------ transfer */

/* What the callbacks collect; every buffer is bounded. */
struct transfer {
    struct http_response *resp;
    size_t head_bytes;
    char *body;
    size_t len, cap, max;
    bool too_big;
    bool bad_head;
};

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *arg)
{
    struct transfer *t = arg;
    size_t n = size * nmemb;
    if (n > t->max - t->len) {
        t->too_big = true;
        return 0;
    }
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 16384;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *grown = realloc(t->body, cap);
        if (grown == NULL)
            return 0;
        t->body = grown;
        t->cap = cap;
    }
    memcpy(t->body + t->len, ptr, n);
    t->len += n;
    t->body[t->len] = '\0';
    return n;
}

static char *dup_trimmed(const char *s, size_t n)
{
    while (n > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        n--;
    char *out = malloc(n + 1);
    if (out != NULL) {
        memcpy(out, s, n);
        out[n] = '\0';
    }
    return out;
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

/* One header line: the status line starts a new response (an interim 100
 * answer is replaced by the final one), "name: value" lines are kept. */
static size_t on_header(char *line, size_t size, size_t nmemb, void *arg)
{
    struct transfer *t = arg;
    size_t n = size * nmemb;
    t->head_bytes += n;
    if (t->head_bytes > MAX_HEAD_BYTES) {
        t->bad_head = true;
        return 0;
    }
    if (n >= 5 && strncmp(line, "HTTP/", 5) == 0) {
        free_headers(t->resp);
        const char *sp = memchr(line, ' ', n);
        const char *reason = sp != NULL ? memchr(sp + 1, ' ', n - (size_t)(sp + 1 - line)) : NULL;
        t->resp->reason = reason != NULL ? dup_trimmed(reason + 1, n - (size_t)(reason + 1 - line))
                                         : strdup("");
        return t->resp->reason != NULL ? n : 0;
    }
    const char *colon = memchr(line, ':', n);
    if (colon == NULL)
        return n; /* the blank line that ends the head */
    if (t->resp->nheaders == MAX_HEADERS) {
        t->bad_head = true;
        return 0;
    }
    if (t->resp->nheaders % 16 == 0) {
        struct http_header_field *grown = realloc(t->resp->headers,
                                                  (t->resp->nheaders + 16) * sizeof *grown);
        if (grown == NULL)
            return 0;
        t->resp->headers = grown;
    }
    struct http_header_field *h = &t->resp->headers[t->resp->nheaders];
    h->name = dup_trimmed(line, (size_t)(colon - line));
    h->value = dup_trimmed(colon + 1, n - (size_t)(colon + 1 - line));
    if (h->name == NULL || h->value == NULL) {
        free(h->name);
        free(h->value);
        return 0;
    }
    t->resp->nheaders++;
    return n;
}

static bool header_safe(const char *s)
{
    for (; s != NULL && *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

/* Turns a failed transfer into keelctl's message for it. */
static int transfer_error(CURL *c, CURLcode cc, const struct http_url *url,
                          const struct transfer *t, int io_ms, const char *curl_msg, char *err,
                          size_t errlen)
{
    long os_errno = 0;
    curl_easy_getinfo(c, CURLINFO_OS_ERRNO, &os_errno);
    const char *why = os_errno != 0 ? strerror((int)os_errno) : curl_msg;
    switch (cc) {
    case CURLE_COULDNT_RESOLVE_HOST:
        set_err(err, errlen, "cannot connect to %s: cannot resolve host %s: %s", url->text,
                url->host, curl_msg);
        return KEEL_EIO;
    case CURLE_COULDNT_CONNECT:
        set_err(err, errlen, "cannot connect to %s: %s", url->text, why);
        return KEEL_EIO;
    case CURLE_OPERATION_TIMEDOUT: {
        curl_off_t connected = 0;
        curl_easy_getinfo(c, CURLINFO_CONNECT_TIME_T, &connected);
        if (connected == 0)
            set_err(err, errlen, "cannot connect to %s: %s", url->text, strerror(ETIMEDOUT));
        else
            set_err(err, errlen, "timed out after %d s waiting for %s to answer", io_ms / 1000,
                    url->text);
        return KEEL_ETIMEOUT;
    }
    case CURLE_SEND_ERROR:
        set_err(err, errlen, "cannot send the request to %s: %s", url->text, why);
        return KEEL_EIO;
    case CURLE_RECV_ERROR:
        set_err(err, errlen, "error reading the response from %s: %s", url->text, why);
        return KEEL_EIO;
    case CURLE_GOT_NOTHING:
        set_err(err, errlen, "%s closed the connection without answering", url->text);
        return KEEL_EIO;
    case CURLE_PARTIAL_FILE:
        set_err(err, errlen, "%s closed the connection before the response was complete",
                url->text);
        return KEEL_EIO;
    case CURLE_FILESIZE_EXCEEDED:
        set_err(err, errlen, "response from %s is larger than the limit of %zu bytes", url->text,
                t->max);
        return KEEL_ETOOBIG;
    case CURLE_WRITE_ERROR:
        if (t->too_big) {
            set_err(err, errlen, "response from %s is larger than the limit of %zu bytes",
                    url->text, t->max);
            return KEEL_ETOOBIG;
        }
        set_err(err, errlen, "out of memory");
        return KEEL_ENOMEM;
    case CURLE_OUT_OF_MEMORY:
        set_err(err, errlen, "out of memory");
        return KEEL_ENOMEM;
    case CURLE_BAD_CONTENT_ENCODING:
        set_err(err, errlen, "malformed response from %s: %s", url->text, curl_msg);
        return KEEL_EUNSUPPORTED;
    default:
        if (t->bad_head)
            set_err(err, errlen, "malformed response from %s: %s", url->text,
                    "response head too large");
        else
            set_err(err, errlen, "malformed response from %s: %s", url->text, curl_msg);
        return KEEL_EINVAL;
    }
}

int http_request_perform(const struct http_url *url, const struct http_request *req,
                         struct http_response *resp, char *err, size_t errlen)
{
    memset(resp, 0, sizeof *resp);
    if (req == NULL || req->method == NULL || req->target == NULL || req->target[0] != '/' ||
        !header_safe(req->method) || !header_safe(req->target) ||
        strpbrk(req->target, " ") != NULL || !header_safe(req->bearer_token) ||
        !header_safe(req->content_type) || !header_safe(req->user_agent)) {
        set_err(err, errlen, "invalid request for %s (control characters or a bad target)",
                url->text);
        return KEEL_EINVAL;
    }
    static bool global_done;
    if (!global_done) {
        /* keelctl is single-threaded: one lazy global initialisation. */
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            set_err(err, errlen, "cannot initialise libcurl");
            return KEEL_ENOMEM;
        }
        global_done = true;
    }
    int connect_ms = req->connect_timeout_ms > 0 ? req->connect_timeout_ms
                                                 : HTTP_DEFAULT_CONNECT_TIMEOUT_MS;
    int io_ms = req->io_timeout_ms > 0 ? req->io_timeout_ms : HTTP_DEFAULT_IO_TIMEOUT_MS;
    struct transfer t = {.resp = resp,
                         .max = req->max_body > 0 ? req->max_body : HTTP_DEFAULT_MAX_BODY};

    size_t full_len = strlen(url->text) + strlen(req->target) + 1;
    char *full = malloc(full_len);
    char *auth = NULL, *ctype = NULL;
    struct curl_slist *headers = NULL;
    CURL *c = curl_easy_init();
    if (full == NULL || c == NULL) {
        free(full);
        curl_easy_cleanup(c);
        set_err(err, errlen, "request for %s is too large or out of memory", url->text);
        return KEEL_ENOMEM;
    }
    snprintf(full, full_len, "%s%s", url->text, req->target);
    if (req->bearer_token != NULL && req->bearer_token[0] != '\0') {
        size_t n = strlen(req->bearer_token) + 32;
        if ((auth = malloc(n)) != NULL)
            snprintf(auth, n, "Authorization: Bearer %s", req->bearer_token);
    }
    if (req->content_type != NULL) {
        size_t n = strlen(req->content_type) + 16;
        if ((ctype = malloc(n)) != NULL)
            snprintf(ctype, n, "Content-Type: %s", req->content_type);
    }
    /* No "Expect: 100-continue" round trip, and one request per connection. */
    headers = curl_slist_append(headers, "Expect:");
    headers = curl_slist_append(headers, "Connection: close");
    if (auth != NULL)
        headers = curl_slist_append(headers, auth);
    if (ctype != NULL)
        headers = curl_slist_append(headers, ctype);

    char curl_msg[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, full);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http");
    curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)connect_ms);
    /* The I/O timeout is idle time: a transfer that moves less than one
     * byte a second for that long is given up, a long import is not. */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)((io_ms + 999) / 1000));
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)t.max);
    curl_easy_setopt(c, CURLOPT_USERAGENT, req->user_agent ? req->user_agent : "keelctl");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req->method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, curl_msg);
    if (strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0) {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req->method);
    } else {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, req->body ? req->body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    }

    CURLcode cc = curl_easy_perform(c);
    int rc = 0;
    if (cc != CURLE_OK) {
        rc = transfer_error(c, cc, url, &t, io_ms, curl_msg[0] ? curl_msg : curl_easy_strerror(cc),
                            err, errlen);
    } else {
        long status = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        resp->status = (int)status;
        if (resp->reason == NULL)
            resp->reason = strdup("");
        if (t.body == NULL)
            t.body = strdup("");
        if (resp->reason == NULL || t.body == NULL) {
            set_err(err, errlen, "out of memory");
            rc = KEEL_ENOMEM;
        }
    }
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
    free(full);
    free(auth);
    free(ctype);
    if (rc != 0) {
        free(t.body);
        http_response_free(resp);
        return rc;
    }
    resp->body = t.body;
    resp->body_len = t.len;
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
