#include "config.h"

#include "plugin/snapshot.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/counters.h"

/*
 * A snapshot holds its manifests' JSON (route documentation, named schemas,
 * fallback headers) by reference, and so do the slots' manifests and, when
 * unchanged across reloads, every later generation's (keel__manifest_share).
 * jansson 2.14 changes its counts atomically, but json_decref first reads
 * the count with a plain load (to spot the never-freed sentinel), which
 * ThreadSanitizer reports as a race with another thread's json_incref; to
 * keep `./dev tsan` clean, every count on that JSON changes under the
 * registry lock instead: snapshots are built, and
 * manifests copied, shared and cleared, with it held.  The last reference
 * to a published snapshot, though, may go on any thread (a request finishing
 * on a lane, the control loop answering status).  That thread releases the
 * snapshot's generations at once, so that a retired generation is finalised
 * and unloaded as soon as its last request ends, and leaves the rest here;
 * the next keel__snapshot_publish, under the registry lock, frees it (so
 * until the next reload a worker may hold one retired table, its JSON
 * included, and one left at shutdown is not freed).
 */
static pthread_mutex_t retired_lock = PTHREAD_MUTEX_INITIALIZER;
static struct keel__snapshot *retired;

static void release_generations(struct keel__snapshot *s)
{
    for (size_t i = 0; i < s->ngens; i++)
        keel__generation_unref(s->gens[i]);
    s->ngens = 0;
}

static void snapshot_free(struct keel__snapshot *s)
{
    struct keel__table *t = &s->table;
    for (size_t i = 0; i < 2; i++)
        keel__router_free(t->routers[i]);
    for (size_t i = 0; i < t->nroutes; i++) {
        free(t->routes[i].stub_body);
        free(t->routes[i].owned_method);
        free(t->routes[i].owned_path);
        free(t->routes[i].fallback_header);
        if (t->routes[i].stub_headers != NULL)
            json_decref(t->routes[i].stub_headers);
        json_decref(t->routes[i].doc);
        json_decref(t->routes[i].schemas);
    }
    free(t->routes);
    if (s->health != NULL)
        json_decref(s->health);
    free(s->health_body[0]);
    free(s->health_body[1]);
    release_generations(s);
    free(s->gens);
    free(s);
}

/* The table's destructor: runs where the last reference went. */
static void snapshot_retire(struct keel__table *t)
{
    struct keel__snapshot *s = (struct keel__snapshot *)t;
    release_generations(s);
    pthread_mutex_lock(&retired_lock);
    s->next_retired = retired;
    retired = s;
    pthread_mutex_unlock(&retired_lock);
}

void keel__snapshot_publish(struct keel__snapshot *s)
{
    keel__table_publish(s != NULL ? &s->table : NULL);
    pthread_mutex_lock(&retired_lock);
    struct keel__snapshot *list = retired;
    retired = NULL;
    pthread_mutex_unlock(&retired_lock);
    while (list != NULL) {
        struct keel__snapshot *next = list->next_retired;
        snapshot_free(list);
        list = next;
    }
}

void keel__snapshot_discard(struct keel__snapshot *s)
{
    if (s != NULL)
        snapshot_free(s);
}

const struct keel__snapshot *keel__snapshot_of(const struct keel__table *t)
{
    /* Every table is built here, with the table as the first member. */
    return (const struct keel__snapshot *)t;
}

/* Copies v, replacing "${reason}" inside every string with reason. */
static json_t *substitute_reason(const json_t *v, const char *reason)
{
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        const char *at = strstr(s, "${reason}");
        if (at == NULL)
            return json_copy((json_t *)v);
        size_t n = strlen(s) + strlen(reason) + 1;
        char *buf = malloc(n);
        if (buf == NULL)
            return NULL;
        snprintf(buf, n, "%.*s%s%s", (int)(at - s), s, reason, at + 9);
        json_t *once = json_string(buf);
        free(buf);
        if (once == NULL)
            return NULL;
        json_t *r = substitute_reason(once, reason);
        json_decref(once);
        return r;
    }
    if (json_is_object(v)) {
        json_t *o = json_object();
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x)
            json_object_set_new(o, k, substitute_reason(x, reason));
        return o;
    }
    if (json_is_array(v)) {
        json_t *a = json_array();
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) json_array_append_new(a, substitute_reason(x, reason));
        return a;
    }
    return json_copy((json_t *)v);
}

