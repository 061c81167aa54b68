/*
 * Metrics that plugins register at init (counters, gauges, histograms) and
 * the per-upstream metrics of core/net/upstream.c, rendered as Prometheus
 * text after the core's families.  Records are never freed while the
 * process runs, so a pointer a plugin holds stays valid across reloads and a
 * reload does not reset its values; the hot path is one atomic update.
 */
#ifndef KEEL_CORE_PLUGIN_PLUGIN_METRICS_H
#define KEEL_CORE_PLUGIN_PLUGIN_METRICS_H

#include <stdbool.h>
#include <stddef.h>

#include <keel/common.h>
#include <keel/plugin.h>

#include "util/counters.h"

/* Host API members. */
int keel__host_metric_add(int kind, const char *name, const char *help, keel_metric **out);
void keel__host_metric_observe(keel_metric *m, double v);

/* Plugin and upstream families as Prometheus text (caller frees), or NULL
 * when memory ran out. */
char *keel__plugin_metrics_render(void);
/* Frees every record (at exit, after the plugins are gone). */
void keel__plugin_metrics_free(void);

#endif
