#include "config.h"

#include "plugin/registry.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/log.h"
#include "util/thread.h"
#include "util/time.h"
#include "plugin/tasks.h"

/* Plugins a new worker must not load (quarantined by the supervisor), set
 * before keel__plugins_start; a reload of one lifts it. */
static struct {
    char name[64];
    int reason;
} held[64];
static size_t nheld;

/* The last plugin list described and the last figures read, answered while
 * a reload holds the registry lock: the admin listener never waits for a
 * plugin's init. */
static pthread_mutex_t described_lock = PTHREAD_MUTEX_INITIALIZER;
static json_t *described;
static struct keel__plugin_stats *stats_seen;
static size_t nstats_seen;

struct keel__registry keel__reg = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* ------------------------------------------------------------ slots */

struct keel__slot *keel__slot_find(const char *name)
{
    for (size_t i = 0; i < keel__reg.nslots; i++)
        if (strcmp(keel__reg.slots[i]->name, name) == 0)
            return keel__reg.slots[i];
    return NULL;
}

struct keel__slot *keel__slot_new(const char *name)
{
    struct keel__slot *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->name = strdup(name);
    if (s->name == NULL) {
        free(s);
        return NULL;
    }
    s->next_number = 1;
    return s;
}

void keel__slot_free(struct keel__slot *s)
{
    if (s == NULL)
        return;
    keel__generation_unref(s->gen);
    keel__manifest_clear(&s->manifest);
    free(s->name);
    free(s);
}

/* Copies a manifest by re-parsing nothing: the slot keeps its own copy so
 * the conf model it came from can be freed (its JSON, never modified, is
 * shared). */
int keel__manifest_copy(struct keel__manifest *dst, const struct keel__manifest *src)
{
    memset(dst, 0, sizeof *dst);
    dst->name = strdup(src->name);
    dst->source = src->source ? strdup(src->source) : NULL;
    dst->file = strdup(src->file);
    dst->file_spec = src->file_spec ? strdup(src->file_spec) : NULL;
    dst->migrations = src->migrations ? strdup(src->migrations) : NULL;
    dst->enabled = src->enabled;
    /* The JSON is never modified once parsed (manifest.c): shared. */
    dst->config = json_incref(src->config);
    dst->schemas = src->schemas ? json_incref(src->schemas) : NULL;
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
        b->stream_body = a->stream_body;
        b->fallback_status = a->fallback_status;
        b->fallback = a->fallback ? json_incref(a->fallback) : NULL;
        b->fallback_headers = a->fallback_headers ? json_incref(a->fallback_headers) : NULL;
        b->doc = a->doc ? json_incref(a->doc) : NULL;
        if (b->method == NULL || b->path == NULL) {
            keel__manifest_clear(dst);
            return KEEL_ENOMEM;
        }
    }
    return 0;
}

/* Replaces the JSON in dst with prev's references where the two are equal
 * and never modified after parsing, so that equal documentation is kept
 * once however often it is reloaded.  Sharing across threads is safe:
 * jansson's reference counts are atomic. */
static void share_equal(json_t **dst, json_t *prev)
{
    if (*dst != NULL && prev != NULL && *dst != prev && json_equal(*dst, prev)) {
        json_decref(*dst);
        *dst = json_incref(prev);
    }
}

void keel__manifest_share(struct keel__manifest *dst, const struct keel__manifest *prev)
{
    share_equal(&dst->schemas, prev->schemas);
    for (size_t i = 0; i < dst->nroutes; i++) {
        struct keel__manifest_route *r = &dst->routes[i];
        for (size_t j = 0; j < prev->nroutes; j++) {
            const struct keel__manifest_route *o = &prev->routes[j];
            if (o->method != NULL && o->path != NULL && strcmp(r->method, o->method) == 0 &&
                strcmp(r->path, o->path) == 0) {
                share_equal(&r->doc, o->doc);
                break;
            }
        }
    }
}

void keel__slot_log_down(const struct keel__slot *s, const struct keel__manifest *m)
{
    keel__log(KEEL_LOG_ERROR, s->name,
              "plugin %s is down: path=%s stage=%s reason=%s: %s; its %zu route(s) are served by "
              "fallback stubs",
              s->name, m->file, keel__stage_name(s->stage), keel__reason_name(s->reason), s->error,
              m->nroutes);
}

