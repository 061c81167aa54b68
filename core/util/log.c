#include "config.h"

#include "util/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <keel/error.h>

static atomic_int log_level = KEEL_LOG_INFO;
static atomic_int log_fd = 2;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void keel__log_set_level(int level)
{
    if (level >= KEEL_LOG_ERROR && level <= KEEL_LOG_DEBUG)
        atomic_store(&log_level, level);
}

int keel__log_parse_level(const char *name)
{
    if (name == NULL)
        return -1;
    for (int i = 0; i < 4; i++)
        if (strcasecmp(name, level_names[i]) == 0)
            return i;
    if (strcasecmp(name, "warning") == 0)
        return KEEL_LOG_WARN;
    return -1;
}

void keel__log_set_fd(int fd)
{
    atomic_store(&log_fd, fd);
}

/* The error log's path, set once at start-up before threads run. */
static char *error_log_path;

int keel__log_reopen_onto(int fd, const char *path)
{
    int nfd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (nfd < 0) {
        keel__log(KEEL_LOG_ERROR, "core",
                  "cannot open log file %s: %s; still writing to the old one", path,
                  strerror(errno));
        return KEEL_EIO;
    }
    int rc = 0;
    if (nfd != fd) {
        if (dup2(nfd, fd) < 0) {
            keel__log(KEEL_LOG_ERROR, "core", "cannot switch to log file %s: %s", path,
                      strerror(errno));
            rc = KEEL_EIO;
        }
        close(nfd);
    }
    return rc;
}

int keel__log_open(const char *path)
{
    if (path == NULL || *path == '\0' || strcmp(path, "-") == 0)
        return 0;
    char *copy = strdup(path);
    if (copy == NULL)
        return KEEL_ENOMEM;
    int rc = keel__log_reopen_onto(2, copy);
    if (rc != 0) {
        free(copy);
        return rc;
    }
    free(error_log_path);
    error_log_path = copy;
    return 0;
}

void keel__log_reopen(void)
{
    if (error_log_path != NULL && keel__log_reopen_onto(2, error_log_path) == 0)
        keel__log(KEEL_LOG_INFO, "core", "reopened the error log %s", error_log_path);
}

void keel__vlog(int level, const char *tag, const char *fmt, va_list ap)
{
    if (level > atomic_load(&log_level) || level < 0)
        return;

    /* Build the whole line first so that one write() keeps lines from
     * different threads from interleaving. */
    char line[4096];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = (int)strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    int m = snprintf(line + n, sizeof line - (size_t)n, ".%03ldZ %s [%s] ",
                     (long)(tv.tv_usec / 1000), level_names[level], tag ? tag : "core");
    if (m > 0)
        n += m;
    m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    if (m < 0)
        m = 0;
    n += m;
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(atomic_load(&log_fd), line, (size_t)n);
    (void)w;
}

void keel__log(int level, const char *tag, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    keel__vlog(level, tag, fmt, ap);
    va_end(ap);
}

void keel__vset_err(char *err, size_t errlen, const char *fmt, va_list ap)
{
    if (err != NULL && errlen > 0)
        vsnprintf(err, errlen, fmt, ap);
}

void keel__set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    keel__vset_err(err, errlen, fmt, ap);
    va_end(ap);
}
