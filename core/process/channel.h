/*
 * The control channel between the supervisor and one worker: a stream
 * socketpair carrying frames of a 4-byte length (host order) and a text
 * payload "<kind> <id> <body>".  Kinds: Q (a request to the worker), F (a
 * worker asking the supervisor to fan a request out to every worker), R (the
 * answer to Q or F with the same id), N (a notice: "ready").
 */
#ifndef KEEL_CORE_PROCESS_CHANNEL_H
#define KEEL_CORE_PROCESS_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>

#include <keel/common.h>
#include <keel/error.h>

/* Frames above this are refused (a merged /metrics is far smaller). */
#define KEEL__CHAN_MAX_FRAME (64u * 1024 * 1024)

struct keel__frame {
    char kind;
    unsigned long long id;
    char *body; /* NUL-terminated copy, freed by the caller */
    size_t body_len;
};

struct keel__chan_buf {
    char *data;
    size_t len, cap, consumed;
};

/*
 * Sends one frame; body may be NULL.  Waits at most timeout_ms for room on
 * a non-blocking socket (-1 = as long as it takes).  Returns 0 or KEEL_EIO.
 */
int keel__chan_send(int fd, char kind, unsigned long long id, const char *body, size_t body_len,
                    int timeout_ms);

/* Reads what is available into b.  Returns 0, or KEEL_EIO on EOF or error. */
int keel__chan_read(int fd, struct keel__chan_buf *b);
/* Takes the next complete frame out of b; f->body is then the caller's to
 * free.  False when none is complete; a malformed frame sets *bad. */
bool keel__chan_next(struct keel__chan_buf *b, struct keel__frame *f, bool *bad);
void keel__chan_buf_free(struct keel__chan_buf *b);

#endif
