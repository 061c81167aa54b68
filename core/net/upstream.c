#include "config.h"

#include "net/upstream.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "data/breaker.h"
#include "util/time.h"
#include "http/request.h"
#include "util/blocking.h"
#include "util/log.h"

#define UPSTREAM_NAME_MAX 63
#define UPSTREAM_URL_MAX 2048
#define UPSTREAM_TOKEN_MAX 4096
#define HANDLER_DEADLINE_MAX_MS 5000
#define REDIRECTS_MAX 3
#define ERROR_MAX 256

enum { CLASS_2XX, CLASS_3XX, CLASS_4XX, CLASS_5XX, CLASS_ERROR, NCLASS };
static const char *const class_names[NCLASS] = {"2xx", "3xx", "4xx", "5xx", "error"};

/* Counters and breaker of one (plugin, upstream) pair; lives until exit. */
struct upstream_stats {
    struct upstream_stats *next;
    char plugin[64];
    char name[UPSTREAM_NAME_MAX + 1];
    keel__breaker *breaker;
    atomic_ullong requests[NCLASS];
    atomic_ullong buckets[16];
    atomic_ullong count;
    atomic_ullong sum_us;
};

struct keel_upstream {
    struct upstream_stats *stats;
    char *url;         /* base, without a trailing '/' */
    char *auth_header; /* "Authorization: Bearer ...", or NULL; never logged */
    long timeout_ms;
    long max_bytes;
    long retries;
    long backoff_ms;
};

static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
static struct upstream_stats *all_stats;

static atomic_bool aborting;

void keel__upstream_abort_all(void)
{
    atomic_store(&aborting, true);
}

bool keel__upstream_aborting(void)
{
    return atomic_load_explicit(&aborting, memory_order_relaxed);
}

int keel__upstream_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : KEEL_EIO;
}

void keel__upstream_global_cleanup(void)
{
    curl_global_cleanup();
}

/* ------------------------------------------------------------ declaration */

static struct upstream_stats *stats_for(const char *plugin, const char *name, int failures,
                                        int open_ms)
{
    pthread_mutex_lock(&stats_lock);
    struct upstream_stats *s;
    for (s = all_stats; s != NULL; s = s->next)
        if (strcmp(s->plugin, plugin) == 0 && strcmp(s->name, name) == 0)
            break;
    if (s == NULL && (s = calloc(1, sizeof *s)) != NULL) {
        snprintf(s->plugin, sizeof s->plugin, "%s", plugin);
        snprintf(s->name, sizeof s->name, "%s", name);
        s->breaker = keel__breaker_new(failures, open_ms);
        if (s->breaker == NULL) {
            free(s);
            s = NULL;
        } else {
            /* Sorted, so the exposition lists series in a stable order. */
            struct upstream_stats **at = &all_stats;
            while (*at != NULL &&
                   (strcmp((*at)->plugin, plugin) < 0 ||
                    (strcmp((*at)->plugin, plugin) == 0 && strcmp((*at)->name, name) < 0)))
                at = &(*at)->next;
            s->next = *at;
            *at = s;
        }
    }
    pthread_mutex_unlock(&stats_lock);
    return s;
}

static int conf_long(const char *plugin, const char *name, const json_t *config, const char *key,
                     long min, long max, long *out)
{
    const json_t *v = json_object_get(config, key);
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        keel__log(KEEL_LOG_ERROR, plugin, "upstream %s: %s must be an integer %ld-%ld", name, key,
                  min, max);
        return KEEL_ECONFIG;
    }
    *out = (long)json_integer_value(v);
    return 0;
}

static bool valid_upstream_name(const char *n)
{
    size_t len = n ? strlen(n) : 0;
    if (len == 0 || len > UPSTREAM_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)n[i]) && n[i] != '_' && n[i] != '-')
            return false;
    return true;
}

