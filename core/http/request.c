#include "config.h"

#include "http/request.h"

#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "http/mhdpages.h"
#include "http/routes.h"
#include "util/counters.h"
#include "util/jsonout.h"
#include "util/log.h"
#include "util/text.h"
#include "util/time.h"

/* Arena blocks: requests mostly need a few hundred bytes (principal strings,
 * decoded parameters), so the first block is small and later blocks double. */
struct keel__arena_block {
    struct keel__arena_block *next;
    size_t size;
    size_t used;
    max_align_t data[];
};

struct keel__cleanup {
    void (*fn)(void *);
    void *arg;
    struct keel__cleanup *next;
};

#define ARENA_FIRST_BLOCK 2048
/* Larger requests are refused before any arithmetic on them: rounding up and
 * doubling a block size stay far from SIZE_MAX below this. */
#define ARENA_MAX_ALLOC (SIZE_MAX / 4)

static atomic_ullong next_request_id = 1;

/*
 * The request object and its first arena block are one allocation, and a
 * thread keeps the last few it freed for its next requests: a lane runs
 * request after request, and each took a calloc for the object and a
 * malloc for the block (2 KiB, past glibc's per-thread cache) and freed
 * both again.  A thread's spares go when it exits.
 */
#define REQ_HEAD ((sizeof(keel_request) + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1))
#define REQ_BLOCK (REQ_HEAD + sizeof(struct keel__arena_block) + ARENA_FIRST_BLOCK)
#define REQ_SPARES 4

/* Under AddressSanitizer (gcc says so with __SANITIZE_ADDRESS__, clang with
 * __has_feature) a freed request goes back to malloc, so that a use after
 * free is still caught. */
#if defined(__SANITIZE_ADDRESS__)
#define REQ_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define REQ_ASAN 1
#endif
#endif
#ifdef REQ_ASAN
static void *req_block_get(void)
{
    return malloc(REQ_BLOCK);
}

static void req_block_put(void *block)
{
    free(block);
}
#else

static _Thread_local struct {
    bool registered; /* with spares_key, so that thread exit frees them */
    unsigned n;
    void *items[REQ_SPARES];
} spares;
static pthread_key_t spares_key;
static pthread_once_t spares_once = PTHREAD_ONCE_INIT;
static bool spares_keyed;

static void spares_drop(void *unused)
{
    (void)unused;
    while (spares.n > 0)
        free(spares.items[--spares.n]);
}

static void spares_key_make(void)
{
    spares_keyed = pthread_key_create(&spares_key, spares_drop) == 0;
}

static void *req_block_get(void)
{
    return spares.n > 0 ? spares.items[--spares.n] : malloc(REQ_BLOCK);
}

static void req_block_put(void *block)
{
    if (!spares.registered) {
        pthread_once(&spares_once, spares_key_make);
        /* Any non-NULL value makes the key's destructor run at exit. */
        spares.registered = spares_keyed && pthread_setspecific(spares_key, &spares) == 0;
    }
    if (spares.registered && spares.n < REQ_SPARES)
        spares.items[spares.n++] = block;
    else
        free(block);
}
#endif

static struct keel__arena_block *first_block(keel_request *req)
{
    return (struct keel__arena_block *)((char *)req + REQ_HEAD);
}

keel_request *keel__request_new(struct MHD_Connection *conn, int listener, const char *method,
                                const char *url)
{
    keel_request *req = req_block_get();
    if (req == NULL)
        return NULL;
    memset(req, 0, offsetof(keel_request, db_error));
    req->db_error[0] = '\0';
    struct keel__arena_block *b = first_block(req);
    b->next = NULL;
    b->size = ARENA_FIRST_BLOCK;
    b->used = 0;
    req->arena = b;
    req->conn = conn;
    req->listener = listener;
    req->method = method;
    req->path = url;
    req->id = atomic_fetch_add_explicit(&next_request_id, 1, memory_order_relaxed);
    /* At the tick: the request's clock starts again, exactly, once its
     * headers are in (keel__request_restart_clock); this one only serves
     * requests that never get that far, and the lane's "begun". */
    req->start_ns = keel__monotonic_coarse_ns();
    req->request_id[0] = '-';
    req->client_addr[0] = '-';
    return req;
}

