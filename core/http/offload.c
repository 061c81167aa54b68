#include "config.h"

#include "http/offload.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include <keel/error.h>

#include "util/blocking.h"
#include "util/log.h"

struct job {
    void (*fn)(void *);
    void *arg;
    struct job *next;
};

/* One mutex for the queue and the thread count: a hand-over takes it once
 * to queue and once to take, against the microseconds of I/O the job then
 * waits for. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t work;
    struct job *head, *tail;
    struct job *spare; /* freed job records, reused */
    unsigned max, nthreads, idle, queued;
    pthread_t *threads;
    bool stopping;
    atomic_long pending;
    atomic_ullong total;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .work = PTHREAD_COND_INITIALIZER};

/* This thread is one of the pool's; its job has called
 * keel__offload_finishing. */
static _Thread_local bool in_pool, finishing;

void keel__offload_init(unsigned max_threads)
{
    pthread_mutex_lock(&pool.lock);
    if (pool.threads == NULL && max_threads > 0) {
        pool.threads = calloc(max_threads, sizeof *pool.threads);
        pool.max = pool.threads != NULL ? max_threads : 0;
    }
    pool.stopping = false;
    pthread_mutex_unlock(&pool.lock);
}

static void *pool_main(void *arg)
{
    (void)arg;
    in_pool = true;
    /* What this thread's handlers wait on counts here: the server reads it
     * around each request to move its route's score. */
    struct keel__blocking waits = {0};
    keel__blocking_counter = &waits;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (pool.head == NULL && !pool.stopping)
            pthread_cond_wait(&pool.work, &pool.lock);
        struct job *j = pool.head;
        if (j == NULL)
            break; /* stopping, nothing left */
        pool.head = j->next;
        if (pool.head == NULL)
            pool.tail = NULL;
        pool.idle--;
        pool.queued--;
        pthread_mutex_unlock(&pool.lock);
        j->fn(j->arg);
        atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_relaxed);
        pthread_mutex_lock(&pool.lock);
        j->next = pool.spare;
        pool.spare = j;
        /* Counted idle already if the job said it was finishing. */
        if (finishing)
            finishing = false;
        else
            pool.idle++;
    }
    pool.idle--;
    pthread_mutex_unlock(&pool.lock);
    return NULL;
}

void keel__offload_finishing(void)
{
    if (!in_pool || finishing)
        return;
    pthread_mutex_lock(&pool.lock);
    pool.idle++;
    finishing = true;
    pthread_mutex_unlock(&pool.lock);
}

int keel__offload_submit(void (*fn)(void *), void *arg)
{
    pthread_mutex_lock(&pool.lock);
    if (pool.stopping || pool.max == 0) {
        pthread_mutex_unlock(&pool.lock);
        return KEEL_ENOMEM;
    }
    struct job *j = pool.spare;
    if (j != NULL)
        pool.spare = j->next;
    else if ((j = malloc(sizeof *j)) == NULL) {
        pthread_mutex_unlock(&pool.lock);
        return KEEL_ENOMEM;
    }
    /* No idle thread left for this job (an idle one may not have taken the
     * jobs already queued): start another while there is room.  The jobs
     * queued beyond that wait for a thread to finish one. */
    if (pool.queued >= pool.idle && pool.nthreads < pool.max) {
        if (pthread_create(&pool.threads[pool.nthreads], NULL, pool_main, NULL) == 0) {
            pool.nthreads++;
            pool.idle++;
        } else if (pool.nthreads == 0) {
            j->next = pool.spare;
            pool.spare = j;
            pthread_mutex_unlock(&pool.lock);
            return KEEL_ENOMEM;
        }
    }
    *j = (struct job){.fn = fn, .arg = arg};
    if (pool.tail != NULL)
        pool.tail->next = j;
    else
        pool.head = j;
    pool.tail = j;
    pool.queued++;
    atomic_fetch_add_explicit(&pool.pending, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&pool.total, 1, memory_order_relaxed);
    pthread_cond_signal(&pool.work);
    pthread_mutex_unlock(&pool.lock);
    return 0;
}

long keel__offload_pending(void)
{
    return atomic_load_explicit(&pool.pending, memory_order_relaxed);
}

unsigned keel__offload_threads(void)
{
    pthread_mutex_lock(&pool.lock);
    unsigned n = pool.nthreads;
    pthread_mutex_unlock(&pool.lock);
    return n;
}

unsigned long long keel__offload_total(void)
{
    return atomic_load_explicit(&pool.total, memory_order_relaxed);
}

long keel__offload_stop(void)
{
    pthread_mutex_lock(&pool.lock);
    pool.stopping = true;
    pthread_cond_broadcast(&pool.work);
    long left = atomic_load(&pool.pending);
    unsigned n = pool.nthreads;
    pthread_mutex_unlock(&pool.lock);
    if (left > 0) {
        /* A handler that never returns keeps its thread: joining would
         * wait for ever, and the process is on its way out. */
        keel__log(KEEL_LOG_WARN, "core",
                  "%ld request(s) still running off the event loop at stop; not waiting", left);
        return left;
    }
    for (unsigned i = 0; i < n; i++)
        pthread_join(pool.threads[i], NULL);
    pthread_mutex_lock(&pool.lock);
    while (pool.spare != NULL) {
        struct job *j = pool.spare;
        pool.spare = j->next;
        free(j);
    }
    free(pool.threads);
    pool.threads = NULL;
    pool.max = pool.nthreads = pool.idle = pool.queued = 0;
    pthread_mutex_unlock(&pool.lock);
    return 0;
}
