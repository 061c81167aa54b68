/*
 * The worker side of keeld's process model (docs/operations.md): a worker
 * serves HTTP on the listening sockets it inherited from the supervisor and
 * answers the supervisor's control requests on its channel.  Requests that
 * must describe the whole server (plugins, metrics, status, reload) are
 * fanned out by the supervisor to every worker and merged there.
 */
#ifndef KEEL_CORE_PROCESS_WORKER_H
#define KEEL_CORE_PROCESS_WORKER_H

#include <stdbool.h>

#include <keel/common.h>
#include <keel/error.h>

#include "conf/conf.h"

/* Worker: the control channel is fd (set before the server starts). */
void keel__worker_attach(int fd);
/* True in a worker process. */
bool keel__worker_active(void);
/* True once the supervisor has announced a shutdown (lame duck): /health
 * answers 503 "draining" while every route still serves. */
bool keel__worker_draining(void);

/* How long a whole-server reload may take (every plugin's init deadline
 * and a margin); set by the worker at start-up. */
void keel__worker_set_reload_timeout(int ms);
int keel__worker_reload_timeout_ms(void);

/*
 * Asks the supervisor to run verb (describe | metrics | status | reload)
 * with arg (may be NULL) on every worker and merge the answers.  On success
 * *reply is a malloc'd text the caller frees.  KEEL_EUNSUPPORTED outside a
 * worker (the caller answers for this process alone), KEEL_ETIMEOUT or
 * KEEL_EIO when the supervisor does not answer in time.
 */
int keel__worker_fanout(const char *verb, const char *arg, int timeout_ms,
                        char **reply) KEEL_WARN_UNUSED;

/*
 * Announces readiness, then serves control requests until the supervisor
 * says stop or retire (or goes away, or SIGTERM arrives) and the requests
 * this worker was running have finished, up to the drain deadline.  Returns
 * the number of threads still stuck in plugin code (the caller must then
 * leave with _exit, since stopping the daemons would wait for them).
 */
int keel__worker_loop(const struct keel__conf *conf);
/* Runs fn(arg) on the worker thread that runs reloads, and returns its
 * result: the plugins a worker starts with are then loaded where their
 * reloads will replace them (in that thread's malloc arena), not in the
 * main thread's heap, which would keep the holes they leave. */
int keel__worker_run_on_reload_thread(int (*fn)(void *), void *arg);

#endif
