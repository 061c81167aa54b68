/* SCHED_BATCH is a GNU extension. */
#define _GNU_SOURCE
#include "config.h"

#include "process/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "http/server.h"
#include "identity/ratelimit.h"
#include "plugin/registry.h"
#include "process/channel.h"
#include "process/containment.h"
#include "process/fanout.h"
#include "process/supervisor_state.h"
#include "process/upgrade.h"
#include "process/worker.h"
#include "util/cpus.h"
#include "util/listen.h"
#include "util/crash.h"
#include "util/log.h"
#include "util/scoreboard.h"
#include "util/time.h"

const char *const keel__sup_restart_reasons[] = {"crash", "killed",   "exit", "hang",
                                                 "rss",   "requests", NULL};

struct keel__sup keel__sup = {.sfd = -1, .upgrade_fd = -1, .notify_fd = -1, .listen_fds = {-1, -1}};

/* pipe2() wants _GNU_SOURCE; this is the portable spelling. */
int keel__sup_pipe_cloexec(int p[2])
{
    if (pipe(p) != 0)
        return -1;
    fcntl(p[0], F_SETFD, FD_CLOEXEC);
    fcntl(p[1], F_SETFD, FD_CLOEXEC);
    return 0;
}

int64_t keel__sup_inits_ms(const struct keel__conf *conf)
{
    return (int64_t)conf->containment.init_timeout_ms * (int64_t)(conf->nplugins + 1);
}

void keel__sup_count_restart(const char *reason)
{
    for (size_t i = 0; keel__sup_restart_reasons[i] != NULL; i++)
        if (strcmp(keel__sup_restart_reasons[i], reason) == 0)
            keel__sup.restarts[i]++;
}

struct worker *keel__sup_by_pid(pid_t pid)
{
    for (unsigned i = 0; i < keel__sup.nslots; i++)
        if (keel__sup.w[i].state != W_FREE && keel__sup.w[i].pid == pid)
            return &keel__sup.w[i];
    return NULL;
}

unsigned keel__sup_count_state(enum wstate a, enum wstate b)
{
    unsigned n = 0;
    for (unsigned i = 0; i < keel__sup.nslots; i++)
        if (keel__sup.w[i].state == a || keel__sup.w[i].state == b)
            n++;
    return n;
}

void keel__sup_send(struct worker *w, char kind, unsigned long long id, const char *body)
{
    if (w->ctl < 0)
        return;
    if (keel__chan_send(w->ctl, kind, id, body, body ? strlen(body) : 0, 2000) != 0)
        log_warn("cannot reach worker %d on its control channel", (int)w->pid);
}

/* ------------------------------------------------------------ workers */

static void close_worker_fds(struct worker *w)
{
    if (w->ctl >= 0)
        close(w->ctl);
    if (w->crash >= 0)
        close(w->crash);
    w->ctl = w->crash = -1;
    keel__chan_buf_free(&w->in);
}

/*
 * server.scheduling, set while the worker has one thread so that every
 * thread it starts inherits it.  "batch" (SCHED_BATCH, the default) keeps a
 * wakeup from preempting the thread that runs: with two workers on one CPU
 * a request arriving for one no longer interrupts the other in the middle
 * of its batch, which cost a process switch (an address-space change)
 * every ten requests and 5-7 % more CPU per request (docs/performance.md,
 * round 13).  The priority (nice) is unchanged, and a task of normal policy
 * waking up still preempts these threads: PostgreSQL, sshd and the like
 * keep their latency.
 */
static void set_scheduling(const char *policy)
{
    if (policy == NULL || strcmp(policy, "batch") != 0)
        return;
    struct sched_param none = {0};
    if (sched_setscheduler(0, SCHED_BATCH, &none) != 0)
        log_warn("server.scheduling batch: %s; the worker runs with normal scheduling",
                 strerror(errno));
}

