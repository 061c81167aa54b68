/* The core's own routes: /health and /api/v1/auth/me on the main listener,
 * /health, /admin/... and /metrics on the admin listener. */
#ifndef KEEL_CORE_OPS_CORE_ROUTES_H
#define KEEL_CORE_OPS_CORE_ROUTES_H

#include "http/routes.h"

extern const struct keel__core_route keel__core_routes[];
extern const size_t keel__ncore_routes;

/* This process's GET /admin/status body for snapshot table (may be NULL);
 * new reference. */
json_t *keel__admin_status(const struct keel__table *table);

/* What the admin routes ask of the process layer above them: worker state
 * and the whole-server fan-out (see process/worker.h).  main.c installs it
 * at start-up so ops/ need not include process/; until then this process
 * answers alone, as outside a worker. */
struct keel__process_hooks {
    bool (*active)(void);
    bool (*draining)(void);
    int (*reload_timeout_ms)(void);
    int (*fanout)(const char *verb, const char *arg, int timeout_ms, char **reply);
};
void keel__core_routes_set_process(const struct keel__process_hooks *hooks);

#endif
