/*
 * Prometheus metrics.  Counters are relaxed atomics owned by long-lived
 * records (one per route, created when a table is built and kept across
 * reloads), so the hot path is a few atomic adds and no lock.
 */
#ifndef KEEL_CORE_OPS_METRICS_H
#define KEEL_CORE_OPS_METRICS_H

#include <stdbool.h>
#include <stdint.h>

struct keel__route_metrics;

/* The record for listener+method+template (created on first use; never freed
 * before keel__metrics_free).  plugin may be NULL for core routes. */
struct keel__route_metrics *keel__metrics_route(int listener, const char *method,
                                                const char *path_template, const char *plugin);
/* Counts one finished request; m NULL means "no route matched". */
void keel__metrics_observe(struct keel__route_metrics *m, unsigned status, int64_t latency_ns);
/* Counts a response that was degraded (X-Keel-Degraded) or served by a
 * fallback stub (X-Keel-Fallback), found among its extra headers; headers
 * is the request's list (struct keel__header *, see http/request.h). */
void keel__metrics_degraded(struct keel__route_metrics *m, const void *headers);
/* Counts a reload result. */
void keel__metrics_reload(bool ok);

/* Renders every family as Prometheus text format; the caller frees. */
char *keel__metrics_render(void);
void keel__metrics_free(void);

#endif
