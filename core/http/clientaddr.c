#include "config.h"

#include "http/clientaddr.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <keel/error.h>

#include "http/request.h"
#include "http/runtime.h"
#include "util/text.h"

bool keel__request_id_valid(const char *id)
{
    if (id == NULL)
        return false;
    size_t n = 0;
    for (; id[n] != '\0'; n++) {
        unsigned char ch = (unsigned char)id[n];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == ':' || ch == '+' ||
                  ch == '/' || ch == '=' || ch == '-';
        if (!ok || n >= KEEL__REQUEST_ID_MAX)
            return false;
    }
    return n > 0;
}

static pthread_once_t prefix_once = PTHREAD_ONCE_INIT;
static char prefix[13];

static void make_prefix(void)
{
    unsigned char r[6];
    if (getrandom(r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
        /* Early boot without entropy: pid and time still tell processes apart. */
        uint64_t v = ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
        for (size_t i = 0; i < sizeof r; i++)
            r[i] = (unsigned char)(v >> (8 * i));
    }
    for (size_t i = 0; i < sizeof r; i++)
        snprintf(prefix + 2 * i, 3, "%02x", r[i]);
}

void keel__request_id_make(unsigned long long seq, char *out, size_t outlen)
{
    pthread_once(&prefix_once, make_prefix);
    /* "<prefix>-<seq in hex>", without snprintf: this runs per request. */
    char hex[2 * sizeof seq];
    size_t n = 0;
    do {
        hex[n++] = "0123456789abcdef"[seq & 0xf];
        seq >>= 4;
    } while (seq != 0);
    size_t plen = strlen(prefix);
    if (outlen < plen + 1 + n + 1) {
        if (outlen > 0)
            out[0] = '\0';
        return;
    }
    memcpy(out, prefix, plen);
    out[plen] = '-';
    for (size_t i = 0; i < n; i++)
        out[plen + 1 + i] = hex[n - 1 - i];
    out[plen + 1 + n] = '\0';
}

static bool trusted_addr(const char *addr, const struct keel__cidr *trusted, size_t n)
{
    return keel__cidr_match_text(trusted, n, addr);
}

static bool is_addr(const char *s)
{
    unsigned char b[16];
    return inet_pton(AF_INET, s, b) == 1 || inet_pton(AF_INET6, s, b) == 1;
}

void keel__client_addr(const char *peer, const char *xff, const struct keel__cidr *trusted,
                       size_t ntrusted, char *out, size_t outlen)
{
    keel__copy_text(out, outlen, peer ? peer : "-");
    if (peer == NULL || xff == NULL || ntrusted == 0 || !trusted_addr(peer, trusted, ntrusted))
        return;
    /* Right to left: each hop we trust vouches for the one before it. */
    const char *end = xff + strlen(xff);
    while (end > xff) {
        const char *start = end;
        while (start > xff && start[-1] != ',')
            start--;
        const char *a = start, *b = end;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        char hop[KEEL__CLIENT_ADDR_MAX + 1];
        size_t len = (size_t)(b - a);
        if (len == 0 || len >= sizeof hop)
            return;
        memcpy(hop, a, len);
        hop[len] = '\0';
        if (!is_addr(hop))
            return;
        keel__copy_text(out, outlen, hop);
        if (!trusted_addr(hop, trusted, ntrusted))
            return;
        end = start > xff ? start - 1 : xff;
    }
}

/* ------------------------------------------------------------ per-address counts */

#define LIMIT_BUCKETS 1024

struct addr_count {
    struct addr_count *next;
    int n;
    char addr[KEEL__CLIENT_ADDR_MAX + 1];
};

static pthread_mutex_t limit_mu = PTHREAD_MUTEX_INITIALIZER;
static struct addr_count *limit_table[LIMIT_BUCKETS];

static size_t addr_bucket(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h & (LIMIT_BUCKETS - 1);
}

bool keel__addr_limit_enter(const char *addr, int max)
{
    size_t b = addr_bucket(addr);
    pthread_mutex_lock(&limit_mu);
    struct addr_count *e = limit_table[b];
    while (e != NULL && strcmp(e->addr, addr) != 0)
        e = e->next;
    bool ok = true;
    if (e == NULL) {
        /* One node per address with a request in flight, so the table is
         * bounded by the connection limit. */
        e = calloc(1, sizeof *e);
        if (e != NULL) {
            snprintf(e->addr, sizeof e->addr, "%s", addr);
            e->next = limit_table[b];
            limit_table[b] = e;
        }
    }
    if (e == NULL)
        ok = true; /* out of memory: do not refuse for our own failure */
    else if (e->n >= max)
        ok = false;
    else
        e->n++;
    pthread_mutex_unlock(&limit_mu);
    return ok;
}

void keel__addr_limit_leave(const char *addr)
{
    size_t b = addr_bucket(addr);
    pthread_mutex_lock(&limit_mu);
    struct addr_count **pp = &limit_table[b];
    while (*pp != NULL && strcmp((*pp)->addr, addr) != 0)
        pp = &(*pp)->next;
    struct addr_count *e = *pp;
    if (e != NULL && --e->n <= 0) {
        *pp = e->next;
        free(e);
    }
    pthread_mutex_unlock(&limit_mu);
}

/* ------------------------------------------------------------ per request */

struct xff_join {
    char buf[1024];
    size_t len;
};

/* Joins every X-Forwarded-For header in arrival order; past the buffer
 * only the right-most part is kept, which is the part that can be trusted. */
static enum MHD_Result join_xff(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
    (void)kind;
    struct xff_join *j = cls;
    if (key == NULL || value == NULL || strcasecmp(key, "X-Forwarded-For") != 0)
        return MHD_YES;
    size_t vl = strlen(value);
    size_t need = (j->len > 0 ? 2 : 0) + vl;
    if (need >= sizeof j->buf) {
        value += vl - (sizeof j->buf - 1);
        vl = sizeof j->buf - 1;
        j->len = 0;
        need = vl;
    }
    if (j->len + need >= sizeof j->buf) {
        size_t drop = j->len + need - (sizeof j->buf - 1);
        memmove(j->buf, j->buf + drop, j->len - drop);
        j->len -= drop;
    }
    if (j->len > 0) {
        memcpy(j->buf + j->len, ", ", 2);
        j->len += 2;
    }
    memcpy(j->buf + j->len, value, vl);
    j->len += vl;
    j->buf[j->len] = '\0';
    return MHD_YES;
}

void keel__addr_text(const struct sockaddr *sa, char *out, size_t outlen)
{
    keel__copy_text(out, outlen, "-");
    if (sa == NULL)
        return;
    if (sa->sa_family == AF_INET && outlen >= INET_ADDRSTRLEN)
        keel__ipv4_text(&((const struct sockaddr_in *)(const void *)sa)->sin_addr, out);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                  (socklen_t)outlen);
}

