/*
 * The reload transaction (docs/operations.md): re-read conf.d, shadow-load a
 * new generation of each named plugin, then commit them all at once or keep
 * what served before.
 *
 * Prepare runs plugin code (init) but changes nothing a request can see.
 * Commit is split in two: first everything that can fail (growing the slot
 * array, building the new snapshot, which is where routes of plugins
 * reloaded together are checked against each other), with the slots
 * untouched; then pointer swaps that cannot fail, and the publish.  So a
 * failure anywhere in the commit leaves the serving table and the slots as
 * they were, and every plugin of the reload reports ok:false, stage "commit".
 */
#include "config.h"

#include "plugin/registry.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/counters.h"
#include "util/heap.h"
#include "util/log.h"
#include "util/text.h"
#include "util/thread.h"

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

/* What a reload intends for one slot.  After the commit, manifest and gen
 * hold whatever is to be released: the old state when the new one was
 * committed, the new one when it was not. */
struct pending {
    struct keel__slot *slot;
    bool is_new;                    /* slot not in the registry before this reload */
    struct keel__manifest manifest; /* new manifest (owned until committed) */
    struct keel__generation *gen;   /* new generation, or NULL */
    int reason;
    bool failed; /* keep the old state */
    int stage;
    char error[512];
};

static void pending_fail(struct pending *p, int stage, const char *error)
{
    p->failed = true;
    p->stage = stage;
    snprintf(p->error, sizeof p->error, "%s", error);
}

/* Reports a conf.d that does not load: nothing changes. */
static json_t *refuse_conf(const char *only, const char *err, bool *unknown)
{
    json_t *results = json_array();
    bool named = false;
    for (size_t i = 0; i < keel__reg.nslots; i++) {
        struct keel__slot *s = keel__reg.slots[i];
        if (only != NULL && strcmp(only, s->name) != 0)
            continue;
        named = true;
        note_reload(s, false, KEEL__STAGE_MANIFEST, err);
        json_array_append_new(results, result_json(s->name, false, KEEL__STAGE_MANIFEST, err,
                                                   s->gen ? s->gen->number : 0));
    }
    keel__log(KEEL_LOG_ERROR, "core", "reload refused: %s", err);
    if (only != NULL && !named) {
        *unknown = true;
        json_decref(results);
        return NULL;
    }
    return json_pack("{s:b, s:o}", "ok", 0, "results", results);
}

/* Shadow-loads what m says for its slot into p; nothing is visible to
 * requests yet.  Returns KEEL_ENOMEM only when p could not even get a slot. */
static int prepare(struct pending *p, const struct keel__manifest *m)
{
    struct keel__slot *s = keel__slot_find(m->name);
    if (s == NULL) {
        s = keel__slot_new(m->name);
        if (s == NULL)
            return KEEL_ENOMEM;
        s->reason = KEEL__REASON_NOT_INSTALLED;
        s->excluded = true; /* no routes until its first commit */
        p->is_new = true;
    }
    p->slot = s;
    if (keel__manifest_copy(&p->manifest, m) != 0) {
        pending_fail(p, KEEL__STAGE_MANIFEST, "out of memory");
        return 0;
    }
    if (!p->is_new)
        keel__manifest_share(&p->manifest, &s->manifest);
    if (keel__slot_routes_check(s, &p->manifest, p->error, sizeof p->error) != 0) {
        /* Whatever the plugin served before (generation or stubs) stays. */
        p->failed = true;
        p->stage = KEEL__STAGE_ROUTES;
        p->reason = KEEL__REASON_LOAD_FAILED;
        keel__log(KEEL_LOG_ERROR, s->name, "reload of %s refused: path=%s stage=routes: %s; %s",
                  s->name, p->manifest.file, p->error,
                  s->gen ? "previous generation keeps serving" : "its previous state stays");
        return 0;
    }
    struct keel__load_error le;
    int lr = keel__slot_load(s, &p->manifest, &p->gen, &le);
    if (lr > 0) {
        p->reason = KEEL__REASON_DISABLED;
    } else if (lr < 0) {
        p->stage = le.stage;
        snprintf(p->error, sizeof p->error, "%s", le.message);
        p->reason = le.reason;
        /* A plugin that never loaded moves to its new manifest's stubs; one
         * that is serving keeps its previous generation. */
        p->failed = s->gen != NULL;
        keel__log(KEEL_LOG_ERROR, s->name, "reload of %s failed: path=%s stage=%s: %s; %s", s->name,
                  p->manifest.file, keel__stage_name(le.stage), le.message,
                  s->gen ? "previous generation keeps serving" : "fallback stubs keep serving");
    }
    return 0;
}