int keel__upstream_new(const char *plugin, const char *name, const json_t *config,
                       keel_upstream **out)
{
    if (out != NULL)
        *out = NULL;
    if (plugin == NULL || out == NULL || !valid_upstream_name(name)) {
        keel__log(KEEL_LOG_ERROR, plugin ? plugin : "upstream",
                  "upstream_add: refused (outside init, or a bad name)");
        return KEEL_EINVAL;
    }
    if (!json_is_object(config)) {
        keel__log(KEEL_LOG_ERROR, plugin, "upstream %s: config must be an object", name);
        return KEEL_ECONFIG;
    }
    const char *url = json_string_value(json_object_get(config, "url"));
    if (url == NULL || strlen(url) >= UPSTREAM_URL_MAX ||
        (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)) {
        keel__log(KEEL_LOG_ERROR, plugin, "upstream %s: url must be an http:// or https:// URL",
                  name);
        return KEEL_ECONFIG;
    }
    long timeout_ms = 5000, max_bytes = 1048576, retries = 2, backoff_ms = 200;
    long failures = 5, open_ms = 5000;
    int rc;
    if ((rc = conf_long(plugin, name, config, "timeout_ms", 1, 600000, &timeout_ms)) != 0 ||
        (rc = conf_long(plugin, name, config, "max_bytes", 1, 256L * 1024 * 1024, &max_bytes)) !=
            0 ||
        (rc = conf_long(plugin, name, config, "retries", 0, 10, &retries)) != 0 ||
        (rc = conf_long(plugin, name, config, "backoff_ms", 0, 60000, &backoff_ms)) != 0 ||
        (rc = conf_long(plugin, name, config, "breaker_failures", 1, 1000, &failures)) != 0 ||
        (rc = conf_long(plugin, name, config, "breaker_open_ms", 1, 3600000, &open_ms)) != 0)
        return rc;
    const json_t *token_env = json_object_get(config, "token_env");
    const char *token = NULL;
    if (token_env != NULL && !json_is_null(token_env)) {
        if (!json_is_string(token_env)) {
            keel__log(KEEL_LOG_ERROR, plugin, "upstream %s: token_env must be a string", name);
            return KEEL_ECONFIG;
        }
        token = getenv(json_string_value(token_env));
        if (token == NULL || *token == '\0')
            /* The variable's name may be logged, never its value. */
            keel__log(KEEL_LOG_WARN, plugin,
                      "upstream %s: environment variable %s is not set; calling without a token",
                      name, json_string_value(token_env));
        else if (strlen(token) > UPSTREAM_TOKEN_MAX || strpbrk(token, "\r\n") != NULL) {
            keel__log(KEEL_LOG_ERROR, plugin,
                      "upstream %s: the token in %s is longer than %d bytes or has a line break",
                      name, json_string_value(token_env), UPSTREAM_TOKEN_MAX);
            return KEEL_ECONFIG;
        }
    }

    keel_upstream *up = calloc(1, sizeof *up);
    if (up == NULL)
        return KEEL_ENOMEM;
    up->url = strdup(url);
    up->timeout_ms = timeout_ms;
    up->max_bytes = max_bytes;
    up->retries = retries;
    up->backoff_ms = backoff_ms;
    if (token != NULL && *token != '\0') {
        size_t n = strlen(token) + 32;
        up->auth_header = malloc(n);
        if (up->auth_header != NULL)
            snprintf(up->auth_header, n, "Authorization: Bearer %s", token);
    }
    up->stats = stats_for(plugin, name, (int)failures, (int)open_ms);
    if (up->url == NULL || up->stats == NULL ||
        (token != NULL && *token != '\0' && up->auth_header == NULL)) {
        keel__upstream_free(up);
        return KEEL_ENOMEM;
    }
    size_t len = strlen(up->url);
    while (len > 0 && up->url[len - 1] == '/')
        up->url[--len] = '\0';
    *out = up;
    return 0;
}

void keel__upstream_free(keel_upstream *up)
{
    if (up == NULL)
        return;
    if (up->auth_header != NULL) {
        /* The token should not linger in freed memory. */
        volatile char *p = up->auth_header;
        while (*p != '\0')
            *p++ = '\0';
    }
    free(up->auth_header);
    free(up->url);
    free(up);
}

