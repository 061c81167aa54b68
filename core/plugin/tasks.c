#include "config.h"

#include "plugin/tasks.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/thread.h"
#include "util/time.h"
#include "http/request.h"
#include "net/upstream.h"
#include "util/scoreboard.h"
#include "http/routes.h"
#include "util/log.h"

#define TASK_NAME_MAX 63
#define TASKS_MAX 32

struct keel_task {
    struct keel_task *next;
    struct keel__gen_res *owner;
    char name[TASK_NAME_MAX + 1];
    unsigned every_ms;
    keel_task_fn fn;
    void *arg;
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    bool notified;
    atomic_bool stop;
    atomic_bool finished;
    /* Gives the run's request a plugin name for log lines. */
    struct keel__route route;
    /* Overruns are logged at most once a minute, with the count since. */
    unsigned long overruns;
    int64_t overrun_logged_ms;
};

struct keel__gen_res {
    char *plugin;
    uint64_t generation;
    struct keel_task *tasks;
    int ntasks;
    keel_upstream **upstreams;
    size_t nupstreams;
    bool started;
    char note[256];
};

bool keel__tasks_autostart = true;

/* The flag lives with the upstream client, whose transfers it cuts short. */
void keel__tasks_abort_all(void)
{
    keel__upstream_abort_all();
}

static _Thread_local struct keel__gen_res *registering;
static _Thread_local bool registering_active;
static _Thread_local const char *registering_name;
static _Thread_local uint64_t registering_number;

void keel__gen_init_begin(const char *name, uint64_t number)
{
    registering = NULL;
    registering_active = true;
    registering_name = name;
    registering_number = number;
}

static struct keel__gen_res *current_res(void)
{
    if (!registering_active)
        return NULL;
    if (registering == NULL) {
        registering = calloc(1, sizeof *registering);
        if (registering == NULL)
            return NULL;
        registering->plugin = strdup(registering_name ? registering_name : "plugin");
        registering->generation = registering_number;
        if (registering->plugin == NULL) {
            free(registering);
            registering = NULL;
        }
    }
    return registering;
}

const char *keel__gen_registering(void)
{
    return registering_active ? registering_name : NULL;
}

struct keel__gen_res *keel__gen_init_end(bool ok)
{
    struct keel__gen_res *res = registering;
    registering = NULL;
    registering_active = false;
    registering_name = NULL;
    if (!ok) {
        keel__gen_free(res);
        return NULL;
    }
    return res;
}

static int gen_add_upstream(keel_upstream *up)
{
    struct keel__gen_res *res = current_res();
    if (res == NULL)
        return KEEL_EINVAL;
    keel_upstream **grown = realloc(res->upstreams, (res->nupstreams + 1) * sizeof *grown);
    if (grown == NULL)
        return KEEL_ENOMEM;
    res->upstreams = grown;
    res->upstreams[res->nupstreams++] = up;
    return 0;
}

int keel__host_upstream_add(const char *name, const json_t *config, keel_upstream **out)
{
    if (out != NULL)
        *out = NULL;
    keel_upstream *up;
    int rc = keel__upstream_new(keel__gen_registering(), name, config, out ? &up : NULL);
    if (rc != 0)
        return rc;
    if ((rc = gen_add_upstream(up)) != 0) {
        keel__upstream_free(up);
        return rc;
    }
    if (out != NULL)
        *out = up;
    return 0;
}

static bool valid_task_name(const char *n)
{
    size_t len = n ? strlen(n) : 0;
    if (len == 0 || len > TASK_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((n[i] >= 'a' && n[i] <= 'z') || (n[i] >= '0' && n[i] <= '9') || n[i] == '_' ||
              n[i] == '-'))
            return false;
    return true;
}

