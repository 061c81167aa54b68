/*
 * The counters behind /metrics, at the bottom of the tree so that every
 * layer can count without knowing who renders (core/ops/metrics.c reads
 * them).  Counters are relaxed atomics owned by long-lived records (one per
 * route, created when a route table is built and kept across reloads), so
 * the hot path is a few atomic adds and no lock.
 */
#ifndef KEEL_CORE_UTIL_COUNTERS_H
#define KEEL_CORE_UTIL_COUNTERS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <keel/common.h>

#define KEEL__METRICS_NSTATUS 500 /* statuses 100..599 */
#define KEEL__METRICS_NBUCKETS 14

/* Upper bounds (seconds) of the latency histogram's finite buckets. */
extern const double keel__metrics_bucket_bounds[KEEL__METRICS_NBUCKETS];

/* Why a response may not be the real answer though its status says so: a
 * read served without the database (X-Keel-Degraded: database), some other
 * degraded path, or a plugin's fallback stub (X-Keel-Fallback). */
enum keel__degraded_reason {
    KEEL__DEGRADED_DATABASE = 0,
    KEEL__DEGRADED_FALLBACK = 1,
    KEEL__DEGRADED_OTHER = 2,
    KEEL__DEGRADED_NREASONS /* how many there are */
};

struct keel__route_metrics {
    struct keel__route_metrics *next;
    int listener;
    char *method;
    char *path;
    char *plugin;
    /* What every request touches, together in the record's first cache
     * line, ahead of the arrays of which it touches one element each. */
    atomic_ullong count;
    atomic_ullong sum_ns;
    /* Whether the route's handlers wait: keel__offload_score (core/http/offload.h). */
    atomic_uint wait_score;
    atomic_ullong status[KEEL__METRICS_NSTATUS];
    atomic_ullong buckets[KEEL__METRICS_NBUCKETS];
    atomic_ullong degraded[KEEL__DEGRADED_NREASONS]; /* by enum keel__degraded_reason */
};

extern const char *const keel__degraded_reason_names[KEEL__DEGRADED_NREASONS];

/* Counts one degraded response; m NULL means "no route matched". */
void keel__metrics_degraded(struct keel__route_metrics *m, enum keel__degraded_reason reason);

/* The record for listener+method+template (created on first use; never freed
 * before keel__metrics_free).  plugin may be NULL for core routes.  NULL only
 * when memory runs out (the route is then simply not counted). */
struct keel__route_metrics *keel__metrics_route(int listener, const char *method,
                                                const char *path_template, const char *plugin);
/* Counts one finished request; m NULL means "no route matched". */
void keel__metrics_observe(struct keel__route_metrics *m, unsigned status, int64_t latency_ns);
/* Counts a reload result. */
void keel__metrics_reload(bool ok);

struct keel__reload_counts {
    uint64_t ok, failed;
};
void keel__metrics_reload_counts(struct keel__reload_counts *out);

/*
 * Calls fn for every route record, then for the record of unmatched
 * requests, under the registry lock (fn must not create records).
 */
void keel__metrics_each(void (*fn)(void *ctx, const struct keel__route_metrics *m), void *ctx);

/* Frees every record (at exit, after the servers stopped). */
void keel__metrics_free(void);

/* Prometheus text building, shared by every family's renderer: a growing
 * exposition buffer; `failed` latches an allocation failure. */
struct keel__mtext {
    char *buf;
    size_t len, cap;
    bool failed;
};
void keel__mtext_add(struct keel__mtext *t, const char *fmt, ...) KEEL_PRINTF(2, 3);
/* Escapes a label value into out (truncating). */
const char *keel__mtext_label(const char *s, char *out, size_t outlen);

/* The histogram bounds shared by plugin and upstream histograms (seconds). */
#define KEEL__MBUCKETS 13
extern const double keel__mbuckets[KEEL__MBUCKETS];
extern const size_t keel__nmbuckets;

#endif
