/* GET /openapi.json and GET /docs: the API document built from the serving
 * route table, and the Swagger UI page that renders it (docs/api.md). */
#ifndef KEEL_CORE_OPS_OPENAPI_H
#define KEEL_CORE_OPS_OPENAPI_H

#include <jansson.h>

#include "http/request.h"

struct keel__table;

/* The OpenAPI 3.1 document of t's main-listener routes (new reference), or
 * NULL when memory runs out.  t may be NULL (core routes only). */
json_t *keel__openapi_document(const struct keel__table *t);

/* Core route handlers (registered in ops/admin.c). */
int keel__route_openapi(keel_request *req);
int keel__route_docs(keel_request *req);
int keel__route_docs_file(keel_request *req);

#endif