static void child_after_fork(unsigned slot, int ctl, int crash_w)
{
    /* Nothing of the supervisor's other workers may stay open here, or
     * their channels would never see EOF. */
    for (unsigned i = 0; i < keel__sup.nslots; i++)
        close_worker_fds(&keel__sup.w[i]);
    if (keel__sup.sfd >= 0)
        close(keel__sup.sfd);
    if (keel__sup.upgrade_fd >= 0)
        close(keel__sup.upgrade_fd);
    if (keel__sup.notify_fd >= 0)
        close(keel__sup.notify_fd);
    sigset_t none;
    sigemptyset(&none);
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    /* Forwarded by the supervisor: the worker reopens its log files. */
    sigaddset(&term, SIGUSR1);
    /* The worker takes SIGTERM and SIGUSR1 through a signalfd; the
     * supervisor alone answers the rest (a Ctrl-C reaches the whole process
     * group). */
    signal(SIGHUP, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    signal(SIGCHLD, SIG_DFL);
    sigprocmask(SIG_SETMASK, &term, NULL);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    set_scheduling(keel__sup.conf->server.scheduling);
    keel__sb_bind(slot);
    atomic_store(&keel__sb_self()->pid, (int)getpid());
    keel__crash_install(crash_w);
    keel__worker_attach(ctl);
    /* Connection limits become each worker's share of the server's (see
     * docs/operations.md): rounded up, so no limit drops to zero.  The
     * per-user rate limit needs no share: its buckets are shared. */
    struct keel__conf *c = keel__sup.conf;
    unsigned n = keel__sup.target;
    c->limits.max_connections = (int)(((unsigned)c->limits.max_connections + n - 1) / n);
    c->limits.max_per_ip = (int)(((unsigned)c->limits.max_per_ip + n - 1) / n);
    /* server.threads is the server's too (default 1 per CPU): workers
     * sharing CPUs with more threads in all would only add switching.
     * Handlers that wait do so off these threads (core/http/offload.h). */
    c->server.threads = (int)((keel__per_cpu(c->server.threads) + n - 1) / n);
    keel__rt.listen_inherited = true;
    keel__rt.listen_fds[0] = keel__sup.listen_fds[0];
    keel__rt.listen_fds[1] = keel__sup.listen_fds[1];
    for (size_t i = 0; i < keel__sup.nplugins; i++)
        if (keel__sup.plugins[i].quarantine != 0)
            (void)keel__plugins_quarantine(keel__sup.plugins[i].name,
                                           keel__sup.plugins[i].quarantine);
    /* Only a keeld starting cold serves while a slow init runs (its routes
     * answer 503 "starting"): a replacement worker, or the workers of an
     * upgrade while the previous keeld still serves, share the listening
     * socket with processes that serve every plugin, so they listen only
     * once their inits are done. */
    if (keel__sup.ever_ready || keel__sup.notify_fd >= 0)
        keel__plugins_wait_for_init(true);
}

static struct worker *spawn(void)
{
    unsigned slot = keel__sup.nslots;
    for (unsigned i = 0; i < keel__sup.nslots && slot == keel__sup.nslots; i++)
        if (keel__sup.w[i].state == W_FREE)
            slot = i;
    if (slot == keel__sup.nslots) {
        log_warn("no free worker slot: replacement delayed");
        return NULL;
    }
    int sv[2], cp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return NULL;
    if (keel__sup_pipe_cloexec(cp) != 0) {
        close(sv[0]);
        close(sv[1]);
        return NULL;
    }
    keel__sb_reset(slot);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        log_error("cannot start a worker: fork: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        close(cp[0]);
        close(cp[1]);
        return NULL;
    }
    if (pid == 0) {
        close(sv[0]);
        close(cp[0]);
        child_after_fork(slot, sv[1], cp[1]);
        int status = keel__sup.serve(keel__sup.conf);
        fflush(NULL);
        _exit(status);
    }
    close(sv[1]);
    close(cp[1]);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    fcntl(cp[0], F_SETFL, fcntl(cp[0], F_GETFL) | O_NONBLOCK);
    struct worker *w = &keel__sup.w[slot];
    memset(w, 0, sizeof *w);
    w->state = W_STARTING;
    w->pid = pid;
    w->ctl = sv[0];
    w->crash = cp[0];
    w->started_ns = keel__monotonic_ns();
    log_info("worker %d started (slot %u)", (int)pid, slot);
    return w;
}

void keel__sup_retire(struct worker *w, const char *reason)
{
    if (w->state != W_READY && w->state != W_STARTING)
        return;
    w->state = W_RETIRING;
    w->retire_reason = reason;
    keel__sup_count_restart(reason);
    struct worker *r = keel__sup.phase == P_RUNNING ? spawn() : NULL;
    w->replaced_by = r ? r->pid : 0;
    /* Never wait for a replacement for ever: drain anyway after 10 s. */
    w->kill_at_ns = keel__monotonic_ns() + 10LL * 1000000000;
}

void keel__sup_send_retire(struct worker *w)
{
    if (w->retire_sent)
        return;
    char arg[32];
    int deadline = keel__sup.conf->server.shutdown_timeout_s;
    snprintf(arg, sizeof arg, "retire %d", deadline);
    keel__sup_send(w, 'Q', ++keel__sup.next_id, arg);
    w->retire_sent = true;
    w->kill_at_ns = keel__monotonic_ns() + (int64_t)deadline * 1000000000;
    log_info("worker %d retiring (%s): draining for up to %d s", (int)w->pid, w->retire_reason,
             deadline);
}

static void begin_stopping(void);

static void reap(void)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return;
        if (pid == keel__sup.upgrade_pid) {
            keel__upgrade_reaped(status);
            continue;
        }
        struct worker *w = keel__sup_by_pid(pid);
        if (w == NULL)
            continue;
        unsigned slot = (unsigned)(w - keel__sup.w);
        enum wstate was = w->state;
        /* Out of every fan-out before anything below starts a new one. */
        w->state = W_STOPPING;
        keel__fanout_forget(pid);
        bool expected = was == W_RETIRING || was == W_STOPPING;
        if (WIFSIGNALED(status)) {
            int sig = WTERMSIG(status);
            if (keel__crash_is_fatal(sig)) {
                keel__sup_crash_report(w, slot, sig);
            } else if (!expected) {
                log_error("worker %d was killed by %s (%d)", (int)pid, keel__sup_signal_name(sig),
                          sig);
                keel__sup_count_restart("killed");
            } else if (sig == SIGKILL) {
                log_warn("worker %d killed at its drain deadline", (int)pid);
            }
        } else if (!expected) {
            log_error("worker %d exited with status %d", (int)pid, WEXITSTATUS(status));
            keel__sup_count_restart("exit");
            if (!keel__sup.ever_ready && WEXITSTATUS(status) != 0 && keel__sup.phase == P_RUNNING) {
                /* A worker that cannot start (schema behind, bad conf, ...) at
                 * start-up: keeld cannot serve; say so and stop. */
                log_error("a worker failed to start: keeld stops");
                keel__sup.exit_status = 1;
                close_worker_fds(w);
                w->state = W_FREE;
                begin_stopping();
                keel__sup.phase_until_ns = keel__monotonic_ns();
                continue;
            }
        } else {
            log_info("worker %d exited (%s)", (int)pid,
                     was == W_RETIRING ? w->retire_reason : "stopped");
        }
        if (was == W_STARTING && !expected)
            keel__sup.start_failures++;
        close_worker_fds(w);
        w->state = W_FREE;
        keel__sb_reset(slot);
        if (!expected && keel__sup.phase == P_RUNNING) {
            /* Back off only when workers die before they serve (a crash
             * loop at start-up); otherwise replace at once. */
            int64_t delay = 0;
            if (keel__sup.start_failures > 0) {
                delay = 100000000LL
                        << (keel__sup.start_failures < 6 ? keel__sup.start_failures : 6);
                if (delay > 5000000000LL)
                    delay = 5000000000LL;
            }
            keel__sup.spawn_after_ns = keel__monotonic_ns() + delay;
        }
    }
}

