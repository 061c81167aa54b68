/*
 * The upstream HTTP client plugins use to call other services (libcurl).
 *
 * An upstream is declared by a plugin at init from a config object; each
 * generation gets its own keel_upstream (settings and token), while the
 * counters and the circuit breaker live in a record keyed by plugin and
 * upstream name that outlives reloads, so a reload neither resets the
 * metrics nor closes an open breaker.  Every response body is capped,
 * redirects are only followed to the same scheme, host and port, and the
 * bearer token is sent as a header and never logged.
 */
#ifndef KEEL_CORE_NET_UPSTREAM_H
#define KEEL_CORE_NET_UPSTREAM_H

#include <stdbool.h>

#include <jansson.h>

#include <keel/plugin.h>

#include "util/counters.h"

/* Once per process, before any thread calls an upstream. */
int keel__upstream_global_init(void) KEEL_WARN_UNUSED;
void keel__upstream_global_cleanup(void);

/*
 * Checks config and builds plugin's upstream `name` (counters and breaker
 * shared with earlier generations of the same pair).  Registering it with
 * the plugin's generation is plugin/'s part: keel__host_upstream_add in
 * plugin/tasks.c.
 */
int keel__upstream_new(const char *plugin, const char *name, const json_t *config,
                       keel_upstream **out);

/* From keel__upstream_abort_all() on (the process is shutting down),
 * transfers and backoff sleeps end at once with "shutting down". */
void keel__upstream_abort_all(void);
bool keel__upstream_aborting(void);

/* Host API members. */
int keel__host_upstream_request(keel_request *req, keel_upstream *up, const char *method,
                                const char *path, const json_t *body, unsigned deadline_ms,
                                long *status, json_t **json);
const char *keel__host_upstream_last_error(const keel_request *req);
int keel__host_upstream_open(const keel_upstream *up);

/* {"name","url","breaker"} for /admin/plugins (never the token). */
json_t *keel__upstream_describe(const keel_upstream *up);

/* Frees one generation's upstream (its shared record stays). */
void keel__upstream_free(keel_upstream *up);

/* Appends the upstream families to t (nothing when none was declared). */
void keel__upstreams_render(struct keel__mtext *t);
/* Frees the shared records (at exit). */
void keel__upstreams_free_all(void);

#endif
