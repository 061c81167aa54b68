#include "config.h"

#include "process/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "http/server.h"
#include "ops/core_routes.h"
#include "ops/metrics.h"
#include "plugin/loader.h"
#include "plugin/registry.h"
#include "process/channel.h"
#include "util/scoreboard.h"
#include "util/log.h"
#include "util/thread.h"
#include "util/time.h"

static int ctl_fd = -1;
static pthread_mutex_t send_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int lame_duck;
static atomic_int reload_timeout_ms = 60000;

/* Threads waiting for the supervisor's answer to a fan-out. */
#define NWAITERS 32
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned long long next_id;
    struct {
        unsigned long long id; /* 0 = free */
        bool done;
        char *reply;
    } w[NWAITERS];
} waiters = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

void keel__worker_attach(int fd)
{
    /* The control loop reads until EAGAIN; writers wait in poll. */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    ctl_fd = fd;
}

bool keel__worker_active(void)
{
    return ctl_fd >= 0;
}

void keel__worker_set_reload_timeout(int ms)
{
    atomic_store(&reload_timeout_ms, ms);
}

int keel__worker_reload_timeout_ms(void)
{
    return atomic_load(&reload_timeout_ms);
}

bool keel__worker_draining(void)
{
    return atomic_load_explicit(&lame_duck, memory_order_relaxed) != 0;
}

static int send_frame(char kind, unsigned long long id, const char *body)
{
    pthread_mutex_lock(&send_lock);
    int rc = keel__chan_send(ctl_fd, kind, id, body, body ? strlen(body) : 0, -1);
    pthread_mutex_unlock(&send_lock);
    return rc;
}

int keel__worker_fanout(const char *verb, const char *arg, int timeout_ms, char **reply)
{
    *reply = NULL;
    if (ctl_fd < 0)
        return KEEL_EUNSUPPORTED;
    pthread_mutex_lock(&waiters.lock);
    int slot = -1;
    for (int i = 0; i < NWAITERS && slot < 0; i++)
        if (waiters.w[i].id == 0)
            slot = i;
    if (slot < 0) {
        pthread_mutex_unlock(&waiters.lock);
        return KEEL_EBUSY;
    }
    unsigned long long id = ++waiters.next_id;
    waiters.w[slot].id = id;
    waiters.w[slot].done = false;
    waiters.w[slot].reply = NULL;
    pthread_mutex_unlock(&waiters.lock);

    char body[512];
    snprintf(body, sizeof body, "%s%s%s", verb, arg ? " " : "", arg ? arg : "");
    int rc = send_frame('F', id, body);

    struct timespec until = keel__timespec_after(CLOCK_REALTIME, timeout_ms);
    pthread_mutex_lock(&waiters.lock);
    while (rc == 0 && !waiters.w[slot].done)
        if (pthread_cond_timedwait(&waiters.cond, &waiters.lock, &until) == ETIMEDOUT)
            rc = KEEL_ETIMEOUT;
    if (waiters.w[slot].done) {
        *reply = waiters.w[slot].reply;
        rc = *reply != NULL ? 0 : KEEL_EIO;
    }
    waiters.w[slot].id = 0;
    waiters.w[slot].reply = NULL;
    pthread_mutex_unlock(&waiters.lock);
    return rc;
}

/* Hands the supervisor's answer to the thread that asked (takes body). */
static void deliver(unsigned long long id, char *body)
{
    pthread_mutex_lock(&waiters.lock);
    for (int i = 0; i < NWAITERS; i++) {
        if (waiters.w[i].id == id && !waiters.w[i].done) {
            waiters.w[i].reply = body;
            waiters.w[i].done = true;
            body = NULL;
            break;
        }
    }
    pthread_cond_broadcast(&waiters.cond);
    pthread_mutex_unlock(&waiters.lock);
    free(body); /* nobody waits any more (timed out) */
}

static void reply_json(unsigned long long id, json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    send_frame('R', id, text ? text : "null");
    free(text);
}

/* Reloads and quarantines take the registry lock and may wait on a
 * plugin's init: they run off the control loop so that it keeps answering
 * (describe, metrics) meanwhile.  Reloads (and the start-up load before
 * them, and the unloading of retired generations) run one after another on
 * one thread that lives as long as the worker: they would wait for each
 * other on the registry lock anyway, and a fresh thread per reload would
 * get a malloc arena of its own from glibc, so the parsed conf.d, the
 * snapshot and the new generations would land in a different arena each
 * time and every arena so visited would keep its pages.  That thread runs
 * at background priority from the first reload on (go_background), so
 * quarantines, which contain a crashing or hung plugin and must not wait
 * for idle CPU, have a thread of their own at the worker's priority. */