static int fill_stub(struct keel__route *r, const struct keel__manifest_route *mr,
                     const char *plugin, int reason)
{
    const char *rname = keel__reason_name(reason);
    json_t *body;
    if (reason == KEEL__REASON_STARTING) {
        /* Not a fallback answer: the plugin is about to serve. */
        body = json_pack("{s:s}", "detail", "Service starting, retry shortly");
        r->stub_status = 503;
    } else if (mr->fallback != NULL) {
        body = substitute_reason(mr->fallback, rname);
        r->stub_status = mr->fallback_status ? mr->fallback_status : 200;
    } else {
        body = json_pack("{s:s}", "detail", "Service unavailable");
        r->stub_status = 503;
    }
    r->stub_body = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (r->stub_body == NULL)
        return KEEL_ENOMEM;
    r->stub_len = strlen(r->stub_body);
    size_t n = strlen(plugin) + strlen(rname) + 16;
    r->fallback_header = malloc(n);
    if (r->fallback_header == NULL)
        return KEEL_ENOMEM;
    snprintf(r->fallback_header, n, "%s; reason=%s", plugin, rname);
    return 0;
}

/* Everything of route r but its place in the routers: what a request on
 * it needs. */
static int fill_route(struct keel__route *r, const struct keel__slot_view *v,
                      const struct keel__manifest_route *mr)
{
    r->listener = mr->listener;
    r->auth = mr->auth;
    r->stream_body = mr->stream_body;
    /* The table owns its strings: a reload may free the manifest while
     * requests on this snapshot are still running. */
    r->owned_method = strdup(mr->method);
    r->owned_path = strdup(mr->path);
    if (r->owned_method == NULL || r->owned_path == NULL)
        return KEEL_ENOMEM;
    r->method = r->owned_method;
    r->path_template = r->owned_path;
    r->owner_slot = v->owner;
    r->plugin_requests = v->requests;
    r->metrics = keel__metrics_route(mr->listener, mr->method, mr->path, r->plugin);
    r->doc = mr->doc ? json_incref(mr->doc) : NULL;
    r->schemas = v->manifest->schemas ? json_incref(v->manifest->schemas) : NULL;
    if (v->gen != NULL) {
        r->owner_gen = v->gen;
        r->generation = v->gen->number;
        r->state = v->gen->state;
        r->gen_in_flight = &v->gen->in_flight;
        r->gen_requests = &v->gen->requests;
        r->handler = keel__generation_handler(v->gen, mr->method, mr->path);
        keel__sb_text_make(&r->sb_text, r->plugin, r->method, r->path_template);
        return 0;
    }
    r->reason = v->reason;
    if (fill_stub(r, mr, r->plugin, v->reason) != 0)
        return KEEL_ENOMEM;
    if (v->reason == KEEL__REASON_STARTING)
        r->stub_headers = json_pack("{s:s}", "Retry-After", "1");
    else if (mr->fallback_headers != NULL)
        r->stub_headers = json_incref(mr->fallback_headers);
    return 0;
}

/* Adds the routes of view v to s; conflicts set *conflict to index.  With
 * routes_only, only the routers are filled (keel__snapshot_conflicts). */
static int add_view_routes(struct keel__snapshot *s, const struct keel__slot_view *v, long index,
                           bool routes_only, long *conflict, char *err, size_t errlen)
{
    struct keel__table *t = &s->table;
    const struct keel__manifest *m = v->manifest;
    for (size_t i = 0; i < m->nroutes; i++) {
        const struct keel__manifest_route *mr = &m->routes[i];
        struct keel__route *r = &t->routes[t->nroutes++];
        r->plugin = v->name;
        if (!routes_only && fill_route(r, v, mr) != 0)
            return KEEL_ENOMEM;
        int rc = keel__router_add(t->routers[mr->listener], mr->method, mr->path, r->plugin, r, err,
                                  errlen);
        if (rc != 0) {
            if (rc == KEEL_EROUTES)
                *conflict = index;
            return rc;
        }
    }
    return 0;
}

