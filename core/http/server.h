/*
 * The HTTP side of keeld: two libmicrohttpd daemons (main and admin), the
 * request pipeline every route goes through, and the process-wide runtime.
 *
 * Pipeline (docs/architecture.md): match the route on the current table
 * snapshot -> body limits -> CORS -> authentication at the route's level
 * (one place, before any plugin code) -> plugin handler, core handler or
 * fallback stub -> metrics and access log on completion.
 */
#ifndef KEEL_CORE_HTTP_SERVER_H
#define KEEL_CORE_HTTP_SERVER_H

#include <stdbool.h>

#include <microhttpd.h>

#include <keel/plugin.h>

#include "data/db.h"
#include "http/cors.h"
#include "http/runtime.h"
#include "http/request.h"
#include "identity/auth.h"
#include "identity/usersync.h"
#include "util/cidr.h"

/* Starts the main and admin daemons.  Returns 0 or a negative code with the
 * reason logged (e.g. address in use). */
int keel__server_start(void) KEEL_WARN_UNUSED;
/* Stops accepting new connections (both listeners); idempotent. */
void keel__server_quiesce(void);
/* Stops accepting, waits up to timeout_s for in-flight requests, stops. */
void keel__server_stop(int timeout_s);

/* Requests currently being processed (both listeners). */
long keel__server_in_flight(void);
unsigned long long keel__server_requests_total(void);
/* Open connections (both listeners), idle kept-alive ones included. */
long keel__server_connections(void);

/* Reopens the access log file under its configured name (SIGUSR1). */
void keel__server_reopen_logs(void);

#endif
