#include "config.h"

#include "util/counters.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double keel__metrics_bucket_bounds[KEEL__METRICS_NBUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct keel__route_metrics *registry;
static struct keel__route_metrics unmatched = {.method = "-", .path = "unmatched"};
static atomic_ullong reloads_ok, reloads_failed;

struct keel__route_metrics *keel__metrics_route(int listener, const char *method,
                                                const char *path_template, const char *plugin)
{
    pthread_mutex_lock(&registry_lock);
    struct keel__route_metrics *m;
    for (m = registry; m != NULL; m = m->next)
        if (m->listener == listener && strcmp(m->method, method) == 0 &&
            strcmp(m->path, path_template) == 0)
            break;
    if (m == NULL) {
        m = calloc(1, sizeof *m);
        if (m != NULL) {
            m->listener = listener;
            m->method = strdup(method);
            m->path = strdup(path_template);
            m->plugin = strdup(plugin ? plugin : "core");
            if (m->method == NULL || m->path == NULL || m->plugin == NULL) {
                free(m->method);
                free(m->path);
                free(m->plugin);
                free(m);
                m = NULL;
            } else {
                m->next = registry;
                registry = m;
            }
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return m;
}

void keel__metrics_observe(struct keel__route_metrics *m, unsigned status, int64_t latency_ns)
{
    if (m == NULL)
        m = &unmatched;
    if (status >= 100 && status < 100 + KEEL__METRICS_NSTATUS)
        atomic_fetch_add_explicit(&m->status[status - 100], 1, memory_order_relaxed);
    double s = (double)latency_ns / 1e9;
    for (size_t i = 0; i < KEEL__METRICS_NBUCKETS; i++)
        if (s <= keel__metrics_bucket_bounds[i]) {
            atomic_fetch_add_explicit(&m->buckets[i], 1, memory_order_relaxed);
            break;
        }
    atomic_fetch_add_explicit(&m->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->sum_ns, (unsigned long long)(latency_ns > 0 ? latency_ns : 0),
                              memory_order_relaxed);
}

const char *const keel__degraded_reason_names[KEEL__DEGRADED_NREASONS] = {"database", "fallback",
                                                                          "other"};

void keel__metrics_degraded(struct keel__route_metrics *m, enum keel__degraded_reason reason)
{
    if (m == NULL)
        m = &unmatched;
    if ((unsigned)reason < KEEL__DEGRADED_NREASONS)
        atomic_fetch_add_explicit(&m->degraded[reason], 1, memory_order_relaxed);
}

void keel__metrics_reload(bool ok)
{
    atomic_fetch_add_explicit(ok ? &reloads_ok : &reloads_failed, 1, memory_order_relaxed);
}

void keel__metrics_reload_counts(struct keel__reload_counts *out)
{
    out->ok = atomic_load(&reloads_ok);
    out->failed = atomic_load(&reloads_failed);
}

void keel__metrics_each(void (*fn)(void *ctx, const struct keel__route_metrics *m), void *ctx)
{
    pthread_mutex_lock(&registry_lock);
    for (const struct keel__route_metrics *m = registry; m != NULL; m = m->next)
        fn(ctx, m);
    fn(ctx, &unmatched);
    pthread_mutex_unlock(&registry_lock);
}

void keel__metrics_free(void)
{
    pthread_mutex_lock(&registry_lock);
    struct keel__route_metrics *m = registry;
    while (m != NULL) {
        struct keel__route_metrics *next = m->next;
        free(m->method);
        free(m->path);
        free(m->plugin);
        free(m);
        m = next;
    }
    registry = NULL;
    pthread_mutex_unlock(&registry_lock);
}

const double keel__mbuckets[KEEL__MBUCKETS] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                               0.5,   1.0,   2.5,  5.0,   10.0, 30.0};
const size_t keel__nmbuckets = sizeof keel__mbuckets / sizeof keel__mbuckets[0];

void keel__mtext_add(struct keel__mtext *t, const char *fmt, ...)
{
    if (t->failed)
        return;
    if (t->buf == NULL) {
        t->cap = 4096;
        t->buf = malloc(t->cap);
        if (t->buf == NULL) {
            t->failed = true;
            return;
        }
        t->buf[0] = '\0';
    }
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n;
        char *grown = realloc(t->buf, cap);
        if (grown == NULL) {
            t->failed = true;
            return;
        }
        t->buf = grown;
        t->cap = cap;
    }
}

const char *keel__mtext_label(const char *s, char *out, size_t outlen)
{
    size_t j = 0;
    for (size_t i = 0; s[i] != '\0' && j + 3 < outlen; i++) {
        if (s[i] == '"' || s[i] == '\\') {
            out[j++] = '\\';
            out[j++] = s[i];
        } else if (s[i] == '\n') {
            out[j++] = '\\';
            out[j++] = 'n';
        } else {
            out[j++] = s[i];
        }
    }
    out[j] = '\0';
    return out;
}