/* The view of p's slot as the commit would leave it. */
static struct keel__slot_view pending_view(struct pending *p)
{
    struct keel__slot_view v = keel__slot_view_of(p->slot);
    if (!p->failed) {
        v.manifest = &p->manifest;
        v.gen = p->gen;
        v.reason = p->gen ? KEEL__REASON_NONE : p->reason;
        v.candidate = true;
    }
    return v;
}

/* The pending entry of slot s, or NULL. */
static struct pending *pending_of(struct pending *pend, size_t npend, const struct keel__slot *s)
{
    for (size_t i = 0; i < npend; i++)
        if (pend[i].slot == s)
            return &pend[i];
    return NULL;
}

/*
 * Builds the snapshot the reload would publish, with the slots untouched.  A
 * plugin of this reload whose routes conflict with another's is marked
 * failed (stage routes) and the build repeated without it.  NULL when
 * memory ran out (or a conflict could not be blamed on this reload).
 */
static struct keel__snapshot *build_candidate(struct pending *pend, size_t npend, size_t nnew)
{
    size_t nviews = keel__reg.nslots + nnew;
    struct keel__slot_view *views = calloc(nviews ? nviews : 1, sizeof *views);
    struct pending **owner = calloc(nviews ? nviews : 1, sizeof *owner);
    struct keel__snapshot *t = NULL;
    if (views == NULL || owner == NULL)
        goto done;
    for (;;) {
        size_t n = 0;
        for (size_t i = 0; i < keel__reg.nslots; i++) {
            struct pending *p = pending_of(pend, npend, keel__reg.slots[i]);
            owner[n] = p;
            views[n++] = p ? pending_view(p) : keel__slot_view_of(keel__reg.slots[i]);
        }
        for (size_t i = 0; i < npend; i++)
            if (pend[i].is_new) {
                owner[n] = &pend[i];
                views[n++] = pending_view(&pend[i]);
            }
        long bad;
        char err[512];
        t = keel__snapshot_build(keel__reg.core, keel__reg.ncore, views, n, keel__reg.serial + 1,
                                 &bad, err, sizeof err);
        if (t != NULL || bad < 0 || owner[bad] == NULL || owner[bad]->failed)
            break;
        /* This plugin's new routes conflict with another plugin's new ones. */
        struct pending *p = owner[bad];
        pending_fail(p, KEEL__STAGE_ROUTES, err);
        p->reason = KEEL__REASON_LOAD_FAILED;
        keel__log(KEEL_LOG_ERROR, p->slot->name, "reload of %s refused: stage=routes: %s",
                  p->slot->name, err);
    }
done:
    free(owner);
    free(views);
    return t;
}

/* Swaps the new state of p into its slot; cannot fail. */
static void apply(struct pending *p)
{
    struct keel__slot *s = p->slot;
    if (p->is_new)
        keel__reg.slots[keel__reg.nslots++] = s;
    if (p->failed) {
        if (s->excluded && p->stage == KEEL__STAGE_ROUTES) {
            /* It had no routes before either: it stays out, with the
             * conflict as its error. */
            s->stage = KEEL__STAGE_ROUTES;
            snprintf(s->error, sizeof s->error, "%s", p->error);
        }
        return;
    }
    struct keel__manifest old_manifest = s->manifest;
    struct keel__generation *old_gen = s->gen;
    s->manifest = p->manifest;
    s->gen = p->gen;
    s->pending = 0; /* this result wins over a start-up init still running */
    s->reason = s->gen ? KEEL__REASON_NONE : p->reason;
    s->stage = p->stage;
    s->excluded = false;
    snprintf(s->error, sizeof s->error, "%s", p->error);
    /* What the slot had is released after the publish; tables still holding
     * the old generation keep it alive until their last request completes. */
    p->manifest = old_manifest;
    p->gen = old_gen;
}

