/* The host API table handed to plugins at init (include/keel/plugin.h). */
#ifndef KEEL_CORE_PLUGIN_HOSTAPI_H
#define KEEL_CORE_PLUGIN_HOSTAPI_H

#include <keel/plugin.h>

#include <jansson.h>

/* The table of this host; static storage, valid for the process lifetime. */
const keel_host *keel__host_api(void);

/* Database results plugins hold right now (all requests). */
long keel__host_results_live(void);

#endif