/* keel__slot_load, but an init still running after wait_ms is left to run
 * (KEEL_EBUSY and *pending, see keel__generation_load_start). */
static int slot_load_start(struct keel__slot *s, const struct keel__manifest *m, int wait_ms,
                           struct keel__generation **gen, struct keel__pending_init **pending,
                           struct keel__load_error *err)
{
    *gen = NULL;
    for (size_t i = 0; i < nheld; i++) {
        if (strcmp(held[i].name, m->name) == 0) {
            memset(err, 0, sizeof *err);
            err->stage = KEEL__STAGE_COMMIT;
            err->reason = held[i].reason;
            snprintf(err->message, sizeof err->message,
                     "quarantined (%s): not loaded until `keelctl reload %s`",
                     keel__reason_name(held[i].reason), m->name);
            return 1;
        }
    }
    if (!m->enabled) {
        memset(err, 0, sizeof *err);
        err->stage = KEEL__STAGE_MANIFEST;
        err->reason = KEEL__REASON_DISABLED;
        snprintf(err->message, sizeof err->message, "disabled in %s",
                 m->source ? m->source : "conf.d");
        return 1;
    }
    uint64_t number = s->next_number++;
    int rc = keel__generation_load_start(m, number, keel__reg.host, wait_ms, gen, pending, err);
    return rc == 0 ? 0 : rc == KEEL_EBUSY ? KEEL_EBUSY : -1;
}

int keel__slot_load(struct keel__slot *s, const struct keel__manifest *m,
                    struct keel__generation **gen, struct keel__load_error *err)
{
    return slot_load_start(s, m, -1, gen, NULL, err);
}