json_t *keel__upstream_describe(const keel_upstream *up)
{
    return json_pack("{s:s,s:s,s:s}", "name", up->stats->name, "url", up->url, "breaker",
                     keel__breaker_state_name(keel__breaker_state(up->stats->breaker)));
}

/* ------------------------------------------------------------ requests */

struct body_buf {
    char *data;
    size_t len, cap, max;
    bool over;
};

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *arg)
{
    struct body_buf *b = arg;
    size_t n = size * nmemb;
    if (n > b->max - b->len) {
        b->over = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > b->max + 1)
            cap = b->max + 1;
        char *grown = realloc(b->data, cap);
        if (grown == NULL)
            return 0;
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

static void set_error(keel_request *req, const char *fmt, ...) KEEL_PRINTF(2, 3);

static void set_error(keel_request *req, const char *fmt, ...)
{
    char msg[ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    req->upstream_error = keel__req_strdup(req, msg);
}

const char *keel__host_upstream_last_error(const keel_request *req)
{
    return req != NULL && req->upstream_error != NULL ? req->upstream_error : "";
}

int keel__host_upstream_open(const keel_upstream *up)
{
    return up != NULL && keel__breaker_refusing(up->stats->breaker, keel__now_ms());
}

static void observe(struct upstream_stats *s, int cls, int64_t us)
{
    atomic_fetch_add_explicit(&s->requests[cls], 1, memory_order_relaxed);
    double secs = (double)us / 1e6;
    for (size_t i = 0; i < keel__nmbuckets && i < 16; i++)
        if (secs <= keel__mbuckets[i]) {
            atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
            break;
        }
    atomic_fetch_add_explicit(&s->sum_us, (unsigned long long)(us > 0 ? us : 0),
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
}

/* True when url has the same scheme, host and port as base. */
static bool same_origin(const char *base, const char *url)
{
    CURLU *a = curl_url(), *b = curl_url();
    bool same = false;
    if (a != NULL && b != NULL && curl_url_set(a, CURLUPART_URL, base, 0) == CURLUE_OK &&
        curl_url_set(b, CURLUPART_URL, url, 0) == CURLUE_OK) {
        same = true;
        static const CURLUPart parts[] = {CURLUPART_SCHEME, CURLUPART_HOST, CURLUPART_PORT};
        for (size_t i = 0; i < 3 && same; i++) {
            char *x = NULL, *y = NULL;
            curl_url_get(a, parts[i], &x, CURLU_DEFAULT_PORT);
            curl_url_get(b, parts[i], &y, CURLU_DEFAULT_PORT);
            same = x != NULL && y != NULL && strcasecmp(x, y) == 0;
            curl_free(x);
            curl_free(y);
        }
    }
    curl_url_cleanup(a);
    curl_url_cleanup(b);
    return same;
}

/* The outcome of one attempt. */
struct attempt {
    int rc;      /* 0: an answer; else KEEL_E* */
    long status; /* when rc == 0 */
    bool retry;  /* worth another attempt */
    bool breaker_failure;
    char *location; /* malloc'd redirect target, or NULL */
};

/* libcurl calls this about once a second, and more often while data moves;
 * a non-zero answer aborts the transfer. */
static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)arg;
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    return keel__upstream_aborting() ? 1 : 0;
}

static void perform(keel_upstream *up, const char *url, const char *method, const char *payload,
                    long timeout_ms, struct body_buf *buf, struct attempt *a, keel_request *req)
{
    memset(a, 0, sizeof *a);
    CURL *c = curl_easy_init();
    if (c == NULL) {
        a->rc = KEEL_ENOMEM;
        set_error(req, "out of memory");
        return;
    }
    struct curl_slist *headers = NULL;
    headers = curl_slist_append(headers, "Accept: application/json");
    if (payload != NULL)
        headers = curl_slist_append(headers, "Content-Type: application/json");
    if (up->auth_header != NULL)
        headers = curl_slist_append(headers, up->auth_header);
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)up->max_bytes);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "keeld/" PACKAGE_VERSION);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, buf);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (payload != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, payload);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(payload));
    } else if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    }

    keel__blocking_enter();
    CURLcode cc = curl_easy_perform(c);
    keel__blocking_leave();
    if (cc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &a->status);
        if (a->status >= 300 && a->status < 400) {
            char *loc = NULL;
            curl_easy_getinfo(c, CURLINFO_REDIRECT_URL, &loc);
            if (loc != NULL)
                a->location = strdup(loc);
        }
        a->retry = a->status >= 500 || a->status == 429;
        a->breaker_failure = a->status >= 500;
    } else if (cc == CURLE_ABORTED_BY_CALLBACK) {
        a->rc = KEEL_EUPSTREAM;
        set_error(req, "shutting down");
    } else if (buf->over || cc == CURLE_FILESIZE_EXCEEDED) {
        a->rc = KEEL_ETOOBIG;
        set_error(req, "answer larger than max_bytes (%ld)", up->max_bytes);
    } else if (cc == CURLE_OPERATION_TIMEDOUT) {
        a->rc = KEEL_ETIMEOUT;
        a->retry = true;
        a->breaker_failure = true;
        set_error(req, "timed out after %ld ms", timeout_ms);
    } else if (cc == CURLE_PEER_FAILED_VERIFICATION || cc == CURLE_SSL_CONNECT_ERROR ||
               cc == CURLE_SSL_CERTPROBLEM || cc == CURLE_SSL_CIPHER ||
               cc == CURLE_SSL_CACERT_BADFILE || cc == CURLE_SSL_ISSUER_ERROR) {
        a->rc = KEEL_EUPSTREAM;
        a->breaker_failure = true;
        set_error(req, "TLS error: %s", errbuf[0] ? errbuf : curl_easy_strerror(cc));
    } else {
        a->rc = KEEL_EUPSTREAM;
        a->retry = true;
        a->breaker_failure = true;
        set_error(req, "%s", errbuf[0] ? errbuf : curl_easy_strerror(cc));
    }
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
}