int keel__host_task_add(const char *name, unsigned every_ms, keel_task_fn fn, void *arg,
                        keel_task **out)
{
    if (out != NULL)
        *out = NULL;
    if (!registering_active) {
        keel__log(KEEL_LOG_ERROR, "tasks", "task_add(\"%s\") outside init refused",
                  name ? name : "");
        return KEEL_EINVAL;
    }
    if (fn == NULL || !valid_task_name(name)) {
        keel__log(KEEL_LOG_ERROR, registering_name, "task_add: bad name or no function");
        return KEEL_EINVAL;
    }
    struct keel__gen_res *res = current_res();
    if (res == NULL)
        return KEEL_ENOMEM;
    if (res->ntasks >= TASKS_MAX) {
        keel__log(KEEL_LOG_ERROR, res->plugin, "task_add: at most %d tasks", TASKS_MAX);
        return KEEL_EINVAL;
    }
    for (struct keel_task *t = res->tasks; t != NULL; t = t->next)
        if (strcmp(t->name, name) == 0) {
            keel__log(KEEL_LOG_ERROR, res->plugin, "task_add: duplicate task \"%s\"", name);
            return KEEL_EINVAL;
        }
    struct keel_task *t = calloc(1, sizeof *t);
    if (t == NULL)
        return KEEL_ENOMEM;
    snprintf(t->name, sizeof t->name, "%s", name);
    t->every_ms = every_ms;
    t->fn = fn;
    t->arg = arg;
    t->owner = res;
    t->route.plugin = res->plugin;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&t->mu, NULL);
    /* Appended, so tasks start in registration order. */
    struct keel_task **tail = &res->tasks;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = t;
    res->ntasks++;
    if (out != NULL)
        *out = t;
    return 0;
}

void keel__host_task_notify(keel_task *t)
{
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->mu);
    t->notified = true;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

int keel__host_task_stopping(const keel_task *t)
{
    return t == NULL || atomic_load(&t->stop);
}

int keel__host_task_sleep(keel_task *t, unsigned ms)
{
    if (t == NULL)
        return 1;
    struct timespec until = keel__timespec_after(CLOCK_MONOTONIC, ms);
    pthread_mutex_lock(&t->mu);
    while (!atomic_load(&t->stop))
        if (pthread_cond_timedwait(&t->cv, &t->mu, &until) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&t->mu);
    return atomic_load(&t->stop);
}

static void run_once(struct keel_task *t)
{
    keel_request *req = keel__request_new(NULL, 0, "TASK", t->name);
    if (req == NULL) {
        keel__log(KEEL_LOG_ERROR, t->owner->plugin, "task %s: out of memory", t->name);
        return;
    }
    struct keel__synthetic syn = {0};
    req->synthetic = &syn;
    req->route = &t->route;
    int64_t start = keel__now_ms();
    /* Recorded like a handler call, so a crash in the task is the
     * plugin's (fault containment), not the core's. */
    keel__plugin_call_enter(t->owner->plugin, t->owner->generation, KEEL__CALL_TASK, "task",
                            t->name, req->id);
    int rc = t->fn(t, req, t->arg);
    keel__plugin_call_leave();
    int64_t took = keel__now_ms() - start;
    keel__request_free(req);
    if (rc != 0)
        keel__log(KEEL_LOG_WARN, t->owner->plugin, "task %s returned %d (%s)", t->name, rc,
                  keel_strerror(rc));
    if (t->every_ms > 0 && took > (int64_t)t->every_ms && !atomic_load(&t->stop)) {
        t->overruns++;
        int64_t now = keel__now_ms();
        if (t->overrun_logged_ms == 0 || now - t->overrun_logged_ms >= 60000) {
            keel__log(KEEL_LOG_WARN, t->owner->plugin,
                      "task %s overran: ran %lld ms, period %u ms (%lu overrun(s) since the last "
                      "such line)",
                      t->name, (long long)took, t->every_ms, t->overruns);
            t->overruns = 0;
            t->overrun_logged_ms = now;
        }
    }
}

static void *task_main(void *arg)
{
    struct keel_task *t = arg;
    struct timespec next;
    next = keel__timespec_after(CLOCK_MONOTONIC, t->every_ms);
    for (;;) {
        pthread_mutex_lock(&t->mu);
        while (!atomic_load(&t->stop) && !t->notified) {
            int w = t->every_ms > 0 ? pthread_cond_timedwait(&t->cv, &t->mu, &next)
                                    : pthread_cond_wait(&t->cv, &t->mu);
            if (w == ETIMEDOUT)
                break;
        }
        t->notified = false;
        pthread_mutex_unlock(&t->mu);
        if (atomic_load(&t->stop))
            break;
        /* The next period counts from the start of this run, so a steady
         * task keeps its rhythm; an overrun starts the next one at once. */
        next = keel__timespec_after(CLOCK_MONOTONIC, t->every_ms);
        run_once(t);
    }
    atomic_store(&t->finished, true);
    return NULL;
}

