/*
 * The supervisor's fault containment (docs/operations.md): a worker that
 * dies of a fatal signal is attributed, through the scoreboard, to the
 * plugin whose code it was running and reported with its backtrace; a
 * handler that runs past plugins.handler_timeout_ms is a hang.  A plugin
 * that crashes containment.crash_limit times within crash_window_s, or
 * hangs once, is quarantined in every worker until it is reloaded.  Workers
 * past server.worker_max_requests or worker_max_rss_mb are recycled.
 */
#ifndef KEEL_CORE_PROCESS_CONTAINMENT_H
#define KEEL_CORE_PROCESS_CONTAINMENT_H

#include "process/supervisor_state.h"

/* The bookkeeping for the plugin called name, created on first use; NULL
 * when out of memory. */
struct plugin_state *keel__sup_plugin(const char *name);
/* "SIGSEGV" and the like, for the signals a worker may die of. */
const char *keel__sup_signal_name(int sig);
/* Reads what the worker's crash handler wrote on its pipe so far. */
void keel__sup_crash_read(struct worker *w);
/* w (scoreboard slot) died of sig: logs the crash report, counts it against
 * the plugin it was in, and quarantines that plugin past the limit. */
void keel__sup_crash_report(struct worker *w, unsigned slot, int sig);
/* Replaces workers whose handlers are stuck past the timeout and
 * quarantines the plugin that hung. */
void keel__sup_watchdog(void);
/* Recycles workers past their request count or resident memory limit. */
void keel__sup_leak_guard(void);

#endif
