/*
 * The supervisor's state, shared by the files that make it up:
 * supervisor.c (the worker table, replacement, signals, the main loop),
 * fanout.c (admin requests merged across workers), containment.c (crash and
 * hang reports, quarantine, recycling), upgrade.c (the binary upgrade).
 * One supervisor per process, single-threaded: no locking.  Nothing outside
 * core/process/ includes this.
 */
#ifndef KEEL_CORE_PROCESS_SUPERVISOR_STATE_H
#define KEEL_CORE_PROCESS_SUPERVISOR_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "conf/conf.h"
#include "process/channel.h"
/* include-ok: the supervisor's private state, shared by its own files */
#include "process/supervisor.h"

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
    pid_t replaced_by; /* retiring: waits for this worker to be settled */
    bool settled;      /* no start-up init of its plugins still running */
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

/* A fan-out asks at most this many workers. */
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

/* Reasons a worker was replaced, as keel_worker_restarts_total labels
 * them; NULL-terminated, indexes into keel__sup.restarts. */
extern const char *const keel__sup_restart_reasons[];

struct keel__sup {
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
};
extern struct keel__sup keel__sup;

/* pipe() with both ends close-on-exec.  0 or -1 (errno set). */
int keel__sup_pipe_cloexec(int p[2]);
/* Counts one replacement under reason (one of keel__sup_restart_reasons). */
void keel__sup_count_restart(const char *reason);
/* The live worker with this pid, or NULL. */
struct worker *keel__sup_by_pid(pid_t pid);
/* How many workers are in state a or b. */
unsigned keel__sup_count_state(enum wstate a, enum wstate b);
/* The bookkeeping of the plugin called name (containment.c), or NULL for
 * one that never crashed, hung or was quarantined (or a NULL name). */
struct plugin_state *keel__sup_plugin_find(const char *name);
/* Sends one frame to w on its control channel (logged when it fails). */
void keel__sup_send(struct worker *w, char kind, unsigned long long id, const char *body);
/* Starts a replacement for w, then (once it serves) drains w. */
void keel__sup_retire(struct worker *w, const char *reason);
/* Tells a retiring worker to drain and leave (once). */
void keel__sup_send_retire(struct worker *w);

#endif
