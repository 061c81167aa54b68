#include "config.h"

#include "process/upgrade.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "plugin/loader.h"
#include "process/containment.h"
#include "process/supervisor_state.h"
#include "util/log.h"
#include "util/time.h"

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
    keel__sup.listen_fds[0] = a;
    keel__sup.listen_fds[1] = b;
    fcntl(a, F_SETFD, FD_CLOEXEC);
    fcntl(b, F_SETFD, FD_CLOEXEC);
    unsetenv("KEEL_LISTEN_FDS");
    log_info("serving the listening sockets handed over by the previous keeld (fds %d, %d)", a, b);
    return true;
}

bool keel__upgrade_inherit(void)
{
    const char *held = getenv("KEEL_QUARANTINE");
    for (const char *at = held; at != NULL && *at != '\0';) {
        char name[64];
        int reason = 0;
        if (sscanf(at, "%63[^:,]:%d", name, &reason) == 2 &&
            (reason == KEEL__REASON_CRASHED || reason == KEEL__REASON_HUNG)) {
            struct plugin_state *p = keel__sup_plugin(name);
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
        keel__sup.notify_fd = (int)strtol(nfd, NULL, 10);
        fcntl(keel__sup.notify_fd, F_SETFD, FD_CLOEXEC);
        unsetenv("KEEL_UPGRADE_FD");
    }
    return inherit_listeners();
}

/* Answers the worker that asked for the upgrade (none for SIGUSR2, or gone
 * since) with j, which is taken. */
static void answer_origin(pid_t origin, unsigned long long origin_id, json_t *j)
{
    struct worker *o = keel__sup_by_pid(origin);
    if (o != NULL) {
        char *text = json_dumps(j, JSON_COMPACT);
        keel__sup_send(o, 'R', origin_id, text);
        free(text);
    }
    json_decref(j);
}

/* Appends what the new keeld wrote on its pipe to upgrade_msg, which stays
 * NUL-terminated. */
static void read_message(void)
{
    ssize_t r = read(keel__sup.upgrade_fd, keel__sup.upgrade_msg + keel__sup.upgrade_len,
                     sizeof keel__sup.upgrade_msg - 1 - keel__sup.upgrade_len);
    if (r > 0)
        keel__sup.upgrade_len += (size_t)r;
    keel__sup.upgrade_msg[keel__sup.upgrade_len] = '\0';
}

void keel__upgrade_start(pid_t origin, unsigned long long origin_id)
{
    char why[256] = "";
    if (keel__sup.upgrade_pid != 0)
        snprintf(why, sizeof why, "an upgrade is already in progress");
    else if (keel__sup.phase != P_RUNNING)
        snprintf(why, sizeof why, "keeld is stopping");
    int rp[2] = {-1, -1};
    if (why[0] == '\0' && keel__sup_pipe_cloexec(rp) != 0)
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
        fcntl(keel__sup.listen_fds[0], F_SETFD, 0);
        fcntl(keel__sup.listen_fds[1], F_SETFD, 0);
        fcntl(rp[1], F_SETFD, 0);
        char v[64];
        snprintf(v, sizeof v, "%d,%d", keel__sup.listen_fds[0], keel__sup.listen_fds[1]);
        setenv("KEEL_LISTEN_FDS", v, 1);
        snprintf(v, sizeof v, "%d", rp[1]);
        setenv("KEEL_UPGRADE_FD", v, 1);
        /* Quarantines carry over: "name:reason,name:reason". */
        char q[2048] = "";
        size_t qn = 0;
        for (size_t i = 0; i < keel__sup.nplugins && qn < sizeof q - 80; i++)
            if (keel__sup.plugins[i].quarantine != 0)
                qn += (size_t)snprintf(q + qn, sizeof q - qn, "%s%s:%d", qn ? "," : "",
                                       keel__sup.plugins[i].name, keel__sup.plugins[i].quarantine);
        if (qn > 0)
            setenv("KEEL_QUARANTINE", q, 1);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execv(keel__sup.self_path, keel__sup.argv);
        char msg[300];
        int n = snprintf(msg, sizeof msg, "cannot run %s: %s", keel__sup.self_path,
                         strerror(errno));
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
        answer_origin(origin, origin_id, json_pack("{s:b, s:s}", "ok", 0, "error", why));
        return;
    }
    close(rp[1]);
    fcntl(rp[0], F_SETFL, fcntl(rp[0], F_GETFL) | O_NONBLOCK);
    keel__sup.upgrade_pid = pid;
    keel__sup.upgrade_fd = rp[0];
    keel__sup.upgrade_len = 0;
    keel__sup.upgrade_origin = origin;
    keel__sup.upgrade_origin_id = origin_id;
    keel__sup.upgrade_deadline_ns = keel__monotonic_ns() +
                                    (keel__sup_inits_ms(keel__sup.conf) + 30000) * 1000000;
    log_info("upgrade: started %s as pid %d with the listening sockets", keel__sup.self_path,
             (int)pid);
}