static struct keel__snapshot *build(const struct keel__core_route *core, size_t ncore,
                                    const struct keel__slot_view *views, size_t nviews,
                                    bool routes_only, long *conflict, char *err, size_t errlen)
{
    *conflict = -1;
    if (errlen > 0)
        err[0] = '\0';
    struct keel__snapshot *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    struct keel__table *t = &s->table;
    t->destroy = snapshot_retire;
    size_t total = ncore;
    for (size_t i = 0; i < nviews; i++)
        if (views[i].manifest != NULL)
            total += views[i].manifest->nroutes;
    t->routes = calloc(total ? total : 1, sizeof *t->routes);
    s->gens = calloc(nviews ? nviews : 1, sizeof *s->gens);
    t->routers[0] = keel__router_new();
    t->routers[1] = keel__router_new();
    if (t->routes == NULL || s->gens == NULL || t->routers[0] == NULL || t->routers[1] == NULL)
        goto fail;

    for (size_t i = 0; i < ncore; i++) {
        const struct keel__core_route *c = &core[i];
        struct keel__route *r = &t->routes[t->nroutes++];
        r->listener = c->listener;
        r->auth = c->auth;
        r->method = c->method;
        r->path_template = c->path;
        r->core_handler = c->handler;
        if (!routes_only)
            r->metrics = keel__metrics_route(c->listener, c->method, c->path, NULL);
        if (keel__router_add(t->routers[c->listener], c->method, c->path, "core", r, err, errlen) !=
            0)
            goto fail;
    }
    for (int pass = 0; pass < 2; pass++)
        for (size_t v = 0; v < nviews; v++)
            if (views[v].manifest != NULL && views[v].candidate == (pass == 1) &&
                add_view_routes(s, &views[v], (long)v, routes_only, conflict, err, errlen) != 0)
                goto fail;
    if (routes_only)
        return s;
    for (size_t v = 0; v < nviews; v++) {
        if (views[v].manifest != NULL && views[v].gen != NULL) {
            keel__generation_ref(views[v].gen);
            s->gens[s->ngens++] = views[v].gen;
        }
    }
    s->health = json_object();
    if (s->health == NULL)
        goto fail;
    s->all_loaded = true;
    for (size_t v = 0; v < nviews; v++) {
        bool loaded = views[v].gen != NULL && views[v].manifest != NULL;
        if (json_object_set_new(s->health, views[v].name,
                                json_string(loaded ? "loaded" : "fallback")) != 0)
            goto fail;
        if (!loaded)
            s->all_loaded = false;
    }
    /* /health answers one of two bodies (database down or up) per snapshot,
     * serialised here once instead of on every request. */
    for (int up = 0; up < 2; up++) {
        json_t *b = json_pack("{s:s, s:s, s:O}", "status", up && s->all_loaded ? "ok" : "degraded",
                              "database", up ? "up" : "down", "plugins", s->health);
        s->health_body[up] = b ? json_dumps(b, JSON_COMPACT) : NULL;
        json_decref(b);
        if (s->health_body[up] == NULL)
            goto fail;
    }
    atomic_store(&t->refs, 1);
    return s;
fail:
    snapshot_free(s);
    return NULL;
}

struct keel__snapshot *keel__snapshot_build(const struct keel__core_route *core, size_t ncore,
                                            const struct keel__slot_view *views, size_t nviews,
                                            uint64_t serial, long *conflict, char *err,
                                            size_t errlen)
{
    struct keel__snapshot *s = build(core, ncore, views, nviews, false, conflict, err, errlen);
    if (s != NULL)
        s->table.serial = serial;
    return s;
}

int keel__snapshot_conflicts(const struct keel__core_route *core, size_t ncore,
                             const struct keel__slot_view *views, size_t nviews, long *conflict,
                             char *err, size_t errlen)
{
    struct keel__snapshot *s = build(core, ncore, views, nviews, true, conflict, err, errlen);
    if (s == NULL)
        return *conflict >= 0 ? KEEL_EROUTES : KEEL_ENOMEM;
    snapshot_free(s);
    return 0;
}
