/* The host API table handed to plugins at init (include/keel/plugin.h). */
#ifndef KEEL_CORE_PLUGIN_HOSTAPI_H
#define KEEL_CORE_PLUGIN_HOSTAPI_H

#include <keel/plugin.h>

#include <jansson.h>

#include "data/db.h"
#include "http/request.h"

/* The table of this host; static storage, valid for the process lifetime. */
const keel_host *keel__host_api(void);

/* Checks out a pooled connection for req (KEEL_EDB_UNAVAILABLE without a
 * database, the reason in req->db_error); release it with keel__db_release. */
int keel__req_db_acquire(keel_request *req, keel__db_conn **conn) KEEL_WARN_UNUSED;

/* Database results plugins hold right now (all requests). */
long keel__host_results_live(void);

#endif
