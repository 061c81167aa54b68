#include "config.h"

#include "process/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "http/server.h"
#include "identity/ratelimit.h"
#include "plugin/loader.h"
#include "plugin/registry.h"
#include "process/channel.h"
#include "util/crash.h"
#include "process/merge.h"
#include "util/scoreboard.h"
#include "process/worker.h"
#include "util/log.h"

enum wstate { W_FREE = 0, W_STARTING, W_READY, W_RETIRING, W_STOPPING };

struct worker {
    enum wstate state;
    pid_t pid;
    int ctl;   /* supervisor's end of the control socketpair */
    int crash; /* read end of the crash pipe */
    struct keel__chan_buf in;
    char crash_text[16384];
    size_t crash_len;
    int64_t started_ns;
    int64_t kill_at_ns; /* retiring/stopping: SIGKILL past this */
    const char *retire_reason;
    pid_t replaced_by; /* retiring: waits for this worker to be ready */
    bool retire_sent;
    bool killed;
};

struct plugin_state {
    char name[64];
    int64_t crash_at[64]; /* monotonic ns of crashes since the last reload */
    size_t ncrash;
    unsigned long long crashes, hangs;
    int quarantine; /* 0 or KEEL__REASON_CRASHED / KEEL__REASON_HUNG */
    char *last_report;
};

#define MAX_PARTS 64
struct fanout {
    unsigned long long id;
    pid_t origin; /* 0: the supervisor itself (SIGHUP) */
    unsigned long long origin_id;
    char verb[16];
    char arg[256];
    pid_t expect[MAX_PARTS];
    char *part[MAX_PARTS];
    bool answered[MAX_PARTS];
    size_t n;
    int64_t deadline_ns;
    struct fanout *next;
};

enum phase { P_RUNNING, P_DRAINING, P_STOPPING, P_HANDOVER };

static const char *const restart_reasons[] = {"crash", "killed",   "exit", "hang",
                                              "rss",   "requests", NULL};

static struct {
    struct keel__conf *conf;
    keel__serve_fn serve;
    const char *self_path;
    char *const *argv;
    int listen_fds[2];
    int sfd;
    struct worker *w; /* by scoreboard slot */
    unsigned nslots;
    unsigned target;
    struct plugin_state *plugins;
    size_t nplugins;
    struct fanout *fanouts;
    unsigned long long next_id;
    unsigned long long restarts[8];
    enum phase phase;
    int64_t phase_until_ns;
    bool ever_ready;
    bool sd_ready;      /* READY=1 sent to systemd */
    int start_failures; /* consecutive workers that died before serving */
    int64_t spawn_after_ns;
    int64_t last_rss_check_ns;
    /* Binary upgrade in progress. */
    pid_t upgrade_pid;
    int upgrade_fd;
    char upgrade_msg[512];
    size_t upgrade_len;
    int64_t upgrade_deadline_ns;
    pid_t upgrade_origin;
    unsigned long long upgrade_origin_id;
    int notify_fd; /* we are the new binary: tell the old one when serving */
    int exit_status;
} sup = {.sfd = -1, .upgrade_fd = -1, .notify_fd = -1, .listen_fds = {-1, -1}};

/* pipe2() wants _GNU_SOURCE; this is the portable spelling. */
static int pipe_cloexec(int p[2])
{
    if (pipe(p) != 0)
        return -1;
    fcntl(p[0], F_SETFD, FD_CLOEXEC);
    fcntl(p[1], F_SETFD, FD_CLOEXEC);
    return 0;
}

static int64_t now_ns(void)
{
    return keel__monotonic_ns();
}

static void count_restart(const char *reason)
{
    for (size_t i = 0; restart_reasons[i] != NULL; i++)
        if (strcmp(restart_reasons[i], reason) == 0)
            sup.restarts[i]++;
}

static struct worker *by_pid(pid_t pid)
{
    for (unsigned i = 0; i < sup.nslots; i++)
        if (sup.w[i].state != W_FREE && sup.w[i].pid == pid)
            return &sup.w[i];
    return NULL;
}

static unsigned count_state(enum wstate a, enum wstate b)
{
    unsigned n = 0;
    for (unsigned i = 0; i < sup.nslots; i++)
        if (sup.w[i].state == a || sup.w[i].state == b)
            n++;
    return n;
}

