#include "config.h"

#include "process/channel.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int write_all(int fd, const char *p, size_t n, int timeout_ms)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int r = poll(&pfd, 1, timeout_ms);
            if (r <= 0)
                return KEEL_EIO;
            continue;
        }
        return KEEL_EIO;
    }
    return 0;
}

int keel__chan_send(int fd, char kind, unsigned long long id, const char *body, size_t body_len,
                    int timeout_ms)
{
    char head[48];
    int hn = snprintf(head + 4, sizeof head - 4, "%c %llu ", kind, id);
    if (hn < 0 || (size_t)hn >= sizeof head - 4)
        return KEEL_EIO;
    size_t total = (size_t)hn + (body ? body_len : 0);
    if (total > KEEL__CHAN_MAX_FRAME)
        return KEEL_EIO;
    uint32_t len = (uint32_t)total;
    memcpy(head, &len, 4);
    /* One buffer, one write sequence: frames from several threads are
     * serialised by the caller's lock, not interleaved here. */
    char *frame = malloc(4 + total);
    if (frame == NULL)
        return KEEL_ENOMEM;
    memcpy(frame, head, 4 + (size_t)hn);
    if (body != NULL && body_len > 0)
        memcpy(frame + 4 + hn, body, body_len);
    int rc = write_all(fd, frame, 4 + total, timeout_ms);
    free(frame);
    return rc;
}

int keel__chan_read(int fd, struct keel__chan_buf *b)
{
    if (b->consumed > 0) {
        memmove(b->data, b->data + b->consumed, b->len - b->consumed);
        b->len -= b->consumed;
        b->consumed = 0;
    }
    for (;;) {
        if (b->cap - b->len < 65536) {
            size_t ncap = b->cap ? b->cap * 2 : 131072;
            if (ncap > KEEL__CHAN_MAX_FRAME + 131072)
                ncap = KEEL__CHAN_MAX_FRAME + 131072;
            if (ncap <= b->cap)
                return KEEL_EIO;
            char *grown = realloc(b->data, ncap);
            if (grown == NULL)
                return KEEL_ENOMEM;
            b->data = grown;
            b->cap = ncap;
        }
        ssize_t r = read(fd, b->data + b->len, b->cap - b->len - 1);
        if (r > 0) {
            b->len += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        return KEEL_EIO;
    }
}

bool keel__chan_next(struct keel__chan_buf *b, struct keel__frame *f, bool *bad)
{
    *bad = false;
    size_t avail = b->len - b->consumed;
    if (avail < 4)
        return false;
    uint32_t len;
    memcpy(&len, b->data + b->consumed, 4);
    if (len > KEEL__CHAN_MAX_FRAME || len < 3) {
        *bad = true;
        return false;
    }
    if (avail < 4 + (size_t)len)
        return false;
    const char *p = b->data + b->consumed + 4;
    f->kind = p[0];
    size_t i = 2;
    unsigned long long id = 0;
    while (i < len && p[i] >= '0' && p[i] <= '9')
        id = id * 10 + (unsigned long long)(p[i++] - '0');
    f->id = id;
    if (i < len)
        i++; /* the space before the body */
    f->body_len = len - i;
    f->body = malloc(f->body_len + 1);
    if (f->body == NULL) {
        *bad = true;
        return false;
    }
    memcpy(f->body, p + i, f->body_len);
    f->body[f->body_len] = '\0';
    b->consumed += 4 + (size_t)len;
    return true;
}

void keel__chan_buf_free(struct keel__chan_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}