struct slow_job {
    struct slow_job *next;
    unsigned long long id;
    char verb[16];
    char arg[256];
    char arg2[32];
    /* Or a call whose caller waits (keel__worker_run_on_reload_thread), */
    int (*fn)(void *);
    void *fn_arg;
    /* or one nobody waits for (post_finalise): run with fn_arg, then freed. */
    void (*post)(void *);
    int rc;
    bool done;
};

struct job_queue {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct slow_job *head, **tail;
    bool running;
};

static struct job_queue jobs = {.lock = PTHREAD_MUTEX_INITIALIZER,
                                .cond = PTHREAD_COND_INITIALIZER},
                        quarantines = {.lock = PTHREAD_MUTEX_INITIALIZER,
                                       .cond = PTHREAD_COND_INITIALIZER};

static void slow_job_run(struct slow_job *job)
{
    if (strcmp(job->verb, "reload") == 0) {
        bool unknown = false;
        json_t *r = keel__plugins_reload(job->arg[0] ? job->arg : NULL, &unknown);
        if (r == NULL)
            r = json_pack("{s:b, s:b, s:[]}", "ok", 0, "unknown", unknown, "results");
        reply_json(job->id, r);
    } else {
        int reason = strcmp(job->arg2, "hung") == 0 ? KEEL__REASON_HUNG : KEEL__REASON_CRASHED;
        int rc = keel__plugins_quarantine(job->arg, reason);
        send_frame('R', job->id, rc == 0 ? "ok" : "failed");
    }
}

/*
 * A reload (the copies, the dynamic loader, the checks, the unloading of
 * what it retires) is work beside serving: from the first one on, the
 * reload thread runs at background priority and takes the CPU as far as
 * no request wants it.  The start-up load of the plugins, which runs on it
 * first, keeps the worker's priority: nothing serves until it is done.
 */
static void go_background(void)
{
    static bool tried;
    if (tried)
        return;
    tried = true;
    if (!keel__thread_background("keel-reload"))
        keel__log(KEEL_LOG_WARN, "core",
                  "worker %d: reloads cannot run at background priority; they share the CPU "
                  "with requests",
                  (int)getpid());
}

static void *slow_jobs_main(void *arg)
{
    struct job_queue *q = arg;
    for (;;) {
        pthread_mutex_lock(&q->lock);
        while (q->head == NULL)
            pthread_cond_wait(&q->cond, &q->lock);
        struct slow_job *job = q->head;
        q->head = job->next;
        if (q->head == NULL)
            q->tail = &q->head;
        pthread_mutex_unlock(&q->lock);
        if (job->fn != NULL) {
            int rc = job->fn(job->fn_arg);
            pthread_mutex_lock(&q->lock);
            job->rc = rc;
            job->done = true;
            pthread_cond_broadcast(&q->cond);
            pthread_mutex_unlock(&q->lock);
            continue;
        }
        if (q == &jobs)
            go_background();
        if (job->post != NULL)
            job->post(job->fn_arg);
        else
            slow_job_run(job);
        free(job);
    }
    return NULL;
}

/* Queues job on q, starting its thread if need be; false when the thread
 * cannot start (nothing queued).  Called with q->lock held. */
static bool jobs_push(struct job_queue *q, struct slow_job *job)
{
    if (!q->running) {
        q->running = keel__thread_detached(slow_jobs_main, q);
        q->head = NULL;
        q->tail = &q->head;
    }
    if (!q->running)
        return false;
    job->next = NULL;
    *q->tail = job;
    q->tail = &job->next;
    pthread_cond_broadcast(&q->cond);
    return true;
}

/* The finaliser of retired generations (plugin/loader.h): their last
 * reference often goes on a serving thread, and their tasks' stop, fini
 * and unload then run here instead, in turn with the reloads. */
static int post_finalise(void (*fn)(void *), void *arg)
{
    struct slow_job *job = calloc(1, sizeof *job);
    if (job == NULL)
        return -1;
    job->post = fn;
    job->fn_arg = arg;
    pthread_mutex_lock(&jobs.lock);
    bool queued = jobs_push(&jobs, job);
    pthread_mutex_unlock(&jobs.lock);
    if (!queued)
        free(job);
    return queued ? 0 : -1;
}

/* Runs here the finalisations still queued behind a reload, without
 * waiting for the reload thread (which may be in a plugin's init). */
