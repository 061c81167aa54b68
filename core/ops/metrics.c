#include "config.h"

#include "ops/metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <keel/plugin.h>

#include "conf/conf.h"
#include "data/db.h"
#include "data/breaker.h"
#include "plugin/hostapi.h"
#include "plugin/loader.h"
#include "http/offload.h"
#include "http/server.h"
#include "plugin/registry.h"
#include "util/counters.h"
#include "identity/usersync.h"
#include "plugin/plugin_metrics.h"

static const char *listener_name(int l)
{
    return l == KEEL__LISTENER_ADMIN ? "admin" : "main";
}

static void render_route_statuses(void *ctx, const struct keel__route_metrics *m)
{
    struct keel__mtext *t = ctx;
    char p[512], pl[128];
    for (unsigned s = 0; s < KEEL__METRICS_NSTATUS; s++) {
        unsigned long long n = atomic_load_explicit(&m->status[s], memory_order_relaxed);
        if (n == 0)
            continue;
        keel__mtext_add(t,
                        "keel_http_requests_total{listener=\"%s\",method=\"%s\",route=\"%s\","
                        "plugin=\"%s\",status=\"%u\"} %llu\n",
                        listener_name(m->listener), m->method,
                        keel__mtext_label(m->path, p, sizeof p),
                        keel__mtext_label(m->plugin ? m->plugin : "-", pl, sizeof pl), s + 100, n);
    }
}

static void render_route_latency(void *ctx, const struct keel__route_metrics *m)
{
    struct keel__mtext *t = ctx;
    char p[512];
    unsigned long long count = atomic_load_explicit(&m->count, memory_order_relaxed);
    if (count == 0)
        return;
    const char *ln = listener_name(m->listener);
    keel__mtext_label(m->path, p, sizeof p);
    unsigned long long cum = 0;
    for (size_t i = 0; i < KEEL__METRICS_NBUCKETS; i++) {
        cum += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
        keel__mtext_add(t,
                        "keel_http_request_duration_seconds_bucket{listener=\"%s\",method=\"%s\","
                        "route=\"%s\",le=\"%g\"} %llu\n",
                        ln, m->method, p, keel__metrics_bucket_bounds[i], cum);
    }
    /* Requests complete while this renders, and an observation bumps its
     * bucket before the count: reading the count after the buckets and never
     * below them keeps +Inf (= _count) at least the last finite bucket, as
     * scrapers require. */
    count = atomic_load_explicit(&m->count, memory_order_relaxed);
    if (count < cum)
        count = cum;
    keel__mtext_add(t,
                    "keel_http_request_duration_seconds_bucket{listener=\"%s\",method=\"%s\","
                    "route=\"%s\",le=\"+Inf\"} %llu\n",
                    ln, m->method, p, count);
    keel__mtext_add(
        t,
        "keel_http_request_duration_seconds_sum{listener=\"%s\",method=\"%s\",route=\"%s\"} "
        "%.9f\n",
        ln, m->method, p, (double)atomic_load_explicit(&m->sum_ns, memory_order_relaxed) / 1e9);
    keel__mtext_add(t,
                    "keel_http_request_duration_seconds_count{listener=\"%s\",method=\"%s\","
                    "route=\"%s\"} %llu\n",
                    ln, m->method, p, count);
}

static void render_route_degraded(void *ctx, const struct keel__route_metrics *m)
{
    struct keel__mtext *t = ctx;
    char p[512];
    for (size_t r = 0; r < KEEL__DEGRADED_NREASONS; r++) {
        unsigned long long n = atomic_load_explicit(&m->degraded[r], memory_order_relaxed);
        if (n == 0)
            continue;
        keel__mtext_add(t,
                        "keel_degraded_responses_total{listener=\"%s\",method=\"%s\",route=\"%s\","
                        "reason=\"%s\"} %llu\n",
                        listener_name(m->listener), m->method,
                        keel__mtext_label(m->path, p, sizeof p), keel__degraded_reason_names[r], n);
    }
}

static void render_routes(struct keel__mtext *t)
{
    keel__mtext_add(t, "# HELP keel_http_requests_total HTTP requests by route and status.\n"
                       "# TYPE keel_http_requests_total counter\n");
    keel__metrics_each(render_route_statuses, t);
    keel__mtext_add(t,
                    "# HELP keel_degraded_responses_total Responses that were not the real answer: "
                    "degraded for lack of the database, or a plugin's fallback stub.\n"
                    "# TYPE keel_degraded_responses_total counter\n");
    keel__metrics_each(render_route_degraded, t);
    keel__mtext_add(t, "# HELP keel_http_request_duration_seconds Request latency by route.\n"
                       "# TYPE keel_http_request_duration_seconds histogram\n");
    keel__metrics_each(render_route_latency, t);
}

