#include "config.h"

#include "process/fanout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "plugin/loader.h"
#include "process/merge.h"
#include "process/supervisor_state.h"
#include "util/counters.h"
#include "util/heap.h"
#include "util/log.h"
#include "util/time.h"

static void fanout_finish(struct fanout *f);

void keel__fanout_start(pid_t origin, unsigned long long origin_id, const char *verb,
                        const char *arg)
{
    struct fanout *f = calloc(1, sizeof *f);
    if (f == NULL) {
        struct worker *o = keel__sup_by_pid(origin);
        if (o != NULL)
            keel__sup_send(o, 'R', origin_id, "null");
        return;
    }
    f->id = ++keel__sup.next_id;
    f->origin = origin;
    f->origin_id = origin_id;
    snprintf(f->verb, sizeof f->verb, "%s", verb);
    snprintf(f->arg, sizeof f->arg, "%s", arg ? arg : "");
    int timeout_ms = 10000;
    if (strcmp(verb, "reload") == 0) {
        timeout_ms = (int)(keel__sup_inits_ms(keel__sup.conf) + 20000);
        /* A reload of a plugin lifts its quarantine: the operator asked
         * for it to run again. */
        for (size_t i = 0; i < keel__sup.nplugins; i++) {
            struct plugin_state *p = &keel__sup.plugins[i];
            if (f->arg[0] == '\0' || strcmp(f->arg, p->name) == 0) {
                if (p->quarantine != 0)
                    log_info("plugin %s: quarantine lifted by a reload", p->name);
                p->quarantine = 0;
                p->ncrash = 0;
            }
        }
    }
    f->deadline_ns = keel__monotonic_ns() + (int64_t)timeout_ms * 1000000;
    char body[300];
    snprintf(body, sizeof body, "%s%s%s", verb, f->arg[0] ? " " : "", f->arg);
    /* A reload must reach a worker that is still starting too (it may have
     * read the plugin before the change): its answer comes once it serves. */
    bool starting_too = strcmp(verb, "reload") == 0 || strcmp(verb, "evict") == 0 ||
                        strcmp(verb, "quarantine") == 0;
    /* A worker serves HTTP a moment before it says ready: the one asking,
     * or all of them at start-up, are asked even while "starting". */
    bool none_ready = keel__sup_count_state(W_READY, W_READY) == 0;
    for (unsigned i = 0; i < keel__sup.nslots && f->n < MAX_PARTS; i++) {
        struct worker *w = &keel__sup.w[i];
        bool starting_ok = starting_too || none_ready || w->pid == origin;
        if (w->state != W_READY && !(starting_ok && w->state == W_STARTING))
            continue;
        f->expect[f->n++] = w->pid;
        keel__sup_send(w, 'Q', f->id, body);
    }
    f->next = keel__sup.fanouts;
    keel__sup.fanouts = f;
    if (f->n == 0)
        fanout_finish(f);
}

static void fanout_unlink(struct fanout *f)
{
    for (struct fanout **pp = &keel__sup.fanouts; *pp != NULL; pp = &(*pp)->next)
        if (*pp == f) {
            *pp = f->next;
            return;
        }
}

static json_t *overlay_plugins(json_t *d)
{
    json_t *list = json_object_get(d, "plugins");
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e)
    {
        const struct plugin_state *p = keel__sup_plugin_find(
            json_string_value(json_object_get(e, "name")));
        json_object_set_new(e, "crashes", json_integer(p ? (json_int_t)p->crashes : 0));
        json_object_set_new(e, "hangs", json_integer(p ? (json_int_t)p->hangs : 0));
        json_object_set_new(e, "last_crash",
                            p && p->last_report ? json_string(p->last_report) : json_null());
        if (p != NULL && p->quarantine != 0) {
            json_object_set_new(e, "state", json_string("quarantined"));
            json_object_set_new(e, "reason", json_string(keel__reason_name(p->quarantine)));
        }
    }
    json_object_set_new(d, "workers", json_integer(keel__sup_count_state(W_READY, W_READY)));
    return d;
}

