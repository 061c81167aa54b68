#include "config.h"

#include "plugin/plugin_metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/upstream.h"
#include "plugin/tasks.h"
#include "util/log.h"

#define METRIC_NAME_MAX 63
#define METRIC_HELP_MAX 200
#define METRICS_MAX 1024

#define NB KEEL__MBUCKETS

struct keel_metric {
    struct keel_metric *next;
    int kind;
    char name[METRIC_NAME_MAX + 1];
    char plugin[64];
    char help[METRIC_HELP_MAX + 1];
    /* Counters and gauges: the value.  Histograms: the sum.  The bits of a
     * double, updated with a compare-and-swap loop (an _Atomic double would
     * need libatomic for its compound assignment). */
    atomic_ullong value;
    atomic_ullong count;
    atomic_ullong buckets[NB];
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct keel_metric *registry;
static int nregistered;

static bool valid_metric_name(const char *n)
{
    size_t len = n ? strlen(n) : 0;
    if (len == 0 || len > METRIC_NAME_MAX || (n[0] >= '0' && n[0] <= '9'))
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((n[i] >= 'a' && n[i] <= 'z') || (n[i] >= '0' && n[i] <= '9') || n[i] == '_'))
            return false;
    return true;
}

static double bits_double(unsigned long long b)
{
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

static unsigned long long double_bits(double d)
{
    unsigned long long b;
    memcpy(&b, &d, sizeof b);
    return b;
}

static void add_double(atomic_ullong *a, double v)
{
    unsigned long long old = atomic_load_explicit(a, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(a, &old, double_bits(bits_double(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

/* A plugin's metric names start with its own name, so two plugins never
 * share a family; and none may take the name of a core family that is
 * also exported as keel_plugin_* (one family split in two would break the
 * exposition). */
static bool owned_metric_name(const char *plugin, const char *name)
{
    static const char *const core_families[] = {"up",
                                                "generation",
                                                "in_flight",
                                                "requests_total",
                                                "reloads_total",
                                                "generations_mapped",
                                                "crashes_total",
                                                "hangs_total",
                                                "quarantined",
                                                NULL};
    size_t n = strlen(plugin);
    if (strlen(name) <= n + 1 || name[n] != '_')
        return false;
    for (size_t i = 0; i < n; i++)
        if (name[i] != (plugin[i] == '-' ? '_' : plugin[i]))
            return false;
    for (const char *const *c = core_families; *c != NULL; c++)
        if (strcmp(name, *c) == 0)
            return false;
    return true;
}

int keel__host_metric_add(int kind, const char *name, const char *help, keel_metric **out)
{
    if (out != NULL)
        *out = NULL;
    const char *plugin = keel__gen_registering();
    if (plugin == NULL) {
        keel__log(KEEL_LOG_ERROR, "metrics", "metric_add(\"%s\") outside init refused",
                  name ? name : "");
        return KEEL_EINVAL;
    }
    if (kind < KEEL_METRIC_COUNTER || kind > KEEL_METRIC_HISTOGRAM || !valid_metric_name(name) ||
        out == NULL) {
        keel__log(KEEL_LOG_ERROR, plugin, "metric_add: bad kind or name");
        return KEEL_EINVAL;
    }
    if (!owned_metric_name(plugin, name)) {
        keel__log(
            KEEL_LOG_ERROR, plugin,
            "metric_add: \"%s\" must start with the plugin's name and '_' and not be a core family name",
            name);
        return KEEL_EINVAL;
    }
    int rc = 0;
    pthread_mutex_lock(&registry_lock);
    struct keel_metric *m;
    for (m = registry; m != NULL; m = m->next) {
        if (strcmp(m->name, name) != 0)
            continue;
        if (m->kind != kind) {
            rc = KEEL_EEXISTS;
            break;
        }
        if (strcmp(m->plugin, plugin) == 0)
            break;
    }
    if (rc == 0 && m == NULL) {
        if (nregistered >= METRICS_MAX) {
            rc = KEEL_EINVAL;
        } else if ((m = calloc(1, sizeof *m)) == NULL) {
            rc = KEEL_ENOMEM;
        } else {
            m->kind = kind;
            snprintf(m->name, sizeof m->name, "%s", name);
            snprintf(m->plugin, sizeof m->plugin, "%s", plugin);
            snprintf(m->help, sizeof m->help, "%s", help ? help : name);
            for (char *c = m->help; *c != '\0'; c++)
                if (*c == '\n' || *c == '\\')
                    *c = ' ';
            /* Sorted by name, so one family's series stay together. */
            struct keel_metric **at = &registry;
            while (*at != NULL && strcmp((*at)->name, name) <= 0)
                at = &(*at)->next;
            m->next = *at;
            *at = m;
            nregistered++;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    if (rc == KEEL_EEXISTS)
        keel__log(KEEL_LOG_ERROR, plugin, "metric_add: %s is registered with another kind", name);
    if (rc == 0)
        *out = m;
    return rc;
}

void keel__host_metric_observe(keel_metric *m, double v)
{
    if (m == NULL || !isfinite(v))
        return;
    switch (m->kind) {
    case KEEL_METRIC_COUNTER:
        if (v > 0)
            add_double(&m->value, v);
        break;
    case KEEL_METRIC_GAUGE:
        atomic_store_explicit(&m->value, double_bits(v), memory_order_relaxed);
        break;
    default:
        for (size_t i = 0; i < NB; i++)
            if (v <= keel__mbuckets[i]) {
                atomic_fetch_add_explicit(&m->buckets[i], 1, memory_order_relaxed);
                break;
            }
        add_double(&m->value, v);
        atomic_fetch_add_explicit(&m->count, 1, memory_order_relaxed);
    }
}

static const char *const kind_names[] = {"counter", "gauge", "histogram"};

static void render_metric(struct keel__mtext *t, const struct keel_metric *m, bool header)
{
    char plugin[160];
    keel__mtext_label(m->plugin, plugin, sizeof plugin);
    if (header)
        keel__mtext_add(t, "# HELP keel_plugin_%s %s\n# TYPE keel_plugin_%s %s\n", m->name, m->help,
                        m->name, kind_names[m->kind]);
    double value = bits_double(atomic_load_explicit(&m->value, memory_order_relaxed));
    if (m->kind != KEEL_METRIC_HISTOGRAM) {
        keel__mtext_add(t, "keel_plugin_%s{plugin=\"%s\"} %.17g\n", m->name, plugin, value);
        return;
    }
    unsigned long long cum = 0;
    for (size_t i = 0; i < NB; i++) {
        cum += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
        keel__mtext_add(t, "keel_plugin_%s_bucket{plugin=\"%s\",le=\"%g\"} %llu\n", m->name, plugin,
                        keel__mbuckets[i], cum);
    }
    /* A concurrent observe may have counted a bucket but not yet the
     * total; the exposition must stay consistent, so +Inf covers both. */
    unsigned long long count = atomic_load_explicit(&m->count, memory_order_relaxed);
    if (count < cum)
        count = cum;
    keel__mtext_add(t,
                    "keel_plugin_%s_bucket{plugin=\"%s\",le=\"+Inf\"} %llu\n"
                    "keel_plugin_%s_sum{plugin=\"%s\"} %.17g\nkeel_plugin_%s_count{plugin=\"%s\"} "
                    "%llu\n",
                    m->name, plugin, count, m->name, plugin, value < 0 ? 0 : value, m->name, plugin,
                    count);
}

char *keel__plugin_metrics_render(void)
{
    struct keel__mtext t = {0};
    keel__mtext_add(&t, "%s", "");
    pthread_mutex_lock(&registry_lock);
    const char *family = NULL;
    for (const struct keel_metric *m = registry; m != NULL; m = m->next) {
        bool header = family == NULL || strcmp(family, m->name) != 0;
        render_metric(&t, m, header);
        family = m->name;
    }
    pthread_mutex_unlock(&registry_lock);
    keel__upstreams_render(&t);
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}

void keel__plugin_metrics_free(void)
{
    pthread_mutex_lock(&registry_lock);
    struct keel_metric *m = registry;
    while (m != NULL) {
        struct keel_metric *next = m->next;
        free(m);
        m = next;
    }
    registry = NULL;
    nregistered = 0;
    pthread_mutex_unlock(&registry_lock);
    keel__upstreams_free_all();
}