unsigned keel__request_final_status(const keel_request *req, bool completed_ok)
{
    /* A request that never got a response (client gone) counts as 499, the
     * status proxies use for that, so it is visible in metrics. */
    unsigned status = req->responded ? req->status : 499;
    if (!completed_ok && !req->responded)
        status = 499;
    return status;
}

void keel__request_restart_clock(keel_request *req)
{
    req->start_ns = keel__monotonic_ns();
}

static void answered(keel_request *req)
{
    void (*fn)(keel_request *) = req->on_answered;
    req->on_answered = NULL;
    if (fn != NULL)
        fn(req);
}

void keel__request_free(keel_request *req)
{
    if (req == NULL)
        return;
    answered(req);
    /* Cleanups first: they may still read arena memory. */
    struct keel__cleanup *c = req->cleanups;
    while (c != NULL) {
        struct keel__cleanup *next = c->next;
        c->fn(c->arg);
        c = next;
    }
    if (req->json_body != NULL)
        json_decref(req->json_body);
    if (req->parked != NULL) /* its connection ended before it went out */
        MHD_destroy_response(req->parked);
    if (req->table != NULL)
        keel__table_release(req->table, req->route);
    free(req->body);
    struct keel__arena_block *b = req->arena, *first = first_block(req);
    while (b != NULL) {
        struct keel__arena_block *next = b->next;
        if (b != first)
            free(b);
        b = next;
    }
    req_block_put(req);
}

void *keel__req_alloc_raw(keel_request *req, size_t size)
{
    const size_t align = sizeof(max_align_t);
    if (size > ARENA_MAX_ALLOC)
        return NULL;
    size = (size + align - 1) & ~(align - 1);
    if (size == 0)
        size = align;
    /* Never NULL: keel__request_new gives every request its first block. */
    struct keel__arena_block *b = req->arena;
    if (b->size - b->used < size) {
        size_t want = b->size * 2;
        while (want < size)
            want *= 2;
        struct keel__arena_block *nb = malloc(sizeof *nb + want);
        if (nb == NULL)
            return NULL;
        nb->size = want;
        nb->used = 0;
        nb->next = b;
        req->arena = nb;
        b = nb;
    }
    void *p = (char *)b->data + b->used;
    b->used += size;
    return p;
}

void *keel__req_alloc(keel_request *req, size_t size)
{
    void *p = keel__req_alloc_raw(req, size);
    if (p != NULL)
        memset(p, 0, size);
    return p;
}

size_t keel__request_arena_bytes(const keel_request *req)
{
    size_t n = 0;
    for (const struct keel__arena_block *b = req->arena; b != NULL; b = b->next)
        n += b->size;
    return n;
}

void *keel__req_alloc_ctx(void *ctx, size_t size)
{
    return keel__req_alloc(ctx, size);
}

char *keel__req_strdup(keel_request *req, const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s);
    char *d = keel__req_alloc_raw(req, n + 1);
    if (d != NULL)
        memcpy(d, s, n + 1);
    return d;
}

int keel__req_on_cleanup(keel_request *req, void (*fn)(void *), void *arg)
{
    struct keel__cleanup *c = keel__req_alloc(req, sizeof *c);
    if (c == NULL)
        return KEEL_ENOMEM;
    c->fn = fn;
    c->arg = arg;
    c->next = req->cleanups;
    req->cleanups = c;
    return 0;
}

