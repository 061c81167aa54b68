#include "config.h"

#include "http/accesslog.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include <keel/error.h>

#include "http/routes.h"
#include "util/log.h"
#include "util/text.h"
#include "util/time.h"

/* One thread's pending lines.  The owning thread appends under mu, which is
 * almost never contended: the flusher takes it ten times a second.  Every
 * write() to the file happens under the mutex of the buffer being written,
 * which is what lets close know when nobody uses the descriptor any more. */
struct buffer {
    pthread_mutex_t mu;
    struct buffer *prev, *next; /* all buffers, under list_mu */
    size_t len;
    char data[KEEL__ACCESSLOG_BUFFER];
};

/* Lock order: list_mu, then a buffer's mu. */
static pthread_mutex_t list_mu = PTHREAD_MUTEX_INITIALIZER;
static struct buffer *buffers;
static pthread_key_t buffer_key;
/* The calling thread's buffer, without pthread_getspecific on every line
 * (the key is there for its destructor). */
static _Thread_local struct buffer *my_buffer;
static pthread_once_t buffer_key_once = PTHREAD_ONCE_INIT;
static bool buffer_key_ok;

static atomic_int log_fd = -1;
/* How much of a buffer is filled before it is written (see
 * KEEL__ACCESSLOG_BUFFER): set when the log is opened. */
static size_t buffer_fill = KEEL__ACCESSLOG_PIPE_BUFFER;
static bool log_json;
static char *log_path; /* NULL for standard error */

static pthread_t flusher;
static bool flusher_running;
static pthread_mutex_t flusher_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t flusher_cv;
static bool flusher_stop;

/* Writes all of data, retrying short writes.  A failing disk costs lines,
 * never the request: the error is not reported per line. */
