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

#endif