static struct plugin_state *plugin_get(const char *name)
{
    for (size_t i = 0; i < sup.nplugins; i++)
        if (strcmp(sup.plugins[i].name, name) == 0)
            return &sup.plugins[i];
    struct plugin_state *grown = realloc(sup.plugins, (sup.nplugins + 1) * sizeof *grown);
    if (grown == NULL)
        return NULL;
    sup.plugins = grown;
    struct plugin_state *p = &sup.plugins[sup.nplugins++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    return p;
}

static void send_to(struct worker *w, char kind, unsigned long long id, const char *body)
{
    if (w->ctl < 0)
        return;
    if (keel__chan_send(w->ctl, kind, id, body, body ? strlen(body) : 0, 2000) != 0)
        log_warn("cannot reach worker %d on its control channel", (int)w->pid);
}

/* ------------------------------------------------------------ listeners */

static int bind_listener(const char *name, const char *host, int port)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE};
    struct addrinfo *ai = NULL;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int gai = getaddrinfo(host, portstr, &hints, &ai);
    if (gai != 0) {
        log_error("%s listener: cannot resolve %s: %s", name, host, gai_strerror(gai));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        log_error("%s listener: cannot listen on %s:%d: %s", name, host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    /* Workers poll it; accept must never block one of their threads. */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* KEEL_LISTEN_FDS="main,admin": sockets handed over by the keeld being
 * upgraded. */
static bool inherit_listeners(void)
{
    const char *v = getenv("KEEL_LISTEN_FDS");
    if (v == NULL || *v == '\0')
        return false;
    int a = -1, b = -1;
    if (sscanf(v, "%d,%d", &a, &b) != 2 || a < 0 || b < 0) {
        log_error("KEEL_LISTEN_FDS=%s: expected two descriptors \"main,admin\"", v);
        return false;
    }
    sup.listen_fds[0] = a;
    sup.listen_fds[1] = b;
    fcntl(a, F_SETFD, FD_CLOEXEC);
    fcntl(b, F_SETFD, FD_CLOEXEC);
    unsetenv("KEEL_LISTEN_FDS");
    log_info("serving the listening sockets handed over by the previous keeld (fds %d, %d)", a, b);
    return true;
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

static void child_after_fork(unsigned slot, int ctl, int crash_w)
{
    /* Nothing of the supervisor's other workers may stay open here, or
     * their channels would never see EOF. */
    for (unsigned i = 0; i < sup.nslots; i++) {
        if (sup.w[i].ctl >= 0)
            close(sup.w[i].ctl);
        if (sup.w[i].crash >= 0)
            close(sup.w[i].crash);
    }
    if (sup.sfd >= 0)
        close(sup.sfd);
    if (sup.upgrade_fd >= 0)
        close(sup.upgrade_fd);
    if (sup.notify_fd >= 0)
        close(sup.notify_fd);
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
    keel__sb_bind(slot);
    atomic_store(&keel__sb_self()->pid, (int)getpid());
    keel__crash_install(crash_w);
    keel__worker_attach(ctl);
    /* Connection limits become each worker's share of the server's (see
     * docs/operations.md): rounded up, so no limit drops to zero.  The
     * per-user rate limit needs no share: its buckets are shared. */
    struct keel__conf *c = sup.conf;
    unsigned n = sup.target;
    c->limits.max_connections = (int)(((unsigned)c->limits.max_connections + n - 1) / n);
    c->limits.max_per_ip = (int)(((unsigned)c->limits.max_per_ip + n - 1) / n);
    /* server.threads is the server's too (default 4 per CPU): workers
     * sharing CPUs with more threads in all would only add switching. */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned threads = c->server.threads > 0 ? (unsigned)c->server.threads
                                             : 4u * (unsigned)(ncpu > 0 ? ncpu : 1);
    threads = (threads + n - 1) / n;
    c->server.threads = (int)(threads < 2 ? 2 : threads);
    keel__rt.listen_inherited = true;
    keel__rt.listen_fds[0] = sup.listen_fds[0];
    keel__rt.listen_fds[1] = sup.listen_fds[1];
    for (size_t i = 0; i < sup.nplugins; i++)
        if (sup.plugins[i].quarantine != 0)
            (void)keel__plugins_quarantine(sup.plugins[i].name, sup.plugins[i].quarantine);
}

static struct worker *spawn(void)
{
    unsigned slot = sup.nslots;
    for (unsigned i = 0; i < sup.nslots && slot == sup.nslots; i++)
        if (sup.w[i].state == W_FREE)
            slot = i;
    if (slot == sup.nslots) {
        log_warn("no free worker slot: replacement delayed");
        return NULL;
    }
    int sv[2], cp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return NULL;
    if (pipe_cloexec(cp) != 0) {
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
        int status = sup.serve(sup.conf);
        fflush(NULL);
        _exit(status);
    }
    close(sv[1]);
    close(cp[1]);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    fcntl(cp[0], F_SETFL, fcntl(cp[0], F_GETFL) | O_NONBLOCK);
    struct worker *w = &sup.w[slot];
    memset(w, 0, sizeof *w);
    w->state = W_STARTING;
    w->pid = pid;
    w->ctl = sv[0];
    w->crash = cp[0];
    w->started_ns = now_ns();
    log_info("worker %d started (slot %u)", (int)pid, slot);
    return w;
}

/* Starts a replacement for w, then (once it serves) drains w. */
static void retire(struct worker *w, const char *reason)
{
    if (w->state != W_READY && w->state != W_STARTING)
        return;
    w->state = W_RETIRING;
    w->retire_reason = reason;
    count_restart(reason);
    struct worker *r = sup.phase == P_RUNNING ? spawn() : NULL;
    w->replaced_by = r ? r->pid : 0;
    /* Never wait for a replacement for ever: drain anyway after 10 s. */
    w->kill_at_ns = now_ns() + 10LL * 1000000000;
}

static void send_retire(struct worker *w)
{
    if (w->retire_sent)
        return;
    char arg[32];
    int deadline = sup.conf->server.shutdown_timeout_s;
    snprintf(arg, sizeof arg, "retire %d", deadline);
    send_to(w, 'Q', ++sup.next_id, arg);
    w->retire_sent = true;
    w->kill_at_ns = now_ns() + (int64_t)deadline * 1000000000;
    log_info("worker %d retiring (%s): draining for up to %d s", (int)w->pid, w->retire_reason,
             deadline);
}

/* ------------------------------------------------------------ fan-out */

static void fanout_finish(struct fanout *f);
static void fanout_start(pid_t origin, unsigned long long origin_id, const char *verb,
                         const char *arg);

static void fanout_start(pid_t origin, unsigned long long origin_id, const char *verb,
                         const char *arg)
{
    struct fanout *f = calloc(1, sizeof *f);
    if (f == NULL) {
        struct worker *o = by_pid(origin);
        if (o != NULL)
            send_to(o, 'R', origin_id, "null");
        return;
    }
    f->id = ++sup.next_id;
    f->origin = origin;
    f->origin_id = origin_id;
    snprintf(f->verb, sizeof f->verb, "%s", verb);
    snprintf(f->arg, sizeof f->arg, "%s", arg ? arg : "");
    int timeout_ms = 10000;
    if (strcmp(verb, "reload") == 0) {
        timeout_ms = sup.conf->containment.init_timeout_ms * (int)(sup.conf->nplugins + 1) + 20000;
        /* A reload of a plugin lifts its quarantine: the operator asked
         * for it to run again. */
        for (size_t i = 0; i < sup.nplugins; i++) {
            struct plugin_state *p = &sup.plugins[i];
            if (f->arg[0] == '\0' || strcmp(f->arg, p->name) == 0) {
                if (p->quarantine != 0)
                    log_info("plugin %s: quarantine lifted by a reload", p->name);
                p->quarantine = 0;
                p->ncrash = 0;
            }
        }
    }
    f->deadline_ns = now_ns() + (int64_t)timeout_ms * 1000000;
    char body[300];
    snprintf(body, sizeof body, "%s%s%s", verb, f->arg[0] ? " " : "", f->arg);
    /* A reload must reach a worker that is still starting too (it may have
     * read the plugin before the change): its answer comes once it serves. */
    bool starting_too = strcmp(verb, "reload") == 0 || strcmp(verb, "evict") == 0 ||
                        strcmp(verb, "quarantine") == 0;
    /* A worker serves HTTP a moment before it says ready: the one asking,
     * or all of them at start-up, are asked even while "starting". */
    bool none_ready = count_state(W_READY, W_READY) == 0;
    for (unsigned i = 0; i < sup.nslots && f->n < MAX_PARTS; i++) {
        struct worker *w = &sup.w[i];
        bool starting_ok = starting_too || none_ready || w->pid == origin;
        if (w->state != W_READY && !(starting_ok && w->state == W_STARTING))
            continue;
        f->expect[f->n++] = w->pid;
        send_to(w, 'Q', f->id, body);
    }
    f->next = sup.fanouts;
    sup.fanouts = f;
    if (f->n == 0)
        fanout_finish(f);
}

static void fanout_unlink(struct fanout *f)
{
    for (struct fanout **pp = &sup.fanouts; *pp != NULL; pp = &(*pp)->next)
        if (*pp == f) {
            *pp = f->next;
            return;
        }
}

static json_t *overlay_plugins(json_t *d)
{
    json_t *list = json_object_get(d, "plugins");
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e)
    {
        const char *name = json_string_value(json_object_get(e, "name"));
        struct plugin_state *p = NULL;
        for (size_t k = 0; name != NULL && k < sup.nplugins; k++)
            if (strcmp(sup.plugins[k].name, name) == 0)
                p = &sup.plugins[k];
        json_object_set_new(e, "crashes", json_integer(p ? (json_int_t)p->crashes : 0));
        json_object_set_new(e, "hangs", json_integer(p ? (json_int_t)p->hangs : 0));
        json_object_set_new(e, "last_crash",
                            p && p->last_report ? json_string(p->last_report) : json_null());
        if (p != NULL && p->quarantine != 0) {
            json_object_set_new(e, "state", json_string("quarantined"));
            json_object_set_new(e, "reason", json_string(keel__reason_name(p->quarantine)));
        }
    }
    json_object_set_new(d, "workers", json_integer(count_state(W_READY, W_READY)));
    return d;
}

static char *supervisor_metrics(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    if (m == NULL)
        return NULL;
    fprintf(m,
            "# HELP keel_workers Worker processes serving.\n# TYPE keel_workers gauge\n"
            "keel_workers %u\n",
            count_state(W_READY, W_READY));
    fprintf(m, "# HELP keel_worker_restarts_total Workers replaced, by reason.\n"
               "# TYPE keel_worker_restarts_total counter\n");
    for (size_t i = 0; restart_reasons[i] != NULL; i++)
        fprintf(m, "keel_worker_restarts_total{reason=\"%s\"} %llu\n", restart_reasons[i],
                sup.restarts[i]);
    fprintf(m, "# HELP keel_plugin_crashes_total Worker crashes inside the plugin's code.\n"
               "# TYPE keel_plugin_crashes_total counter\n");
    for (size_t i = 0; i < sup.nplugins; i++)
        fprintf(m, "keel_plugin_crashes_total{plugin=\"%s\"} %llu\n", sup.plugins[i].name,
                sup.plugins[i].crashes);
    fprintf(m, "# HELP keel_plugin_hangs_total Handlers that ran past plugins.handler_timeout_ms.\n"
               "# TYPE keel_plugin_hangs_total counter\n");
    for (size_t i = 0; i < sup.nplugins; i++)
        fprintf(m, "keel_plugin_hangs_total{plugin=\"%s\"} %llu\n", sup.plugins[i].name,
                sup.plugins[i].hangs);
    fprintf(m, "# HELP keel_plugin_quarantined 1 while the plugin is quarantined.\n"
               "# TYPE keel_plugin_quarantined gauge\n");
    for (size_t i = 0; i < sup.nplugins; i++)
        fprintf(m, "keel_plugin_quarantined{plugin=\"%s\"} %d\n", sup.plugins[i].name,
                sup.plugins[i].quarantine != 0);
    fclose(m);
    return buf;
}

static void fanout_finish(struct fanout *f)
{
    fanout_unlink(f);
    char *answer = NULL;
    if (strcmp(f->verb, "metrics") == 0) {
        const char *texts[MAX_PARTS + 1];
        size_t n = 0;
        for (size_t i = 0; i < f->n; i++)
            if (f->part[i] != NULL)
                texts[n++] = f->part[i];
        char *own = supervisor_metrics();
        texts[n++] = own;
        answer = keel__merge_metrics(texts, n);
        free(own);
    } else if (strcmp(f->verb, "evict") == 0) {
        json_int_t total = 0;
        for (size_t i = 0; i < f->n; i++) {
            json_t *j = f->part[i] ? json_loads(f->part[i], 0, NULL) : NULL;
            total += json_integer_value(json_object_get(j, "evicted"));
            json_decref(j);
        }
        json_t *merged = json_pack("{s:I}", "evicted", total);
        answer = merged ? json_dumps(merged, JSON_COMPACT) : NULL;
        json_decref(merged);
    } else if (strcmp(f->verb, "describe") == 0 || strcmp(f->verb, "reload") == 0 ||
               strcmp(f->verb, "status") == 0) {
        json_t *parts[MAX_PARTS];
        size_t n = 0;
        for (size_t i = 0; i < f->n; i++)
            if (f->part[i] != NULL && (parts[n] = json_loads(f->part[i], 0, NULL)) != NULL)
                n++;
        json_t *merged;
        if (strcmp(f->verb, "describe") == 0)
            merged = overlay_plugins(keel__merge_describe(parts, n));
        else if (strcmp(f->verb, "reload") == 0)
            merged = keel__merge_reload(parts, n);
        else {
            merged = keel__merge_status(parts, n);
            json_t *pids = json_array();
            for (size_t i = 0; i < f->n; i++)
                json_array_append_new(pids, json_integer(f->expect[i]));
            json_object_set_new(merged, "workers", pids);
            json_object_set_new(merged, "supervisor_pid", json_integer(getpid()));
        }
        for (size_t i = 0; i < n; i++)
            json_decref(parts[i]);
        answer = merged ? json_dumps(merged, JSON_COMPACT) : NULL;
        json_decref(merged);
    }
    if (f->origin != 0) {
        struct worker *o = by_pid(f->origin);
        if (o != NULL)
            send_to(o, 'R', f->origin_id, answer ? answer : "null");
    } else if (strcmp(f->verb, "reload") == 0) {
        log_info("reload result: %s", answer ? answer : "(none)");
    } else if (strcmp(f->verb, "quarantine") == 0) {
        char name[64] = "";
        sscanf(f->arg, "%63s", name);
        log_info("plugin %s quarantined in every worker (%zu)", name, f->n);
    }
    if (strcmp(f->verb, "reload") == 0) {
        /* Workers started from now on read the conf.d just reloaded. */
        struct keel__conf *fresh = NULL;
        char err[512];
        if (keel__conf_load(sup.conf->dir, &fresh, err, sizeof err) == 0 &&
            keel__conf_apply_env(fresh, err, sizeof err) == 0) {
            keel__conf_free(sup.conf);
            sup.conf = fresh;
        } else {
            keel__conf_free(fresh);
        }
    }
    free(answer);
    for (size_t i = 0; i < f->n; i++)
        free(f->part[i]);
    free(f);
}

static void fanout_collect(pid_t from, unsigned long long id, char *body)
{
    for (struct fanout *f = sup.fanouts; f != NULL; f = f->next) {
        if (f->id != id)
            continue;
        for (size_t i = 0; i < f->n; i++) {
            if (f->expect[i] == from && !f->answered[i]) {
                f->answered[i] = true;
                f->part[i] = body;
                body = NULL;
            }
        }
        bool all = true;
        for (size_t i = 0; i < f->n; i++)
            all = all && f->answered[i];
        if (all)
            fanout_finish(f);
        break;
    }
    free(body);
}

/* A worker that went away answers nothing: stop waiting for it. */
static void fanout_forget(pid_t pid)
{
    struct fanout *f = sup.fanouts;
    while (f != NULL) {
        struct fanout *next = f->next;
        bool all = true;
        for (size_t i = 0; i < f->n; i++) {
            if (f->expect[i] == pid)
                f->answered[i] = true;
            all = all && f->answered[i];
        }
        if (all)
            fanout_finish(f);
        f = next;
    }
}

/* ------------------------------------------------------------ quarantine */

static void quarantine(struct plugin_state *p, int reason)
{
    if (p->quarantine != 0)
        return;
    p->quarantine = reason;
    log_error("plugin %s quarantined (%s): its routes answer their fallback stubs with "
              "X-Keel-Fallback: %s; reason=%s until `keelctl reload %s`",
              p->name, keel__reason_name(reason), p->name, keel__reason_name(reason), p->name);
    char arg[128];
    snprintf(arg, sizeof arg, "%s %s", p->name, reason == KEEL__REASON_HUNG ? "hung" : "crashed");
    /* Workers forked from now on never load it; the running ones drop it
     * (fanout_finish logs once all have). */
    fanout_start(0, 0, "quarantine", arg);
}

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGSEGV:
        return "SIGSEGV";
    case SIGBUS:
        return "SIGBUS";
    case SIGILL:
        return "SIGILL";
    case SIGFPE:
        return "SIGFPE";
    case SIGABRT:
        return "SIGABRT";
    case SIGSYS:
        return "SIGSYS";
    case SIGKILL:
        return "SIGKILL";
    case SIGTERM:
        return "SIGTERM";
    default:
        return "signal";
    }
}