/* ------------------------------------------------------------ events */

static void on_frame(struct worker *w, struct keel__frame *f)
{
    if (f->kind == 'N') {
        if (w->state == W_STARTING) {
            w->state = W_READY;
            keel__sup.start_failures = 0;
            int64_t ms = (keel__monotonic_ns() - w->started_ns) / 1000000;
            log_info("worker %d serving %lld ms after its start", (int)w->pid, (long long)ms);
            keel__sup.ever_ready = true;
#ifdef HAVE_LIBSYSTEMD
            /* Type=notify: every worker serves, plugins loaded.  MAINPID
             * too, so that after an upgrade systemd follows the new
             * supervisor (the unit says NotifyAccess=all). */
            if (!keel__sup.sd_ready &&
                keel__sup_count_state(W_READY, W_READY) >= keel__sup.target) {
                keel__sup.sd_ready = true;
                sd_notifyf(0, "READY=1\nMAINPID=%ld\nSTATUS=serving with %u worker(s)",
                           (long)getpid(), keel__sup.target);
            }
#endif
        }
        if (f->body != NULL && strcmp(f->body, "settled") == 0 && !w->settled &&
            (w->state == W_READY || w->state == W_STARTING)) {
            /* Every plugin of it loaded or refused: its predecessor (a
             * recycled or stuck worker, or the previous keeld of an
             * upgrade) may drain now without a request meeting a plugin
             * that is still starting. */
            w->settled = true;
            for (unsigned i = 0; i < keel__sup.nslots; i++)
                if (keel__sup.w[i].state == W_RETIRING && keel__sup.w[i].replaced_by == w->pid)
                    keel__sup_send_retire(&keel__sup.w[i]);
            keel__upgrade_notify_serving();
        }
        free(f->body);
    } else if (f->kind == 'R') {
        keel__fanout_collect(w->pid, f->id, f->body);
    } else if (f->kind == 'F') {
        char verb[16] = "";
        const char *arg = NULL;
        size_t vn = strcspn(f->body, " ");
        snprintf(verb, sizeof verb, "%.*s", (int)(vn < 15 ? vn : 15), f->body);
        if (f->body[vn] == ' ')
            arg = f->body + vn + 1;
        if (strcmp(verb, "upgrade") == 0)
            keel__upgrade_start(w->pid, f->id);
        else
            keel__fanout_start(w->pid, f->id, verb, arg);
        free(f->body);
    } else {
        free(f->body);
    }
}