/* The supervisor's own families, merged into the workers' /metrics. */
static char *supervisor_metrics(void)
{
    struct keel__mtext t = {0};
    keel__mtext_add(&t,
                    "# HELP keel_workers Worker processes serving.\n# TYPE keel_workers gauge\n"
                    "keel_workers %u\n",
                    keel__sup_count_state(W_READY, W_READY));
    keel__mtext_add(&t, "# HELP keel_worker_restarts_total Workers replaced, by reason.\n"
                        "# TYPE keel_worker_restarts_total counter\n");
    for (size_t i = 0; keel__sup_restart_reasons[i] != NULL; i++)
        keel__mtext_add(&t, "keel_worker_restarts_total{reason=\"%s\"} %llu\n",
                        keel__sup_restart_reasons[i], keel__sup.restarts[i]);
    static const char *const fams[][3] = {
        {"keel_plugin_crashes_total", "counter", "Worker crashes inside the plugin's code."},
        {"keel_plugin_hangs_total", "counter",
         "Handlers that ran past plugins.handler_timeout_ms."},
        {"keel_plugin_quarantined", "gauge", "1 while the plugin is quarantined."},
    };
    char nm[128];
    for (size_t f = 0; f < sizeof fams / sizeof fams[0]; f++) {
        keel__mtext_add(&t, "# HELP %s %s\n# TYPE %s %s\n", fams[f][0], fams[f][2], fams[f][0],
                        fams[f][1]);
        for (size_t i = 0; i < keel__sup.nplugins; i++) {
            const struct plugin_state *p = &keel__sup.plugins[i];
            /* In the order of fams. */
            const unsigned long long v[] = {p->crashes, p->hangs, p->quarantine != 0};
            keel__mtext_add(&t, "%s{plugin=\"%s\"} %llu\n", fams[f][0],
                            keel__mtext_label(p->name, nm, sizeof nm), v[f]);
        }
    }
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}

/* Every worker asked has answered (or left, or the time is up). */
static bool all_answered(const struct fanout *f)
{
    for (size_t i = 0; i < f->n; i++)
        if (!f->answered[i])
            return false;
    return true;
}

static void fanout_free(struct fanout *f)
{
    for (size_t i = 0; i < f->n; i++)
        free(f->part[i]);
    free(f);
}

/* The merged JSON answer of a verb whose workers answer JSON (parts, n of
 * them parsed), or NULL for another verb or when memory runs out. */
static json_t *merge_json(const struct fanout *f, json_t *const *parts, size_t n)
{
    if (strcmp(f->verb, "evict") == 0) {
        json_int_t total = 0;
        for (size_t i = 0; i < n; i++)
            total += json_integer_value(json_object_get(parts[i], "evicted"));
        return json_pack("{s:I}", "evicted", total);
    }
    if (strcmp(f->verb, "describe") == 0)
        return overlay_plugins(keel__merge_describe(parts, n));
    if (strcmp(f->verb, "reload") == 0)
        return keel__merge_reload(parts, n);
    if (strcmp(f->verb, "status") != 0)
        return NULL;
    json_t *merged = keel__merge_status(parts, n);
    json_t *pids = json_array();
    for (size_t i = 0; i < f->n; i++)
        json_array_append_new(pids, json_integer(f->expect[i]));
    json_object_set_new(merged, "workers", pids);
    json_object_set_new(merged, "supervisor_pid", json_integer(getpid()));
    return merged;
}

/* What the supervisor answers (or logs) for f: the workers' answers merged,
 * or NULL when the verb has none or memory runs out. */
