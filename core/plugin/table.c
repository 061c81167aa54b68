#include "config.h"

#include "plugin/table.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/log.h"
#include "ops/metrics.h"
#include "plugin/tasks.h"

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
    bool excluded; /* refused for a route conflict */
};

static struct {
    pthread_mutex_t lock; /* serialises start, reload and describe */
    struct keel__slot **slots;
    size_t nslots;
    char *confdir;
    const keel_host *host;
    const struct keel__core_route *core;
    size_t ncore;
    uint64_t serial;
} reg = {.lock = PTHREAD_MUTEX_INITIALIZER};

static pthread_rwlock_t table_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct keel__table *current;

/* ------------------------------------------------------------ snapshots */

static void table_destroy(struct keel__table *t)
{
    for (size_t i = 0; i < 2; i++)
        keel__router_free(t->routers[i]);
    for (size_t i = 0; i < t->nroutes; i++) {
        free(t->routes[i].stub_body);
        free(t->routes[i].owned_method);
        free(t->routes[i].owned_path);
        free(t->routes[i].fallback_header);
        if (t->routes[i].stub_headers != NULL)
            json_decref(t->routes[i].stub_headers);
    }
    free(t->routes);
    if (t->health != NULL)
        json_decref(t->health);
    free(t->health_body[0]);
    free(t->health_body[1]);
    for (size_t i = 0; i < t->ngens; i++)
        keel__generation_unref(t->gens[i]);
    free(t->gens);
    free(t);
}

struct keel__table *keel__table_acquire(void)
{
    pthread_rwlock_rdlock(&table_lock);
    struct keel__table *t = current;
    if (t != NULL)
        atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    pthread_rwlock_unlock(&table_lock);
    return t;
}

void keel__table_release(struct keel__table *t, const struct keel__route *route)
{
    if (t == NULL)
        return;
    if (route != NULL && route->gen != NULL)
        atomic_fetch_sub_explicit(&route->gen->in_flight, 1, memory_order_relaxed);
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
        table_destroy(t);
}

void keel__route_begin(const struct keel__route *route)
{
    if (route->slot != NULL)
        atomic_fetch_add_explicit(&route->slot->requests, 1, memory_order_relaxed);
    if (route->gen != NULL) {
        atomic_fetch_add_explicit(&route->gen->in_flight, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&route->gen->requests, 1, memory_order_relaxed);
    }
}