void keel__req_count_degraded(const keel_request *req)
{
    struct keel__route_metrics *m = req->route ? req->route->metrics : NULL;
    for (const struct keel__header *h = req->headers; h != NULL; h = h->next) {
        /* Both names have this length; most headers (X-Request-Id) do not. */
        _Static_assert(sizeof "X-Keel-Degraded" == sizeof "X-Keel-Fallback", "one length");
        if (h->name_len != sizeof "X-Keel-Degraded" - 1)
            continue;
        if (strcasecmp(h->name, "X-Keel-Degraded") == 0)
            keel__metrics_degraded(m, strcasecmp(h->value, "database") == 0
                                          ? KEEL__DEGRADED_DATABASE
                                          : KEEL__DEGRADED_OTHER);
        else if (strcasecmp(h->name, "X-Keel-Fallback") == 0)
            keel__metrics_degraded(m, KEEL__DEGRADED_FALLBACK);
    }
}

int keel__req_add_header(keel_request *req, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value);
    /* One arena allocation holds the node and both strings. */
    struct keel__header *h = keel__req_alloc_raw(req, sizeof *h + nl + vl + 2);
    if (h == NULL)
        return KEEL_ENOMEM;
    h->name = (char *)(h + 1);
    h->name_len = nl;
    memcpy(h->name, name, nl + 1);
    h->value = h->name + nl + 1;
    memcpy(h->value, value, vl + 1);
    h->next = req->headers;
    req->headers = h;
    return 0;
}

/* ------------------------------------------------------------ accessors */

const char *keel__req_method(const keel_request *req)
{
    return req->method;
}

const char *keel__req_path(const keel_request *req)
{
    return req->path;
}

const char *keel__req_param(const keel_request *req, const char *name)
{
    for (size_t i = 0; i < req->match.nparams; i++)
        if (strcmp(req->match.names[i], name) == 0)
            return req->match.values[i];
    return NULL;
}

/* Decodes a query-string value ('+' is a space); KEEL_EINVAL when it
 * decodes to a NUL byte or has a broken escape, so plugins never see
 * truncated input. */
static int decode_query(keel_request *req, const char *raw, const char **value)
{
    size_t n = strlen(raw);
    char *out = keel__req_alloc(req, n + 1);
    if (out == NULL)
        return KEEL_ENOMEM;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (raw[i] == '%') {
            int hi = i + 1 < n ? keel__hex_value((unsigned char)raw[i + 1]) : -1;
            int lo = i + 2 < n ? keel__hex_value((unsigned char)raw[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return KEEL_EINVAL;
            out[j++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (raw[i] == '+') {
            out[j++] = ' ';
        } else {
            out[j++] = raw[i];
        }
    }
    out[j] = '\0';
    *value = out;
    return 0;
}

int keel__req_query_arg(const keel_request *req, const char *name, const char **value)
{
    *value = NULL;
    if (name == NULL)
        return KEEL_EINVAL;
    const char *raw = req->conn != NULL
                          ? MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name)
                          : keel__synthetic_lookup(req->synthetic ? req->synthetic->query : NULL,
                                                   name);
    if (raw == NULL)
        return KEEL_ENOTFOUND;
    /* The accessor is const for plugins; the arena is request-owned scratch. */
    return decode_query((keel_request *)req, raw, value);
}

const char *keel__req_query(const keel_request *req, const char *name)
{
    const char *v;
    return keel__req_query_arg(req, name, &v) == 0 ? v : NULL;
}

/* A field name's bit in keel_request.field_lengths. */
static uint64_t name_length_bit(size_t len)
{
    return 1ull << (len < 64 ? len : 0);
}

void keel__req_set_fields(keel_request *req, const struct keel__edge_field *f, size_t n)
{
    req->fields = f;
    req->nfields = n;
    req->field_lengths = 0;
    for (size_t i = 0; i < n; i++)
        req->field_lengths |= name_length_bit(f[i].name_len);
}

const char *keel__req_header(const keel_request *req, const char *name)
{
    if (req->conn == NULL) /* a synthetic request (keel-plugin-check) */
        return keel__synthetic_lookup(req->synthetic ? req->synthetic->headers : NULL, name);
    if (req->fields == NULL) /* before the edge check, or a head without fields */
        return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
    /* libmicrohttpd's lookup, first match in the order received, from the
     * fields the edge check collected and measured. */
    size_t len = strlen(name);
    if (!(req->field_lengths & name_length_bit(len)))
        return NULL; /* no field has a name of that length */
    for (size_t i = 0; i < req->nfields; i++) {
        const struct keel__edge_field *f = &req->fields[i];
        if (f->name_len == len && strcasecmp(f->name, name) == 0)
            return f->value;
    }
    return NULL;
}

const char *keel__req_body(const keel_request *req, size_t *len)
{
    /* A spooled body is not in memory: NULL, as for no body. */
    if (len != NULL)
        *len = req->body != NULL ? req->body_len : 0;
    return req->body;
}

/* True when containers nest more than limit levels deep.  Recursion is
 * bounded by limit (at most 1024 by configuration) and by jansson's own
 * parser depth limit, whichever is lower. */
static bool nests_deeper(const json_t *v, int limit)
{
    if (!json_is_object(v) && !json_is_array(v))
        return false;
    if (limit <= 0)
        return true;
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x) if (nests_deeper(x, limit - 1)) return true;
        return false;
    }
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) if (nests_deeper(x, limit - 1)) return true;
    return false;
}