static void drain_crash_pipe(struct worker *w)
{
    while (w->crash >= 0 && w->crash_len < sizeof w->crash_text - 1) {
        ssize_t r = read(w->crash, w->crash_text + w->crash_len,
                         sizeof w->crash_text - 1 - w->crash_len);
        if (r <= 0)
            break;
        w->crash_len += (size_t)r;
    }
    w->crash_text[w->crash_len] = '\0';
}

/* One line: the backtrace's frames joined by " | ". */
static void flatten(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' '))
        s[--n] = '\0';
    for (char *p = s; *p != '\0'; p++)
        if (*p == '\n')
            *p = '|';
}

static void report_crash(struct worker *w, unsigned slot, int sig)
{
    drain_crash_pipe(w);
    flatten(w->crash_text);
    struct keel__sb_worker *sb = keel__sb_worker(slot);
    int ct = sb ? atomic_load(&sb->crash_thread) : -1;
    struct keel__sb_thread t;
    bool in_plugin = false;
    if (sb != NULL && ct >= 0 && ct < KEEL__SB_THREADS) {
        /* The worker is dead: its slot is final. */
        const struct keel__sb_thread *s = &sb->threads[ct];
        if (atomic_load(&s->seq) != 0) {
            in_plugin = true;
            t = *s;
            t.plugin[sizeof t.plugin - 1] = '\0';
            t.route[sizeof t.route - 1] = '\0';
        }
    }
    count_restart("crash");
    if (!in_plugin) {
        log_error("crash report: core crash: worker %d died of %s outside plugin code; no plugin "
                  "is quarantined; backtrace: %s",
                  (int)w->pid, signal_name(sig), w->crash_text[0] ? w->crash_text : "(none)");
        return;
    }
    static const char *const kinds[] = {"-", "init", "handler", "fini", "task"};
    char report[2048];
    snprintf(report, sizeof report,
             "worker %d died of %s in plugin %s generation %llu %s %s request %llu; backtrace: %s",
             (int)w->pid, signal_name(sig), t.plugin, (unsigned long long)t.generation,
             t.kind >= 0 && t.kind <= 4 ? kinds[t.kind] : "-", t.route,
             (unsigned long long)t.request_id, w->crash_text[0] ? w->crash_text : "(none)");
    log_error("crash report: plugin=%s generation=%llu route=\"%s\" request=%llu signal=%s "
              "stage=%s worker=%d backtrace: %s",
              t.plugin, (unsigned long long)t.generation, t.route, (unsigned long long)t.request_id,
              signal_name(sig), t.kind >= 0 && t.kind <= 4 ? kinds[t.kind] : "-", (int)w->pid,
              w->crash_text[0] ? w->crash_text : "(none)");
    struct plugin_state *p = plugin_get(t.plugin);
    if (p == NULL)
        return;
    p->crashes++;
    free(p->last_report);
    p->last_report = strdup(report);
    int64_t now = now_ns(), window = (int64_t)sup.conf->containment.crash_window_s * 1000000000;
    size_t keep = 0;
    for (size_t i = 0; i < p->ncrash; i++)
        if (now - p->crash_at[i] <= window)
            p->crash_at[keep++] = p->crash_at[i];
    p->ncrash = keep;
    if (p->ncrash < sizeof p->crash_at / sizeof p->crash_at[0])
        p->crash_at[p->ncrash++] = now;
    if ((int)p->ncrash >= sup.conf->containment.crash_limit)
        quarantine(p, KEEL__REASON_CRASHED);
}