static char *merged_answer(const struct fanout *f)
{
    if (strcmp(f->verb, "metrics") == 0) {
        const char *texts[MAX_PARTS + 1];
        size_t n = 0;
        for (size_t i = 0; i < f->n; i++)
            if (f->part[i] != NULL)
                texts[n++] = f->part[i];
        char *own = supervisor_metrics();
        texts[n++] = own;
        char *answer = keel__merge_metrics(texts, n);
        free(own);
        return answer;
    }
    json_t *parts[MAX_PARTS];
    size_t n = 0;
    for (size_t i = 0; i < f->n; i++)
        if (f->part[i] != NULL && (parts[n] = json_loads(f->part[i], 0, NULL)) != NULL)
            n++;
    json_t *merged = merge_json(f, parts, n);
    for (size_t i = 0; i < n; i++)
        json_decref(parts[i]);
    char *answer = merged ? json_dumps(merged, JSON_COMPACT) : NULL;
    json_decref(merged);
    return answer;
}

static void fanout_finish(struct fanout *f)
{
    fanout_unlink(f);
    char *answer = merged_answer(f);
    if (strcmp(f->verb, "reload") == 0) {
        /* Workers started from now on read the conf.d just reloaded (done
         * before the answer, so that a worker started after it does). */
        struct keel__conf *fresh = NULL;
        char err[512];
        if (keel__conf_read(keel__sup.conf->dir, &fresh, err, sizeof err) == 0) {
            keel__conf_free(keel__sup.conf);
            keel__sup.conf = fresh;
        } else {
            log_warn("reload: conf.d not re-read for workers started from now on (they keep "
                     "the previous one): %s",
                     err);
        }
        /* The new conf.d model was built while the old one still lived, so
         * the old one's pages are now free but below live blocks: glibc
         * would keep them resident for good (the supervisor allocates
         * little else).  Hand them back. */
        keel__heap_trim();
    }
    if (f->origin != 0) {
        struct worker *o = keel__sup_by_pid(f->origin);
        if (o != NULL)
            keel__sup_send(o, 'R', f->origin_id, answer ? answer : "null");
    } else if (strcmp(f->verb, "reload") == 0) {
        log_info("reload result: %s", answer ? answer : "(none)");
    } else if (strcmp(f->verb, "quarantine") == 0) {
        char name[64] = "";
        sscanf(f->arg, "%63s", name);
        log_info("plugin %s quarantined in every worker (%zu)", name, f->n);
    }
    free(answer);
    fanout_free(f);
}

void keel__fanout_collect(pid_t from, unsigned long long id, char *body)
{
    for (struct fanout *f = keel__sup.fanouts; f != NULL; f = f->next) {
        if (f->id != id)
            continue;
        for (size_t i = 0; i < f->n; i++) {
            if (f->expect[i] == from && !f->answered[i]) {
                f->answered[i] = true;
                f->part[i] = body;
                body = NULL;
            }
        }
        if (all_answered(f))
            fanout_finish(f);
        break;
    }
    free(body);
}

void keel__fanout_forget(pid_t pid)
{
    struct fanout *f = keel__sup.fanouts;
    while (f != NULL) {
        struct fanout *next = f->next;
        for (size_t i = 0; i < f->n; i++)
            if (f->expect[i] == pid)
                f->answered[i] = true;
        if (all_answered(f))
            fanout_finish(f);
        f = next;
    }
}

void keel__fanout_expire(int64_t now)
{
    for (struct fanout *f = keel__sup.fanouts; f != NULL;) {
        struct fanout *next = f->next;
        if (now >= f->deadline_ns) {
            size_t silent = 0;
            for (size_t i = 0; i < f->n; i++) {
                silent += !f->answered[i];
                f->answered[i] = true;
            }
            log_warn("%s: %zu of %zu worker(s) did not answer in time", f->verb, silent, f->n);
            fanout_finish(f);
        }
        f = next;
    }
}

void keel__fanout_free_all(void)
{
    while (keel__sup.fanouts != NULL) {
        struct fanout *f = keel__sup.fanouts;
        keel__sup.fanouts = f->next;
        fanout_free(f);
    }
}
