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

#include "identity/auth.h"
#include "conf/conf.h"
#include "data/db.h"
#include "http/request.h"
#include "identity/usersync.h"

/* Everything a running keeld shares between threads.  Set up by main before
 * the daemons start and torn down after they stop. */
struct keel__runtime {
    struct keel__conf *conf;
    keel__auth *auth;
    keel__db *db; /* NULL when no database is configured */
    keel__usersync *usersync;
    const keel_host *host;
    int64_t started_at; /* unix seconds */
    int threads;        /* worker threads per daemon (main) */
};

extern struct keel__runtime keel__rt;

/* Starts the main and admin daemons.  Returns 0 or a negative code with the
 * reason logged (e.g. address in use). */
int keel__server_start(void) KEEL_WARN_UNUSED;
/* Stops accepting, waits up to timeout_s for in-flight requests, stops. */
void keel__server_stop(int timeout_s);

/* Adds CORS headers for req's allowed origin to resp. */
void keel__cors_headers(const keel_request *req, struct MHD_Response *resp);

/* Requests currently being processed (both listeners). */
long keel__server_in_flight(void);
unsigned long long keel__server_requests_total(void);

/* Reopens the access log file under its configured name (SIGUSR1). */
void keel__server_reopen_logs(void);

#endif