static void begin_stopping(void)
{
    keel__sup.phase = P_STOPPING;
    int deadline = keel__sup.conf->server.shutdown_timeout_s;
    /* New connections are refused from now on; the workers finish what
     * they have. */
    for (int i = 0; i < 2; i++)
        if (keel__sup.listen_fds[i] >= 0)
            shutdown(keel__sup.listen_fds[i], SHUT_RDWR);
    char arg[32];
    snprintf(arg, sizeof arg, "stop %d", deadline);
    for (unsigned i = 0; i < keel__sup.nslots; i++) {
        struct worker *w = &keel__sup.w[i];
        if (w->state == W_FREE)
            continue;
        if (w->state != W_RETIRING || !w->retire_sent)
            keel__sup_send(w, 'Q', ++keel__sup.next_id, arg);
        w->state = W_STOPPING;
    }
    /* Workers leave by the deadline on their own; the margin covers the
     * rest, then SIGKILL. */
    keel__sup.phase_until_ns = keel__monotonic_ns() + (int64_t)deadline * 1000000000 + 1000000000;
}

static void on_shutdown_signal(int sig)
{
    if (keel__sup.phase != P_RUNNING)
        return;
#ifdef HAVE_LIBSYSTEMD
    sd_notify(0, "STOPPING=1");
#endif
    int drain = keel__sup.conf->server.drain_s;
    log_info("%s: stopping: /health answers 503 draining for %d s while routes serve, then "
             "in-flight requests get up to %d s",
             sig == SIGTERM ? "SIGTERM" : "SIGINT", drain,
             keel__sup.conf->server.shutdown_timeout_s);
    if (keel__sup.upgrade_pid != 0) {
        kill(keel__sup.upgrade_pid, SIGKILL);
    }
    if (drain <= 0) {
        begin_stopping();
        return;
    }
    keel__sup.phase = P_DRAINING;
    keel__sup.phase_until_ns = keel__monotonic_ns() + (int64_t)drain * 1000000000;
    for (unsigned i = 0; i < keel__sup.nslots; i++)
        if (keel__sup.w[i].state != W_FREE)
            keel__sup_send(&keel__sup.w[i], 'Q', ++keel__sup.next_id, "drain");
}