static void finalise_queued_here(void)
{
    struct slow_job *mine = NULL, **tail = &mine;
    pthread_mutex_lock(&jobs.lock);
    struct slow_job **p = &jobs.head;
    while (*p != NULL) {
        struct slow_job *job = *p;
        if (job->post == NULL) {
            p = &job->next;
            continue;
        }
        *p = job->next;
        job->next = NULL;
        *tail = job;
        tail = &job->next;
    }
    /* p is now the end of what stays queued. */
    jobs.tail = p;
    pthread_mutex_unlock(&jobs.lock);
    while (mine != NULL) {
        struct slow_job *job = mine;
        mine = job->next;
        job->post(job->fn_arg);
        free(job);
    }
}

int keel__worker_run_on_reload_thread(int (*fn)(void *), void *arg)
{
    struct slow_job job = {.fn = fn, .fn_arg = arg};
    pthread_mutex_lock(&jobs.lock);
    if (!jobs_push(&jobs, &job)) {
        pthread_mutex_unlock(&jobs.lock);
        return fn(arg);
    }
    while (!job.done)
        pthread_cond_wait(&jobs.cond, &jobs.lock);
    pthread_mutex_unlock(&jobs.lock);
    return job.rc;
}

static void start_slow_job(unsigned long long id, const char *verb, const char *args)
{
    struct slow_job *job = calloc(1, sizeof *job);
    if (job == NULL) {
        send_frame('R', id, "null");
        return;
    }
    job->id = id;
    snprintf(job->verb, sizeof job->verb, "%s", verb);
    if (args != NULL)
        sscanf(args, "%255s %31s", job->arg, job->arg2);
    struct job_queue *q = strcmp(verb, "quarantine") == 0 ? &quarantines : &jobs;
    pthread_mutex_lock(&q->lock);
    bool queued = jobs_push(q, job);
    pthread_mutex_unlock(&q->lock);
    if (!queued) {
        free(job);
        send_frame('R', id, "null");
    }
}

struct stop_plan {
    bool stopping;
    bool retiring; /* the others serve on: wait for accepted connections too */
    int64_t since_ns;
    int64_t deadline_ns;
};

static void begin_stop(struct stop_plan *plan, int deadline_s, const char *why)
{
    if (plan->stopping)
        return;
    plan->stopping = true;
    plan->retiring = strcmp(why, "retire") == 0;
    plan->since_ns = keel__monotonic_ns();
    plan->deadline_ns = keel__monotonic_ns() + (int64_t)deadline_s * 1000000000;
    keel__log(KEEL_LOG_INFO, "core", "worker %d: %s: no new connections, finishing %ld request(s)",
              (int)getpid(), why, keel__server_in_flight());
    keel__server_quiesce();
}

static void handle(const struct keel__frame *f, struct stop_plan *plan,
                   const struct keel__conf *conf)
{
    if (f->kind == 'R') {
        deliver(f->id, f->body);
        return;
    }
    if (f->kind != 'Q') {
        free(f->body);
        return;
    }
    char verb[16] = "";
    const char *args = NULL;
    size_t vn = strcspn(f->body, " ");
    snprintf(verb, sizeof verb, "%.*s", (int)(vn < sizeof verb ? vn : sizeof verb - 1), f->body);
    if (f->body[vn] == ' ')
        args = f->body + vn + 1;
    if (strcmp(verb, "describe") == 0) {
        reply_json(f->id, keel__plugins_describe());
    } else if (strcmp(verb, "metrics") == 0) {
        char *text = keel__metrics_render();
        send_frame('R', f->id, text ? text : "");
        free(text);
    } else if (strcmp(verb, "status") == 0) {
        struct keel__table *t = keel__table_acquire();
        reply_json(f->id, keel__admin_status(t));
        keel__table_release(t, NULL);
    } else if (strcmp(verb, "reload") == 0 || strcmp(verb, "quarantine") == 0) {
        start_slow_job(f->id, verb, args);
    } else if (strcmp(verb, "evict") == 0) {
        int n = keel__rt.usersync && args ? keel__usersync_evict(keel__rt.usersync, args) : 0;
        reply_json(f->id, json_pack("{s:i}", "evicted", n));
    } else if (strcmp(verb, "drain") == 0) {
        atomic_store(&lame_duck, 1);
        send_frame('R', f->id, "ok");
    } else if (strcmp(verb, "stop") == 0 || strcmp(verb, "retire") == 0) {
        int deadline_s = args ? (int)strtol(args, NULL, 10) : conf->server.shutdown_timeout_s;
        send_frame('R', f->id, "ok");
        begin_stop(plan, deadline_s, verb);
    } else {
        send_frame('R', f->id, "null");
    }
    free(f->body);
}