static void render_plugins(struct keel__mtext *t)
{
    struct keel__plugin_stats *st;
    size_t n;
    if (keel__plugins_stats(&st, &n) != 0)
        t->failed = true;
    static const char *const fams[][3] = {
        {"keel_plugin_up", "gauge", "1 when the plugin's own code serves, 0 when stubs do."},
        {"keel_plugin_generation", "gauge", "Generation number serving the plugin."},
        {"keel_plugin_in_flight", "gauge", "Requests holding the serving generation."},
        {"keel_plugin_requests_total", "counter", "Requests routed to the plugin (or its stubs)."},
        {"keel_plugin_reloads_total", "counter", "Reloads of the plugin."},
    };
    char nm[128];
    for (size_t f = 0; f < sizeof fams / sizeof fams[0]; f++) {
        keel__mtext_add(t, "# HELP %s %s\n# TYPE %s %s\n", fams[f][0], fams[f][2], fams[f][0],
                        fams[f][1]);
        for (size_t i = 0; i < n; i++) {
            const struct keel__plugin_stats *p = &st[i];
            /* In the order of fams. */
            const long long v[] = {p->up, (long long)p->generation, p->in_flight,
                                   (long long)p->requests, (long long)p->reloads};
            keel__mtext_add(t, "%s{plugin=\"%s\"} %lld\n", fams[f][0],
                            keel__mtext_label(p->name, nm, sizeof nm), v[f]);
        }
    }
    free(st);
    struct keel__reload_counts rc;
    keel__metrics_reload_counts(&rc);
    keel__mtext_add(
        t,
        "# HELP keel_reloads_total Plugin reloads by result.\n# TYPE keel_reloads_total counter\n"
        "keel_reloads_total{result=\"ok\"} %llu\nkeel_reloads_total{result=\"failed\"} %llu\n",
        (unsigned long long)rc.ok, (unsigned long long)rc.failed);
    keel__mtext_add(
        t,
        "# HELP keel_plugin_generations_mapped Plugin generations currently loaded in memory.\n"
        "# TYPE keel_plugin_generations_mapped gauge\nkeel_plugin_generations_mapped %ld\n",
        keel__generations_live());
    keel__mtext_add(t,
                    "# HELP keel_plugin_db_results_live Database results plugins hold right now.\n"
                    "# TYPE keel_plugin_db_results_live gauge\nkeel_plugin_db_results_live %ld\n",
                    keel__host_results_live());
}

static void render_db(struct keel__mtext *t)
{
    struct keel__db_stats s = {0};
    if (keel__rt.db != NULL)
        keel__db_stats(keel__rt.db, &s);
    keel__mtext_add(
        t,
        "# HELP keel_db_pool_connections Pool connections by state.\n"
        "# TYPE keel_db_pool_connections gauge\n"
        "keel_db_pool_connections{state=\"in_use\"} %d\n"
        "keel_db_pool_connections{state=\"idle\"} %d\n"
        "# HELP keel_db_pool_size Configured pool size.\n# TYPE keel_db_pool_size gauge\n"
        "keel_db_pool_size %d\n"
        "# HELP keel_db_pool_waits_total Checkouts that had to wait for a connection.\n"
        "# TYPE keel_db_pool_waits_total counter\nkeel_db_pool_waits_total %llu\n"
        "# HELP keel_db_pool_wait_timeouts_total Checkouts that gave up waiting.\n"
        "# TYPE keel_db_pool_wait_timeouts_total counter\nkeel_db_pool_wait_timeouts_total %llu\n"
        "# HELP keel_db_connects_total Connection attempts by result.\n"
        "# TYPE keel_db_connects_total counter\n"
        "keel_db_connects_total{result=\"ok\"} %llu\n"
        "keel_db_connects_total{result=\"failed\"} %llu\n",
        s.in_use, s.idle, s.size, (unsigned long long)s.waits, (unsigned long long)s.wait_timeouts,
        (unsigned long long)s.connects, (unsigned long long)s.connect_failures);
    keel__mtext_add(t, "# HELP keel_db_breaker_state Circuit breaker state (1 = current).\n"
                       "# TYPE keel_db_breaker_state gauge\n");
    static const int states[] = {KEEL__BREAKER_CLOSED, KEEL__BREAKER_OPEN, KEEL__BREAKER_HALF_OPEN};
    for (size_t i = 0; i < 3; i++)
        keel__mtext_add(t, "keel_db_breaker_state{state=\"%s\"} %d\n",
                        keel__breaker_state_name(states[i]),
                        keel__rt.db != NULL ? s.breaker_state == states[i]
                                            : states[i] == KEEL__BREAKER_OPEN);
    keel__mtext_add(
        t,
        "# HELP keel_db_breaker_transitions_total Breaker transitions by target state.\n"
        "# TYPE keel_db_breaker_transitions_total counter\n"
        "keel_db_breaker_transitions_total{to=\"open\"} %llu\n"
        "keel_db_breaker_transitions_total{to=\"half_open\"} %llu\n"
        "keel_db_breaker_transitions_total{to=\"closed\"} %llu\n",
        (unsigned long long)s.breaker_to_open, (unsigned long long)s.breaker_to_half_open,
        (unsigned long long)s.breaker_to_closed);
}

