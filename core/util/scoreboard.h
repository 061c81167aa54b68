/*
 * The scoreboard: memory shared between the supervisor and its workers
 * (mapped MAP_SHARED before the first fork), in which each worker thread
 * records, before it calls into plugin code, which plugin, generation,
 * route and request it is running.  The supervisor reads it after a worker
 * dies (crash attribution) and while workers live (the hang watchdog).
 *
 * Workers write with plain stores plus one release store of `seq`, the
 * fatal-signal handler only stores two integers, and the supervisor never
 * writes a worker's slots: nothing here can block, and nothing a dying
 * worker leaves half-written can hurt the supervisor beyond a garbled
 * string in one report.
 */
#ifndef KEEL_CORE_UTIL_SCOREBOARD_H
#define KEEL_CORE_UTIL_SCOREBOARD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <keel/common.h>
#include <keel/error.h>

#include "util/time.h"

/* Threads of one worker that can be attributed; later threads run
 * unrecorded (their crashes are reported as core crashes). */
#define KEEL__SB_THREADS 1100

/* KEEL__CALL_TASK: a plugin's background task (plugin/tasks.c); attributed
 * like a handler when it crashes, never counted as a hang (tasks may wait
 * on other services for as long as their timeouts allow). */
enum keel__call_kind {
    KEEL__CALL_NONE = 0,
    KEEL__CALL_INIT,
    KEEL__CALL_HANDLER,
    KEEL__CALL_FINI,
    KEEL__CALL_TASK
};

/* The text a slot keeps: whole 8-byte words (struct keel__sb_thread). */
#define KEEL__SB_PLUGIN_TEXT 48
#define KEEL__SB_ROUTE_TEXT 160

/* What one thread is doing in plugin code, as a reader copies it out of
 * the thread's slot (keel__sb_read_thread). */
struct keel__sb_call {
    unsigned long long seq;
    int64_t since_ns; /* CLOCK_MONOTONIC (system wide) at entry, at the tick */
    int kind;         /* enum keel__call_kind */
    uint64_t generation;
    uint64_t request_id;
    char plugin[KEEL__SB_PLUGIN_TEXT];
    char route[KEEL__SB_ROUTE_TEXT]; /* "GET /api/v1/..." template, or the stage for init/fini */
};

#define KEEL__SB_WORDS(n) (((n) + 7) / 8)
_Static_assert(KEEL__SB_PLUGIN_TEXT % 8 == 0 && KEEL__SB_ROUTE_TEXT % 8 == 0,
               "slot text is copied in whole words");

/* A thread's slot: written by that thread only, read by others as a
 * sequence lock.  Every field is atomic (relaxed; the text 8 bytes a word)
 * so a reader copying while the thread enters its next call reads stale
 * or mixed values, never undefined ones, and throws them away when seq
 * moved. */
struct keel__sb_thread {
    /* 0 = not in plugin code; otherwise changes on every entry, stored last
     * (release) so a reader that sees the same value before and after
     * copying the fields has a consistent copy. */
    atomic_ullong seq;
    atomic_llong since_ns;
    atomic_int kind;
    atomic_ullong generation;
    atomic_ullong request_id;
    atomic_ullong plugin[KEEL__SB_WORDS(KEEL__SB_PLUGIN_TEXT)];
    atomic_ullong route[KEEL__SB_WORDS(KEEL__SB_ROUTE_TEXT)];
};

struct keel__sb_worker {
    atomic_int pid;
    atomic_int crash_thread; /* slot of the thread that took a fatal signal, -1 */
    atomic_int crash_signal;
    atomic_int nthreads; /* slots handed out */
    atomic_ullong requests;
    atomic_long in_flight;
    struct keel__sb_thread threads[KEEL__SB_THREADS];
};

/* Supervisor: maps room for nslots workers.  Call once, before forking. */
int keel__sb_create(unsigned nslots) KEEL_WARN_UNUSED;
unsigned keel__sb_slots(void);
/* Slot i (i < keel__sb_slots()), or NULL when there is no scoreboard. */
struct keel__sb_worker *keel__sb_worker(unsigned i);
/* Supervisor: clears slot i for a new worker. */
void keel__sb_reset(unsigned i);

/* Worker: slot i is this process's (called once after fork). */
void keel__sb_bind(unsigned i);
/* Run by every thread as it claims its slot and as it gives it back: the
 * crash handler (util/crash.c) installs its per-thread signal stack here,
 * so the scoreboard need not know about it.  NULL (the default) runs none. */
void keel__sb_set_thread_hooks(void (*setup)(void), void (*teardown)(void));
/* This process's slot, or NULL outside a worker. */
struct keel__sb_worker *keel__sb_self(void);

/*
 * Worker threads, around every call into plugin code.  plugin and route
 * are copied (truncated to fit).  No-ops outside a worker.  Not nested: a
 * plugin calling back into the host does not enter again.
 */
void keel__plugin_call_enter(const char *plugin, uint64_t generation, int kind, const char *method,
                             const char *route, uint64_t request_id);

/* A call's text as a slot keeps it (NUL-padded to whole words), made once
 * where many calls share it: a route's, when its table is built, so that a
 * request does not join and measure the same names again. */
struct keel__sb_text {
    char plugin[KEEL__SB_PLUGIN_TEXT];
    char route[KEEL__SB_ROUTE_TEXT];
    unsigned char plugin_words, route_words; /* the words in use, NUL included */
};
/* plugin, and method and route joined by a space, cut to fit. */
void keel__sb_text_make(struct keel__sb_text *t, const char *plugin, const char *method,
                        const char *route);
/* keel__plugin_call_enter with text made beforehand (a zeroed one records
 * empty names). */
void keel__plugin_call_enter_text(const struct keel__sb_text *text, uint64_t generation, int kind,
                                  uint64_t request_id);
void keel__plugin_call_leave(void);
/* The calling thread's slot index, -1 when it has none (async-signal-safe). */
int keel__sb_thread_index(void);

/* Supervisor: a consistent copy of thread slot t of w; false when the
 * thread is not in plugin code (or changed while copying). */
bool keel__sb_read_thread(const struct keel__sb_worker *w, unsigned t, struct keel__sb_call *out);

/* Threads of this process in plugin code for longer than limit_ns (handler
 * calls only): what a draining worker may leave behind. */
int keel__sb_stuck_handlers(int64_t limit_ns);

#endif
