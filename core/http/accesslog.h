/*
 * The access log: one line per completed request, text or JSON
 * (docs/operations.md), written with a single write() so lines from
 * concurrent requests stay whole.
 */
#ifndef KEEL_CORE_HTTP_ACCESSLOG_H
#define KEEL_CORE_HTTP_ACCESSLOG_H

#include <stdbool.h>
#include <stdint.h>

#include "http/request.h"

/* dest: "-" for stderr, a path (appended to), or NULL/""/"off" for none. */
void keel__access_log_open(const char *dest, bool json);
void keel__access_log_close(void);
/* Reopens the file under its name (SIGUSR1, after logrotate renamed it). */
void keel__access_log_reopen(void);
/* Logs req, which ended with status after ns nanoseconds on listener. */
void keel__access_log(const keel_request *req, unsigned status, int64_t ns, const char *listener);

#endif