static int commit(struct pending *pend, size_t npend)
{
    size_t nnew = 0;
    for (size_t i = 0; i < npend; i++)
        nnew += pend[i].is_new;
    /* Room for the new slots first: a realloc that fails leaves the array
     * as it was, one that succeeds only adds capacity. */
    if (nnew > 0) {
        struct keel__slot **grown = realloc(keel__reg.slots,
                                            (keel__reg.nslots + nnew) * sizeof *grown);
        if (grown == NULL)
            return KEEL_ENOMEM;
        keel__reg.slots = grown;
    }
    struct keel__snapshot *t = build_candidate(pend, npend, nnew);
    if (t == NULL)
        return KEEL_ENOMEM;
    for (size_t i = 0; i < npend; i++)
        apply(&pend[i]);
    keel__reg.serial++;
    keel__snapshot_publish(t);
    return 0;
}

/*
 * conf.d is read on a thread that does nothing else.  The model lives only
 * for the reload, while what the reload keeps (the new manifests,
 * generations and snapshot) is built from it block by block.  Built on one
 * thread, in one glibc arena, the two interleave: once the model is freed,
 * the kept blocks are scattered over its pages, which stay resident in
 * pieces too small to give back.  The files' JSON trees are kept by the
 * loader from one reload to the next and shared by the manifests (a file is
 * parsed again only when it changed: conf/conf.c); the rest (strings, route
 * tables, the files' text, the tree of a changed file) is read on a thread
 * of its own, so into an arena of its own, which the reload's kept blocks
 * do not share.  The thread lives as long as the process: a fresh one per
 * reload would be given whichever arena glibc has free, or share a busy one
 * once there are as many arenas as glibc allows (8 per CPU, soon reached
 * with a worker's listener threads).  Reloads are serialised by the
 * registry lock, so there is one read at a time.
 */
struct conf_read {
    struct keel__conf *conf;
    int rc;
    char err[512];
    bool done;
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct conf_read *req;
    bool started, running;
} reader = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static void conf_read_run(struct conf_read *r)
{
    r->conf = NULL;
    r->rc = keel__conf_read(keel__reg.confdir, &r->conf, r->err, sizeof r->err);
}

static void *reader_main(void *arg)
{
    (void)arg;
    /* Part of the reload: as low a priority as the reload. */
    keel__thread_background("keel-confread");
    pthread_mutex_lock(&reader.lock);
    for (;;) {
        while (reader.req == NULL || reader.req->done)
            pthread_cond_wait(&reader.cond, &reader.lock);
        struct conf_read *r = reader.req;
        pthread_mutex_unlock(&reader.lock);
        conf_read_run(r);
        pthread_mutex_lock(&reader.lock);
        r->done = true;
        pthread_cond_broadcast(&reader.cond);
    }
    return NULL;
}

/* Loads conf.d on the reader thread (here, when that thread cannot start). */
static int conf_read(struct keel__conf **out, char *err, size_t errlen)
{
    struct conf_read r = {.done = false};
    pthread_mutex_lock(&reader.lock);
    if (!reader.started) {
        reader.started = true;
        reader.running = keel__thread_detached(reader_main, NULL);
    }
    if (reader.running) {
        reader.req = &r;
        pthread_cond_broadcast(&reader.cond);
        while (!r.done)
            pthread_cond_wait(&reader.cond, &reader.lock);
        reader.req = NULL;
        pthread_mutex_unlock(&reader.lock);
    } else {
        pthread_mutex_unlock(&reader.lock);
        conf_read_run(&r);
    }
    *out = r.conf;
    if (r.rc != 0)
        keel__copy_text(err, errlen, r.err);
    return r.rc;
}

