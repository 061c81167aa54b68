/*
 * Route-table snapshots: the core routes plus, for every plugin slot, either
 * the routes of its serving generation or the stubs that answer while it is
 * down (docs/operations.md).  A snapshot is a struct keel__table (the part
 * the server dispatches on, core/http/routes.h) extended with what the
 * plugin layer and /health need: the generations it holds and the /health
 * bodies, serialised once per snapshot.
 */
#ifndef KEEL_CORE_PLUGIN_SNAPSHOT_H
#define KEEL_CORE_PLUGIN_SNAPSHOT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "conf/conf.h"
#include "http/routes.h"
#include "plugin/loader.h"

/* What one plugin contributes to a snapshot being built. */
struct keel__slot_view {
    const char *name;
    /* NULL: the plugin has no routes in this snapshot (it was refused). */
    const struct keel__manifest *manifest;
    struct keel__generation *gen; /* serving generation, NULL for stubs */
    int reason;                   /* why stubs serve, when gen == NULL */
    atomic_ullong *requests;      /* the plugin's request counter */
    void *owner;                  /* the registry's slot, kept in each route */
    /* Routes of candidates are added after everyone else's, so that a
     * conflict is reported at (and blamed on) a candidate. */
    bool candidate;
};

struct keel__snapshot {
    struct keel__table table;       /* first: a snapshot is a table */
    struct keel__generation **gens; /* one reference each */
    size_t ngens;
    json_t *health;       /* {"<plugin>":"loaded"|"fallback"}, immutable */
    char *health_body[2]; /* the /health body with the database down [0] or up [1] */
    bool all_loaded;
    struct keel__snapshot *next_retired; /* snapshot.c's list of retired snapshots */
};

/*
 * Builds a snapshot (one reference) from the core routes and views, in that
 * order.  core is copied by pointer and must outlive the snapshot.  On a
 * route conflict returns NULL with *conflict set to the index of the view
 * whose route could not be added and err naming both owners; on any other
 * failure (memory) returns NULL with *conflict = -1.
 */
struct keel__snapshot *keel__snapshot_build(const struct keel__core_route *core, size_t ncore,
                                            const struct keel__slot_view *views, size_t nviews,
                                            uint64_t serial, long *conflict, char *err,
                                            size_t errlen);

/*
 * Whether those views' routes could all be served together: the routers of
 * keel__snapshot_build alone, none of the rest (stub bodies, metrics
 * records, documentation, generations), for a check before anything is
 * loaded.  0, or KEEL_EROUTES with *conflict and err as keel__snapshot_build
 * sets them, or KEEL_ENOMEM.
 */
int keel__snapshot_conflicts(const struct keel__core_route *core, size_t ncore,
                             const struct keel__slot_view *views, size_t nviews, long *conflict,
                             char *err, size_t errlen);
/* Frees a snapshot that was never published. */
void keel__snapshot_discard(struct keel__snapshot *s);

/*
 * Makes s (one reference, which it takes over; NULL unpublishes) the table
 * requests are dispatched on, then frees every snapshot whose last reference
 * has gone since the previous call.  Call it with the registry lock held:
 * a snapshot shares its manifests' JSON by reference, and every change to
 * those reference counts is made under that lock (snapshot.c says why).
 */
void keel__snapshot_publish(struct keel__snapshot *s);

/* The snapshot a table is (every published table is one). */
const struct keel__snapshot *keel__snapshot_of(const struct keel__table *t);

#endif