void keel__conn_addr_text(struct MHD_Connection *conn, char *out, size_t outlen)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    keel__addr_text(ci != NULL ? ci->client_addr : NULL, out, outlen);
}

static void release_slot(keel_request *req)
{
    keel__addr_limit_leave(req->client_addr);
}

int keel__request_identify(keel_request *req, const char *peer_text)
{
    const struct keel__server_conf *c = &keel__rt.server;
    const char *given = req->conn ? keel__req_header(req, "X-Request-Id") : NULL;
    if (keel__request_id_valid(given))
        keel__copy_text(req->request_id, sizeof req->request_id, given);
    else
        keel__request_id_make((unsigned long long)req->id, req->request_id, sizeof req->request_id);
    req->identified = true; /* keel__respond_mhd() sends it back as X-Request-Id */
    if (req->conn == NULL)
        return 0;

    char peer[KEEL__CLIENT_ADDR_MAX + 1];
    if (peer_text == NULL) {
        keel__conn_addr_text(req->conn, peer, sizeof peer);
        peer_text = peer;
    }
    /* Not zero-initialised: clearing the 1 KiB buffer on every request cost
     * more than the rest of this function (docs/performance.md, round 11). */
    struct xff_join j;
    j.len = 0;
    j.buf[0] = '\0';
    if (c->ntrusted_proxies > 0 && req->fields != NULL) {
        /* The fields the edge check collected, in arrival order. */
        for (size_t i = 0; i < req->nfields; i++)
            if (req->fields[i].name_len == sizeof "X-Forwarded-For" - 1)
                (void)join_xff(&j, MHD_HEADER_KIND, req->fields[i].name, req->fields[i].value);
    } else if (c->ntrusted_proxies > 0) {
        /* A head the edge check refused: libmicrohttpd's list, as
         * keel__req_header() falls back to it. */
        MHD_get_connection_values(req->conn, MHD_HEADER_KIND, join_xff, &j);
    }
    keel__client_addr(peer_text, j.len > 0 ? j.buf : NULL, c->trusted_proxies, c->ntrusted_proxies,
                      req->client_addr, sizeof req->client_addr);

    /* Without trusted proxies the acceptor counts connections per peer
     * (http/acceptor.c); with them that count would throttle the proxies, so
     * concurrent requests per client address are counted here instead. */
    int max = keel__rt.limits.max_per_ip;
    if (c->ntrusted_proxies == 0 || max <= 0)
        return 0;
    if (!keel__addr_limit_enter(req->client_addr, max))
        return KEEL_EBUSY;
    /* Given back once the answer is queued (keel__respond_mhd), not when
     * it has been sent: a client that reads its answer and asks again at
     * once must not find its previous request still counted. */
    req->on_answered = release_slot;
    return 0;
}
