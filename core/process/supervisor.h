/*
 * keeld's supervisor (docs/operations.md, "Process model"): binds the main
 * and admin listeners, starts server.workers worker processes that serve on
 * them, replaces a worker that dies, attributes crashes and hangs to the
 * plugin that caused them and quarantines it, recycles leaking workers,
 * fans admin requests out to every worker, drains on SIGTERM and replaces
 * its own binary on SIGUSR2.  It loads no plugin code and opens no
 * database connection, so nothing a plugin does can take it down.
 */
#ifndef KEEL_CORE_PROCESS_SUPERVISOR_H
#define KEEL_CORE_PROCESS_SUPERVISOR_H

#include <stdint.h>

#include "conf/conf.h"

/*
 * What a worker runs after the fork: serves with the inherited sockets
 * (keel__rt.listen_fds) and the control channel (keel__worker_attach
 * already called) and returns the process's exit status.
 */
typedef int (*keel__serve_fn)(struct keel__conf *conf);

/*
 * How long the plugins' inits may take in all, each up to
 * containment.init_timeout_ms, counting one more than conf.d names: what a
 * whole-server reload or a new keeld's start may need.  Who waits for one
 * adds a margin of its own.
 */
int64_t keel__sup_inits_ms(const struct keel__conf *conf);

/*
 * Runs the supervisor until SIGTERM/SIGINT (or an upgrade hands over);
 * takes conf.  self_path is the keeld binary to exec on an upgrade and
 * argv the arguments to give it.  Returns the process's exit status.
 */
int keel__supervisor_run(struct keel__conf *conf, const char *self_path, char *const *argv,
                         keel__serve_fn serve);

#endif
