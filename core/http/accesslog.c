#include "config.h"

#include "http/accesslog.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "http/routes.h"
#include "util/log.h"

static int access_fd = -1;
static bool access_json;

/* Writes one access log line.  A single write() on an O_APPEND descriptor
 * keeps lines from concurrent requests whole. */
static void access_write(const char *line, size_t len)
{
    ssize_t w = write(access_fd, line, len);
    (void)w;
}

/* The seconds part of the access log's timestamp, formatted once per second
 * per thread: gmtime_r() and strftime() on every request were a third of
 * the access log's instructions (docs/performance.md). */
static _Thread_local time_t ts_second = (time_t)-1;
static _Thread_local char ts_seconds[32];
static _Thread_local size_t ts_seconds_len;

void keel__access_log(const keel_request *req, unsigned status, int64_t ns, const char *listener)
{
    if (access_fd < 0)
        return;
    /* ISO 8601 UTC with milliseconds, the same in both formats. */
    char ts[40];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec != ts_second) {
        struct tm tm;
        gmtime_r(&now.tv_sec, &tm);
        ts_seconds_len = strftime(ts_seconds, sizeof ts_seconds, "%Y-%m-%dT%H:%M:%S", &tm);
        ts_second = now.tv_sec;
    }
    long ms = now.tv_nsec / 1000000;
    memcpy(ts, ts_seconds, ts_seconds_len);
    snprintf(ts + ts_seconds_len, sizeof ts - ts_seconds_len, ".%03ldZ", ms);
    const struct keel__route *r = req->route;
    const char *plugin = r && r->plugin ? r->plugin : (r ? "core" : "-");
    unsigned long long gen = r ? (unsigned long long)r->generation : 0;
    const char *user = req->has_principal && req->principal.user_id ? req->principal.user_id
                       : req->has_principal                         ? req->principal.supabase_id
                                                                    : "-";
    if (user == NULL)
        user = "-";
    if (access_json) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:f, s:s, s:I, s:s, s:s, s:s, s:s}", "time", ts,
                              "method", req->method, "path", req->path, "status", (int)status,
                              "latency_ms", (double)ns / 1e6, "plugin", plugin, "generation",
                              (json_int_t)gen, "user", user, "listener", listener, "client",
                              req->client_addr, "request_id", req->request_id);
        /* Nine significant digits keep nanosecond latencies without the
         * binary noise of a full double. */
        char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
        json_decref(o);
        if (s == NULL)
            return;
        /* The line is as long as the request's path (bounded by the
         * listener's header memory limit), so it is sized, not truncated. */
        size_t len = strlen(s);
        char *line = realloc(s, len + 2);
        if (line == NULL) {
            free(s);
            return;
        }
        line[len] = '\n';
        access_write(line, len + 1);
        free(line);
        return;
    }
    /* The latency in microseconds, rounded, printed as milliseconds with
     * three decimals: the digits of "%.3f" without glibc's floating-point
     * formatting, the other big share of the line's cost. */
    long long us = ns > 0 ? (ns + 500) / 1000 : 0;
#define ACCESS_TEXT(buf, size)                                                                     \
    snprintf(buf, size,                                                                            \
             "%s %s %s %s %u %lld.%03lldms plugin=%s gen=%llu user=%s client=%s rid=%s\n", ts,     \
             listener, req->method, req->path, status, us / 1000, us % 1000, plugin, gen, user,    \
             req->client_addr, req->request_id)
    char stack[1024];
    char *line = stack;
    int n = ACCESS_TEXT(stack, sizeof stack);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof stack) {
        /* A long path: format again into a buffer that fits the line. */
        line = malloc((size_t)n + 1);
        if (line == NULL)
            return;
        ACCESS_TEXT(line, (size_t)n + 1);
    }
#undef ACCESS_TEXT
    access_write(line, (size_t)n);
    if (line != stack)
        free(line);
}

/* The file's name, for keel__access_log_reopen; set before threads run. */
static char *access_path;

void keel__access_log_reopen(void)
{
    if (access_fd > 2 && access_path != NULL && keel__log_reopen_onto(access_fd, access_path) == 0)
        log_info("reopened the access log %s", access_path);
}

void keel__access_log_open(const char *dest, bool json)
{
    access_json = json;
    free(access_path);
    access_path = NULL;
    if (dest == NULL || *dest == '\0' || strcmp(dest, "off") == 0)
        access_fd = -1;
    else if (strcmp(dest, "-") == 0)
        access_fd = 2;
    else {
        access_fd = open(dest, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (access_fd < 0)
            log_error("cannot open access log %s: %s; access log off", dest, strerror(errno));
        else
            access_path = strdup(dest);
    }
}

void keel__access_log_close(void)
{
    if (access_fd > 2)
        close(access_fd);
    access_fd = -1;
    free(access_path);
    access_path = NULL;
}