/* Sleeps ms in short steps so that a shutdown cuts a backoff short. */
static void sleep_ms(long ms)
{
    while (ms > 0 && !keel__upstream_aborting()) {
        long step = ms < 50 ? ms : 50;
        struct timespec ts = {0, step * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
        ms -= step;
    }
}

static void json_free_cb(void *p)
{
    json_decref(p);
}

/* Parses a finished answer into *json per the rules of upstream_request. */
static int parse_answer(keel_request *req, keel_upstream *up, struct body_buf *buf, long status,
                        json_t **json)
{
    if (buf->len == 0)
        return 0;
    json_error_t jerr;
    json_t *v = json_loadb(buf->data, buf->len, JSON_DECODE_ANY, &jerr);
    if (v == NULL) {
        if (status >= 200 && status < 300) {
            set_error(req, "answer is not JSON (line %d column %d)", jerr.line, jerr.column);
            keel__log(KEEL_LOG_WARN, up->stats->plugin, "upstream %s: %s", up->stats->name,
                      req->upstream_error ? req->upstream_error : "answer is not JSON");
            return KEEL_EBADRESPONSE;
        }
        return 0;
    }
    if (keel__req_on_cleanup(req, json_free_cb, v) != 0) {
        json_decref(v);
        return KEEL_ENOMEM;
    }
    *json = v;
    return 0;
}

int keel__host_upstream_request(keel_request *req, keel_upstream *up, const char *method,
                                const char *path, const json_t *body, unsigned deadline_ms,
                                long *status, json_t **json)
{
    if (status != NULL)
        *status = 0;
    if (json != NULL)
        *json = NULL;
    if (req == NULL || up == NULL || method == NULL || status == NULL || json == NULL)
        return KEEL_EINVAL;
    req->upstream_error = NULL;
    /* A handler holds a client and a server thread: it gets a short,
     * explicit deadline and no more. */
    if (req->conn != NULL && (deadline_ms == 0 || deadline_ms > HANDLER_DEADLINE_MAX_MS)) {
        set_error(req, "from a handler, deadline_ms must be 1-%d", HANDLER_DEADLINE_MAX_MS);
        return KEEL_EINVAL;
    }
    if (path == NULL)
        path = "";
    if (strpbrk(path, " \r\n") != NULL || strlen(path) > UPSTREAM_URL_MAX) {
        set_error(req, "path has spaces or line breaks, or is too long");
        return KEEL_EINVAL;
    }
    size_t ulen = strlen(up->url) + strlen(path) + 2;
    char *url = malloc(ulen);
    char *payload = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    if (url == NULL || (body != NULL && payload == NULL)) {
        free(url);
        free(payload);
        return KEEL_ENOMEM;
    }
    snprintf(url, ulen, "%s%s%s", up->url, path[0] == '/' || path[0] == '\0' ? "" : "/", path);

    struct upstream_stats *s = up->stats;
    int64_t start = keel__now_ms();
    int64_t end = deadline_ms > 0 ? start + deadline_ms : INT64_MAX;
    long backoff = up->backoff_ms;
    int redirects = 0, rc = 0;
    struct body_buf buf = {.max = (size_t)up->max_bytes};
    for (long attempt = 0;; attempt++) {
        int64_t now = keel__now_ms();
        if (keel__upstream_aborting()) {
            rc = KEEL_EUPSTREAM;
            set_error(req, "shutting down");
            break;
        }
        if (now >= end) {
            rc = KEEL_ETIMEOUT;
            set_error(req, "deadline of %u ms passed", deadline_ms);
            break;
        }
        if (!keel__breaker_allow(s->breaker, now)) {
            rc = KEEL_EUPSTREAM;
            set_error(req, "circuit open: %s is failing", s->name);
            atomic_fetch_add_explicit(&s->requests[CLASS_ERROR], 1, memory_order_relaxed);
            break;
        }
        long timeout = up->timeout_ms;
        if (end - now < timeout)
            timeout = (long)(end - now);
        buf.len = 0;
        buf.over = false;
        struct attempt a;
        int64_t t0 = keel__now_ms();
        perform(up, url, method, payload, timeout, &buf, &a, req);
        int64_t us = (keel__now_ms() - t0) * 1000;
        if (a.breaker_failure)
            keel__breaker_failure(s->breaker, keel__now_ms());
        else
            keel__breaker_success(s->breaker);
        int cls = a.rc != 0         ? CLASS_ERROR
                  : a.status >= 500 ? CLASS_5XX
                  : a.status >= 400 ? CLASS_4XX
                  : a.status >= 300 ? CLASS_3XX
                                    : CLASS_2XX;
        observe(s, cls, us);

        if (a.rc == 0 && a.location != NULL) {
            if (!same_origin(up->url, a.location)) {
                free(a.location);
                rc = KEEL_EBADRESPONSE;
                set_error(req, "redirect to another host refused");
                break;
            }
            if (++redirects > REDIRECTS_MAX) {
                free(a.location);
                rc = KEEL_EBADRESPONSE;
                set_error(req, "more than %d redirects", REDIRECTS_MAX);
                break;
            }
            free(url);
            url = a.location;
            attempt--;
            continue;
        }
        free(a.location);
        bool more = a.retry && attempt < up->retries && keel__now_ms() + backoff < end;
        if (!more) {
            rc = a.rc;
            if (rc == 0) {
                *status = a.status;
                rc = parse_answer(req, up, &buf, a.status, json);
            }
            break;
        }
        keel__log(KEEL_LOG_DEBUG, s->plugin, "upstream %s: attempt %ld failed (%s), retrying",
                  s->name, attempt + 1,
                  a.rc != 0 && req->upstream_error ? req->upstream_error : "server error");
        sleep_ms(backoff);
        backoff *= 2;
    }
    if (rc != 0 && rc != KEEL_EBADRESPONSE)
        keel__log(KEEL_LOG_WARN, s->plugin, "upstream %s: %s %s failed: %s", s->name, method, path,
                  req->upstream_error ? req->upstream_error : keel_strerror(rc));
    free(buf.data);
    free(url);
    free(payload);
    return rc;
}

/* ------------------------------------------------------------ metrics */

void keel__upstreams_render(struct keel__mtext *t)
{
    pthread_mutex_lock(&stats_lock);
    if (all_stats == NULL) {
        pthread_mutex_unlock(&stats_lock);
        return;
    }
    char plugin[160], name[160];
    keel__mtext_add(t, "# HELP keel_upstream_requests_total Upstream HTTP attempts by result.\n"
                       "# TYPE keel_upstream_requests_total counter\n");
    for (struct upstream_stats *s = all_stats; s != NULL; s = s->next) {
        keel__mtext_label(s->plugin, plugin, sizeof plugin);
        keel__mtext_label(s->name, name, sizeof name);
        for (int c = 0; c < NCLASS; c++)
            keel__mtext_add(t,
                            "keel_upstream_requests_total{plugin=\"%s\",upstream=\"%s\","
                            "class=\"%s\"} %llu\n",
                            plugin, name, class_names[c],
                            (unsigned long long)atomic_load(&s->requests[c]));
    }
    keel__mtext_add(t, "# HELP keel_upstream_request_duration_seconds Upstream attempt latency.\n"
                       "# TYPE keel_upstream_request_duration_seconds histogram\n");
    for (struct upstream_stats *s = all_stats; s != NULL; s = s->next) {
        keel__mtext_label(s->plugin, plugin, sizeof plugin);
        keel__mtext_label(s->name, name, sizeof name);
        unsigned long long cum = 0;
        for (size_t i = 0; i < keel__nmbuckets && i < 16; i++) {
            cum += atomic_load(&s->buckets[i]);
            keel__mtext_add(t,
                            "keel_upstream_request_duration_seconds_bucket{plugin=\"%s\","
                            "upstream=\"%s\",le=\"%g\"} %llu\n",
                            plugin, name, keel__mbuckets[i], cum);
        }
        unsigned long long count = atomic_load(&s->count);
        if (count < cum)
            count = cum;
        keel__mtext_add(t,
                        "keel_upstream_request_duration_seconds_bucket{plugin=\"%s\","
                        "upstream=\"%s\",le=\"+Inf\"} %llu\n"
                        "keel_upstream_request_duration_seconds_sum{plugin=\"%s\","
                        "upstream=\"%s\"} %.6f\n"
                        "keel_upstream_request_duration_seconds_count{plugin=\"%s\","
                        "upstream=\"%s\"} %llu\n",
                        plugin, name, count, plugin, name, (double)atomic_load(&s->sum_us) / 1e6,
                        plugin, name, count);
    }
    keel__mtext_add(t, "# HELP keel_upstream_breaker_state Upstream circuit breaker state "
                       "(0 closed, 1 open, 2 half-open).\n"
                       "# TYPE keel_upstream_breaker_state gauge\n");
    for (struct upstream_stats *s = all_stats; s != NULL; s = s->next) {
        keel__mtext_label(s->plugin, plugin, sizeof plugin);
        keel__mtext_label(s->name, name, sizeof name);
        keel__mtext_add(t, "keel_upstream_breaker_state{plugin=\"%s\",upstream=\"%s\"} %d\n",
                        plugin, name, keel__breaker_state(s->breaker));
    }
    pthread_mutex_unlock(&stats_lock);
}

void keel__upstreams_free_all(void)
{
    pthread_mutex_lock(&stats_lock);
    struct upstream_stats *s = all_stats;
    while (s != NULL) {
        struct upstream_stats *next = s->next;
        keel__breaker_free(s->breaker);
        free(s);
        s = next;
    }
    all_stats = NULL;
    pthread_mutex_unlock(&stats_lock);
}