static void begin_stopping(void);

static void reap(void)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return;
        if (pid == sup.upgrade_pid) {
            char why[700];
            if (WIFEXITED(status))
                snprintf(why, sizeof why, "the new keeld exited with status %d before serving",
                         WEXITSTATUS(status));
            else
                snprintf(why, sizeof why, "the new keeld died of signal %d before serving",
                         WTERMSIG(status));
            /* Anything it wrote on the way out says more. */
            if (sup.upgrade_fd >= 0) {
                ssize_t r = read(sup.upgrade_fd, sup.upgrade_msg + sup.upgrade_len,
                                 sizeof sup.upgrade_msg - 1 - sup.upgrade_len);
                if (r > 0)
                    sup.upgrade_len += (size_t)r;
                sup.upgrade_msg[sup.upgrade_len] = '\0';
            }
            if (sup.upgrade_len > 0 && strncmp(sup.upgrade_msg, "ready", 5) != 0)
                snprintf(why + strlen(why), sizeof why - strlen(why), ": %.400s", sup.upgrade_msg);
            log_error("upgrade failed: %s; this keeld keeps serving", why);
            struct worker *o = by_pid(sup.upgrade_origin);
            if (o != NULL) {
                json_t *j = json_pack("{s:b, s:s}", "ok", 0, "error", why);
                char *text = json_dumps(j, JSON_COMPACT);
                send_to(o, 'R', sup.upgrade_origin_id, text);
                free(text);
                json_decref(j);
            }
            if (sup.upgrade_fd >= 0)
                close(sup.upgrade_fd);
            sup.upgrade_fd = -1;
            sup.upgrade_pid = 0;
            continue;
        }
        struct worker *w = by_pid(pid);
        if (w == NULL)
            continue;
        unsigned slot = (unsigned)(w - sup.w);
        enum wstate was = w->state;
        /* Out of every fan-out before anything below starts a new one. */
        w->state = W_STOPPING;
        fanout_forget(pid);
        bool expected = was == W_RETIRING || was == W_STOPPING;
        if (WIFSIGNALED(status)) {
            int sig = WTERMSIG(status);
            bool fatal = sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGFPE ||
                         sig == SIGABRT || sig == SIGSYS;
            if (fatal) {
                report_crash(w, slot, sig);
            } else if (!expected) {
                log_error("worker %d was killed by %s (%d)", (int)pid, signal_name(sig), sig);
                count_restart("killed");
            } else if (sig == SIGKILL) {
                log_warn("worker %d killed at its drain deadline", (int)pid);
            }
        } else if (!expected) {
            log_error("worker %d exited with status %d", (int)pid, WEXITSTATUS(status));
            count_restart("exit");
            if (!sup.ever_ready && WEXITSTATUS(status) != 0 && sup.phase == P_RUNNING) {
                /* A worker that cannot start (schema behind, bad conf, ...) at
                 * start-up: keeld cannot serve; say so and stop. */
                log_error("a worker failed to start: keeld stops");
                sup.exit_status = 1;
                close_worker_fds(w);
                w->state = W_FREE;
                begin_stopping();
                sup.phase_until_ns = now_ns();
                continue;
            }
        } else {
            log_info("worker %d exited (%s)", (int)pid,
                     was == W_RETIRING ? w->retire_reason : "stopped");
        }
        if (was == W_STARTING && !expected)
            sup.start_failures++;
        close_worker_fds(w);
        w->state = W_FREE;
        keel__sb_reset(slot);
        if (!expected && sup.phase == P_RUNNING) {
            /* Back off only when workers die before they serve (a crash
             * loop at start-up); otherwise replace at once. */
            int64_t delay = 0;
            if (sup.start_failures > 0) {
                delay = 100000000LL << (sup.start_failures < 6 ? sup.start_failures : 6);
                if (delay > 5000000000LL)
                    delay = 5000000000LL;
            }
            sup.spawn_after_ns = now_ns() + delay;
        }
    }
}

