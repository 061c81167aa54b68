/*
 * Prometheus metrics: renders the counters of core/util/counters.h and the
 * stats every subsystem exposes (pool, breaker, user sync, plugins, server).
 * Nothing below ops calls into this file.
 */
#ifndef KEEL_CORE_OPS_METRICS_H
#define KEEL_CORE_OPS_METRICS_H

#include <stdbool.h>
#include <stdint.h>

/* Renders every family as Prometheus text format; the caller frees. */
char *keel__metrics_render(void);

#endif