struct keel__slot_view keel__slot_view_of(struct keel__slot *s)
{
    return (struct keel__slot_view){
        .name = s->name,
        .manifest = s->excluded ? NULL : &s->manifest,
        .gen = s->gen,
        .reason = s->reason,
        .requests = &s->requests,
        .owner = s,
    };
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
int keel__slot_routes_check(const struct keel__slot *s, const struct keel__manifest *m, char *err,
                            size_t errlen)
{
    struct keel__slot_view *views = calloc(keel__reg.nslots + 1, sizeof *views);
    if (views == NULL)
        return 0;
    size_t n = 0;
    for (size_t i = 0; i < keel__reg.nslots; i++) {
        struct keel__slot *o = keel__reg.slots[i];
        if (o == s || o->excluded)
            continue;
        views[n++] = keel__slot_view_of(o);
    }
    views[n++] = (struct keel__slot_view){
        .name = s->name, .manifest = m, .reason = KEEL__REASON_NONE, .candidate = true};
    long bad;
    int rc = keel__snapshot_conflicts(keel__reg.core, keel__reg.ncore, views, n, &bad, err, errlen);
    free(views);
    return rc == KEEL_EROUTES && bad == (long)n - 1 ? KEEL_EROUTES : 0;
}

static void print_summary(void)
{
    keel__log(KEEL_LOG_INFO, "core", "%-12s %-9s %-8s %-14s %-4s %s", "PLUGIN", "VERSION", "STATE",
              "REASON", "GEN", "FILE");
    for (size_t i = 0; i < keel__reg.nslots; i++) {
        const struct keel__slot *s = keel__reg.slots[i];
        keel__log(KEEL_LOG_INFO, "core", "%-12s %-9s %-8s %-14s %-4llu %s", s->name,
                  s->gen ? s->gen->desc->version : "-", s->gen ? "loaded" : "fallback",
                  s->gen ? "-" : keel__reason_name(s->reason),
                  (unsigned long long)(s->gen ? s->gen->number : 0), s->manifest.file);
    }
}

/* Refuses s for its routes: no routes of it in the table, stubs not even. */
static void exclude(struct keel__slot *s, const char *why)
{
    s->excluded = true;
    s->stage = KEEL__STAGE_ROUTES;
    s->reason = KEEL__REASON_LOAD_FAILED;
    snprintf(s->error, sizeof s->error, "%s", why);
    keel__log(KEEL_LOG_ERROR, s->name, "plugin %s refused: %s (file %s)", s->name, why,
              s->manifest.file);
    keel__generation_unref(s->gen);
    s->gen = NULL;
}

/*
 * Builds a snapshot from the slots.  Routes were checked before loading, so a
 * conflict here means that check could not run (memory); the slot is then
 * excluded and the build repeated.
 */
static struct keel__snapshot *build_from_slots(int *conflicts)
{
    for (;;) {
        struct keel__slot_view *views = calloc(keel__reg.nslots ? keel__reg.nslots : 1,
                                               sizeof *views);
        if (views == NULL)
            return NULL;
        for (size_t i = 0; i < keel__reg.nslots; i++)
            views[i] = keel__slot_view_of(keel__reg.slots[i]);
        long bad;
        char err[512];
        struct keel__snapshot *t = keel__snapshot_build(keel__reg.core, keel__reg.ncore, views,
                                                        keel__reg.nslots, keel__reg.serial + 1,
                                                        &bad, err, sizeof err);
        free(views);
        if (t != NULL) {
            keel__reg.serial++;
            return t;
        }
        if (bad < 0) {
            log_error("cannot build the route table: %s", err[0] ? err : "out of memory");
            return NULL;
        }
        (*conflicts)++;
        exclude(keel__reg.slots[bad], err);
    }
}

/*
 * Start-up does not wait for a slow init: the listeners open once every
 * plugin has loaded, failed, or spent its share of this budget in init;
 * one whose init still runs then serves 503 stubs (reason starting) until
 * its init returns or its deadline refuses it (finish_start).
 */
#define START_WAIT_MS 250

struct start_pending {
    char name[64];
    uint64_t token;
    struct keel__pending_init *init;
    struct start_pending *next;
};
static struct start_pending *start_pending;
/* Start-up inits still running (pending or being waited for). */
static atomic_int start_unsettled;
static uint64_t start_tokens;
static int64_t start_budget_end_ns;
static int start_wait_ms = START_WAIT_MS;
static bool registry_stopped;

static void record_failure(struct keel__slot *s, const struct keel__load_error *le, bool conflicted)
{
    s->reason = le->reason;
    s->stage = le->stage;
    snprintf(s->error, sizeof s->error, "%s", le->message);
    if (conflicted && le->stage == KEEL__STAGE_ROUTES)
        exclude(s, le->message);
    else
        keel__slot_log_down(s, &s->manifest);
}

/* Loads s at start-up.  A plugin in a route conflict (conflicted) whose
 * manifest turns out to be wrong about its own routes is taken out of the
 * conflict altogether: no routes, not even stubs. */
static void load_slot(struct keel__slot *s, bool conflicted)
{
    struct keel__load_error le;
    int64_t left_ms = (start_budget_end_ns - keel__monotonic_ns()) / 1000000;
    struct keel__pending_init *init = NULL;
    /* A plugin in a conflict must know its verdict before the table is
     * built: it is waited for in full. */
    int wait = conflicted || start_wait_ms < 0 ? -1 : (int)(left_ms > 0 ? left_ms : 0);
    int rc = slot_load_start(s, &s->manifest, wait, &s->gen, &init, &le);
    if (rc == KEEL_EBUSY) {
        struct start_pending *p = calloc(1, sizeof *p);
        if (p != NULL) {
            snprintf(p->name, sizeof p->name, "%s", s->name);
            p->token = ++start_tokens;
            p->init = init;
            p->next = start_pending;
            start_pending = p;
            atomic_fetch_add(&start_unsettled, 1);
            s->pending = p->token;
            s->reason = KEEL__REASON_STARTING;
            s->stage = KEEL__STAGE_INIT;
            snprintf(s->error, sizeof s->error,
                     "init still running; its routes answer 503 until it returns");
            keel__log(KEEL_LOG_WARN, s->name,
                      "plugin %s: init still running after %d ms; serving the others, its routes "
                      "answer 503 (reason starting) until it returns or its deadline passes",
                      s->name, start_wait_ms);
            return;
        }
        rc = keel__generation_load_finish(init, &s->gen, &le);
    }
    if (rc != 0) {
        record_failure(s, &le, conflicted);
    } else {
        keel__log(KEEL_LOG_INFO, s->name, "loaded %s %s generation %llu from %s", s->name,
                  s->gen->desc->version, (unsigned long long)s->gen->number, s->manifest.file);
    }
}

/* Waits for one start-up init left running, then publishes its verdict
 * (unless a reload or a quarantine has decided for the plugin since). */
static void *finish_start(void *arg)
{
    struct start_pending *p = arg;
    struct keel__generation *g = NULL;
    struct keel__load_error le;
    int rc = keel__generation_load_finish(p->init, &g, &le);
    pthread_mutex_lock(&keel__reg.lock);
    struct keel__slot *s = registry_stopped ? NULL : keel__slot_find(p->name);
    if (s == NULL || s->pending != p->token) {
        pthread_mutex_unlock(&keel__reg.lock);
        if (!registry_stopped)
            keel__generation_unref(g);
        free(p);
        atomic_fetch_sub(&start_unsettled, 1);
        return NULL;
    }
    s->pending = 0;
    if (rc == 0) {
        s->gen = g;
        s->reason = KEEL__REASON_NONE;
        keel__log(KEEL_LOG_INFO, s->name,
                  "loaded %s %s generation %llu from %s (init finished "
                  "after the listeners opened)",
                  s->name, g->desc->version, (unsigned long long)g->number, s->manifest.file);
    } else {
        record_failure(s, &le, false);
    }
    int conflicts = 0;
    struct keel__snapshot *t = build_from_slots(&conflicts);
    if (t != NULL)
        keel__snapshot_publish(t);
    keel__plugins_remember();
    pthread_mutex_unlock(&keel__reg.lock);
    free(p);
    atomic_fetch_sub(&start_unsettled, 1);
    return NULL;
}

bool keel__plugins_start_settled(void)
{
    return atomic_load(&start_unsettled) == 0;
}

void keel__plugins_wait_for_init(bool all)
{
    start_wait_ms = all ? -1 : START_WAIT_MS;
}

void keel__plugins_finish_start(void)
{
    pthread_mutex_lock(&keel__reg.lock);
    struct start_pending *list = start_pending;
    start_pending = NULL;
    pthread_mutex_unlock(&keel__reg.lock);
    while (list != NULL) {
        struct start_pending *p = list;
        list = p->next;
        if (!keel__thread_detached(finish_start, p))
            finish_start(p);
    }
}

int keel__plugins_start(const struct keel__conf *conf, const keel_host *host,
                        const struct keel__core_route *core, size_t ncore)
{
    pthread_mutex_lock(&keel__reg.lock);
    keel__reg.host = host;
    keel__reg.core = core;
    keel__reg.ncore = ncore;
    free(keel__reg.confdir);
    keel__reg.confdir = strdup(conf->dir);
    keel__reg.slots = calloc(conf->nplugins ? conf->nplugins : 1, sizeof *keel__reg.slots);
    if (keel__reg.confdir == NULL || keel__reg.slots == NULL) {
        pthread_mutex_unlock(&keel__reg.lock);
        return KEEL_ENOMEM;
    }
    int conflicts = 0;
    registry_stopped = false;
    start_budget_end_ns = keel__monotonic_ns() + (int64_t)start_wait_ms * 1000000;
    for (size_t i = 0; i < conf->nplugins; i++) {
        const struct keel__manifest *m = &conf->plugins[i];
        struct keel__slot *s = keel__slot_new(m->name);
        if (s == NULL || keel__manifest_copy(&s->manifest, m) != 0) {
            keel__slot_free(s);
            pthread_mutex_unlock(&keel__reg.lock);
            return KEEL_ENOMEM;
        }
        keel__reg.slots[keel__reg.nslots++] = s;
    }
    /*
     * Routes first: a plugin whose manifest conflicts with no other is loaded
     * at once.  When manifests conflict, the one to refuse is the one that
     * is wrong about its own plugin: each of them is loaded (the loader
     * compares a manifest with the plugin's route table before init, so a
     * wrong one never runs init) and only those that pass take part in the
     * conflict; a plugin whose routes still conflict is refused then.
     */
    bool *deferred = calloc(keel__reg.nslots ? keel__reg.nslots : 1, sizeof *deferred);
    if (deferred == NULL) {
        pthread_mutex_unlock(&keel__reg.lock);
        return KEEL_ENOMEM;
    }
    char why[512];
    for (size_t i = 0; i < keel__reg.nslots; i++)
        deferred[i] = keel__slot_routes_check(keel__reg.slots[i], &keel__reg.slots[i]->manifest,
                                              why, sizeof why) != 0;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < keel__reg.nslots; i++)
            if (deferred[i] == (pass == 1))
                load_slot(keel__reg.slots[i], deferred[i]);
    /* Last first, so that of two plugins that both pass, the one listed
     * first in conf.d keeps the route. */
    for (size_t i = keel__reg.nslots; i-- > 0;) {
        struct keel__slot *s = keel__reg.slots[i];
        if (deferred[i] && !s->excluded &&
            keel__slot_routes_check(s, &s->manifest, why, sizeof why) != 0) {
            conflicts++;
            exclude(s, why);
        }
    }
    free(deferred);
    struct keel__snapshot *t = build_from_slots(&conflicts);
    if (t == NULL) {
        pthread_mutex_unlock(&keel__reg.lock);
        return KEEL_ENOMEM;
    }
    keel__snapshot_publish(t);
    print_summary();
    keel__plugins_remember();
    pthread_mutex_unlock(&keel__reg.lock);
    return conflicts ? KEEL_EROUTES : 0;
}