static void render_usersync(struct keel__mtext *t)
{
    struct keel__usersync_stats s = {0};
    if (keel__rt.usersync != NULL)
        keel__usersync_stats(keel__rt.usersync, &s);
    keel__mtext_add(
        t,
        "# HELP keel_usersync_cache_lookups_total User-sync cache lookups by result.\n"
        "# TYPE keel_usersync_cache_lookups_total counter\n"
        "keel_usersync_cache_lookups_total{result=\"hit\"} %llu\n"
        "keel_usersync_cache_lookups_total{result=\"miss\"} %llu\n"
        "# HELP keel_usersync_cache_hits_total User-sync cache hits.\n"
        "# TYPE keel_usersync_cache_hits_total counter\nkeel_usersync_cache_hits_total %llu\n"
        "# HELP keel_usersync_cache_misses_total User-sync cache misses.\n"
        "# TYPE keel_usersync_cache_misses_total counter\nkeel_usersync_cache_misses_total %llu\n"
        "# HELP keel_usersync_cache_evictions_total Entries evicted for capacity.\n"
        "# TYPE keel_usersync_cache_evictions_total counter\n"
        "keel_usersync_cache_evictions_total %llu\n"
        "# HELP keel_usersync_sync_failures_total Syncs that failed and fell back to claims.\n"
        "# TYPE keel_usersync_sync_failures_total counter\n"
        "keel_usersync_sync_failures_total %llu\n"
        "# HELP keel_usersync_cache_entries Entries in the user-sync cache.\n"
        "# TYPE keel_usersync_cache_entries gauge\nkeel_usersync_cache_entries %llu\n",
        (unsigned long long)s.hits, (unsigned long long)s.misses, (unsigned long long)s.hits,
        (unsigned long long)s.misses, (unsigned long long)s.evictions,
        (unsigned long long)s.sync_failures, (unsigned long long)s.entries);
}

char *keel__metrics_render(void)
{
    struct keel__mtext t = {0};
    keel__mtext_add(
        &t,
        "# HELP keel_build_info The running keeld's version and plugin ABI.\n"
        "# TYPE keel_build_info gauge\nkeel_build_info{version=\"%s\",abi=\"%d.%d\"} 1\n"
        "# HELP keel_start_time_seconds When this keeld started, in Unix seconds.\n"
        "# TYPE keel_start_time_seconds gauge\nkeel_start_time_seconds %lld\n",
        PACKAGE_VERSION, KEEL_ABI_MAJOR, KEEL_ABI_MINOR, (long long)keel__rt.started_at);
    keel__mtext_add(&t,
                    "# HELP keel_requests_in_flight Requests being processed.\n"
                    "# TYPE keel_requests_in_flight gauge\nkeel_requests_in_flight %ld\n"
                    "# HELP keel_offloaded_requests_total Requests whose handler ran on the pool "
                    "of handlers that wait.\n"
                    "# TYPE keel_offloaded_requests_total counter\n"
                    "keel_offloaded_requests_total %llu\n"
                    "# HELP keel_offload_threads Threads of that pool.\n"
                    "# TYPE keel_offload_threads gauge\nkeel_offload_threads %u\n",
                    keel__server_in_flight(), keel__offload_total(), keel__offload_threads());
    render_routes(&t);
    render_plugins(&t);
    render_db(&t);
    render_usersync(&t);
    char *plugin_families = keel__plugin_metrics_render();
    if (plugin_families == NULL)
        t.failed = true;
    else
        keel__mtext_add(&t, "%s", plugin_families);
    free(plugin_families);
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}
