/*
 * What a plugin generation registers during init beyond its routes:
 * background tasks, upstream services (core/net/upstream.h) and metrics
 * (core/plugin/plugin_metrics.h).  docs/plugin-guide.md describes the API.
 *
 * Registration is only possible while init runs.  The loader brackets the
 * init call with keel__gen_init_begin()/keel__gen_init_end(); in between, the
 * calling thread's "registering" record collects what init declares, so the
 * host API functions (which do not take a plugin argument) know whose
 * generation they serve.  Tasks start when the generation is loaded (unless
 * the process only checks configuration) and are stopped and joined before
 * the generation's fini runs and its code is unmapped.
 */
#ifndef KEEL_CORE_PLUGIN_TASKS_H
#define KEEL_CORE_PLUGIN_TASKS_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include <keel/plugin.h>

struct keel__gen_res;

/* Starts collecting registrations for generation `number` of plugin
 * `name` on this thread. */
void keel__gen_init_begin(const char *name, uint64_t number);
/* Ends collection.  ok: returns the collected record (NULL when nothing
 * was registered), owned by the caller; !ok: frees it and returns NULL. */
struct keel__gen_res *keel__gen_init_end(bool ok);
/* The plugin whose init is running on this thread, or NULL. */
const char *keel__gen_registering(void);

/* Starts every task of res (no-op for NULL or when already started). */
void keel__gen_start(struct keel__gen_res *res);
/*
 * Asks every task of res to stop and joins them, waiting as long as it takes
 * (the code must not be unmapped under a running task) and logging every
 * wait_warn_ms that a task is still running.  Returns the number of tasks
 * that had not stopped within wait_warn_ms (0 = all stopped promptly).
 */
int keel__gen_stop(struct keel__gen_res *res, int wait_warn_ms);
/* Stops (if needed) and frees res and the upstreams it declared. */
void keel__gen_free(struct keel__gen_res *res);
/* Wakes every task of res once (keel-plugin-check makes them run). */
void keel__gen_notify_all(struct keel__gen_res *res);
/* Number of tasks res holds (for keel-plugin-check). */
int keel__gen_ntasks(const struct keel__gen_res *res);

/* When false (keeld --check), loaded generations do not start their tasks. */
extern bool keel__tasks_autostart;

/*
 * Called once the process is shutting down: from then on upstream transfers
 * and their backoff sleeps end at once (KEEL_EUPSTREAM, "shutting down"), so
 * stopping the tasks cannot outlast the drain deadline by a provider's
 * timeout.  A reload does not do this: its old tasks finish their work.
 */
void keel__tasks_abort_all(void);

/* Host API members (hostapi.c puts them in the table). */
int keel__host_task_add(const char *name, unsigned every_ms, keel_task_fn fn, void *arg,
                        keel_task **out);
void keel__host_task_notify(keel_task *task);
int keel__host_task_stopping(const keel_task *task);
int keel__host_task_sleep(keel_task *task, unsigned ms);

int keel__host_plugin_note(const char *text);
/* Adds "note", "tasks" and "upstreams" of res to a /admin/plugins entry. */
void keel__gen_describe(const struct keel__gen_res *res, json_t *entry);

/* Host API member: builds the upstream (net/upstream.c) and adds it to the
 * generation whose init is running. */
int keel__host_upstream_add(const char *name, const json_t *config, keel_upstream **out);

#endif