void keel__plugins_stop(void)
{
    pthread_mutex_lock(&keel__reg.lock);
    /* An init still running belongs to a process on its way out. */
    registry_stopped = true;
    keel__snapshot_publish(NULL);
    for (size_t i = 0; i < keel__reg.nslots; i++)
        keel__slot_free(keel__reg.slots[i]);
    free(keel__reg.slots);
    keel__reg.slots = NULL;
    keel__reg.nslots = 0;
    free(keel__reg.confdir);
    keel__reg.confdir = NULL;
    pthread_mutex_lock(&described_lock);
    json_decref(described);
    described = NULL;
    free(stats_seen);
    stats_seen = NULL;
    nstats_seen = 0;
    pthread_mutex_unlock(&described_lock);
    pthread_mutex_unlock(&keel__reg.lock);
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

void keel__plugins_lift_held(const char *only)
{
    for (size_t i = 0; i < nheld;)
        if (only == NULL || strcmp(held[i].name, only) == 0)
            held[i] = held[--nheld];
        else
            i++;
}

int keel__plugins_quarantine(const char *name, int reason)
{
    pthread_mutex_lock(&keel__reg.lock);
    if (keel__reg.confdir == NULL) {
        /* Not started: remembered for keel__plugins_start. */
        int rc = KEEL_ENOMEM;
        if (nheld < sizeof held / sizeof held[0]) {
            snprintf(held[nheld].name, sizeof held[nheld].name, "%s", name);
            held[nheld++].reason = reason;
            rc = 0;
        }
        pthread_mutex_unlock(&keel__reg.lock);
        return rc;
    }
    struct keel__slot *s = keel__slot_find(name);
    if (s == NULL) {
        pthread_mutex_unlock(&keel__reg.lock);
        return KEEL_ENOTFOUND;
    }
    struct keel__generation *old = s->gen;
    s->gen = NULL;
    s->pending = 0;
    s->reason = reason;
    s->stage = KEEL__STAGE_COMMIT;
    snprintf(s->error, sizeof s->error, "quarantined (%s): not loaded until `keelctl reload %s`",
             keel__reason_name(reason), name);
    int conflicts = 0;
    struct keel__snapshot *t = build_from_slots(&conflicts);
    if (t != NULL)
        keel__snapshot_publish(t);
    /* Requests already running on the old generation keep it alive. */
    keel__generation_unref(old);
    keel__log(KEEL_LOG_WARN, name, "plugin %s quarantined (%s): its routes are served by stubs",
              name, keel__reason_name(reason));
    keel__plugins_remember();
    pthread_mutex_unlock(&keel__reg.lock);
    return t != NULL ? 0 : KEEL_ENOMEM;
}

/* Keeps the figures of every slot for reads made during a reload; the
 * registry lock is held.  Out of memory, the previous figures stay. */
static void stats_remember_locked(void)
{
    struct keel__plugin_stats *st = calloc(keel__reg.nslots ? keel__reg.nslots : 1, sizeof *st);
    if (st == NULL)
        return;
    for (size_t i = 0; i < keel__reg.nslots; i++) {
        const struct keel__slot *s = keel__reg.slots[i];
        const struct keel__generation *g = s->gen;
        snprintf(st[i].name, sizeof st[i].name, "%s", s->name);
        st[i].up = g != NULL;
        st[i].generation = g ? g->number : 0;
        st[i].in_flight = g ? atomic_load(&g->in_flight) : 0;
        st[i].requests = atomic_load(&s->requests);
        st[i].reloads = s->reloads;
    }
    pthread_mutex_lock(&described_lock);
    free(stats_seen);
    stats_seen = st;
    nstats_seen = keel__reg.nslots;
    pthread_mutex_unlock(&described_lock);
}

/* Copies the remembered figures into *out; false when there are none. */
static bool stats_recall(struct keel__plugin_stats **out, size_t *n, int *rc)
{
    pthread_mutex_lock(&described_lock);
    bool have = stats_seen != NULL;
    if (have) {
        *out = malloc((nstats_seen ? nstats_seen : 1) * sizeof **out);
        if (*out == NULL) {
            *rc = KEEL_ENOMEM;
        } else {
            memcpy(*out, stats_seen, nstats_seen * sizeof **out);
            *n = nstats_seen;
        }
    }
    pthread_mutex_unlock(&described_lock);
    return have;
}

int keel__plugins_stats(struct keel__plugin_stats **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    int rc = 0;
    if (pthread_mutex_trylock(&keel__reg.lock) != 0) {
        if (stats_recall(out, n, &rc))
            return rc;
        pthread_mutex_lock(&keel__reg.lock);
    }
    stats_remember_locked();
    pthread_mutex_unlock(&keel__reg.lock);
    if (!stats_recall(out, n, &rc))
        rc = KEEL_ENOMEM;
    return rc;
}

/* The plugin list as it is now; the registry lock is held. */
static json_t *describe_locked(void)
{
    json_t *list = json_array();
    for (size_t i = 0; i < keel__reg.nslots; i++) {
        const struct keel__slot *s = keel__reg.slots[i];
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
            "s:s?, s:s?, s:s?}",
            "name", s->name, "version", g ? g->desc->version : NULL, "state",
            g                                    ? "loaded"
            : s->reason == KEEL__REASON_CRASHED  ? "quarantined"
            : s->reason == KEEL__REASON_HUNG     ? "quarantined"
            : s->reason == KEEL__REASON_STARTING ? "starting"
                                                 : "fallback",
            "reason", g ? NULL : keel__reason_name(s->reason), "generation",
            (json_int_t)(g ? g->number : 0), "abi", g ? abi : NULL, "file",
            s->manifest.file ? s->manifest.file : "", "loaded_at",
            keel__json_time(g ? g->loaded_at : 0), "in_flight",
            (json_int_t)(g ? atomic_load(&g->in_flight) : 0), "requests",
            (json_int_t)atomic_load(&s->requests), "reloads", (json_int_t)s->reloads, "last_reload",
            last, "enabled", s->manifest.enabled, "routes", (json_int_t)s->manifest.nroutes,
            "stage", g ? NULL : keel__stage_name(s->stage), "error", g ? NULL : s->error, "source",
            s->manifest.source);
        if (g != NULL)
            keel__gen_describe(g->res, entry);
        json_array_append_new(list, entry);
    }
    return json_pack("{s:o}", "plugins", list);
}

