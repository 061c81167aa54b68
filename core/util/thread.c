/* pthread_setname_np, gettid and program_invocation_short_name are GNU
 * extensions. */
#define _GNU_SOURCE
#include "config.h"

#include "util/thread.h"

#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

/* True on a thread made a background thread. */
static _Thread_local bool background;

static int create(pthread_t *thread, void *(*fn)(void *), void *arg, bool detached)
{
    pthread_t t;
    pthread_attr_t attr;
    int rc = pthread_attr_init(&attr);
    if (rc != 0)
        return rc;
    if (detached)
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    rc = pthread_create(thread != NULL ? thread : &t, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    return rc;
}

/*
 * The spawner: a thread started by the first background thread while it
 * still ran at the priority of the process, which creates threads for
 * background threads, one request at a time.
 */
struct spawn {
    struct spawn *next;
    pthread_t *thread;
    void *(*fn)(void *);
    void *arg;
    bool detached;
    int rc;
    bool done;
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct spawn *head;
    bool running;
} spawner = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

/* A thread the spawner starts would inherit its name: it takes the
 * program's instead (what every other thread of the process shows). */
struct call {
    void *(*fn)(void *);
    void *arg;
};

static void *renamed(void *arg)
{
    struct call c = *(struct call *)arg;
    free(arg);
    char name[16];
    snprintf(name, sizeof name, "%s", program_invocation_short_name);
    pthread_setname_np(pthread_self(), name);
    return c.fn(c.arg);
}

static void *spawner_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "keel-spawner");
    pthread_mutex_lock(&spawner.lock);
    for (;;) {
        while (spawner.head == NULL)
            pthread_cond_wait(&spawner.cond, &spawner.lock);
        struct spawn *s = spawner.head;
        spawner.head = s->next;
        pthread_mutex_unlock(&spawner.lock);
        struct call *c = malloc(sizeof *c);
        int rc = ENOMEM;
        if (c != NULL) {
            *c = (struct call){s->fn, s->arg};
            rc = create(s->thread, renamed, c, s->detached);
            if (rc != 0)
                free(c);
        }
        pthread_mutex_lock(&spawner.lock);
        s->rc = rc;
        s->done = true;
        pthread_cond_broadcast(&spawner.cond);
    }
    return NULL;
}

static int start(pthread_t *thread, void *(*fn)(void *), void *arg, bool detached)
{
    if (!background)
        return create(thread, fn, arg, detached);
    struct spawn s = {.thread = thread, .fn = fn, .arg = arg, .detached = detached};
    pthread_mutex_lock(&spawner.lock);
    s.next = spawner.head;
    spawner.head = &s;
    pthread_cond_broadcast(&spawner.cond);
    while (!s.done)
        pthread_cond_wait(&spawner.cond, &spawner.lock);
    pthread_mutex_unlock(&spawner.lock);
    return s.rc;
}

bool keel__thread_detached(void *(*fn)(void *), void *arg)
{
    return start(NULL, fn, arg, true) == 0;
}

int keel__thread_start(pthread_t *thread, void *(*fn)(void *), void *arg)
{
    return start(thread, fn, arg, false);
}

bool keel__thread_background(const char *name)
{
    pthread_setname_np(pthread_self(), name);
    if (background)
        return true;
    pthread_mutex_lock(&spawner.lock);
    if (!spawner.running)
        spawner.running = create(NULL, spawner_main, NULL, true) == 0;
    bool can = spawner.running;
    pthread_mutex_unlock(&spawner.lock);
    /* Without the spawner, the threads this one starts would inherit the
     * priority for good: stay as we are. */
    if (!can)
        return false;
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), 19) != 0)
        return false;
    background = true;
    return true;
}

void keel__let_serve(void)
{
    sched_yield();
}
