/*
 * The plugin registry (docs/operations.md): one slot per plugin named in
 * conf.d, outliving its generations, and the route-table snapshot built from
 * the slots.  Start-up loads every plugin and publishes the first snapshot;
 * a reload (core/plugin/reload.c) is a transaction over the slots.
 */
#ifndef KEEL_CORE_PLUGIN_REGISTRY_H
#define KEEL_CORE_PLUGIN_REGISTRY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include <keel/plugin.h>

#include "conf/conf.h"
#include "http/routes.h"
#include "plugin/loader.h"
#include "plugin/manifest.h"
#include "plugin/snapshot.h"

/*
 * Loads every plugin of conf and publishes the first table.  core routes are
 * copied by pointer and must stay valid.  A plugin whose routes conflict
 * with the core's or an earlier plugin's is refused before it is loaded (its
 * init never runs).  Logs one error line per plugin that is down and a
 * summary table.  Returns 0, KEEL_EROUTES when a plugin was refused for its
 * routes, or KEEL_ENOMEM.
 */
int keel__plugins_start(const struct keel__conf *conf, const keel_host *host,
                        const struct keel__core_route *core, size_t ncore) KEEL_WARN_UNUSED;
/*
 * Start-up waits up to about 250 ms in all for plugin inits; a plugin whose
 * init runs longer is published as "starting" (503 stubs, reason starting)
 * and keel__plugins_finish_start, called once the listeners serve, waits
 * for each such init on a thread of its own up to its deadline and
 * publishes the plugin, or refuses it at stage init (timeout).  With
 * keel__plugins_wait_for_init(true) (before start; keeld --check) every
 * init is waited for in full.
 */
void keel__plugins_wait_for_init(bool all);
void keel__plugins_finish_start(void);
/* True once no start-up init is still running: every plugin loaded,
 * failed or was refused at its deadline.  A worker tells the supervisor,
 * which only then lets the process or worker it replaces drain. */
bool keel__plugins_start_settled(void);
/* Drops the table and every generation (after the servers have stopped). */
void keel__plugins_stop(void);

/*
 * Re-reads conf.d and reloads `only` (NULL = every plugin): each named plugin
 * gets a new generation, committed atomically, or keeps what it had.  Returns
 * {"ok":bool,"results":[{"plugin","ok","stage","error","generation"}]} (new
 * reference), or NULL with *unknown set when `only` names no plugin.  When
 * the commit itself fails (memory), every named plugin reports ok:false,
 * stage "commit", and the serving table and the slots are as before.
 */
json_t *keel__plugins_reload(const char *only, bool *unknown);

/*
 * Serves name's routes by its stubs (reason KEEL__REASON_CRASHED or
 * KEEL__REASON_HUNG) until a reload of it.  Called before
 * keel__plugins_start, the plugin is not even loaded.  Returns 0,
 * KEEL_ENOTFOUND or KEEL_ENOMEM.
 */
int keel__plugins_quarantine(const char *name, int reason);
/* Forgets the start-up quarantine of `only` (NULL = all); registry lock held. */
void keel__plugins_lift_held(const char *only);

/* The plugin list for GET /admin/plugins (new reference).  While a reload
 * runs, the list last described, with "reload_in_progress": true. */
json_t *keel__plugins_describe(void);

/* One plugin's figures, as /metrics shows them. */
struct keel__plugin_stats {
    char name[65];
    bool up; /* its own code serves (a generation is loaded), not stubs */
    uint64_t generation;
    long in_flight; /* requests holding the serving generation */
    uint64_t requests;
    uint64_t reloads;
};

/*
 * Fills *out with a new array (free() it) of *n entries, one per plugin in
 * the order of /admin/plugins.  While a reload runs, the figures last read
 * (by this or keel__plugins_describe), so a scrape never waits for a
 * plugin's init.  Returns 0 or KEEL_ENOMEM (*out NULL, *n 0).
 */
int keel__plugins_stats(struct keel__plugin_stats **out, size_t *n) KEEL_WARN_UNUSED;

/* A Unix time as the admin API shows it, "2025-01-31T17:58:01Z", or null for
 * 0 (never).  New reference. */
json_t *keel__json_time(int64_t t);

/* ------------------------------------------------------------------
 * Shared by registry.c and reload.c only.
 */

struct keel__slot {
    char *name;
    struct keel__manifest manifest; /* the manifest the current state was built from */
    struct keel__generation *gen;   /* one reference, or NULL: stubs */
    int reason;                     /* why stubs serve, when gen == NULL */
    int stage;                      /* failing stage when gen == NULL */
    char error[512];
    uint64_t next_number;
    uint64_t reloads;
    bool has_last_reload;
    bool last_ok;
    int last_stage;
    char last_error[512];
    int64_t last_at;
    atomic_ullong requests;
    bool excluded; /* refused for its routes: no routes in the table */
    /* Nonzero while the init of its start-up load still runs (reason
     * starting): the token its completion must find to take effect. */
    uint64_t pending;
};

struct keel__registry {
    pthread_mutex_t lock; /* serialises start, reload and describe */
    struct keel__slot **slots;
    size_t nslots;
    char *confdir;
    const keel_host *host;
    const struct keel__core_route *core;
    size_t ncore;
    uint64_t serial;
};

extern struct keel__registry keel__reg;

struct keel__slot *keel__slot_find(const char *name);
/* A new slot that is not yet in the registry (keel__slot_free undoes it). */
struct keel__slot *keel__slot_new(const char *name);
void keel__slot_free(struct keel__slot *s);
/* Deep-copies a manifest so the conf model it came from can be freed. */
int keel__manifest_copy(struct keel__manifest *dst, const struct keel__manifest *src);
/* Makes dst share prev's documentation (schemas, route docs) where it is
 * unchanged: a reload then holds one copy of what stayed the same, not one
 * per conf.d read since the start (the worker keeps the conf.d it started
 * with, so the slots' first copies stay alive in it). */
void keel__manifest_share(struct keel__manifest *dst, const struct keel__manifest *prev);
/* Logs that s is down and its routes are served by stubs. */
void keel__slot_log_down(const struct keel__slot *s, const struct keel__manifest *m);
/* Loads a new generation of s for m; 1 (no generation) when m is disabled,
 * -1 with *err filled on failure, 0 on success. */
int keel__slot_load(struct keel__slot *s, const struct keel__manifest *m,
                    struct keel__generation **gen, struct keel__load_error *err);
/* Checks m (the manifest of s) against the routes every other plugin and
 * the core serve now; KEEL_EROUTES with err naming both owners. */
int keel__slot_routes_check(const struct keel__slot *s, const struct keel__manifest *m, char *err,
                            size_t errlen);
/* Keeps the plugin list and figures as they are now, for the reads made
 * while the next reload holds the lock (registry lock held; best effort). */
void keel__plugins_remember(void);
/* The view of a slot as it serves now. */
struct keel__slot_view keel__slot_view_of(struct keel__slot *s);

#endif
