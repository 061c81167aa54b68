/*
 * The plugin registry and the route table (docs/operations.md).
 *
 * Every plugin named in conf.d has a slot that outlives its generations.  The
 * route table is an immutable snapshot built from the core routes and every
 * slot: each route points at the generation serving it, or carries the stub
 * (fallback status, body and reason) the core serves while the plugin is
 * down.  Requests take a reference on the snapshot they were dispatched on;
 * a reload builds a new snapshot beside the old one and swaps a pointer, so
 * readers only ever hold the swap lock for a pointer load and an increment.
 */
#ifndef KEEL_CORE_PLUGIN_TABLE_H
#define KEEL_CORE_PLUGIN_TABLE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include <keel/plugin.h>

#include "conf/conf.h"
#include "plugin/loader.h"
#include "http/router.h"

struct keel__route_metrics;
struct keel__slot;

/* A route the core itself serves (health, metrics, admin). */
struct keel__core_route {
    int listener; /* enum keel__listener */
    const char *method;
    const char *path;
    int auth; /* enum keel__auth_level */
    int (*handler)(keel_request *req);
};

struct keel__route {
    int listener;
    int auth;
    const char *method;
    const char *path_template;
    const char *plugin; /* NULL for core routes */
    struct keel__slot *slot;
    struct keel__generation *gen; /* serving generation, NULL for stubs and core */
    keel_handler_fn handler;
    int (*core_handler)(keel_request *req);
    /* Stub (gen == NULL and plugin != NULL). */
    int reason;
    unsigned stub_status;
    char *stub_body;
    size_t stub_len;
    json_t *stub_headers;  /* object of strings, or NULL */
    char *fallback_header; /* "<plugin>; reason=<reason>" */
    struct keel__route_metrics *metrics;
    char *owned_method, *owned_path;
    /* The manifest's documentation of the route and its plugin's named
     * schemas (GET /openapi.json); references, NULL when absent. */
    json_t *doc;
    json_t *schemas;
};

struct keel__table {
    atomic_long refs;
    uint64_t serial;
    keel__router *routers[2]; /* by listener */
    struct keel__route *routes;
    size_t nroutes;
    struct keel__generation **gens; /* one reference each */
    size_t ngens;
    json_t *health;       /* {"<plugin>":"loaded"|"fallback"}, immutable */
    char *health_body[2]; /* the /health body with the database down [0] or up [1] */
    bool all_loaded;
};

/*
 * Loads every plugin of conf and publishes the first table.  core routes are
 * copied by pointer and must stay valid.  Logs one error line per plugin that
 * is down and a summary table.  Returns 0, or KEEL_EROUTES when routes
 * conflict (the conflicting plugin is left out and reported).
 */
int keel__plugins_start(const struct keel__conf *conf, const keel_host *host,
                        const struct keel__core_route *core, size_t ncore) KEEL_WARN_UNUSED;
/* Drops the table and every generation (after the servers have stopped). */
void keel__plugins_stop(void);

/*
 * Re-reads conf.d and reloads `only` (NULL = every plugin): each named plugin
 * gets a new generation, committed atomically, or keeps what it had.  Returns
 * {"ok":bool,"results":[{"plugin","ok","stage","error","generation"}]} (new
 * reference), or NULL with *unknown set when `only` names no plugin.
 */
json_t *keel__plugins_reload(const char *only, bool *unknown);

/* The plugin list for GET /admin/plugins (new reference). */
json_t *keel__plugins_describe(void);

/* A Unix time as the admin API shows it, "2025-01-31T17:58:01Z", or null for
 * 0 (never).  New reference. */
json_t *keel__json_time(int64_t t);

/* True when every plugin loaded (the --check verdict). */
bool keel__plugins_all_loaded(void);

struct keel__table *keel__table_acquire(void);
/* Drops a reference taken by keel__table_acquire(); `route` (may be NULL) is
 * the route the request was dispatched to, whose in-flight count drops. */
void keel__table_release(struct keel__table *t, const struct keel__route *route);

/* Counts a request against the route's plugin (slot and generation). */
void keel__route_begin(const struct keel__route *route);

#endif
