/* The host API table handed to plugins at init (include/keel/plugin.h). */
#ifndef KEEL_CORE_PLUGIN_HOSTAPI_H
#define KEEL_CORE_PLUGIN_HOSTAPI_H

#include <keel/plugin.h>

#include <jansson.h>

/* The table of this host; static storage, valid for the process lifetime. */
const keel_host *keel__host_api(void);

/* Database results plugins hold right now (all requests). */
long keel__host_results_live(void);

/*
 * The request-independent part of req_json_body: parses len bytes of body
 * strictly (duplicate keys, invalid UTF-8 and \u0000 refused by jansson),
 * refuses containers nested more than max_depth deep and anything but an
 * object.  Returns 0 with *out a new reference, or KEEL_EINVAL with a
 * message for the client in msg (*out NULL).  Pure: the fuzz harness calls it.
 */
int keel__json_body_parse(const char *body, size_t len, int max_depth, json_t **out, char *msg,
                          size_t msglen);

#endif