static void write_all(int fd, const char *data, size_t len)
{
    while (len > 0 && fd >= 0) {
        ssize_t w = write(fd, data, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        data += w;
        len -= (size_t)w;
    }
}

static void buffer_write_locked(struct buffer *b)
{
    if (b->len > 0)
        write_all(atomic_load(&log_fd), b->data, b->len);
    b->len = 0;
}

/* A thread that ends takes its buffer with it, after writing it. */
static void buffer_release(void *p)
{
    struct buffer *b = p;
    if (my_buffer == b)
        my_buffer = NULL;
    pthread_mutex_lock(&list_mu);
    pthread_mutex_lock(&b->mu);
    buffer_write_locked(b);
    pthread_mutex_unlock(&b->mu);
    if (b->prev != NULL)
        b->prev->next = b->next;
    else
        buffers = b->next;
    if (b->next != NULL)
        b->next->prev = b->prev;
    pthread_mutex_unlock(&list_mu);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

static void buffer_key_create(void)
{
    buffer_key_ok = pthread_key_create(&buffer_key, buffer_release) == 0;
}

static struct buffer *thread_buffer(void)
{
    if (my_buffer != NULL)
        return my_buffer;
    pthread_once(&buffer_key_once, buffer_key_create);
    if (!buffer_key_ok)
        return NULL;
    struct buffer *b = pthread_getspecific(buffer_key);
    if (b != NULL)
        return my_buffer = b;
    b = malloc(sizeof *b);
    if (b == NULL)
        return NULL;
    pthread_mutex_init(&b->mu, NULL);
    b->len = 0;
    b->prev = NULL;
    pthread_mutex_lock(&list_mu);
    b->next = buffers;
    if (buffers != NULL)
        buffers->prev = b;
    buffers = b;
    pthread_mutex_unlock(&list_mu);
    if (pthread_setspecific(buffer_key, b) != 0) {
        buffer_release(b);
        return NULL;
    }
    my_buffer = b;
    return b;
}

/* Room for a line of at most need bytes at the end of the calling thread's
 * buffer, which is written out first when the line might not fit: the line
 * is then formatted in place, with the buffer locked until line_commit.
 * NULL, with nothing locked, when the line must go through
 * keel__access_log_line instead (no buffer, or a line longer than one). */
static char *line_reserve(struct buffer **bp, size_t need)
{
    struct buffer *b = thread_buffer();
    if (b == NULL || need > buffer_fill)
        return NULL;
    pthread_mutex_lock(&b->mu);
    if (b->len + need > buffer_fill)
        buffer_write_locked(b);
    *bp = b;
    return b->data + b->len;
}

/* Keeps the len bytes written at line_reserve's place. */
static void line_commit(struct buffer *b, size_t len)
{
    b->len += len;
    pthread_mutex_unlock(&b->mu);
}

void keel__access_log_line(const char *line, size_t len)
{
    if (atomic_load(&log_fd) < 0)
        return;
    struct buffer *b = NULL;
    char *at = line_reserve(&b, len);
    if (at != NULL) {
        memcpy(at, line, len);
        line_commit(b, len);
        return;
    }
    b = thread_buffer();
    if (b == NULL) {
        /* No buffer (out of memory): the line goes out on its own, under
         * the list lock so that close cannot close the file meanwhile. */
        pthread_mutex_lock(&list_mu);
        write_all(atomic_load(&log_fd), line, len);
        pthread_mutex_unlock(&list_mu);
        return;
    }
    /* A line longer than a buffer (a long path) is written alone; the
     * thread's earlier lines go out just before it. */
    pthread_mutex_lock(&b->mu);
    buffer_write_locked(b);
    write_all(atomic_load(&log_fd), line, len);
    pthread_mutex_unlock(&b->mu);
}

void keel__access_log_flush(void)
{
    pthread_mutex_lock(&list_mu);
    for (struct buffer *b = buffers; b != NULL; b = b->next) {
        pthread_mutex_lock(&b->mu);
        buffer_write_locked(b);
        pthread_mutex_unlock(&b->mu);
    }
    pthread_mutex_unlock(&list_mu);
}

/* Replaces the descriptor every buffer writes to and returns the old one,
 * once no write() can still be using it: each write happens under its
 * buffer's mutex, so taking every mutex once after the swap is enough.
 * Called with list_mu held, by close. */
static int swap_fd_locked(int fd)
{
    int old = atomic_exchange(&log_fd, fd);
    for (struct buffer *b = buffers; b != NULL; b = b->next) {
        pthread_mutex_lock(&b->mu);
        pthread_mutex_unlock(&b->mu);
    }
    return old;
}

static void *flusher_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&flusher_mu);
    while (!flusher_stop) {
        struct timespec until = keel__timespec_after(CLOCK_MONOTONIC, KEEL__ACCESSLOG_FLUSH_MS);
        while (!flusher_stop &&
               pthread_cond_timedwait(&flusher_cv, &flusher_mu, &until) != ETIMEDOUT)
            ;
        if (flusher_stop)
            break;
        pthread_mutex_unlock(&flusher_mu);
        keel__access_log_flush();
        pthread_mutex_lock(&flusher_mu);
    }
    pthread_mutex_unlock(&flusher_mu);
    return NULL;
}

static int open_path(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        log_error("cannot open access log %s: %s", path, strerror(errno));
    return fd;
}

int keel__access_log_open(const char *dest, bool json)
{
    /* Opening again (a restarted server) starts from a closed log. */
    if (flusher_running || atomic_load(&log_fd) >= 0)
        keel__access_log_close();
    log_json = json;
    if (dest == NULL || *dest == '\0' || strcmp(dest, "off") == 0)
        return 0;
    int fd = 2;
    if (strcmp(dest, "-") != 0) {
        log_path = strdup(dest);
        if (log_path == NULL)
            return KEEL_ENOMEM;
        fd = open_path(dest);
        if (fd < 0) {
            log_error("access log off");
            free(log_path);
            log_path = NULL;
            return KEEL_EIO;
        }
    }
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&flusher_cv, &attr);
    pthread_condattr_destroy(&attr);
    flusher_stop = false;
    struct stat st;
    buffer_fill = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? KEEL__ACCESSLOG_BUFFER
                                                             : KEEL__ACCESSLOG_PIPE_BUFFER;
    atomic_store(&log_fd, fd);
    /* Without the flusher lines still reach the file, only later: when a
     * buffer fills, its thread ends, or the log is closed. */
    flusher_running = pthread_create(&flusher, NULL, flusher_main, NULL) == 0;
    if (!flusher_running)
        log_warn("access log: no flusher thread; lines are written when a buffer fills");
    return 0;
}