static int serve_loop(const struct keel__conf *conf)
{
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGUSR1);
    int sfd = signalfd(-1, &term, SFD_CLOEXEC | SFD_NONBLOCK);
    struct keel__chan_buf buf = {0};
    struct stop_plan plan = {0};
    struct keel__sb_worker *me = keel__sb_self();
    int64_t stuck_after = (int64_t)conf->containment.handler_timeout_ms * 1000000;

    send_frame('N', 0, "ready");
    /* Serving, but a plugin may still be starting (its routes answer 503):
     * the supervisor retires a predecessor only once this one has settled. */
    bool inits_settled = false;
    for (;;) {
        if (!inits_settled && keel__plugins_start_settled()) {
            send_frame('N', 0, "settled");
            inits_settled = true;
        }
        struct pollfd pfd[2] = {{.fd = ctl_fd, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
        int r = poll(pfd, sfd >= 0 ? 2 : 1, plan.stopping ? 20 : 100);
        if (me != NULL) {
            atomic_store(&me->requests, keel__server_requests_total());
            atomic_store(&me->in_flight, keel__server_in_flight());
        }
        if (r > 0 && (pfd[1].revents & POLLIN)) {
            struct signalfd_siginfo si;
            bool stop = false;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                if (si.ssi_signo == SIGUSR1) {
                    /* Forwarded by the supervisor after logrotate. */
                    keel__log_reopen();
                    keel__server_reopen_logs();
                } else {
                    stop = true;
                }
            }
            if (stop)
                begin_stop(&plan, conf->server.shutdown_timeout_s, "SIGTERM");
        }
        if (r > 0 && (pfd[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            int rc = keel__chan_read(ctl_fd, &buf);
            struct keel__frame f;
            bool bad = false;
            while (keel__chan_next(&buf, &f, &bad))
                handle(&f, &plan, conf);
            if (rc != 0 || bad) {
                /* The supervisor is gone: nobody will replace or stop us. */
                if (!plan.stopping)
                    keel__log(KEEL_LOG_WARN, "core", "worker %d: supervisor gone, stopping",
                              (int)getpid());
                begin_stop(&plan, conf->server.shutdown_timeout_s, "supervisor gone");
                close(ctl_fd);
                ctl_fd = -1;
                /* Wake any fan-out waiter: no answer will come. */
                pthread_mutex_lock(&waiters.lock);
                for (int i = 0; i < NWAITERS; i++)
                    if (waiters.w[i].id != 0)
                        waiters.w[i].done = true;
                pthread_cond_broadcast(&waiters.cond);
                pthread_mutex_unlock(&waiters.lock);
            }
        }
        if (plan.stopping) {
            /* Threads stuck in plugin code never finish: wait for the
             * others only. */
            int stuck = keel__sb_stuck_handlers(stuck_after);
            long busy = keel__server_in_flight() - stuck;
            /* Retiring while the other workers serve on: a connection
             * accepted just before the quiesce may not have sent its
             * request yet, so wait for open connections too (the stuck
             * ones hold theirs for good; idle kept-alive ones until the
             * deadline).  Stopping, the listeners are closed for everyone
             * and only requests count, as before. */
            long open = plan.retiring ? keel__server_connections() - stuck : 0;
            int64_t now = keel__monotonic_ns();
            bool late = now >= plan.deadline_ns;
            bool settled = busy <= 0 && open <= 0 &&
                           (!plan.retiring || now - plan.since_ns >= 200000000);
            if (settled || late) {
                if (late && busy > 0)
                    keel__log(KEEL_LOG_WARN, "core",
                              "worker %d: drain deadline passed with %ld request(s) running",
                              (int)getpid(), busy);
                keel__chan_buf_free(&buf);
                if (sfd >= 0)
                    close(sfd);
                return late ? (int)keel__server_in_flight() : stuck;
            }
        }
        if (ctl_fd < 0 && !plan.stopping)
            break;
    }
    keel__chan_buf_free(&buf);
    if (sfd >= 0)
        close(sfd);
    return 0;
}

int keel__worker_loop(const struct keel__conf *conf)
{
    keel__generation_set_finaliser(post_finalise);
    int stuck = serve_loop(conf);
    /* From here on the last references finalise in place, and the ones
     * already handed over but not yet begun are finalised now, before the
     * plugins stop. */
    keel__generation_set_finaliser(NULL);
    if (stuck == 0)
        finalise_queued_here();
    return stuck;
}