json_t *keel__plugins_reload(const char *only, bool *unknown)
{
    *unknown = false;
    pthread_mutex_lock(&keel__reg.lock);
    /* A reload of a plugin lifts its quarantine. */
    keel__plugins_lift_held(only);

    struct keel__conf *conf = NULL;
    char err[512];
    int rc = conf_read(&conf, err, sizeof err);
    if (rc != 0) {
        json_t *r = refuse_conf(only, err, unknown);
        keel__conf_free(conf);
        pthread_mutex_unlock(&keel__reg.lock);
        return r;
    }

    if (only != NULL) {
        bool found = keel__slot_find(only) != NULL;
        for (size_t i = 0; i < conf->nplugins && !found; i++)
            found = strcmp(conf->plugins[i].name, only) == 0;
        if (!found) {
            keel__conf_free(conf);
            pthread_mutex_unlock(&keel__reg.lock);
            *unknown = true;
            return NULL;
        }
    }

    json_t *results = json_array();
    struct pending *pend = calloc(conf->nplugins + 1, sizeof *pend);
    if (pend == NULL || results == NULL) {
        /* Nothing was loaded yet: report the reload as failed, change nothing. */
        free(pend);
        json_decref(results);
        keel__conf_free(conf);
        pthread_mutex_unlock(&keel__reg.lock);
        keel__log(KEEL_LOG_ERROR, "core", "reload refused: out of memory");
        return json_pack("{s:b, s:[]}", "ok", 0, "results");
    }
    size_t npend = 0;
    bool out_of_memory = false;
    for (size_t i = 0; i < conf->nplugins; i++) {
        const struct keel__manifest *m = &conf->plugins[i];
        if (only != NULL && strcmp(only, m->name) != 0)
            continue;
        keel__let_serve();
        if (prepare(&pend[npend], m) != 0) {
            out_of_memory = true;
            break;
        }
        npend++;
    }
    keel__let_serve();

    /* A reload in which every plugin failed before the commit changes
     * nothing, not even the table's serial. */
    bool anything = false;
    for (size_t i = 0; i < npend; i++)
        anything = anything || !pend[i].failed || pend[i].is_new;
    bool committed = !out_of_memory && (!anything || commit(pend, npend) == 0);
    if (!committed) {
        keel__log(KEEL_LOG_ERROR, "core",
                  "reload not committed: out of memory; every plugin keeps what it served");
        for (size_t i = 0; i < npend; i++)
            if (!pend[i].failed)
                pending_fail(&pend[i], KEEL__STAGE_COMMIT, "out of memory while committing");
    }

    bool all_ok = committed;
    for (size_t i = 0; i < npend; i++) {
        struct pending *p = &pend[i];
        struct keel__slot *s = p->slot;
        bool ok = !p->failed && (s->gen != NULL || p->reason == KEEL__REASON_DISABLED);
        int stage = ok ? KEEL__STAGE_COMMIT : p->stage;
        if (!ok)
            all_ok = false;
        json_array_append_new(results, result_json(s->name, ok, stage, p->error,
                                                   s->gen ? s->gen->number : 0));
        if (p->is_new && !committed) {
            /* Never registered: it goes, with whatever it loaded. */
            keel__metrics_reload(false);
            keel__slot_free(s);
            p->slot = NULL;
        } else {
            note_reload(s, ok, stage, p->error);
            if (ok)
                keel__log(KEEL_LOG_INFO, s->name, "reload of %s committed: %s", s->name,
                          s->gen ? "new generation serving" : "disabled: stubs serving");
            else if (s->gen == NULL)
                keel__slot_log_down(s, &s->manifest);
        }
        keel__generation_unref(p->gen);
        keel__manifest_clear(&p->manifest);
    }
    free(pend);
    keel__conf_free(conf);
    keel__let_serve();
    keel__plugins_remember();
    pthread_mutex_unlock(&keel__reg.lock);
    keel__let_serve();
    json_t *answer = json_pack("{s:b, s:o}", "ok", all_ok, "results", results);
    /* Much of what a reload allocates is transient (the conf.d model's text
     * and tables, the previous manifests, generations and snapshot, what
     * the dynamic loader and the answer needed), and a reload is the only
     * thing in a worker that ever needs that much again: give the pages
     * back rather than carry a reload's worth of freed heap for good. */
    keel__heap_trim();
    return answer;
}
