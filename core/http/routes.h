/*
 * The route table the server dispatches on.  The plugin layer builds it
 * (core/plugin/snapshot.c) from the core's own routes and every plugin slot;
 * this layer only reads it, so it knows nothing of plugins beyond the handler
 * and counters each route carries.
 *
 * A table is an immutable, reference-counted snapshot.  Requests take a
 * reference on the table they were dispatched on; publishing a new table
 * swaps a pointer, so readers hold the swap lock only for a pointer load and
 * an increment.  The table's builder supplies its destructor.
 */
#ifndef KEEL_CORE_HTTP_ROUTES_H
#define KEEL_CORE_HTTP_ROUTES_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <keel/plugin.h>

#include "http/router.h"
#include "util/counters.h"
#include "util/scoreboard.h"

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
    bool stream_body; /* the manifest's "body": "stream" (core/http/body.h) */
    const char *method;
    const char *path_template;
    const char *plugin;  /* NULL for core routes */
    uint64_t generation; /* number of the serving generation; 0 for stubs and core */
    /* A plugin's handler and its generation's state (NULL for stubs and core). */
    keel_handler_fn handler;
    void *state;
    /* The scoreboard's text of a call of handler: plugin, method and
     * template, joined once when the table is built. */
    struct keel__sb_text sb_text;
    int (*core_handler)(keel_request *req);
    /* Stub: served while the plugin is down (handler and core_handler NULL). */
    int reason;
    unsigned stub_status;
    char *stub_body;
    size_t stub_len;
    json_t *stub_headers;  /* object of strings, or NULL */
    char *fallback_header; /* "<plugin>; reason=<reason>" */
    struct keel__route_metrics *metrics;
    /* Counters of whoever serves the route, each NULL when not kept; begin
     * and end (keel__route_begin, keel__table_release) pair up in routes.c. */
    atomic_ullong *plugin_requests; /* requests routed to the plugin, stubs included */
    atomic_ullong *gen_requests;    /* requests of the serving generation */
    atomic_long *gen_in_flight;     /* requests holding the serving generation */
    /* The builder's own data (the plugin slot and generation). */
    void *owner_slot, *owner_gen;
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
    /* Called once the last reference is gone, on whichever thread dropped
     * it: frees the table and whatever the builder hung off it, or hands
     * them to the builder to free. */
    void (*destroy)(struct keel__table *t);
};

/* A reference to the current table, or NULL before the first publish. */
struct keel__table *keel__table_acquire(void);
/* Drops a reference taken by keel__table_acquire(); `route` (may be NULL) is
 * the route the request was counted against with keel__route_begin(), whose
 * in-flight count drops. */
void keel__table_release(struct keel__table *t, const struct keel__route *route);
/* Makes t (one reference, which it takes over) the current table and drops
 * the previous one; NULL unpublishes. */
void keel__table_publish(struct keel__table *t);

/* Counts a request against the route's plugin (slot and generation). */
void keel__route_begin(const struct keel__route *route);

#endif