void keel__access_log_reopen(void)
{
    if (atomic_load(&log_fd) < 0)
        return;
    keel__access_log_flush();
    /* Standard error is not ours to reopen.  The new file takes the old
     * one's descriptor number (dup2), so threads writing meanwhile write
     * whole buffers to one file or the other; lines queued since the flush
     * above land in the new one. */
    if (log_path != NULL && keel__log_reopen_onto(atomic_load(&log_fd), log_path) == 0)
        log_info("reopened the access log %s", log_path);
}

void keel__access_log_close(void)
{
    if (flusher_running) {
        pthread_mutex_lock(&flusher_mu);
        flusher_stop = true;
        pthread_cond_signal(&flusher_cv);
        pthread_mutex_unlock(&flusher_mu);
        pthread_join(flusher, NULL);
        flusher_running = false;
        pthread_cond_destroy(&flusher_cv);
    }
    keel__access_log_flush();
    pthread_mutex_lock(&list_mu);
    int old = swap_fd_locked(-1);
    pthread_mutex_unlock(&list_mu);
    if (old > 2)
        close(old);
    free(log_path);
    log_path = NULL;
}

/* ------------------------------------------------------------ the line */

/* The seconds part of the timestamp, formatted once per second per thread:
 * gmtime_r() and strftime() on every request were a third of the line's
 * instructions (docs/performance.md). */
static _Thread_local time_t ts_second = (time_t)-1;
static _Thread_local char ts_seconds[32];
static _Thread_local size_t ts_seconds_len;

/* A line written into a buffer sized for it beforehand. */
struct line {
    char *end;
};

static void put_n(struct line *l, const char *s, size_t n)
{
    memcpy(l->end, s, n);
    l->end += n;
}

#define PUT_LIT(l, s) put_n((l), (s), sizeof(s) - 1)

/* v in decimal, zero-padded to at least width digits. */
static void put_uint(struct line *l, unsigned long long v, int width)
{
    l->end += keel__uint_text(v, width, l->end);
}

/* v (below 1000) as exactly three digits: a status, or the thousandths of
 * a millisecond figure, without keel__uint_text()'s digit count. */
static void put_3digits(struct line *l, unsigned v)
{
    l->end[0] = (char)('0' + v / 100);
    l->end[1] = (char)('0' + v / 10 % 10);
    l->end[2] = (char)('0' + v % 10);
    l->end += 3;
}

static void json_line(const keel_request *req, const char *listener, unsigned status, int64_t ns,
                      const char *ts, const char *plugin, unsigned long long gen, const char *user)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:f, s:s, s:I, s:s, s:s, s:s, s:s}", "time", ts,
                          "method", req->method, "path", req->path, "status", (int)status,
                          "latency_ms", (double)ns / 1e6, "plugin", plugin, "generation",
                          (json_int_t)gen, "user", user, "listener", listener, "client",
                          req->client_addr, "request_id", req->request_id);
    /* Nine significant digits keep nanosecond latencies without the binary
     * noise of a full double. */
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(o);
    if (s == NULL)
        return;
    /* The line is as long as the request's path (bounded by the listener's
     * header memory limit), so it is sized, not truncated; the newline goes
     * with it so that the line is queued, and written, in one piece. */
    size_t len = strlen(s);
    char *line = realloc(s, len + 2);
    if (line == NULL) {
        free(s);
        return;
    }
    line[len] = '\n';
    keel__access_log_line(line, len + 1);
    free(line);
}

/* CLOCK_REALTIME at mono_ns (keel__monotonic_ns()'s clock), through this
 * thread's offset between the two clocks: one clock read a second instead
 * of one a line. */
static _Thread_local int64_t wall_offset_ns, wall_offset_taken_ns; /* 0: none yet */

static struct timespec wall_time(int64_t mono_ns)
{
    if (wall_offset_taken_ns == 0 || mono_ns - wall_offset_taken_ns >= 1000000000 ||
        mono_ns < wall_offset_taken_ns) {
        int64_t rt = keel__clock_ns(CLOCK_REALTIME), m = keel__monotonic_ns();
        wall_offset_ns = rt - m;
        wall_offset_taken_ns = m;
    }
    int64_t w = mono_ns + wall_offset_ns;
    return (struct timespec){.tv_sec = (time_t)(w / 1000000000), .tv_nsec = (long)(w % 1000000000)};
}