void keel__upgrade_poll(void)
{
    if (keel__sup.upgrade_fd < 0)
        return;
    read_message();
    if (strncmp(keel__sup.upgrade_msg, "ready", 5) == 0) {
        log_info("upgrade: the new keeld (pid %d) serves; this one drains its workers and exits",
                 (int)keel__sup.upgrade_pid);
        answer_origin(keel__sup.upgrade_origin, keel__sup.upgrade_origin_id,
                      json_pack("{s:b, s:i, s:i}", "ok", 1, "pid", (int)keel__sup.upgrade_pid,
                                "previous_pid", (int)getpid()));
        close(keel__sup.upgrade_fd);
        keel__sup.upgrade_fd = -1;
        /* The new supervisor outlives us: it is no longer ours to reap. */
        keel__sup.upgrade_pid = 0;
        keel__sup.phase = P_HANDOVER;
        for (unsigned i = 0; i < keel__sup.nslots; i++) {
            struct worker *w = &keel__sup.w[i];
            if (w->state == W_READY || w->state == W_STARTING || w->state == W_RETIRING) {
                w->state = W_RETIRING;
                w->retire_reason = "upgrade";
                keel__sup_send_retire(w);
            }
        }
        return;
    }
    if (keel__monotonic_ns() > keel__sup.upgrade_deadline_ns) {
        log_error("upgrade failed: the new keeld (pid %d) did not serve in time; stopping it",
                  (int)keel__sup.upgrade_pid);
        kill(keel__sup.upgrade_pid, SIGKILL);
        snprintf(keel__sup.upgrade_msg, sizeof keel__sup.upgrade_msg,
                 "did not start serving in time");
        keel__sup.upgrade_len = strlen(keel__sup.upgrade_msg);
    }
}

void keel__upgrade_reaped(int status)
{
    char why[700];
    if (WIFEXITED(status))
        snprintf(why, sizeof why, "the new keeld exited with status %d before serving",
                 WEXITSTATUS(status));
    else
        snprintf(why, sizeof why, "the new keeld died of signal %d before serving",
                 WTERMSIG(status));
    /* Anything it wrote on the way out says more. */
    if (keel__sup.upgrade_fd >= 0)
        read_message();
    if (keel__sup.upgrade_len > 0 && strncmp(keel__sup.upgrade_msg, "ready", 5) != 0)
        snprintf(why + strlen(why), sizeof why - strlen(why), ": %.400s", keel__sup.upgrade_msg);
    log_error("upgrade failed: %s; this keeld keeps serving", why);
    answer_origin(keel__sup.upgrade_origin, keel__sup.upgrade_origin_id,
                  json_pack("{s:b, s:s}", "ok", 0, "error", why));
    if (keel__sup.upgrade_fd >= 0)
        close(keel__sup.upgrade_fd);
    keel__sup.upgrade_fd = -1;
    keel__sup.upgrade_pid = 0;
}

void keel__upgrade_notify_serving(void)
{
    unsigned settled = 0;
    for (unsigned i = 0; i < keel__sup.nslots; i++)
        if (keel__sup.w[i].state == W_READY && keel__sup.w[i].settled)
            settled++;
    if (keel__sup.notify_fd >= 0 && settled >= keel__sup.target) {
        if (write(keel__sup.notify_fd, "ready", 5) < 0)
            log_warn("cannot tell the previous keeld that this one serves");
        close(keel__sup.notify_fd);
        keel__sup.notify_fd = -1;
    }
}
