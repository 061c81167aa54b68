#include "config.h"

#include "http/body.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <keel/error.h>

#include "conf/conf.h"
#include "http/request.h"
#include "http/runtime.h"
#include "http/routes.h"
#include "util/log.h"

/* The read buffer starts here and doubles up to the line limit. */
#define SPOOL_READ_FIRST (64 * 1024)

struct keel__spool {
    int fd;
    bool reading; /* rewound for reading */
    bool eof;
    bool skipping; /* discarding the rest of an overlong line */
    char *buf;
    size_t cap, start, end;
};

static atomic_long admin_active;

static void admin_done(void *arg)
{
    (void)arg;
    atomic_fetch_sub(&admin_active, 1);
}

static void spool_close(void *arg)
{
    struct keel__spool *s = arg;
    if (s->fd >= 0)
        close(s->fd);
    free(s->buf);
}

/* An unlinked file in $TMPDIR (or /tmp): it goes away with the descriptor,
 * whatever happens to the process. */
static int spool_fd(void)
{
    const char *dir = getenv("TMPDIR");
    if (dir == NULL || *dir == '\0')
        dir = "/tmp";
    char path[4096];
    if (snprintf(path, sizeof path, "%s/keel-body-XXXXXX", dir) >= (int)sizeof path)
        return -1;
    int fd = mkstemp(path);
    if (fd >= 0) {
        unlink(path);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    return fd;
}

static bool route_streams(keel_request *req)
{
    if (req->table == NULL)
        return false;
    struct keel__route_match m;
    char allow[8];
    /* The router decodes the path into the scratch; never longer. */
    size_t scratch_len = strlen(req->path) + 1;
    char *scratch = keel__req_alloc(req, scratch_len);
    if (scratch == NULL ||
        keel__router_match(req->table->routers[req->listener], req->method, req->path, &m, scratch,
                           scratch_len, allow, sizeof allow) != KEEL__MATCH_OK)
        return false;
    const struct keel__route *r = m.data;
    return r != NULL && r->stream_body;
}

bool keel__body_admit(keel_request *req, bool has_body)
{
    if (!has_body || req->listener != KEEL__LISTENER_ADMIN)
        return true;
    const struct keel__limits_conf *c = &keel__rt.limits;
    long max = c->max_admin_bodies > 0 ? c->max_admin_bodies : 2;
    if (atomic_fetch_add(&admin_active, 1) >= max) {
        atomic_fetch_sub(&admin_active, 1);
        keel__req_add_header(req, "Retry-After", "1");
        keel__req_add_header(req, "Connection", "close");
        keel__respond_detail(req, 503, "Too many admin request bodies at once; retry shortly");
        return false;
    }
    if (keel__req_on_cleanup(req, admin_done, NULL) != 0) {
        admin_done(NULL);
        keel__respond_detail(req, 503, "Service temporarily unavailable");
        return false;
    }
    if (!route_streams(req))
        return true;
    struct keel__spool *s = keel__req_alloc(req, sizeof *s);
    if (s == NULL) {
        keel__respond_detail(req, 503, "Service temporarily unavailable");
        return false;
    }
    s->fd = spool_fd();
    if (s->fd < 0 || keel__req_on_cleanup(req, spool_close, s) != 0) {
        keel__log(KEEL_LOG_ERROR, "core", "req=%llu %s %s: cannot open a spool file: %s",
                  (unsigned long long)req->id, req->method, req->path, strerror(errno));
        if (s->fd >= 0)
            close(s->fd);
        keel__respond_detail(req, 503, "Service temporarily unavailable");
        return false;
    }
    req->spool = s;
    return true;
}

long keel__body_cap(const keel_request *req)
{
    const struct keel__limits_conf *c = &keel__rt.limits;
    if (req->listener != KEEL__LISTENER_ADMIN)
        return c->max_body_bytes;
    return req->spool != NULL ? c->max_admin_stream_bytes : c->max_admin_body_bytes;
}

int keel__spool_write(struct keel__spool *s, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t w = write(s->fd, data, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return KEEL_EIO;
        data += w;
        len -= (size_t)w;
    }
    return 0;
}

static size_t line_limit(void)
{
    return keel__rt.limits.max_body_line_bytes > 0 ? (size_t)keel__rt.limits.max_body_line_bytes
                                                   : (size_t)8 * 1024 * 1024;
}

/* Lines of an in-memory body. */
static int memory_line(keel_request *req, const char **line, size_t *len)
{
    if (req->body == NULL || req->line_pos >= req->body_len)
        return 0;
    const char *start = req->body + req->line_pos;
    size_t left = req->body_len - req->line_pos;
    const char *nl = memchr(start, '\n', left);
    size_t n = nl != NULL ? (size_t)(nl - start) : left;
    req->line_pos += n + (nl != NULL);
    if (n > line_limit())
        return KEEL_ETOOBIG;
    *line = start;
    *len = n;
    return 1;
}

int keel__body_line(keel_request *req, const char **line, size_t *len)
{
    struct keel__spool *s = req->spool;
    if (s == NULL)
        return memory_line(req, line, len);
    size_t limit = line_limit();
    if (!s->reading) {
        if (lseek(s->fd, 0, SEEK_SET) != 0)
            return KEEL_EIO;
        s->reading = true;
    }
    for (;;) {
        char *nl = s->end > s->start ? memchr(s->buf + s->start, '\n', s->end - s->start) : NULL;
        if (nl != NULL) {
            size_t n = (size_t)(nl - (s->buf + s->start));
            const char *l = s->buf + s->start;
            s->start += n + 1;
            if (s->skipping) {
                s->skipping = false;
                return KEEL_ETOOBIG;
            }
            *line = l;
            *len = n;
            return 1;
        }
        if (s->end - s->start > limit) {
            /* Too long: drop what is buffered and read on to its end. */
            s->skipping = true;
            s->start = s->end = 0;
        }
        if (s->eof) {
            if (s->skipping) {
                s->skipping = false;
                return KEEL_ETOOBIG;
            }
            if (s->end == s->start)
                return 0;
            *line = s->buf + s->start;
            *len = s->end - s->start;
            s->start = s->end;
            return 1;
        }
        /* Make room: move the partial line to the front, grow if full. */
        if (s->start > 0) {
            memmove(s->buf, s->buf + s->start, s->end - s->start);
            s->end -= s->start;
            s->start = 0;
        }
        if (s->end == s->cap) {
            size_t want = s->cap == 0 ? SPOOL_READ_FIRST : s->cap * 2;
            if (want > limit + 1)
                want = limit + 1;
            if (want <= s->cap)
                want = s->cap + 1;
            char *grown = realloc(s->buf, want);
            if (grown == NULL)
                return KEEL_ENOMEM;
            s->buf = grown;
            s->cap = want;
        }
        ssize_t r = read(s->fd, s->buf + s->end, s->cap - s->end);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return KEEL_EIO;
        if (r == 0)
            s->eof = true;
        s->end += (size_t)r;
    }
}
