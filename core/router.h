/*
 * Method + path-template routing.  A router is built once per route-table
 * generation and is read-only afterwards, so lookups take no lock.
 *
 * Templates are absolute paths split on '/'; a segment "{name}" matches any
 * one non-empty segment.  At each position a literal segment is tried before
 * a parameter (so "/x/unlocked" beats "/x/{username}"), with backtracking.
 * Only two routes with the same method and the same template shape (parameter
 * names ignored) conflict.
 */
#ifndef KEEL_CORE_ROUTER_H
#define KEEL_CORE_ROUTER_H

#include <stddef.h>

#include <keel/common.h>

typedef struct keel__router keel__router;

#define KEEL__ROUTER_MAX_PARAMS 8
#define KEEL__ROUTER_MAX_SEGMENTS 32

/* The result of a successful lookup.  Values point into the caller's
 * scratch buffer (see keel__router_match). */
struct keel__route_match {
    void *data; /* what was registered with the route */
    const char *template_path;
    size_t nparams;
    const char *names[KEEL__ROUTER_MAX_PARAMS];
    const char *values[KEEL__ROUTER_MAX_PARAMS]; /* percent-decoded */
};

keel__router *keel__router_new(void);
void keel__router_free(keel__router *r);

/*
 * Adds a route.  owner names who registered it (for conflict messages).
 * Returns 0, KEEL_EINVAL for a malformed template (err says why), or
 * KEEL_EROUTES when an identical method+template exists (err names both
 * owners).  Strings are copied.
 */
int keel__router_add(keel__router *r, const char *method, const char *path_template,
                     const char *owner, void *data, char *err, size_t errlen) KEEL_WARN_UNUSED;

enum keel__match_result { KEEL__MATCH_OK = 0, KEEL__MATCH_NOT_FOUND = 1, KEEL__MATCH_NO_METHOD = 2 };

/*
 * Looks up method + path (path without query string, still percent-encoded).
 * scratch/scratchlen receive the decoded parameter values.  Returns
 * KEEL__MATCH_OK and fills *m; KEEL__MATCH_NO_METHOD when the path matches
 * under other methods (allow receives "GET, POST, OPTIONS" style list);
 * KEEL__MATCH_NOT_FOUND otherwise, also for paths with empty segments, "."
 * or ".." segments, or a decoded NUL or '/'.
 */
int keel__router_match(const keel__router *r, const char *method, const char *path,
                       struct keel__route_match *m, char *scratch, size_t scratchlen,
                       char *allow, size_t allowlen);

/* Calls fn for every route (for listings). */
void keel__router_each(const keel__router *r,
                       void (*fn)(void *ctx, const char *method, const char *tmpl, void *data),
                       void *ctx);

#endif
