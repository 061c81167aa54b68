#include "config.h"

#include "http/routes.h"

#include <pthread.h>

static pthread_rwlock_t table_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct keel__table *current;

struct keel__table *keel__table_acquire(void)
{
    pthread_rwlock_rdlock(&table_lock);
    struct keel__table *t = current;
    if (t != NULL)
        atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    pthread_rwlock_unlock(&table_lock);
    return t;
}

void keel__route_begin(const struct keel__route *route)
{
    if (route->plugin_requests != NULL)
        atomic_fetch_add_explicit(route->plugin_requests, 1, memory_order_relaxed);
    if (route->gen_in_flight != NULL)
        atomic_fetch_add_explicit(route->gen_in_flight, 1, memory_order_relaxed);
    if (route->gen_requests != NULL)
        atomic_fetch_add_explicit(route->gen_requests, 1, memory_order_relaxed);
}

void keel__table_release(struct keel__table *t, const struct keel__route *route)
{
    if (t == NULL)
        return;
    /* The end of keel__route_begin: the generation the counter lives in is
     * kept alive by t, so it is still there. */
    if (route != NULL && route->gen_in_flight != NULL)
        atomic_fetch_sub_explicit(route->gen_in_flight, 1, memory_order_relaxed);
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
        t->destroy(t);
}

void keel__table_publish(struct keel__table *t)
{
    pthread_rwlock_wrlock(&table_lock);
    struct keel__table *old = current;
    current = t;
    pthread_rwlock_unlock(&table_lock);
    keel__table_release(old, NULL);
}
