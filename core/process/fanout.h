/*
 * The supervisor's fan-out: an admin request that must describe the whole
 * server (describe, metrics, status, reload, evict, quarantine) is sent to
 * every worker, the answers are merged (merge.c) with the supervisor's own
 * numbers (restarts, crashes, hangs, quarantines), and the merged answer
 * goes back to the worker that asked, or to the log for the supervisor's
 * own requests (SIGHUP, a quarantine).  A reload also lifts the plugin's
 * quarantine and rereads conf.d for the workers started afterwards.
 */
#ifndef KEEL_CORE_PROCESS_FANOUT_H
#define KEEL_CORE_PROCESS_FANOUT_H

#include <stdint.h>
#include <sys/types.h>

/*
 * Sends "verb arg" (arg may be NULL) to every worker.  origin is the pid of
 * the worker that asked and origin_id its request's id, to which the merged
 * answer goes; origin 0 is the supervisor itself.  Finishes at once when no
 * worker is there to ask.
 */
void keel__fanout_start(pid_t origin, unsigned long long origin_id, const char *verb,
                        const char *arg);
/* A worker's answer (frame R with the fan-out's id); takes body (malloc'd). */
void keel__fanout_collect(pid_t from, unsigned long long id, char *body);
/* A worker that went away answers nothing: stop waiting for it. */
void keel__fanout_forget(pid_t pid);
/* Finishes, with the answers they have, the fan-outs past their deadline. */
void keel__fanout_expire(int64_t now);
/* Drops every fan-out still waiting (at exit). */
void keel__fanout_free_all(void);

#endif
