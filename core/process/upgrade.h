/*
 * The binary upgrade (SIGUSR2, or POST /admin/upgrade through a worker):
 * the supervisor starts the keeld binary again with its listening sockets
 * (KEEL_LISTEN_FDS), its quarantines (KEEL_QUARANTINE) and a pipe
 * (KEEL_UPGRADE_FD) on which the new keeld says "ready" once all its
 * workers serve; this one then drains its workers and exits.  Until then,
 * or when the new binary fails, this keeld keeps serving.
 */
#ifndef KEEL_CORE_PROCESS_UPGRADE_H
#define KEEL_CORE_PROCESS_UPGRADE_H

#include <stdbool.h>
#include <sys/types.h>

/*
 * At start-up: takes what a keeld being upgraded handed over (its
 * quarantines, the pipe to say "ready" on, its listening sockets) out of
 * the environment.  True when the listening sockets were inherited (else
 * the caller binds its own).
 */
bool keel__upgrade_inherit(void);
/* Starts the new binary; the outcome goes to the worker origin (request
 * origin_id), or only to the log when origin is 0 (SIGUSR2). */
void keel__upgrade_start(pid_t origin, unsigned long long origin_id);
/* Called every tick: hands over once the new keeld serves, kills it past
 * its deadline. */
void keel__upgrade_poll(void);
/* The new keeld (keel__sup.upgrade_pid) exited with status before serving. */
void keel__upgrade_reaped(int status);
/* Once every worker of this (new) keeld serves, tells the previous one. */
void keel__upgrade_notify_serving(void);

#endif
