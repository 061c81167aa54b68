#include "config.h"

#include "http/request.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util/log.h"
#include "http/server.h"
#include "http/routes.h"

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

static atomic_ullong next_request_id = 1;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

keel_request *keel__request_new(struct MHD_Connection *conn, int listener, const char *method,
                                const char *url)
{
    keel_request *req = calloc(1, sizeof *req);
    if (req == NULL)
        return NULL;
    req->conn = conn;
    req->listener = listener;
    req->method = method;
    req->path = url;
    req->id = atomic_fetch_add_explicit(&next_request_id, 1, memory_order_relaxed);
    req->start_ns = now_ns();
    return req;
}

int64_t keel__request_elapsed_ns(const keel_request *req)
{
    return now_ns() - req->start_ns;
}

void keel__request_free(keel_request *req)
{
    if (req == NULL)
        return;
    /* Cleanups first: they may still read arena memory. */
    struct keel__cleanup *c = req->cleanups;
    while (c != NULL) {
        struct keel__cleanup *next = c->next;
        c->fn(c->arg);
        c = next;
    }
    if (req->json_body != NULL)
        json_decref(req->json_body);
    if (req->table != NULL)
        keel__table_release(req->table, req->route);
    struct keel__header *h = req->headers;
    while (h != NULL) {
        struct keel__header *next = h->next;
        free(h);
        h = next;
    }
    free(req->body);
    struct keel__arena_block *b = req->arena;
    while (b != NULL) {
        struct keel__arena_block *next = b->next;
        free(b);
        b = next;
    }
    free(req);
}

void *keel__req_alloc(keel_request *req, size_t size)
{
    const size_t align = sizeof(max_align_t);
    size = (size + align - 1) & ~(align - 1);
    if (size == 0)
        size = align;
    struct keel__arena_block *b = req->arena;
    if (b == NULL || b->size - b->used < size) {
        size_t want = b == NULL ? ARENA_FIRST_BLOCK : b->size * 2;
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
    memset(p, 0, size);
    return p;
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
    char *d = keel__req_alloc(req, n + 1);
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

int keel__req_add_header(keel_request *req, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value);
    /* One allocation holds the node and both strings. */
    struct keel__header *h = malloc(sizeof *h + nl + vl + 2);
    if (h == NULL)
        return KEEL_ENOMEM;
    h->name = (char *)(h + 1);
    memcpy(h->name, name, nl + 1);
    h->value = h->name + nl + 1;
    memcpy(h->value, value, vl + 1);
    h->next = req->headers;
    req->headers = h;
    return 0;
}

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
static int queue_response(keel_request *req, unsigned status, char *body, size_t len,
                          enum MHD_ResponseMemoryMode mode)
{
    if (req->conn == NULL || req->responded) {
        int rc = req->conn == NULL ? respond_synthetic(req, status, body, len) : KEEL_ERESPONDED;
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return rc;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, mode);
    if (resp == NULL) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return KEEL_ENOMEM;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    for (const struct keel__header *h = req->headers; h != NULL; h = h->next)
        MHD_add_response_header(resp, h->name, h->value);
    keel__cors_headers(req, resp);
    enum MHD_Result r = MHD_queue_response(req->conn, status, resp);
    MHD_destroy_response(resp);
    req->responded = true;
    req->status = status;
    return r == MHD_YES ? 0 : KEEL_EIO;
}

int keel__respond(keel_request *req, unsigned status, const char *body, size_t len)
{
    return queue_response(req, status, (char *)body, len, MHD_RESPMEM_MUST_COPY);
}

int keel__respond_json(keel_request *req, unsigned status, json_t *body)
{
    if (body == NULL)
        return keel__respond_detail(req, 500, "Internal Server Error");
    /* json_dumps() allocates with malloc: keel never changes jansson's
     * allocator, so libmicrohttpd's free() matches. */
    /* 15 significant digits print the stored rates and scores as written
     * (7.86, not 7.8600000000000003), as the service keel replaces did. */
    char *text = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15));
    json_decref(body);
    if (text == NULL)
        return keel__respond(req, 500, "{\"detail\":\"Internal Server Error\"}", 34);
    return queue_response(req, status, text, strlen(text), MHD_RESPMEM_MUST_FREE);
}

int keel__respond_detail(keel_request *req, unsigned status, const char *detail)
{
    return keel__respond_json(req, status, json_pack("{s:s}", "detail", detail));
}