void keel__gen_start(struct keel__gen_res *res)
{
    if (res == NULL || res->started)
        return;
    res->started = true;
    for (struct keel_task *t = res->tasks; t != NULL; t = t->next) {
        if (keel__thread_start(&t->thread, task_main, t) != 0) {
            keel__log(KEEL_LOG_ERROR, res->plugin, "task %s: cannot start a thread", t->name);
            continue;
        }
        t->started = true;
        keel__log(KEEL_LOG_DEBUG, res->plugin, "task %s started (every %u ms)", t->name,
                  t->every_ms);
    }
}

int keel__gen_stop(struct keel__gen_res *res, int wait_warn_ms)
{
    if (res == NULL)
        return 0;
    for (struct keel_task *t = res->tasks; t != NULL; t = t->next) {
        pthread_mutex_lock(&t->mu);
        atomic_store(&t->stop, true);
        pthread_cond_broadcast(&t->cv);
        pthread_mutex_unlock(&t->mu);
    }
    int slow = 0;
    for (struct keel_task *t = res->tasks; t != NULL; t = t->next) {
        if (!t->started)
            continue;
        int64_t start = keel__now_ms(), warned = start;
        bool counted = false;
        /* Polling the finished flag keeps this portable; joins are rare. */
        while (!atomic_load(&t->finished)) {
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
            int64_t now = keel__now_ms();
            if (now - warned >= wait_warn_ms) {
                keel__log(KEEL_LOG_WARN, res->plugin,
                          "task %s has not stopped after %lld ms; waiting (its code stays mapped)",
                          t->name, (long long)(now - start));
                warned = now;
                if (!counted)
                    slow++;
                counted = true;
            }
        }
        pthread_join(t->thread, NULL);
        t->started = false;
    }
    return slow;
}

void keel__gen_free(struct keel__gen_res *res)
{
    if (res == NULL)
        return;
    keel__gen_stop(res, 10000);
    struct keel_task *t = res->tasks;
    while (t != NULL) {
        struct keel_task *next = t->next;
        pthread_cond_destroy(&t->cv);
        pthread_mutex_destroy(&t->mu);
        free(t);
        t = next;
    }
    for (size_t i = 0; i < res->nupstreams; i++)
        keel__upstream_free(res->upstreams[i]);
    free(res->upstreams);
    free(res->plugin);
    free(res);
}

int keel__gen_ntasks(const struct keel__gen_res *res)
{
    return res ? res->ntasks : 0;
}

int keel__host_plugin_note(const char *text)
{
    struct keel__gen_res *res = current_res();
    if (res == NULL || text == NULL)
        return KEEL_EINVAL;
    snprintf(res->note, sizeof res->note, "%s", text);
    return 0;
}

void keel__gen_describe(const struct keel__gen_res *res, json_t *entry)
{
    if (res == NULL || entry == NULL)
        return;
    json_t *tasks = json_array();
    for (const struct keel_task *t = res->tasks; t != NULL; t = t->next)
        json_array_append_new(tasks, json_pack("{s:s,s:I,s:b}", "name", t->name, "every_ms",
                                               (json_int_t)t->every_ms, "running", t->started));
    json_t *ups = json_array();
    for (size_t i = 0; i < res->nupstreams; i++)
        json_array_append_new(ups, keel__upstream_describe(res->upstreams[i]));
    json_object_set_new(entry, "tasks", tasks);
    json_object_set_new(entry, "upstreams", ups);
    if (res->note[0] != '\0')
        json_object_set_new(entry, "note", json_string(res->note));
}

void keel__gen_notify_all(struct keel__gen_res *res)
{
    for (struct keel_task *t = res ? res->tasks : NULL; t != NULL; t = t->next)
        keel__host_task_notify(t);
}