int keel__json_body_parse(const char *body, size_t len, int max_depth, json_t **out, char *msg,
                          size_t msglen)
{
    *out = NULL;
    if (body == NULL || len == 0) {
        snprintf(msg, msglen, "Request body is empty");
        return KEEL_EINVAL;
    }
    json_error_t jerr;
    json_t *v = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (v == NULL) {
        snprintf(msg, msglen, "Malformed JSON body at line %d column %d: %s", jerr.line,
                 jerr.column, jerr.text);
        /* jansson quotes the input near the error, which may be invalid
         * UTF-8; the message goes into a JSON answer, so such bytes (and
         * control characters) become '?'. */
        for (char *c = msg; *c != '\0'; c++)
            if ((unsigned char)*c >= 0x80 || (unsigned char)*c < 0x20)
                *c = '?';
        return KEEL_EINVAL;
    }
    if (nests_deeper(v, max_depth)) {
        json_decref(v);
        snprintf(msg, msglen, "JSON body nests deeper than %d levels", max_depth);
        return KEEL_EINVAL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        snprintf(msg, msglen, "Request body must be a JSON object");
        return KEEL_EINVAL;
    }
    *out = v;
    return 0;
}

static bool is_json_content_type(const char *ct)
{
    if (ct == NULL)
        return false;
    while (*ct == ' ')
        ct++;
    size_t n = strlen("application/json");
    if (strncasecmp(ct, "application/json", n) != 0)
        return false;
    return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ';
}

int keel__req_json_body(keel_request *req, json_t **out)
{
    *out = NULL;
    if (req->json_body != NULL) {
        *out = req->json_body;
        return 0;
    }
    if (!is_json_content_type(keel__req_header(req, "Content-Type"))) {
        keel__respond_detail(req, 415, "Content-Type must be application/json");
        return KEEL_EINVAL;
    }
    if (req->body_too_large) {
        keel__respond_detail(req, 413, "Request body too large");
        return KEEL_ETOOBIG;
    }
    int max_depth = req->max_json_depth > 0 ? req->max_json_depth : KEEL__JSON_DEPTH_DEFAULT;
    char msg[256];
    json_t *v;
    if (keel__json_body_parse(req->body, req->body_len, max_depth, &v, msg, sizeof msg) != 0) {
        keel__respond_detail(req, 400, msg);
        return KEEL_EINVAL;
    }
    req->json_body = v;
    *out = v;
    return 0;
}

/* ------------------------------------------------------------ the user */