/* ------------------------------------------------------------ upgrade */

static void upgrade_start(pid_t origin, unsigned long long origin_id)
{
    char why[256] = "";
    if (sup.upgrade_pid != 0)
        snprintf(why, sizeof why, "an upgrade is already in progress");
    else if (sup.phase != P_RUNNING)
        snprintf(why, sizeof why, "keeld is stopping");
    int rp[2] = {-1, -1};
    if (why[0] == '\0' && pipe_cloexec(rp) != 0)
        snprintf(why, sizeof why, "pipe: %s", strerror(errno));
    pid_t pid = -1;
    if (why[0] == '\0') {
        fflush(NULL);
        pid = fork();
        if (pid < 0)
            snprintf(why, sizeof why, "fork: %s", strerror(errno));
    }
    if (pid == 0) {
        /* The new binary gets the sockets (without close-on-exec) and a
         * pipe on which it says when its workers serve. */
        close(rp[0]);
        fcntl(sup.listen_fds[0], F_SETFD, 0);
        fcntl(sup.listen_fds[1], F_SETFD, 0);
        fcntl(rp[1], F_SETFD, 0);
        char v[64];
        snprintf(v, sizeof v, "%d,%d", sup.listen_fds[0], sup.listen_fds[1]);
        setenv("KEEL_LISTEN_FDS", v, 1);
        snprintf(v, sizeof v, "%d", rp[1]);
        setenv("KEEL_UPGRADE_FD", v, 1);
        /* Quarantines carry over: "name:reason,name:reason". */
        char q[2048] = "";
        size_t qn = 0;
        for (size_t i = 0; i < sup.nplugins && qn < sizeof q - 80; i++)
            if (sup.plugins[i].quarantine != 0)
                qn += (size_t)snprintf(q + qn, sizeof q - qn, "%s%s:%d", qn ? "," : "",
                                       sup.plugins[i].name, sup.plugins[i].quarantine);
        if (qn > 0)
            setenv("KEEL_QUARANTINE", q, 1);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execv(sup.self_path, sup.argv);
        char msg[300];
        int n = snprintf(msg, sizeof msg, "cannot run %s: %s", sup.self_path, strerror(errno));
        if (n > 0 && write(rp[1], msg, (size_t)n) < 0)
            _exit(127);
        _exit(127);
    }
    if (why[0] != '\0') {
        if (rp[0] >= 0) {
            close(rp[0]);
            close(rp[1]);
        }
        log_error("upgrade refused: %s", why);
        struct worker *o = by_pid(origin);
        if (o != NULL) {
            json_t *j = json_pack("{s:b, s:s}", "ok", 0, "error", why);
            char *text = json_dumps(j, JSON_COMPACT);
            send_to(o, 'R', origin_id, text);
            free(text);
            json_decref(j);
        }
        return;
    }
    close(rp[1]);
    fcntl(rp[0], F_SETFL, fcntl(rp[0], F_GETFL) | O_NONBLOCK);
    sup.upgrade_pid = pid;
    sup.upgrade_fd = rp[0];
    sup.upgrade_len = 0;
    sup.upgrade_origin = origin;
    sup.upgrade_origin_id = origin_id;
    sup.upgrade_deadline_ns = now_ns() + ((int64_t)sup.conf->containment.init_timeout_ms *
                                              (int64_t)(sup.conf->nplugins + 1) +
                                          30000) *
                                             1000000;
    log_info("upgrade: started %s as pid %d with the listening sockets", sup.self_path, (int)pid);
}

