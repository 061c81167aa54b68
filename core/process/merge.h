/*
 * Merging what every worker answered into one answer for the whole server
 * (pure functions, unit-tested).  Parts are the workers' JSON documents or
 * Prometheus texts; NULL parts (a worker that did not answer) are skipped.
 */
#ifndef KEEL_CORE_PROCESS_MERGE_H
#define KEEL_CORE_PROCESS_MERGE_H

#include <stddef.h>

#include <jansson.h>

/* GET /admin/plugins: one entry per plugin; a plugin is "loaded" only when
 * it is loaded in every worker (else the entry of a worker where it is not
 * is shown), requests and in_flight are summed.  New reference. */
json_t *keel__merge_describe(json_t *const *parts, size_t n);

/* POST /admin/reload: a plugin is ok only when it reloaded in every
 * worker (else the first failure is shown); {"unknown":true} when any
 * worker did not know the plugin.  New reference. */
json_t *keel__merge_reload(json_t *const *parts, size_t n);

/* GET /admin/status: the first worker's body with requests_total,
 * in_flight, the database pool's and the user-sync cache's numbers summed.
 * New reference. */
json_t *keel__merge_status(json_t *const *parts, size_t n);

/*
 * GET /metrics: samples with the same name and labels are summed, except
 * where a sum means nothing: the highest value is kept for generations,
 * reload counts and breaker states (each worker counts the same reload),
 * the lowest for keel_plugin_up (up only when up everywhere) and
 * keel_start_time_seconds (the oldest worker's start); keel_build_info is 1.  Families
 * keep their HELP and TYPE lines once.  malloc'd, NULL when out of memory.
 */
char *keel__merge_metrics(const char *const *texts, size_t n);

#endif