const char *keel__req_user(const keel_request *req, int field)
{
    if (!req->has_principal)
        return NULL;
    const struct keel__principal *p = &req->principal;
    switch (field) {
    case KEEL_USER_ID:
        return p->user_id;
    case KEEL_USER_SUPABASE_ID:
        return p->supabase_id;
    case KEEL_USER_EMAIL:
        return p->email;
    case KEEL_USER_FULL_NAME:
        return p->full_name;
    case KEEL_USER_ROLE:
        return p->role;
    case KEEL_USER_STATUS:
        return p->status;
    case KEEL_USER_TIER:
        return p->tier;
    case KEEL_USER_SYNCED:
        return p->synced ? "1" : "0";
    default:
        return NULL;
    }
}

/* ------------------------------------------------------------ synthetic requests */

const char *keel__synthetic_lookup(const char *const *table, const char *name)
{
    if (table == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; table[i] != NULL && table[i + 1] != NULL; i += 2)
        if (strcasecmp(table[i], name) == 0)
            return table[i + 1];
    return NULL;
}

/* keel__respond() for a request without a connection: records the first
 * response for keel-plugin-check and counts every attempt. */
static int respond_synthetic(keel_request *req, unsigned status, const char *body, size_t len)
{
    struct keel__synthetic *syn = req->synthetic;
    if (syn == NULL)
        return KEEL_EINVAL;
    syn->responses++;
    if (req->responded)
        return KEEL_ERESPONDED;
    char *copy = keel__req_alloc(req, len + 1);
    if (copy == NULL)
        return KEEL_ENOMEM;
    if (len > 0)
        memcpy(copy, body, len);
    syn->body = copy;
    syn->body_len = len;
    syn->status = status;
    req->responded = true;
    req->status = status;
    return 0;
}

/*
 * Queues body as the response.  With MHD_RESPMEM_MUST_FREE the body is a
 * malloc'd buffer that this function owns from the call on, whatever the
 * outcome: libmicrohttpd frees it once the response is sent, so a JSON body
 * is handed over instead of being copied once more (a malloc, a copy and a
 * free per request on every JSON route).
 */
static int queue_response(keel_request *req, unsigned status, const char *content_type, char *body,
                          size_t len, enum MHD_ResponseMemoryMode mode)
{
    if (req->conn == NULL) {
        int rc = respond_synthetic(req, status, body, len);
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return rc;
    }
    if (mode == MHD_RESPMEM_MUST_COPY) {
        /* Copied into the request's own memory rather than a malloc'd
         * buffer: it outlives the response, since libmicrohttpd has sent
         * it, or given it up, before it reports the request complete
         * (on_completed frees the request). */
        char *kept = keel__req_alloc_raw(req, len);
        if (kept != NULL) {
            memcpy(kept, body, len);
            body = kept;
            mode = MHD_RESPMEM_PERSISTENT;
        }
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, mode);
    if (resp == NULL) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return KEEL_ENOMEM;
    }
    return keel__respond_mhd(req, status, resp, content_type);
}

/* Queues resp with req->status on req's connection and drops the
 * caller's reference. */
static int queue_now(keel_request *req, struct MHD_Response *resp)
{
    enum MHD_Result r = keel__mhd_queue(req->conn, req->status, resp);
    MHD_destroy_response(resp);
    if (r != MHD_YES) {
        /* Nothing goes out; what is recorded must say so, not claim the
         * status that was meant. */
        keel__log(KEEL_LOG_ERROR, "core",
                  "req=%llu %s %s: could not queue the %u response; recorded as 500",
                  (unsigned long long)req->id, req->method, req->path, req->status);
        req->status = 500;
        return KEEL_EIO;
    }
    return 0;
}

