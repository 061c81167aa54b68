#include "config.h"

#include "process/containment.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "plugin/loader.h"
#include "process/fanout.h"
#include "util/log.h"
#include "util/scoreboard.h"
#include "util/text.h"
#include "util/time.h"

struct plugin_state *keel__sup_plugin_find(const char *name)
{
    for (size_t i = 0; name != NULL && i < keel__sup.nplugins; i++)
        if (strcmp(keel__sup.plugins[i].name, name) == 0)
            return &keel__sup.plugins[i];
    return NULL;
}

struct plugin_state *keel__sup_plugin(const char *name)
{
    struct plugin_state *known = keel__sup_plugin_find(name);
    if (known != NULL)
        return known;
    struct plugin_state *grown = realloc(keel__sup.plugins,
                                         (keel__sup.nplugins + 1) * sizeof *grown);
    if (grown == NULL)
        return NULL;
    keel__sup.plugins = grown;
    struct plugin_state *p = &keel__sup.plugins[keel__sup.nplugins++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    return p;
}

static void quarantine(struct plugin_state *p, int reason)
{
    if (p->quarantine != 0)
        return;
    p->quarantine = reason;
    log_error("plugin %s quarantined (%s): its routes answer their fallback stubs with "
              "X-Keel-Fallback: %s; reason=%s until `keelctl reload %s`",
              p->name, keel__reason_name(reason), p->name, keel__reason_name(reason), p->name);
    char arg[128];
    snprintf(arg, sizeof arg, "%s %s", p->name, reason == KEEL__REASON_HUNG ? "hung" : "crashed");
    /* Workers forked from now on never load it; the running ones drop it
     * (fanout_finish logs once all have). */
    keel__fanout_start(0, 0, "quarantine", arg);
}

const char *keel__sup_signal_name(int sig)
{
    switch (sig) {
    case SIGSEGV:
        return "SIGSEGV";
    case SIGBUS:
        return "SIGBUS";
    case SIGILL:
        return "SIGILL";
    case SIGFPE:
        return "SIGFPE";
    case SIGABRT:
        return "SIGABRT";
    case SIGSYS:
        return "SIGSYS";
    case SIGKILL:
        return "SIGKILL";
    case SIGTERM:
        return "SIGTERM";
    default:
        return "signal";
    }
}

void keel__sup_crash_read(struct worker *w)
{
    while (w->crash >= 0 && w->crash_len < sizeof w->crash_text - 1) {
        ssize_t r = read(w->crash, w->crash_text + w->crash_len,
                         sizeof w->crash_text - 1 - w->crash_len);
        if (r <= 0)
            break;
        w->crash_len += (size_t)r;
    }
    w->crash_text[w->crash_len] = '\0';
}

/* One line: the backtrace's frames joined by "|". */
static void flatten(char *s)
{
    keel__trim_newlines(s, 1);
    for (char *p = s; *p != '\0'; p++)
        if (*p == '\n')
            *p = '|';
}

/* What `keelctl plugins` shows as the plugin's last crash or hang. */
static void set_last_report(struct plugin_state *p, const char *report)
{
    free(p->last_report);
    p->last_report = strdup(report);
}

void keel__sup_crash_report(struct worker *w, unsigned slot, int sig)
{
    keel__sup_crash_read(w);
    flatten(w->crash_text);
    const char *backtrace = w->crash_text[0] ? w->crash_text : "(none)";
    struct keel__sb_worker *sb = keel__sb_worker(slot);
    int ct = sb ? atomic_load(&sb->crash_thread) : -1;
    struct keel__sb_call t;
    bool in_plugin = false;
    /* The worker is dead: its slot is final. */
    if (sb != NULL && ct >= 0 && ct < KEEL__SB_THREADS)
        in_plugin = keel__sb_read_thread(sb, (unsigned)ct, &t);
    keel__sup_count_restart("crash");
    if (!in_plugin) {
        log_error("crash report: core crash: worker %d died of %s outside plugin code; no plugin "
                  "is quarantined; backtrace: %s",
                  (int)w->pid, keel__sup_signal_name(sig), backtrace);
        return;
    }
    static const char *const kinds[] = {"-", "init", "handler", "fini", "task"};
    const char *stage = t.kind >= 0 && t.kind <= 4 ? kinds[t.kind] : "-";
    const char *signame = keel__sup_signal_name(sig);
    /* A long backtrace is cut to what fits the report. */
    char report[2048];
    if (snprintf(report, sizeof report,
                 "worker %d died of %s in plugin %s generation %llu %s %s request %llu; "
                 "backtrace: %s",
                 (int)w->pid, signame, t.plugin, (unsigned long long)t.generation, stage, t.route,
                 (unsigned long long)t.request_id, backtrace) < 0)
        report[0] = '\0';
    log_error("crash report: plugin=%s generation=%llu route=\"%s\" request=%llu signal=%s "
              "stage=%s worker=%d backtrace: %s",
              t.plugin, (unsigned long long)t.generation, t.route, (unsigned long long)t.request_id,
              signame, stage, (int)w->pid, backtrace);
    struct plugin_state *p = keel__sup_plugin(t.plugin);
    if (p == NULL)
        return;
    p->crashes++;
    set_last_report(p, report);
    int64_t now = keel__monotonic_ns(),
            window = (int64_t)keel__sup.conf->containment.crash_window_s * 1000000000;
    size_t keep = 0;
    for (size_t i = 0; i < p->ncrash; i++)
        if (now - p->crash_at[i] <= window)
            p->crash_at[keep++] = p->crash_at[i];
    p->ncrash = keep;
    if (p->ncrash < sizeof p->crash_at / sizeof p->crash_at[0])
        p->crash_at[p->ncrash++] = now;
    if ((int)p->ncrash >= keel__sup.conf->containment.crash_limit)
        quarantine(p, KEEL__REASON_CRASHED);
}

void keel__sup_watchdog(void)
{
    int64_t limit = (int64_t)keel__sup.conf->containment.handler_timeout_ms * 1000000;
    int64_t now = keel__monotonic_ns();
    for (unsigned i = 0; i < keel__sup.nslots; i++) {
        struct worker *w = &keel__sup.w[i];
        if (w->state != W_READY)
            continue;
        struct keel__sb_worker *sb = keel__sb_worker(i);
        int top = atomic_load(&sb->nthreads);
        int stuck = 0;
        struct keel__sb_call first;
        for (int t = 0; t < top && t < KEEL__SB_THREADS; t++) {
            struct keel__sb_call th;
            if (!keel__sb_read_thread(sb, (unsigned)t, &th) || th.kind != KEEL__CALL_HANDLER ||
                now - th.since_ns <= limit)
                continue;
            if (stuck++ == 0)
                first = th;
        }
        if (stuck == 0)
            continue;
        long long ms = (long long)((now - first.since_ns) / 1000000);
        log_error("hang report: plugin=%s generation=%llu route=\"%s\" request=%llu running for "
                  "%lld ms (limit %d ms); %d thread(s) stuck in worker %d, which is replaced",
                  first.plugin, (unsigned long long)first.generation, first.route,
                  (unsigned long long)first.request_id, ms,
                  keel__sup.conf->containment.handler_timeout_ms, stuck, (int)w->pid);
        struct plugin_state *p = keel__sup_plugin(first.plugin);
        if (p != NULL) {
            p->hangs++;
            char report[512];
            snprintf(report, sizeof report,
                     "handler %s request %llu ran for %lld ms in worker %d (generation %llu)",
                     first.route, (unsigned long long)first.request_id, ms, (int)w->pid,
                     (unsigned long long)first.generation);
            set_last_report(p, report);
            quarantine(p, KEEL__REASON_HUNG);
        }
        keel__sup_retire(w, "hang");
    }
}

void keel__sup_leak_guard(void)
{
    const struct keel__conf *c = keel__sup.conf;
    int64_t now = keel__monotonic_ns();
    bool rss_due = c->server.worker_max_rss_mb > 0 && now - keel__sup.last_rss_check_ns > 250000000;
    if (rss_due)
        keel__sup.last_rss_check_ns = now;
    long page = sysconf(_SC_PAGESIZE);
    for (unsigned i = 0; i < keel__sup.nslots; i++) {
        struct worker *w = &keel__sup.w[i];
        /* A worker gets a second before it can be recycled, so a limit
         * below what a fresh worker needs cannot spin the supervisor. */
        if (w->state != W_READY || now - w->started_ns < 1000000000)
            continue;
        struct keel__sb_worker *sb = keel__sb_worker(i);
        if (c->server.worker_max_requests > 0 &&
            atomic_load(&sb->requests) >= (unsigned long long)c->server.worker_max_requests) {
            log_info("worker %d served %llu requests (server.worker_max_requests %ld): recycled",
                     (int)w->pid, (unsigned long long)atomic_load(&sb->requests),
                     c->server.worker_max_requests);
            keel__sup_retire(w, "requests");
            continue;
        }
        if (!rss_due)
            continue;
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/statm", (int)w->pid);
        FILE *f = fopen(path, "re");
        if (f == NULL)
            continue;
        long size = 0, resident = 0;
        int got = fscanf(f, "%ld %ld", &size, &resident);
        fclose(f);
        long mb = got == 2 ? resident * page / (1024 * 1024) : 0;
        if (mb > c->server.worker_max_rss_mb) {
            log_warn("worker %d uses %ld MiB (server.worker_max_rss_mb %d): recycled", (int)w->pid,
                     mb, c->server.worker_max_rss_mb);
            keel__sup_retire(w, "rss");
        }
    }
}