static void tick(void)
{
    int64_t now = keel__monotonic_ns();
    if (keel__sup.phase == P_DRAINING && now >= keel__sup.phase_until_ns)
        begin_stopping();
    for (unsigned i = 0; i < keel__sup.nslots; i++) {
        struct worker *w = &keel__sup.w[i];
        if ((w->state == W_RETIRING || w->state == W_STOPPING) && w->kill_at_ns != 0 &&
            now >= w->kill_at_ns) {
            if (w->state == W_RETIRING && !w->retire_sent) {
                keel__sup_send_retire(w); /* its replacement never came: drain anyway */
                continue;
            }
            if (w->state == W_STOPPING && keel__sup.phase == P_STOPPING &&
                now < keel__sup.phase_until_ns)
                continue;
            kill(w->pid, SIGKILL);
            w->kill_at_ns = 0;
        }
    }
    if (keel__sup.phase == P_STOPPING && now >= keel__sup.phase_until_ns) {
        for (unsigned i = 0; i < keel__sup.nslots; i++)
            if (keel__sup.w[i].state != W_FREE && !keel__sup.w[i].killed) {
                log_warn("worker %d still running at the shutdown deadline: killed",
                         (int)keel__sup.w[i].pid);
                kill(keel__sup.w[i].pid, SIGKILL);
                keel__sup.w[i].killed = true;
            }
    }
    if (keel__sup.phase == P_RUNNING) {
        keel__sup_watchdog();
        keel__sup_leak_guard();
        unsigned live = keel__sup_count_state(W_STARTING, W_READY);
        while (live < keel__sup.target && now >= keel__sup.spawn_after_ns) {
            if (spawn() == NULL)
                break;
            live++;
        }
        keel__upgrade_poll();
    }
    keel__fanout_expire(now);
}