int keel__respond_mhd(keel_request *req, unsigned status, struct MHD_Response *resp,
                      const char *content_type)
{
    if (resp == NULL)
        return KEEL_ENOMEM;
    /* Every response comes through here (the JSON helpers, and bodies
     * libmicrohttpd streams): the one place that keeps it to one. */
    if (req->responded) {
        MHD_destroy_response(resp);
        return KEEL_ERESPONDED;
    }
    MHD_add_response_header(resp, "Content-Type", content_type);
    for (const struct keel__header *h = req->headers; h != NULL; h = h->next)
        MHD_add_response_header(resp, h->name, h->value);
    /* Every identified request's response names it: last, as the header
     * list's oldest entry was before, without a copy into the list first. */
    if (req->identified)
        MHD_add_response_header(resp, "X-Request-Id", req->request_id);
    answered(req);
    /* Either way this request has had its one attempt. */
    req->responded = true;
    req->status = status;
    if (req->parking) {
        req->parked = resp;
        return 0;
    }
    return queue_now(req, resp);
}

int keel__request_unpark(keel_request *req)
{
    struct MHD_Response *resp = req->parked;
    req->parked = NULL;
    req->parking = false;
    return resp != NULL ? queue_now(req, resp) : KEEL_ENOMEM;
}

int keel__respond(keel_request *req, unsigned status, const char *body, size_t len)
{
    return queue_response(req, status, "application/json", (char *)body, len,
                          MHD_RESPMEM_MUST_COPY);
}

/* The answer when a body cannot be made at all. */
static const char internal_error[] = "{\"detail\":\"Internal Server Error\"}";

/* Queues JSON text keel's writer made: copied out of small (the caller's
 * stack) or, when it outgrew that, malloc'd memory libmicrohttpd frees. */
static int queue_written(keel_request *req, unsigned status, char *small, char *text, size_t len)
{
    return queue_response(req, status, "application/json", text, len,
                          text == small ? MHD_RESPMEM_MUST_COPY : MHD_RESPMEM_MUST_FREE);
}

int keel__respond_json(keel_request *req, unsigned status, json_t *body)
{
    /* No tree (a pack that ran out of memory): the literal answer. */
    if (body == NULL)
        return keel__respond(req, 500, internal_error, sizeof internal_error - 1);
    /* keel's writer (util/jsonout.h) gives the bytes of json_dumpb with
     * JSON_COMPACT | JSON_REAL_PRECISION(15): 15 significant digits print
     * the stored rates and scores as written (7.86, not 7.8600000000000003),
     * as the service keel replaces did.  Most bodies are small: written into
     * the stack and copied once by libmicrohttpd; a larger one continues in
     * malloc'd memory, which libmicrohttpd frees. */
    char small[1024];
    char *text = NULL;
    size_t len = 0;
    int rc = keel__json_dump(body, small, sizeof small, &text, &len);
    json_decref(body);
    if (rc < 0)
        return keel__respond(req, 500, internal_error, sizeof internal_error - 1);
    return queue_written(req, status, small, text, len);
}

int keel__respond_packv(keel_request *req, unsigned status, const char *fmt, va_list ap)
{
    char small[1024];
    char *text = NULL;
    size_t len = 0;
    const char *why = NULL;
    int rc = keel__json_vpack(small, sizeof small, &text, &len, &why, fmt, ap);
    if (rc < 0) {
        keel__log(KEEL_LOG_ERROR, "core", "req=%llu %s %s: cannot write the response \"%s\": %s",
                  (unsigned long long)req->id, req->method ? req->method : "-",
                  req->path ? req->path : "-", fmt ? fmt : "", why);
        keel__respond(req, 500, internal_error, sizeof internal_error - 1);
        return rc == KEEL_ENOMEM ? rc : KEEL_EINVAL;
    }
    return queue_written(req, status, small, text, len);
}

int keel__respond_pack(keel_request *req, unsigned status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = keel__respond_packv(req, status, fmt, ap);
    va_end(ap);
    return rc;
}

int keel__respond_detail(keel_request *req, unsigned status, const char *detail)
{
    return keel__respond_pack(req, status, "{s:s}", "detail", detail);
}

int keel__respond_owned(keel_request *req, unsigned status, const char *content_type, char *body,
                        size_t len)
{
    return queue_response(req, status, content_type, body, len, MHD_RESPMEM_MUST_FREE);
}
