/* Leveled logging for the core.  One line per call, written atomically. */
#ifndef KEEL_CORE_UTIL_LOG_H
#define KEEL_CORE_UTIL_LOG_H

#include <stdarg.h>
#include <stddef.h>

#include <keel/common.h>
#include <keel/plugin.h>

/* Sets the most verbose level that is written (KEEL_LOG_*). */
void keel__log_set_level(int level);
/* Maps "error|warn|info|debug" to KEEL_LOG_*; returns -1 for anything else. */
int keel__log_parse_level(const char *name);
/* Redirects log lines to fd (default 2).  The fd stays owned by the caller. */
void keel__log_set_fd(int fd);

/*
 * Reopens path (O_APPEND, created 0640) onto descriptor fd, atomically
 * (dup2): threads writing to fd meanwhile write whole lines to either the
 * old or the new file, never to a closed descriptor.  logrotate renames the
 * file and sends SIGUSR1; this makes a new file under the old name.
 * Returns 0 or KEEL_EIO (fd keeps writing to the old file), with a log line.
 */
int keel__log_reopen_onto(int fd, const char *path);

/* Sends the error log (this logger and anything written to stderr) to path;
 * NULL or "-" keeps stderr.  Remembers path for keel__log_reopen(). */
int keel__log_open(const char *path) KEEL_WARN_UNUSED;
/* Reopens the error log file, if there is one (SIGUSR1). */
void keel__log_reopen(void);

/* Writes one line: "<ISO time> <level> [<tag>] <message>\n".  tag may be NULL. */
void keel__log(int level, const char *tag, const char *fmt, ...) KEEL_PRINTF(3, 4);
void keel__vlog(int level, const char *tag, const char *fmt, va_list ap) KEEL_PRINTF(3, 0);

/* Formats a one-line message into a caller's err buffer (for functions that
 * report failures through err/errlen); does nothing when err is NULL or
 * errlen is 0. */
void keel__set_err(char *err, size_t errlen, const char *fmt, ...) KEEL_PRINTF(3, 4);
void keel__vset_err(char *err, size_t errlen, const char *fmt, va_list ap) KEEL_PRINTF(3, 0);

#define log_error(...) keel__log(KEEL_LOG_ERROR, "core", __VA_ARGS__)
#define log_warn(...) keel__log(KEEL_LOG_WARN, "core", __VA_ARGS__)
#define log_info(...) keel__log(KEEL_LOG_INFO, "core", __VA_ARGS__)
#define log_debug(...) keel__log(KEEL_LOG_DEBUG, "core", __VA_ARGS__)

#endif