void keel__access_log(const keel_request *req, unsigned status, int64_t end_ns,
                      const char *listener)
{
    int64_t ns = end_ns - req->start_ns;
    if (atomic_load_explicit(&log_fd, memory_order_relaxed) < 0)
        return;
    /* ISO 8601 UTC with milliseconds, the same in both formats. */
    char ts[40];
    struct timespec now = wall_time(end_ns);
    if (now.tv_sec != ts_second) {
        struct tm tm;
        gmtime_r(&now.tv_sec, &tm);
        ts_seconds_len = strftime(ts_seconds, sizeof ts_seconds, "%Y-%m-%dT%H:%M:%S", &tm);
        ts_second = now.tv_sec;
    }
    memcpy(ts, ts_seconds, ts_seconds_len);
    struct line t = {ts + ts_seconds_len};
    PUT_LIT(&t, ".");
    put_3digits(&t, (unsigned)(now.tv_nsec / 1000000));
    PUT_LIT(&t, "Z");
    *t.end = '\0';
    size_t ts_len = (size_t)(t.end - ts);
    const struct keel__route *r = req->route;
    const char *plugin = r && r->plugin ? r->plugin : (r ? "core" : "-");
    unsigned long long gen = r ? (unsigned long long)r->generation : 0;
    const char *user = req->has_principal && req->principal.user_id ? req->principal.user_id
                       : req->has_principal                         ? req->principal.supabase_id
                                                                    : "-";
    if (user == NULL)
        user = "-";
    if (log_json) {
        json_line(req, listener, status, ns, ts, plugin, gen, user);
        return;
    }
    /* The latency in microseconds, rounded, printed as milliseconds with
     * three decimals: the digits of "%.3f" without glibc's floating-point
     * formatting.  The line is put together by hand: snprintf's format
     * parsing was the larger part of its cost (docs/performance.md).  It
     * is written out piece by piece on purpose: the separators' copies have
     * constant sizes and compile to plain stores, where a loop over a table
     * of pieces took a memcpy call each, about 480 instructions more a
     * line (round 9). */
    long long us = ns > 0 ? (ns + 500) / 1000 : 0;
    size_t listener_len = strlen(listener), method_len = strlen(req->method),
           path_len = strlen(req->path), plugin_len = strlen(plugin), user_len = strlen(user),
           client_len = strlen(req->client_addr), rid_len = strlen(req->request_id);
    size_t need = ts_len + listener_len + method_len + path_len + plugin_len + user_len +
                  client_len + rid_len + 3 * 20 + 48;
    /* Written straight into the thread's buffer; a line that cannot be
     * (see line_reserve) is put together here first. */
    struct buffer *b = NULL;
    char stack[1024];
    char *buf = line_reserve(&b, need);
    if (buf == NULL)
        buf = need <= sizeof stack ? stack : malloc(need);
    if (buf == NULL)
        return;
    struct line l = {buf};
    put_n(&l, ts, ts_len);
    PUT_LIT(&l, " ");
    put_n(&l, listener, listener_len);
    PUT_LIT(&l, " ");
    put_n(&l, req->method, method_len);
    PUT_LIT(&l, " ");
    put_n(&l, req->path, path_len);
    PUT_LIT(&l, " ");
    if (status >= 100 && status <= 999)
        put_3digits(&l, status);
    else
        put_uint(&l, status, 0);
    PUT_LIT(&l, " ");
    put_uint(&l, (unsigned long long)(us / 1000), 0);
    PUT_LIT(&l, ".");
    put_3digits(&l, (unsigned)(us % 1000));
    PUT_LIT(&l, "ms plugin=");
    put_n(&l, plugin, plugin_len);
    PUT_LIT(&l, " gen=");
    put_uint(&l, gen, 0);
    PUT_LIT(&l, " user=");
    put_n(&l, user, user_len);
    PUT_LIT(&l, " client=");
    put_n(&l, req->client_addr, client_len);
    PUT_LIT(&l, " rid=");
    put_n(&l, req->request_id, rid_len);
    PUT_LIT(&l, "\n");
    if (b != NULL) {
        line_commit(b, (size_t)(l.end - buf));
        return;
    }
    keel__access_log_line(buf, (size_t)(l.end - buf));
    if (buf != stack)
        free(buf);
}
