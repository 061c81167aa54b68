#include "config.h"

#include "http/cors.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static const char *allowed_origin(const struct keel__cors_conf *c, const char *origin)
{
    if (origin == NULL || c == NULL)
        return NULL;
    for (size_t i = 0; i < c->norigins; i++) {
        if (strcmp(c->origins[i], "*") == 0)
            return c->credentials ? origin : "*";
        if (strcasecmp(c->origins[i], origin) == 0)
            return origin;
    }
    return NULL;
}

void keel__cors_decide(keel_request *req, const struct keel__cors_conf *conf)
{
    if (conf == NULL || conf->norigins == 0)
        return; /* no origin allowed: no header to look up */
    req->origin = allowed_origin(conf, keel__req_header(req, "Origin"));
    if (req->origin == NULL)
        return;
    /* Headers that fail to be added (memory) only cost the browser's view. */
    (void)keel__req_add_header(req, "Access-Control-Allow-Origin", req->origin);
    (void)keel__req_add_header(req, "Vary", "Origin");
    if (conf->credentials)
        (void)keel__req_add_header(req, "Access-Control-Allow-Credentials", "true");
}

void keel__cors_preflight(keel_request *req, const struct keel__cors_conf *conf, const char *allow)
{
    const char *acrm = keel__req_header(req, "Access-Control-Request-Method");
    (void)keel__req_add_header(req, "Allow", allow);
    if (acrm != NULL && req->origin != NULL) {
        char age[24];
        snprintf(age, sizeof age, "%d", conf->max_age);
        (void)keel__req_add_header(req, "Access-Control-Allow-Methods", conf->methods);
        (void)keel__req_add_header(req, "Access-Control-Allow-Headers", conf->headers);
        (void)keel__req_add_header(req, "Access-Control-Max-Age", age);
    }
    keel__respond(req, 204, "", 0);
}