int keel__supervisor_run(struct keel__conf *conf, const char *self_path, char *const *argv,
                         keel__serve_fn serve)
{
    keel__sup.conf = conf;
    keel__sup.serve = serve;
    keel__sup.self_path = self_path;
    keel__sup.argv = argv;
    keel__sup.target = keel__per_cpu(conf->server.workers);
    keel__sup.nslots = keel__sup.target * 2 + 4;
    keel__sup.w = calloc(keel__sup.nslots, sizeof *keel__sup.w);
    if (keel__sup.w == NULL || keel__sb_create(keel__sup.nslots) != 0) {
        log_error("cannot set up the worker table");
        return 1;
    }
    for (unsigned i = 0; i < keel__sup.nslots; i++)
        keel__sup.w[i].ctl = keel__sup.w[i].crash = -1;

    if (!keel__upgrade_inherit()) {
        keel__sup.listen_fds[0] = keel__listen_tcp("main", conf->server.host, conf->server.port);
        if (keel__sup.listen_fds[0] < 0)
            return 1;
        keel__sup.listen_fds[1] = keel__listen_tcp("admin", conf->admin.host, conf->admin.port);
        if (keel__sup.listen_fds[1] < 0)
            return 1;
    }

    sigset_t sigs;
    sigemptyset(&sigs);
    int handled[] = {SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof handled / sizeof handled[0]; i++)
        sigaddset(&sigs, handled[i]);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    keel__sup.sfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
    if (keel__sup.sfd < 0) {
        log_error("signalfd: %s", strerror(errno));
        return 1;
    }
    log_info("keeld %s supervisor %d: main %s:%d, admin %s:%d, %u worker(s)", PACKAGE_VERSION,
             (int)getpid(), conf->server.host, conf->server.port, conf->admin.host,
             conf->admin.port, keel__sup.target);
    if (conf->limits.rate_per_user > 0) {
        /* One bucket per user for the whole server, in memory the workers
         * inherit. */
        struct keel__ratelimit_conf rc = {.rate = (unsigned)conf->limits.rate_per_user,
                                          .burst = (unsigned)conf->limits.rate_burst};
        keel__ratelimit *rl = NULL;
        if (keel__ratelimit_new_shared(&rc, &rl) != 0) {
            log_error("cannot set up the shared rate-limit table");
            return 1;
        }
        keel__ratelimit_set_server_wide(rl);
    }
    for (unsigned i = 0; i < keel__sup.target; i++)
        if (spawn() == NULL)
            return 1;

    struct pollfd *pfd = calloc(2 * keel__sup.nslots + 2, sizeof *pfd);
    struct worker **owner = calloc(2 * keel__sup.nslots + 2, sizeof *owner);
    if (pfd == NULL || owner == NULL)
        return 1;
    for (;;) {
        if ((keel__sup.phase == P_STOPPING || keel__sup.phase == P_HANDOVER) &&
            keel__sup_count_state(W_STARTING, W_READY) +
                    keel__sup_count_state(W_RETIRING, W_STOPPING) ==
                0)
            break;
        size_t n = 0;
        pfd[n] = (struct pollfd){.fd = keel__sup.sfd, .events = POLLIN};
        owner[n++] = NULL;
        for (unsigned i = 0; i < keel__sup.nslots; i++) {
            struct worker *w = &keel__sup.w[i];
            if (w->state == W_FREE)
                continue;
            pfd[n] = (struct pollfd){.fd = w->ctl, .events = POLLIN};
            owner[n++] = w;
            pfd[n] = (struct pollfd){.fd = w->crash, .events = POLLIN};
            owner[n++] = w;
        }
        int r = poll(pfd, n, 50);
        if (r < 0 && errno != EINTR)
            break;
        for (size_t i = 1; r > 0 && i < n; i++) {
            struct worker *w = owner[i];
            if (pfd[i].revents == 0 || w->state == W_FREE)
                continue;
            if (pfd[i].fd == w->crash) {
                keel__sup_crash_read(w);
                continue;
            }
            if (keel__chan_read(w->ctl, &w->in) != 0) {
                /* EOF: the worker is going; SIGCHLD tells the rest. */
                pfd[i].fd = -1;
            }
            struct keel__frame f;
            bool bad = false;
            while (w->state != W_FREE && keel__chan_next(&w->in, &f, &bad))
                on_frame(w, &f);
        }
        if (r > 0 && (pfd[0].revents & POLLIN)) {
            struct signalfd_siginfo si;
            while (read(keel__sup.sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                int sig = (int)si.ssi_signo;
                if (sig == SIGCHLD)
                    reap();
                else if (sig == SIGHUP) {
                    log_info("SIGHUP: reloading every plugin in every worker");
#ifdef HAVE_LIBSYSTEMD
                    /* Informational: systemd 252 does not wait for the
                     * reload to finish (that needs Type=notify-reload). */
                    sd_notify(0, "RELOADING=1");
#endif
                    keel__fanout_start(0, 0, "reload", NULL);
#ifdef HAVE_LIBSYSTEMD
                    sd_notify(0, "READY=1");
#endif
                } else if (sig == SIGTERM || sig == SIGINT) {
                    on_shutdown_signal(sig);
                } else if (sig == SIGUSR2) {
                    log_info("SIGUSR2: binary upgrade");
                    keel__upgrade_start(0, 0);
                } else if (sig == SIGUSR1) {
                    /* logrotate renamed the files: the supervisor's error
                     * log here, each worker's own descriptors there. */
                    keel__log_reopen();
                    for (unsigned i = 0; i < keel__sup.nslots; i++)
                        if (keel__sup.w[i].state != W_FREE)
                            kill(keel__sup.w[i].pid, SIGUSR1);
                }
            }
        }
        reap();
        tick();
    }
    free(pfd);
    free(owner);
    for (int i = 0; i < 2; i++)
        if (keel__sup.listen_fds[i] >= 0)
            close(keel__sup.listen_fds[i]);
    for (size_t i = 0; i < keel__sup.nplugins; i++)
        free(keel__sup.plugins[i].last_report);
    free(keel__sup.plugins);
    keel__fanout_free_all();
    free(keel__sup.w);
    close(keel__sup.sfd);
    log_info(keel__sup.phase == P_HANDOVER ? "keeld handed over to its new binary"
                                           : "keeld stopped");
    keel__conf_free(keel__sup.conf);
    return keel__sup.exit_status;
}