static void upgrade_poll(void)
{
    if (sup.upgrade_fd < 0)
        return;
    ssize_t r = read(sup.upgrade_fd, sup.upgrade_msg + sup.upgrade_len,
                     sizeof sup.upgrade_msg - 1 - sup.upgrade_len);
    if (r > 0)
        sup.upgrade_len += (size_t)r;
    sup.upgrade_msg[sup.upgrade_len] = '\0';
    if (strncmp(sup.upgrade_msg, "ready", 5) == 0) {
        log_info("upgrade: the new keeld (pid %d) serves; this one drains its workers and exits",
                 (int)sup.upgrade_pid);
        struct worker *o = by_pid(sup.upgrade_origin);
        if (o != NULL) {
            json_t *j = json_pack("{s:b, s:i, s:i}", "ok", 1, "pid", (int)sup.upgrade_pid,
                                  "previous_pid", (int)getpid());
            char *text = json_dumps(j, JSON_COMPACT);
            send_to(o, 'R', sup.upgrade_origin_id, text);
            free(text);
            json_decref(j);
        }
        close(sup.upgrade_fd);
        sup.upgrade_fd = -1;
        /* The new supervisor outlives us: it is no longer ours to reap. */
        sup.upgrade_pid = 0;
        sup.phase = P_HANDOVER;
        for (unsigned i = 0; i < sup.nslots; i++) {
            struct worker *w = &sup.w[i];
            if (w->state == W_READY || w->state == W_STARTING || w->state == W_RETIRING) {
                w->state = W_RETIRING;
                w->retire_reason = "upgrade";
                send_retire(w);
            }
        }
        return;
    }
    if (now_ns() > sup.upgrade_deadline_ns) {
        log_error("upgrade failed: the new keeld (pid %d) did not serve in time; stopping it",
                  (int)sup.upgrade_pid);
        kill(sup.upgrade_pid, SIGKILL);
        snprintf(sup.upgrade_msg, sizeof sup.upgrade_msg, "did not start serving in time");
        sup.upgrade_len = strlen(sup.upgrade_msg);
    }
}

/* ------------------------------------------------------------ events */

static void on_frame(struct worker *w, struct keel__frame *f)
{
    if (f->kind == 'N') {
        if (w->state == W_STARTING) {
            w->state = W_READY;
            sup.start_failures = 0;
            int64_t ms = (now_ns() - w->started_ns) / 1000000;
            log_info("worker %d serving %lld ms after its start", (int)w->pid, (long long)ms);
            if (!sup.ever_ready)
                sup.ever_ready = true;
            /* Its predecessor can drain now. */
            for (unsigned i = 0; i < sup.nslots; i++)
                if (sup.w[i].state == W_RETIRING && sup.w[i].replaced_by == w->pid)
                    send_retire(&sup.w[i]);
#ifdef HAVE_LIBSYSTEMD
            /* Type=notify: every worker serves, plugins loaded.  MAINPID
             * too, so that after an upgrade systemd follows the new
             * supervisor (the unit says NotifyAccess=all). */
            if (!sup.sd_ready && count_state(W_READY, W_READY) >= sup.target) {
                sup.sd_ready = true;
                sd_notifyf(0, "READY=1\nMAINPID=%ld\nSTATUS=serving with %u worker(s)",
                           (long)getpid(), sup.target);
            }
#endif
            if (sup.notify_fd >= 0 && count_state(W_READY, W_READY) >= sup.target) {
                if (write(sup.notify_fd, "ready", 5) < 0)
                    log_warn("cannot tell the previous keeld that this one serves");
                close(sup.notify_fd);
                sup.notify_fd = -1;
            }
        }
        free(f->body);
    } else if (f->kind == 'R') {
        fanout_collect(w->pid, f->id, f->body);
    } else if (f->kind == 'F') {
        char verb[16] = "";
        const char *arg = NULL;
        size_t vn = strcspn(f->body, " ");
        snprintf(verb, sizeof verb, "%.*s", (int)(vn < 15 ? vn : 15), f->body);
        if (f->body[vn] == ' ')
            arg = f->body + vn + 1;
        if (strcmp(verb, "upgrade") == 0)
            upgrade_start(w->pid, f->id);
        else
            fanout_start(w->pid, f->id, verb, arg);
        free(f->body);
    } else {
        free(f->body);
    }
}

