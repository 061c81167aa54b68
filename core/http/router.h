/*
 * Method + path-template routing.  A router is built once per route-table
 * generation and is read-only afterwards, so lookups take no lock.
 *
 * Templates are absolute paths split on '/'; a segment "{name}" matches any
 * one non-empty segment.  At each position a literal segment is tried before
 * a parameter (so "/x/unlocked" beats "/x/{username}"), with backtracking.
 * Only two routes with the same method and the same template shape (parameter
 * names ignored) conflict.
 *
 * Precedence, precisely: the lookup is a depth-first search over the segment
 * tree that, at every depth, tries the literal child equal to the decoded
 * segment first and the parameter child second.  The first template in that
 * order that matches the whole path AND has a route for the request method
 * wins; a template that matches the path but lacks the method does not stop
 * the search.  So with "GET /a/{x}/c" and "GET /a/b/{y}", "/a/b/c" matches
 * "/a/b/{y}" (literal "b" beats "{x}" at depth 2), and "/a/z/c" matches
 * "/a/{x}/c"; with "POST /u/{name}" and "GET /{user}/status", "GET /u/status"
 * reaches the second one.  The result never depends on registration order.
 *
 * Templates: "/" or '/'-separated non-empty segments, at most
 * KEEL__ROUTER_MAX_SEGMENTS segments and KEEL__ROUTER_MAX_PARAMS parameters.
 * A literal segment uses RFC 3986 pchar characters except '%' (it is compared
 * with the percent-decoded request segment) and is never "." or "..".  A
 * parameter is the whole segment "{name}", name [A-Za-z_][A-Za-z0-9_]{0,31},
 * unique within the template.
 *
 * Paths: "/" has no segments.  Any empty segment ("//", and a trailing slash
 * as in "/x/") makes the path not found: keel serves one spelling of each
 * resource and does not redirect.  Methods are matched exactly (upper case);
 * the router does not map HEAD to GET.  Known methods: GET, HEAD, POST, PUT,
 * PATCH, DELETE, OPTIONS.
 */
#ifndef KEEL_CORE_HTTP_ROUTER_H
#define KEEL_CORE_HTTP_ROUTER_H

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

enum keel__match_result {
    KEEL__MATCH_OK = 0,
    KEEL__MATCH_NOT_FOUND = 1,
    KEEL__MATCH_NO_METHOD = 2
};

/*
 * Looks up method + path (path without query string, still percent-encoded).
 * scratch/scratchlen receive the decoded segments (strlen(path) + 1 bytes
 * always suffice; a smaller buffer that runs out gives NOT_FOUND).  Returns
 * KEEL__MATCH_OK and fills *m; KEEL__MATCH_NO_METHOD when the path matches
 * under other methods (allow receives "GET, POST, OPTIONS" style list: the
 * union of the methods of every template that matches the path, in the
 * order GET, HEAD, POST, PUT, PATCH, DELETE, always ending with OPTIONS;
 * truncated to allowlen); KEEL__MATCH_NOT_FOUND otherwise, also for paths
 * with empty segments, "." or ".." segments (also when percent-encoded), a
 * decoded NUL or '/', a segment that does not decode to valid UTF-8 (so
 * parameters are always valid UTF-8), a malformed %-escape, or more than
 * KEEL__ROUTER_MAX_SEGMENTS segments.  Takes no lock and allocates nothing;
 * allow may be NULL.
 */
int keel__router_match(const keel__router *r, const char *method, const char *path,
                       struct keel__route_match *m, char *scratch, size_t scratchlen, char *allow,
                       size_t allowlen);

/*
 * The methods path is routed under: KEEL__MATCH_OK with allow set as for
 * KEEL__MATCH_NO_METHOD above (always ending with OPTIONS), or
 * KEEL__MATCH_NOT_FOUND when no template matches the path.  scratch as for
 * keel__router_match.  Answers OPTIONS.
 */
int keel__router_methods(const keel__router *r, const char *path, char *scratch, size_t scratchlen,
                         char *allow, size_t allowlen);

/*
 * Checks a template without adding it: 0, or KEEL_EINVAL with the reason in
 * err.  plugin/manifest.c validates manifests with it.
 */
int keel__router_check_template(const char *path_template, char *err,
                                size_t errlen) KEEL_WARN_UNUSED;

/* Calls fn for every route, in the order they were added (for listings). */
void keel__router_each(const keel__router *r,
                       void (*fn)(void *ctx, const char *method, const char *tmpl, void *data),
                       void *ctx);

#endif
