/* Leveled logging for the core.  One line per call, written atomically. */
#ifndef KEEL_CORE_UTIL_LOG_H
#define KEEL_CORE_UTIL_LOG_H

#include <stdarg.h>
#include <stddef.h>

#include <keel/common.h>
#include <keel/plugin.h>

/* Sets the most verbose level that is written (KEEL_LOG_*). */
void keel__log_set_level(int level);
int keel__log_get_level(void);
/* Maps "error|warn|info|debug" to KEEL_LOG_*; returns -1 for anything else. */
int keel__log_parse_level(const char *name);
/* Redirects log lines to fd (default 2).  The fd stays owned by the caller. */
void keel__log_set_fd(int fd);

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