static void watchdog(void)
{
    int64_t limit = (int64_t)sup.conf->containment.handler_timeout_ms * 1000000;
    int64_t now = now_ns();
    for (unsigned i = 0; i < sup.nslots; i++) {
        struct worker *w = &sup.w[i];
        if (w->state != W_READY)
            continue;
        struct keel__sb_worker *sb = keel__sb_worker(i);
        int top = atomic_load(&sb->nthreads);
        int stuck = 0;
        struct keel__sb_thread first;
        for (int t = 0; t < top && t < KEEL__SB_THREADS; t++) {
            struct keel__sb_thread th;
            if (!keel__sb_read_thread(sb, (unsigned)t, &th) || th.kind != KEEL__CALL_HANDLER ||
                now - th.since_ns <= limit)
                continue;
            if (stuck++ == 0)
                first = th;
        }
        if (stuck == 0)
            continue;
        long long ms = (long long)((now - first.since_ns) / 1000000);
        log_error("hang report: plugin=%s generation=%llu route=\"%s\" request=%llu running for "
                  "%lld ms (limit %d ms); %d thread(s) stuck in worker %d, which is replaced",
                  first.plugin, (unsigned long long)first.generation, first.route,
                  (unsigned long long)first.request_id, ms,
                  sup.conf->containment.handler_timeout_ms, stuck, (int)w->pid);
        struct plugin_state *p = plugin_get(first.plugin);
        if (p != NULL) {
            p->hangs++;
            char report[512];
            snprintf(report, sizeof report,
                     "handler %s request %llu ran for %lld ms in worker %d (generation %llu)",
                     first.route, (unsigned long long)first.request_id, ms, (int)w->pid,
                     (unsigned long long)first.generation);
            free(p->last_report);
            p->last_report = strdup(report);
            quarantine(p, KEEL__REASON_HUNG);
        }
        retire(w, "hang");
    }
}

static void leak_guard(void)
{
    const struct keel__conf *c = sup.conf;
    int64_t now = now_ns();
    bool rss_due = c->server.worker_max_rss_mb > 0 && now - sup.last_rss_check_ns > 250000000;
    if (rss_due)
        sup.last_rss_check_ns = now;
    long page = sysconf(_SC_PAGESIZE);
    for (unsigned i = 0; i < sup.nslots; i++) {
        struct worker *w = &sup.w[i];
        /* A worker gets a second before it can be recycled, so a limit
         * below what a fresh worker needs cannot spin the supervisor. */
        if (w->state != W_READY || now - w->started_ns < 1000000000)
            continue;
        struct keel__sb_worker *sb = keel__sb_worker(i);
        if (c->server.worker_max_requests > 0 &&
            atomic_load(&sb->requests) >= (unsigned long long)c->server.worker_max_requests) {
            log_info("worker %d served %llu requests (server.worker_max_requests %ld): recycled",
                     (int)w->pid, (unsigned long long)atomic_load(&sb->requests),
                     c->server.worker_max_requests);
            retire(w, "requests");
            continue;
        }
        if (!rss_due)
            continue;
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/statm", (int)w->pid);
        FILE *f = fopen(path, "re");
        if (f == NULL)
            continue;
        long size = 0, resident = 0;
        int got = fscanf(f, "%ld %ld", &size, &resident);
        fclose(f);
        long mb = got == 2 ? resident * page / (1024 * 1024) : 0;
        if (mb > c->server.worker_max_rss_mb) {
            log_warn("worker %d uses %ld MiB (server.worker_max_rss_mb %d): recycled", (int)w->pid,
                     mb, c->server.worker_max_rss_mb);
            retire(w, "rss");
        }
    }
}

static void begin_stopping(void)
{
    sup.phase = P_STOPPING;
    int deadline = sup.conf->server.shutdown_timeout_s;
    /* New connections are refused from now on; the workers finish what
     * they have. */
    for (int i = 0; i < 2; i++)
        if (sup.listen_fds[i] >= 0)
            shutdown(sup.listen_fds[i], SHUT_RDWR);
    char arg[32];
    snprintf(arg, sizeof arg, "stop %d", deadline);
    for (unsigned i = 0; i < sup.nslots; i++) {
        struct worker *w = &sup.w[i];
        if (w->state == W_FREE)
            continue;
        if (w->state != W_RETIRING || !w->retire_sent)
            send_to(w, 'Q', ++sup.next_id, arg);
        w->state = W_STOPPING;
    }
    /* Workers leave by the deadline on their own; the margin covers the
     * rest, then SIGKILL. */
    sup.phase_until_ns = now_ns() + (int64_t)deadline * 1000000000 + 1000000000;
}

static void on_shutdown_signal(int sig)
{
    if (sup.phase != P_RUNNING)
        return;
#ifdef HAVE_LIBSYSTEMD
    sd_notify(0, "STOPPING=1");
#endif
    int drain = sup.conf->server.drain_s;
    log_info("%s: stopping: /health answers 503 draining for %d s while routes serve, then "
             "in-flight requests get up to %d s",
             sig == SIGTERM ? "SIGTERM" : "SIGINT", drain, sup.conf->server.shutdown_timeout_s);
    if (sup.upgrade_pid != 0) {
        kill(sup.upgrade_pid, SIGKILL);
    }
    if (drain <= 0) {
        begin_stopping();
        return;
    }
    sup.phase = P_DRAINING;
    sup.phase_until_ns = now_ns() + (int64_t)drain * 1000000000;
    for (unsigned i = 0; i < sup.nslots; i++)
        if (sup.w[i].state != W_FREE)
            send_to(&sup.w[i], 'Q', ++sup.next_id, "drain");
}

static void tick(void)
{
    int64_t now = now_ns();
    if (sup.phase == P_DRAINING && now >= sup.phase_until_ns)
        begin_stopping();
    for (unsigned i = 0; i < sup.nslots; i++) {
        struct worker *w = &sup.w[i];
        if ((w->state == W_RETIRING || w->state == W_STOPPING) && w->kill_at_ns != 0 &&
            now >= w->kill_at_ns) {
            if (w->state == W_RETIRING && !w->retire_sent) {
                send_retire(w); /* its replacement never came: drain anyway */
                continue;
            }
            if (w->state == W_STOPPING && sup.phase == P_STOPPING && now < sup.phase_until_ns)
                continue;
            kill(w->pid, SIGKILL);
            w->kill_at_ns = 0;
        }
    }
    if (sup.phase == P_STOPPING && now >= sup.phase_until_ns) {
        for (unsigned i = 0; i < sup.nslots; i++)
            if (sup.w[i].state != W_FREE && !sup.w[i].killed) {
                log_warn("worker %d still running at the shutdown deadline: killed",
                         (int)sup.w[i].pid);
                kill(sup.w[i].pid, SIGKILL);
                sup.w[i].killed = true;
            }
    }
    if (sup.phase == P_RUNNING) {
        watchdog();
        leak_guard();
        unsigned live = count_state(W_STARTING, W_READY);
        while (live < sup.target && now >= sup.spawn_after_ns) {
            if (spawn() == NULL)
                break;
            live++;
        }
        upgrade_poll();
    }
    for (struct fanout *f = sup.fanouts; f != NULL;) {
        struct fanout *next = f->next;
        if (now >= f->deadline_ns) {
            log_warn("%s: %zu worker(s) did not answer in time", f->verb, f->n);
            for (size_t i = 0; i < f->n; i++)
                f->answered[i] = true;
            fanout_finish(f);
        }
        f = next;
    }
}

