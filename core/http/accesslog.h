/*
 * The access log: one line per completed request, text or JSON
 * (docs/operations.md).  Lines are collected in a buffer per thread and
 * written with one write() per buffer instead of one per request: a buffer
 * is written when the next line would not fit, by a flusher thread at most
 * KEEL__ACCESSLOG_FLUSH_MS after its first line, when its thread exits, and
 * on reopen and close.  A clean stop (keel__access_log_close after the
 * daemons have stopped) therefore loses nothing; a crash loses at most the
 * last KEEL__ACCESSLOG_FLUSH_MS of lines.
 */
#ifndef KEEL_CORE_HTTP_ACCESSLOG_H
#define KEEL_CORE_HTTP_ACCESSLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/request.h"

/* How long a line may wait in a buffer. */
#define KEEL__ACCESSLOG_FLUSH_MS 100
/* A buffer's size.  Written to a pipe (stderr under a supervisor such as
 * systemd's journal) only KEEL__ACCESSLOG_PIPE_BUFFER of it is used, PIPE_BUF,
 * so that a buffer arrives in one piece, never mixed with the error log's
 * lines; a regular file takes each write() whole, so there the buffer is
 * used to the end: a quarter of the write() calls. */
#define KEEL__ACCESSLOG_BUFFER 16384
#define KEEL__ACCESSLOG_PIPE_BUFFER 4096

/* Opens the access log: dest is a path (appended to, created 0640), "-" for
 * standard error, or NULL, "" or "off" for none (then every other call does
 * nothing).  json selects the JSON line format.  Starts the flusher thread.
 * Returns 0, or a negative KEEL_E* code with the reason logged (the log is
 * then off). */
int keel__access_log_open(const char *dest, bool json);

/* Formats and queues the line of req, which ended with status at end_ns on
 * keel__monotonic_ns()'s clock (its latency counted from req->start_ns), on
 * listener ("main", "admin").  The line's wall-clock time is end_ns moved onto
 * CLOCK_REALTIME by an offset each thread takes again every second, so a
 * step of the wall clock shows within a second.  Never blocks on the disk
 * for longer than one write() of the calling thread's own buffer. */
void keel__access_log(const keel_request *req, unsigned status, int64_t end_ns,
                      const char *listener);

/* Queues one preformatted line (len bytes, ending in '\n'). */
void keel__access_log_line(const char *line, size_t len);

/* Writes every thread's buffered lines now. */
void keel__access_log_flush(void);

/* Log rotation (SIGUSR1, after logrotate renamed the file): writes what is
 * buffered to the old file, then reopens the file under its name on the
 * same descriptor.  When the path cannot be opened the old file is kept
 * (and the reason logged). */
void keel__access_log_reopen(void);

/* Stops the flusher, writes everything buffered and closes the file.  Call
 * after the threads that log have stopped; lines queued later are written
 * at once, unbuffered, to nowhere (the log is off). */
void keel__access_log_close(void);

#endif