static void publish(struct keel__table *t)
{
    pthread_rwlock_wrlock(&table_lock);
    struct keel__table *old = current;
    current = t;
    pthread_rwlock_unlock(&table_lock);
    keel__table_release(old, NULL);
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
    if (mr->fallback != NULL) {
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

/* The manifest a slot is judged by in a table build. */
struct slot_view {
    struct keel__slot *slot;
    const struct keel__manifest *manifest;
    struct keel__generation *gen;
    int reason;
};

/*
 * Builds a table from core routes and views.  On a route conflict returns
 * NULL with *conflict_index set to the view that could not be added (-1 for
 * other failures) and err describing it.
 */
static struct keel__table *build_table(const struct slot_view *views, size_t nviews,
                                       long *conflict_index, char *err, size_t errlen)
{
    *conflict_index = -1;
    struct keel__table *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    size_t total = reg.ncore;
    for (size_t i = 0; i < nviews; i++)
        if (views[i].manifest != NULL)
            total += views[i].manifest->nroutes;
    t->routes = calloc(total ? total : 1, sizeof *t->routes);
    t->gens = calloc(nviews ? nviews : 1, sizeof *t->gens);
    t->routers[0] = keel__router_new();
    t->routers[1] = keel__router_new();
    if (t->routes == NULL || t->gens == NULL || t->routers[0] == NULL || t->routers[1] == NULL)
        goto fail;

    for (size_t i = 0; i < reg.ncore; i++) {
        const struct keel__core_route *c = &reg.core[i];
        struct keel__route *r = &t->routes[t->nroutes++];
        r->listener = c->listener;
        r->auth = c->auth;
        r->method = c->method;
        r->path_template = c->path;
        r->core_handler = c->handler;
        r->metrics = keel__metrics_route(c->listener, c->method, c->path, NULL);
        if (keel__router_add(t->routers[c->listener], c->method, c->path, "core", r, err, errlen) !=
            0)
            goto fail;
    }
    for (size_t v = 0; v < nviews; v++) {
        const struct keel__manifest *m = views[v].manifest;
        if (m == NULL)
            continue;
        for (size_t i = 0; i < m->nroutes; i++) {
            const struct keel__manifest_route *mr = &m->routes[i];
            struct keel__route *r = &t->routes[t->nroutes++];
            r->listener = mr->listener;
            r->auth = mr->auth;
            /* The table owns its strings: a reload may free the manifest
             * while requests on this snapshot are still running. */
            r->owned_method = strdup(mr->method);
            r->owned_path = strdup(mr->path);
            if (r->owned_method == NULL || r->owned_path == NULL)
                goto fail;
            r->method = r->owned_method;
            r->path_template = r->owned_path;
            r->plugin = views[v].slot->name;
            r->slot = views[v].slot;
            r->metrics = keel__metrics_route(mr->listener, mr->method, mr->path, r->plugin);
            if (views[v].gen != NULL) {
                r->gen = views[v].gen;
                r->handler = keel__generation_handler(views[v].gen, mr->method, mr->path);
            } else {
                r->reason = views[v].reason;
                if (fill_stub(r, mr, r->plugin, views[v].reason) != 0)
                    goto fail;
                if (mr->fallback_headers != NULL)
                    r->stub_headers = json_incref(mr->fallback_headers);
            }
            if (keel__router_add(t->routers[mr->listener], mr->method, mr->path, r->plugin, r, err,
                                 errlen) != 0) {
                *conflict_index = (long)v;
                goto fail;
            }
        }
        if (views[v].gen != NULL) {
            keel__generation_ref(views[v].gen);
            t->gens[t->ngens++] = views[v].gen;
        }
    }
    t->health = json_object();
    t->all_loaded = true;
    for (size_t v = 0; v < nviews; v++) {
        bool loaded = views[v].gen != NULL && views[v].manifest != NULL;
        json_object_set_new(t->health, views[v].slot->name,
                            json_string(loaded ? "loaded" : "fallback"));
        if (!loaded)
            t->all_loaded = false;
    }
    /* /health answers one of two bodies (database down or up) per snapshot,
     * serialised here once instead of on every request. */
    for (int up = 0; up < 2; up++) {
        json_t *b = json_pack("{s:s, s:s, s:O}", "status", up && t->all_loaded ? "ok" : "degraded",
                              "database", up ? "up" : "down", "plugins", t->health);
        t->health_body[up] = b ? json_dumps(b, JSON_COMPACT) : NULL;
        json_decref(b);
        if (t->health_body[up] == NULL)
            goto fail;
    }
    atomic_store(&t->refs, 1);
    t->serial = ++reg.serial;
    return t;
fail:
    table_destroy(t);
    return NULL;
}

/* ------------------------------------------------------------ slots */

static struct keel__slot *slot_find(const char *name)
{
    for (size_t i = 0; i < reg.nslots; i++)
        if (strcmp(reg.slots[i]->name, name) == 0)
            return reg.slots[i];
    return NULL;
}

static struct keel__slot *slot_add(const char *name)
{
    struct keel__slot **grown = realloc(reg.slots, (reg.nslots + 1) * sizeof *grown);
    if (grown == NULL)
        return NULL;
    reg.slots = grown;
    struct keel__slot *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->name = strdup(name);
    if (s->name == NULL) {
        free(s);
        return NULL;
    }
    s->next_number = 1;
    reg.slots[reg.nslots++] = s;
    return s;
}

/* Deep-copies a manifest by re-parsing nothing: the slot keeps its own copy
 * so the conf model it came from can be freed. */
static int manifest_copy(struct keel__manifest *dst, const struct keel__manifest *src)
{
    memset(dst, 0, sizeof *dst);
    dst->name = strdup(src->name);
    dst->source = src->source ? strdup(src->source) : NULL;
    dst->file = strdup(src->file);
    dst->file_spec = src->file_spec ? strdup(src->file_spec) : NULL;
    dst->migrations = src->migrations ? strdup(src->migrations) : NULL;
    dst->enabled = src->enabled;
    dst->config = json_deep_copy(src->config);
    dst->routes = calloc(src->nroutes ? src->nroutes : 1, sizeof *dst->routes);
    if (dst->name == NULL || dst->file == NULL || dst->config == NULL || dst->routes == NULL) {
        keel__manifest_clear(dst);
        return KEEL_ENOMEM;
    }
    dst->nroutes = src->nroutes;
    for (size_t i = 0; i < src->nroutes; i++) {
        const struct keel__manifest_route *a = &src->routes[i];
        struct keel__manifest_route *b = &dst->routes[i];
        b->method = strdup(a->method);
        b->path = strdup(a->path);
        b->auth = a->auth;
        b->listener = a->listener;
        b->fallback_status = a->fallback_status;
        b->fallback = a->fallback ? json_deep_copy(a->fallback) : NULL;
        b->fallback_headers = a->fallback_headers ? json_deep_copy(a->fallback_headers) : NULL;
        if (b->method == NULL || b->path == NULL) {
            keel__manifest_clear(dst);
            return KEEL_ENOMEM;
        }
    }
    return 0;
}

static void log_down(const struct keel__slot *s, const struct keel__manifest *m)
{
    keel__log(KEEL_LOG_ERROR, s->name,
              "plugin %s is down: path=%s stage=%s reason=%s: %s; its %zu route(s) are served by "
              "fallback stubs",
              s->name, m->file, keel__stage_name(s->stage), keel__reason_name(s->reason), s->error,
              m->nroutes);
}

/*
 * Loads a new generation for manifest m into *gen, or reports why not.
 * Disabled plugins are not loaded (reason disabled, not an error).
 */
static int load_one(struct keel__slot *s, const struct keel__manifest *m,
                    struct keel__generation **gen, struct keel__load_error *err)
{
    *gen = NULL;
    if (!m->enabled) {
        memset(err, 0, sizeof *err);
        err->stage = KEEL__STAGE_MANIFEST;
        err->reason = KEEL__REASON_DISABLED;
        snprintf(err->message, sizeof err->message, "disabled in %s",
                 m->source ? m->source : "conf.d");
        return 1;
    }
    uint64_t number = s->next_number++;
    return keel__generation_load(m, number, reg.host, gen, err) == 0 ? 0 : -1;
}

/*
 * Checks manifest m of slot s against the routes that serve now: the core's
 * and every other plugin's current manifest (stubs included).  A reload must
 * never take a route away from a plugin that keeps it, so a conflict is
 * blamed on the manifest being reloaded, before anything is loaded.  Other
 * plugins reloaded in the same run are judged by what they serve now too;
 * moving a route between two plugins therefore takes two reloads (remove,
 * then add).  Returns KEEL_EROUTES with the router's message naming both
 * plugins, or 0 (also when the check itself cannot run: the commit-time
 * build still catches conflicts).
 */
static int routes_precheck(const struct keel__slot *s, const struct keel__manifest *m, char *err,
                           size_t errlen)
{
    struct slot_view *views = calloc(reg.nslots + 1, sizeof *views);
    if (views == NULL)
        return 0;
    size_t n = 0;
    for (size_t i = 0; i < reg.nslots; i++) {
        struct keel__slot *o = reg.slots[i];
        if (o == s || o->excluded)
            continue;
        views[n++] = (struct slot_view){o, &o->manifest, o->gen, o->reason};
    }
    /* The candidate comes last, so a conflict is detected at (and reported
     * for) its routes. */
    views[n++] = (struct slot_view){(struct keel__slot *)s, m, NULL, KEEL__REASON_NONE};
    long bad;
    struct keel__table *t = build_table(views, n, &bad, err, errlen);
    free(views);
    if (t != NULL) {
        table_destroy(t);
        return 0;
    }
    return bad == (long)n - 1 ? KEEL_EROUTES : 0;
}

static void print_summary(void)
{
    keel__log(KEEL_LOG_INFO, "core", "%-12s %-9s %-8s %-14s %-4s %s", "PLUGIN", "VERSION", "STATE",
              "REASON", "GEN", "FILE");
    for (size_t i = 0; i < reg.nslots; i++) {
        const struct keel__slot *s = reg.slots[i];
        keel__log(KEEL_LOG_INFO, "core", "%-12s %-9s %-8s %-14s %-4llu %s", s->name,
                  s->gen ? s->gen->desc->version : "-", s->gen ? "loaded" : "fallback",
                  s->gen ? "-" : keel__reason_name(s->reason),
                  (unsigned long long)(s->gen ? s->gen->number : 0), s->manifest.file);
    }
}

/* Builds views from the slots' current state (excluded slots left out). */
static struct slot_view *current_views(void)
{
    struct slot_view *views = calloc(reg.nslots ? reg.nslots : 1, sizeof *views);
    if (views == NULL)
        return NULL;
    for (size_t i = 0; i < reg.nslots; i++) {
        struct keel__slot *s = reg.slots[i];
        views[i].slot = s;
        views[i].manifest = s->excluded ? NULL : &s->manifest;
        views[i].gen = s->gen;
        views[i].reason = s->reason;
    }
    return views;
}

/*
 * Builds a table from the slots; a slot whose routes conflict with earlier
 * ones is excluded (its generation dropped) and the build repeated.
 */
static struct keel__table *build_from_slots(int *conflicts)
{
    *conflicts = 0;
    for (;;) {
        struct slot_view *views = current_views();
        if (views == NULL)
            return NULL;
        long bad;
        char err[512];
        struct keel__table *t = build_table(views, reg.nslots, &bad, err, sizeof err);
        free(views);
        if (t != NULL || bad < 0) {
            if (t == NULL)
                log_error("cannot build the route table: %s", err);
            return t;
        }
        struct keel__slot *s = reg.slots[bad];
        (*conflicts)++;
        s->excluded = true;
        s->stage = KEEL__STAGE_ROUTES;
        s->reason = KEEL__REASON_LOAD_FAILED;
        snprintf(s->error, sizeof s->error, "%s", err);
        keel__log(KEEL_LOG_ERROR, s->name, "plugin %s refused: %s (file %s)", s->name, err,
                  s->manifest.file);
        keel__generation_unref(s->gen);
        s->gen = NULL;
    }
}

int keel__plugins_start(const struct keel__conf *conf, const keel_host *host,
                        const struct keel__core_route *core, size_t ncore)
{
    pthread_mutex_lock(&reg.lock);
    reg.host = host;
    reg.core = core;
    reg.ncore = ncore;
    free(reg.confdir);
    reg.confdir = strdup(conf->dir);
    for (size_t i = 0; i < conf->nplugins; i++) {
        const struct keel__manifest *m = &conf->plugins[i];
        struct keel__slot *s = slot_add(m->name);
        if (s == NULL || manifest_copy(&s->manifest, m) != 0) {
            pthread_mutex_unlock(&reg.lock);
            return KEEL_ENOMEM;
        }
        struct keel__load_error le;
        int rc = load_one(s, &s->manifest, &s->gen, &le);
        if (rc != 0) {
            s->reason = le.reason;
            s->stage = le.stage;
            snprintf(s->error, sizeof s->error, "%s", le.message);
            log_down(s, &s->manifest);
        } else {
            keel__log(KEEL_LOG_INFO, s->name, "loaded %s %s generation %llu from %s", s->name,
                      s->gen->desc->version, (unsigned long long)s->gen->number, s->manifest.file);
        }
    }
    int conflicts;
    struct keel__table *t = build_from_slots(&conflicts);
    if (t == NULL) {
        pthread_mutex_unlock(&reg.lock);
        return KEEL_ENOMEM;
    }
    publish(t);
    print_summary();
    pthread_mutex_unlock(&reg.lock);
    return conflicts ? KEEL_EROUTES : 0;
}

void keel__plugins_stop(void)
{
    pthread_mutex_lock(&reg.lock);
    publish(NULL);
    for (size_t i = 0; i < reg.nslots; i++) {
        struct keel__slot *s = reg.slots[i];
        keel__generation_unref(s->gen);
        keel__manifest_clear(&s->manifest);
        free(s->name);
        free(s);
    }
    free(reg.slots);
    reg.slots = NULL;
    reg.nslots = 0;
    free(reg.confdir);
    reg.confdir = NULL;
    pthread_mutex_unlock(&reg.lock);
}

bool keel__plugins_all_loaded(void)
{
    pthread_mutex_lock(&reg.lock);
    bool ok = true;
    for (size_t i = 0; i < reg.nslots; i++)
        if (reg.slots[i]->gen == NULL)
            ok = false;
    pthread_mutex_unlock(&reg.lock);
    return ok;
}

/* ------------------------------------------------------------ reload */

static json_t *result_json(const char *plugin, bool ok, int stage, const char *error,
                           uint64_t generation)
{
    return json_pack("{s:s, s:b, s:s, s:s?, s:I}", "plugin", plugin, "ok", ok, "stage",
                     keel__stage_name(stage), "error", ok ? NULL : error, "generation",
                     (json_int_t)generation);
}

static void note_reload(struct keel__slot *s, bool ok, int stage, const char *error)
{
    s->reloads++;
    s->has_last_reload = true;
    s->last_ok = ok;
    s->last_stage = stage;
    snprintf(s->last_error, sizeof s->last_error, "%s", ok ? "" : error);
    s->last_at = (int64_t)time(NULL);
    keel__metrics_reload(ok);
}

/* What a reload intends for one slot before the commit. */
struct pending {
    struct keel__slot *slot;
    struct keel__manifest manifest; /* new manifest (owned until committed) */
    struct keel__generation *gen;   /* new generation, or NULL */
    int reason;
    bool failed; /* keep the old state */
    int stage;
    char error[512];
};

json_t *keel__plugins_reload(const char *only, bool *unknown)
{
    *unknown = false;
    pthread_mutex_lock(&reg.lock);
    json_t *results = json_array();
    bool all_ok = true;

    struct keel__conf *conf = NULL;
    char err[512];
    int rc = keel__conf_load(reg.confdir, &conf, err, sizeof err);
    if (rc == 0)
        rc = keel__conf_apply_env(conf, err, sizeof err);
    if (rc != 0) {
        /* A conf.d that does not parse changes nothing. */
        bool named = false;
        for (size_t i = 0; i < reg.nslots; i++) {
            struct keel__slot *s = reg.slots[i];
            if (only != NULL && strcmp(only, s->name) != 0)
                continue;
            named = true;
            note_reload(s, false, KEEL__STAGE_MANIFEST, err);
            json_array_append_new(results, result_json(s->name, false, KEEL__STAGE_MANIFEST, err,
                                                       s->gen ? s->gen->number : 0));
        }
        keel__log(KEEL_LOG_ERROR, "core", "reload refused: %s", err);
        keel__conf_free(conf);
        pthread_mutex_unlock(&reg.lock);
        if (only != NULL && !named) {
            *unknown = true;
            json_decref(results);
            return NULL;
        }
        return json_pack("{s:b, s:o}", "ok", 0, "results", results);
    }

    if (only != NULL) {
        bool found = slot_find(only) != NULL;
        for (size_t i = 0; i < conf->nplugins && !found; i++)
            found = strcmp(conf->plugins[i].name, only) == 0;
        if (!found) {
            keel__conf_free(conf);
            json_decref(results);
            pthread_mutex_unlock(&reg.lock);
            *unknown = true;
            return NULL;
        }
    }

    /* Shadow-load every named plugin; nothing is visible to requests yet. */
    struct pending *pend = calloc(conf->nplugins + 1, sizeof *pend);
    if (pend == NULL) {
        /* Nothing was loaded yet: report the reload as failed, change nothing. */
        keel__conf_free(conf);
        json_decref(results);
        pthread_mutex_unlock(&reg.lock);
        keel__log(KEEL_LOG_ERROR, "core", "reload refused: out of memory");
        return json_pack("{s:b, s:[]}", "ok", 0, "results");
    }
    size_t npend = 0;
    bool out_of_memory = false;
    for (size_t i = 0; i < conf->nplugins; i++) {
        const struct keel__manifest *m = &conf->plugins[i];
        if (only != NULL && strcmp(only, m->name) != 0)
            continue;
        struct keel__slot *s = slot_find(m->name);
        if (s == NULL) {
            s = slot_add(m->name);
            if (s == NULL) {
                out_of_memory = true;
                break;
            }
            s->reason = KEEL__REASON_NOT_INSTALLED;
            s->excluded = true; /* no routes until its first commit */
        }
        struct pending *p = &pend[npend++];
        p->slot = s;
        if (manifest_copy(&p->manifest, m) != 0) {
            p->failed = true;
            p->stage = KEEL__STAGE_MANIFEST;
            snprintf(p->error, sizeof p->error, "out of memory");
            continue;
        }
        if (routes_precheck(s, &p->manifest, p->error, sizeof p->error) != 0) {
            /* Whatever the plugin served before (generation or stubs) stays. */
            p->failed = true;
            p->stage = KEEL__STAGE_ROUTES;
            p->reason = KEEL__REASON_LOAD_FAILED;
            keel__log(KEEL_LOG_ERROR, s->name, "reload of %s refused: path=%s stage=routes: %s; %s",
                      s->name, p->manifest.file, p->error,
                      s->gen ? "previous generation keeps serving" : "its previous state stays");
            continue;
        }
        struct keel__load_error le;
        int lr = load_one(s, &p->manifest, &p->gen, &le);
        if (lr > 0) {
            p->reason = KEEL__REASON_DISABLED;
        } else if (lr < 0) {
            p->stage = le.stage;
            snprintf(p->error, sizeof p->error, "%s", le.message);
            p->reason = le.reason;
            /* A plugin that never loaded moves to its new manifest's stubs;
             * one that is serving keeps its previous generation. */
            p->failed = s->gen != NULL;
            keel__log(KEEL_LOG_ERROR, s->name, "reload of %s failed: path=%s stage=%s: %s; %s",
                      s->name, p->manifest.file, keel__stage_name(le.stage), le.message,
                      s->gen ? "previous generation keeps serving" : "fallback stubs keep serving");
        }
    }

    /* Commit: swap the new state into the slots, build, and roll back any
     * plugin whose routes conflict. */
    struct {
        struct keel__manifest manifest;
        struct keel__generation *gen;
        int reason, stage;
        bool excluded;
        char error[512];
    } *saved = calloc(npend + 1, sizeof *saved);
    for (size_t i = 0; saved != NULL && i < npend; i++) {
        struct pending *p = &pend[i];
        struct keel__slot *s = p->slot;
        saved[i].manifest = s->manifest;
        saved[i].gen = s->gen;
        saved[i].reason = s->reason;
        saved[i].stage = s->stage;
        saved[i].excluded = s->excluded;
        memcpy(saved[i].error, s->error, sizeof s->error);
        if (p->failed)
            continue;
        s->manifest = p->manifest;
        memset(&p->manifest, 0, sizeof p->manifest);
        s->gen = p->gen;
        p->gen = NULL;
        s->reason = s->gen ? KEEL__REASON_NONE : p->reason;
        s->stage = p->stage;
        s->excluded = false;
        snprintf(s->error, sizeof s->error, "%s", p->error);
    }
    int conflicts = 0;
    struct keel__table *t = saved ? build_from_slots(&conflicts) : NULL;
    for (size_t i = 0; saved != NULL && i < npend; i++) {
        struct pending *p = &pend[i];
        struct keel__slot *s = p->slot;
        if (p->failed || !s->excluded)
            continue;
        /* This plugin's new routes conflicted. */
        p->failed = true;
        p->stage = KEEL__STAGE_ROUTES;
        snprintf(p->error, sizeof p->error, "%s", s->error);
        if (saved[i].excluded) {
            /* It had no routes before either: it stays out, with the
             * conflict as its error, and what it had is dropped. */
            keel__generation_unref(saved[i].gen);
            saved[i].gen = NULL;
            keel__manifest_clear(&saved[i].manifest);
        } else {
            /* Restore what it had. */
            p->manifest = s->manifest;
            s->manifest = saved[i].manifest;
            memset(&saved[i].manifest, 0, sizeof saved[i].manifest);
            s->gen = saved[i].gen;
            saved[i].gen = NULL;
            s->reason = saved[i].reason;
            s->stage = saved[i].stage;
            s->excluded = false;
            memcpy(s->error, saved[i].error, sizeof s->error);
        }
    }
    if (t != NULL && conflicts > 0) {
        /* Rebuild with the restored slots. */
        table_destroy(t);
        t = build_from_slots(&conflicts);
    }
    if (t != NULL)
        publish(t);

    for (size_t i = 0; i < npend; i++) {
        struct pending *p = &pend[i];
        struct keel__slot *s = p->slot;
        bool ok = !p->failed && (s->gen != NULL || p->reason == KEEL__REASON_DISABLED);
        int stage = ok ? KEEL__STAGE_COMMIT : p->stage;
        if (!ok)
            all_ok = false;
        note_reload(s, ok, stage, p->error);
        json_array_append_new(results, result_json(s->name, ok, stage, p->error,
                                                   s->gen ? s->gen->number : 0));
        if (ok)
            keel__log(KEEL_LOG_INFO, s->name, "reload of %s committed: %s", s->name,
                      s->gen ? "new generation serving" : "disabled: stubs serving");
        else if (s->gen == NULL)
            log_down(s, &s->manifest);
        /* Old generations drop the slot's reference; tables still holding
         * them keep them alive until their last request completes. */
        if (saved != NULL && !p->failed) {
            keel__generation_unref(saved[i].gen);
            keel__manifest_clear(&saved[i].manifest);
        }
        keel__generation_unref(p->gen);
        keel__manifest_clear(&p->manifest);
    }
    free(saved);
    free(pend);
    keel__conf_free(conf);
    pthread_mutex_unlock(&reg.lock);
    /* A plugin that could not even get a slot is missing from results; the
     * reload as a whole must not look successful. */
    return json_pack("{s:b, s:o}", "ok", all_ok && !out_of_memory, "results", results);
}

/* ------------------------------------------------------------ reporting */

json_t *keel__json_time(int64_t t)
{
    if (t <= 0)
        return json_null();
    char buf[32];
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(buf);
}

json_t *keel__plugins_describe(void)
{
    json_t *list = json_array();
    pthread_mutex_lock(&reg.lock);
    for (size_t i = 0; i < reg.nslots; i++) {
        const struct keel__slot *s = reg.slots[i];
        const struct keel__generation *g = s->gen;
        char abi[16] = "-";
        if (g != NULL)
            snprintf(abi, sizeof abi, "%u.%u", g->desc->abi_major, g->desc->abi_minor);
        json_t *last = json_null();
        if (s->has_last_reload)
            last = json_pack("{s:b, s:s, s:s?, s:o}", "ok", s->last_ok, "stage",
                             keel__stage_name(s->last_stage), "error",
                             s->last_ok ? NULL : s->last_error, "at", keel__json_time(s->last_at));
        json_t *entry = json_pack(
            "{s:s, s:s?, s:s, s:s?, s:I, s:s?, s:s, s:o, s:I, s:I, s:I, s:o, s:b, s:I, "
            "s:s?, s:s?}",
            "name", s->name, "version", g ? g->desc->version : NULL, "state",
            g ? "loaded" : "fallback", "reason", g ? NULL : keel__reason_name(s->reason),
            "generation", (json_int_t)(g ? g->number : 0), "abi", g ? abi : NULL, "file",
            s->manifest.file ? s->manifest.file : "", "loaded_at",
            keel__json_time(g ? g->loaded_at : 0), "in_flight",
            (json_int_t)(g ? atomic_load(&g->in_flight) : 0), "requests",
            (json_int_t)atomic_load(&s->requests), "reloads", (json_int_t)s->reloads, "last_reload",
            last, "enabled", s->manifest.enabled, "routes", (json_int_t)s->manifest.nroutes,
            "stage", g ? NULL : keel__stage_name(s->stage), "error", g ? NULL : s->error);
        if (g != NULL)
            keel__gen_describe(g->res, entry);
        json_array_append_new(list, entry);
    }
    pthread_mutex_unlock(&reg.lock);
    return json_pack("{s:o}", "plugins", list);
}
