/* The host API table handed to plugins at init (include/keel/plugin.h). */
#ifndef KEEL_CORE_HOSTAPI_H
#define KEEL_CORE_HOSTAPI_H

#include <keel/plugin.h>

/* The table of this host; static storage, valid for the process lifetime. */
const keel_host *keel__host_api(void);

#endif