int keel__supervisor_run(struct keel__conf *conf, const char *self_path, char *const *argv,
                         keel__serve_fn serve)
{
    sup.conf = conf;
    sup.serve = serve;
    sup.self_path = self_path;
    sup.argv = argv;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    sup.target = conf->server.workers > 0 ? (unsigned)conf->server.workers
                                          : (unsigned)(ncpu > 0 ? ncpu : 1);
    sup.nslots = sup.target * 2 + 4;
    sup.w = calloc(sup.nslots, sizeof *sup.w);
    if (sup.w == NULL || keel__sb_create(sup.nslots) != 0) {
        log_error("cannot set up the worker table");
        return 1;
    }
    for (unsigned i = 0; i < sup.nslots; i++)
        sup.w[i].ctl = sup.w[i].crash = -1;

    const char *held = getenv("KEEL_QUARANTINE");
    for (const char *at = held; at != NULL && *at != '\0';) {
        char name[64];
        int reason = 0;
        if (sscanf(at, "%63[^:,]:%d", name, &reason) == 2 &&
            (reason == KEEL__REASON_CRASHED || reason == KEEL__REASON_HUNG)) {
            struct plugin_state *p = plugin_get(name);
            if (p != NULL) {
                p->quarantine = reason;
                log_warn("plugin %s stays quarantined (%s) across the upgrade", name,
                         keel__reason_name(reason));
            }
        }
        at = strchr(at, ',');
        if (at != NULL)
            at++;
    }
    unsetenv("KEEL_QUARANTINE");

    const char *nfd = getenv("KEEL_UPGRADE_FD");
    if (nfd != NULL && *nfd != '\0') {
        sup.notify_fd = (int)strtol(nfd, NULL, 10);
        fcntl(sup.notify_fd, F_SETFD, FD_CLOEXEC);
        unsetenv("KEEL_UPGRADE_FD");
    }
    if (!inherit_listeners()) {
        sup.listen_fds[0] = bind_listener("main", conf->server.host, conf->server.port);
        if (sup.listen_fds[0] < 0)
            return 1;
        sup.listen_fds[1] = bind_listener("admin", conf->admin.host, conf->admin.port);
        if (sup.listen_fds[1] < 0)
            return 1;
    }

    sigset_t sigs;
    sigemptyset(&sigs);
    int handled[] = {SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof handled / sizeof handled[0]; i++)
        sigaddset(&sigs, handled[i]);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    sup.sfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sup.sfd < 0) {
        log_error("signalfd: %s", strerror(errno));
        return 1;
    }
    log_info("keeld %s supervisor %d: main %s:%d, admin %s:%d, %u worker(s)", PACKAGE_VERSION,
             (int)getpid(), conf->server.host, conf->server.port, conf->admin.host,
             conf->admin.port, sup.target);
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
    for (unsigned i = 0; i < sup.target; i++)
        if (spawn() == NULL)
            return 1;

    struct pollfd *pfd = calloc(2 * sup.nslots + 2, sizeof *pfd);
    struct worker **owner = calloc(2 * sup.nslots + 2, sizeof *owner);
    if (pfd == NULL || owner == NULL)
        return 1;
    for (;;) {
        if ((sup.phase == P_STOPPING || sup.phase == P_HANDOVER) &&
            count_state(W_STARTING, W_READY) + count_state(W_RETIRING, W_STOPPING) == 0)
            break;
        size_t n = 0;
        pfd[n] = (struct pollfd){.fd = sup.sfd, .events = POLLIN};
        owner[n++] = NULL;
        for (unsigned i = 0; i < sup.nslots; i++) {
            struct worker *w = &sup.w[i];
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
                drain_crash_pipe(w);
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
            while (read(sup.sfd, &si, sizeof si) == (ssize_t)sizeof si) {
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
                    fanout_start(0, 0, "reload", NULL);
#ifdef HAVE_LIBSYSTEMD
                    sd_notify(0, "READY=1");
#endif
                } else if (sig == SIGTERM || sig == SIGINT) {
                    on_shutdown_signal(sig);
                } else if (sig == SIGUSR2) {
                    log_info("SIGUSR2: binary upgrade");
                    upgrade_start(0, 0);
                } else if (sig == SIGUSR1) {
                    /* logrotate renamed the files: the supervisor's error
                     * log here, each worker's own descriptors there. */
                    keel__log_reopen();
                    for (unsigned i = 0; i < sup.nslots; i++)
                        if (sup.w[i].state != W_FREE)
                            kill(sup.w[i].pid, SIGUSR1);
                }
            }
        }
        reap();
        tick();
    }
    free(pfd);
    free(owner);
    for (int i = 0; i < 2; i++)
        if (sup.listen_fds[i] >= 0)
            close(sup.listen_fds[i]);
    for (size_t i = 0; i < sup.nplugins; i++)
        free(sup.plugins[i].last_report);
    free(sup.plugins);
    while (sup.fanouts != NULL) {
        struct fanout *f = sup.fanouts;
        sup.fanouts = f->next;
        for (size_t i = 0; i < f->n; i++)
            free(f->part[i]);
        free(f);
    }
    free(sup.w);
    close(sup.sfd);
    log_info(sup.phase == P_HANDOVER ? "keeld handed over to its new binary" : "keeld stopped");
    keel__conf_free(sup.conf);
    return sup.exit_status;
}
