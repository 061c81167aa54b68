/*
 * Cross-origin resource sharing.  The server decides once per request, when
 * the route is known, whether the request's Origin is allowed; the CORS
 * headers then join the request's response headers, so whatever answers the
 * request (core route, plugin, stub, error) carries them.
 */
#ifndef KEEL_CORE_HTTP_CORS_H
#define KEEL_CORE_HTTP_CORS_H

#include <stdbool.h>
#include <stddef.h>

#include "http/request.h"

struct keel__cors_conf {
    /* "*" allows any origin; else "scheme://host[:port]", compared without
     * regard to case.  None: no CORS headers at all. */
    const char *const *origins;
    size_t norigins;
    const char *methods; /* Access-Control-Allow-Methods of a preflight */
    const char *headers; /* Access-Control-Allow-Headers of a preflight */
    int max_age;         /* Access-Control-Max-Age of a preflight, seconds */
    bool credentials;    /* Access-Control-Allow-Credentials: true */
};

/* Sets req->origin to the origin to echo (NULL when not allowed) and adds
 * Access-Control-Allow-Origin, Vary and, with credentials, -Allow-Credentials
 * to the request's response headers. */
void keel__cors_decide(keel_request *req, const struct keel__cors_conf *conf);

/* Answers a preflight (OPTIONS) for a known path: 204 with Allow (the path's
 * methods) and, for an allowed origin asking for a method, the
 * Access-Control-Allow-* headers. */
void keel__cors_preflight(keel_request *req, const struct keel__cors_conf *conf, const char *allow);

#endif