/* Keeps d (or, when it is NULL or incomplete for lack of memory, the list
 * before it) and the figures of every slot for reads made during a reload. */
static void remember_locked(const json_t *d)
{
    json_t *copy = NULL;
    if (d != NULL && json_array_size(json_object_get(d, "plugins")) == keel__reg.nslots)
        copy = json_deep_copy(d);
    if (copy != NULL) {
        pthread_mutex_lock(&described_lock);
        json_decref(described);
        described = copy;
        pthread_mutex_unlock(&described_lock);
    }
    stats_remember_locked();
}

void keel__plugins_remember(void)
{
    json_t *d = describe_locked();
    remember_locked(d);
    json_decref(d);
}

json_t *keel__plugins_describe(void)
{
    if (pthread_mutex_trylock(&keel__reg.lock) != 0) {
        /* A reload (or start-up) is running: answer what was last
         * described rather than wait for a plugin's init. */
        pthread_mutex_lock(&described_lock);
        json_t *copy = described ? json_deep_copy(described) : NULL;
        pthread_mutex_unlock(&described_lock);
        if (copy != NULL) {
            json_object_set_new(copy, "reload_in_progress", json_true());
            return copy;
        }
        pthread_mutex_lock(&keel__reg.lock);
    }
    json_t *d = describe_locked();
    remember_locked(d);
    pthread_mutex_unlock(&keel__reg.lock);
    return d;
}
