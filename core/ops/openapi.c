/*
 * GET /openapi.json and GET /docs (docs/api.md).
 *
 * The document is built on every request from the route table snapshot the
 * request was dispatched on, so it always describes what serves: a reload
 * that adds a plugin adds its paths, and a route answered by its fallback
 * stub says so (x-keel-served-by "fallback", x-keel-fallback with the
 * reason, status and body).  Plugins describe their routes in their
 * manifests (summary, description, parameters, request_body, responses and
 * plugin-level "schemas"); the core adds what it decides itself: path
 * parameters, the bearer security requirement and the 401/403 answers of
 * authentication.  Only the main listener's routes are published; the
 * admin listener is not reachable by the document's readers.
 *
 * A plugin's named schemas appear in components.schemas as
 * "<plugin>.<name>", and "$ref": "#/components/schemas/<name>" inside its
 * manifest is rewritten to match, so two plugins cannot collide.
 *
 * /docs is Swagger UI, installed by `make install` into
 * PREFIX/share/keel/docs from the npm package swagger-ui-dist; the page
 * loads nothing from other hosts.
 */
#include "config.h"

#include "ops/openapi.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http/server.h"
#include "plugin/hostapi.h"
#include "http/routes.h"
#include "plugin/loader.h"
#include "util/log.h"

#define REF_PREFIX "#/components/schemas/"
/* Bound on a file /docs serves, against a wrong file in the data dir. */
#define DOCS_MAX_FILE (16 * 1024 * 1024)

/*
 * What the core documents about its own routes and about authentication.
 * Kept as JSON text so it reads like a manifest.
 */
static const char core_components[] =
    "{"
    "\"NotAuthenticated\":{\"type\":\"object\",\"required\":[\"detail\"],"
    " \"description\":\"No usable credentials (403), or an account that is not active.\","
    " \"properties\":{\"detail\":{\"type\":\"string\","
    "  \"examples\":[\"Not authenticated\",\"Account is not active\"]}}},"
    "\"InvalidToken\":{\"type\":\"object\",\"required\":[\"detail\"],"
    " \"properties\":{\"detail\":{\"type\":\"object\",\"required\":[\"error\",\"message\"],"
    "  \"properties\":{\"error\":{\"type\":\"string\","
    "   \"enum\":[\"token_expired\",\"invalid_token\",\"malformed_token\"]},"
    "   \"message\":{\"type\":\"string\"}}}}},"
    "\"Detail\":{\"type\":\"object\",\"required\":[\"detail\"],"
    " \"properties\":{\"detail\":{\"type\":\"string\"}}},"
    "\"Health\":{\"type\":\"object\",\"required\":[\"status\",\"database\",\"plugins\"],"
    " \"properties\":{\"status\":{\"type\":\"string\",\"enum\":[\"ok\",\"degraded\","
    "  \"draining\"]},"
    "  \"database\":{\"type\":\"string\",\"enum\":[\"up\",\"down\"]},"
    "  \"plugins\":{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\","
    "   \"enum\":[\"loaded\",\"fallback\",\"quarantined\"]}}}},"
    "\"Me\":{\"type\":\"object\",\"required\":[\"id\",\"email\",\"full_name\",\"role\","
    "  \"status\",\"subscription_tier\",\"created_at\",\"credits\"],"
    " \"properties\":{\"id\":{\"type\":\"string\",\"format\":\"uuid\"},"
    "  \"email\":{\"type\":\"string\"},\"full_name\":{\"type\":[\"string\",\"null\"]},"
    "  \"role\":{\"type\":\"string\",\"enum\":[\"free\",\"standard\",\"premium\","
    "   \"enterprise\",\"admin\",\"super_admin\"]},"
    "  \"status\":{\"type\":\"string\",\"enum\":[\"active\",\"pending\"]},"
    "  \"subscription_tier\":{\"type\":\"string\"},"
    "  \"created_at\":{\"type\":[\"string\",\"null\"]},"
    "  \"credits\":{\"type\":\"object\",\"required\":[\"balance\"],"
    "   \"properties\":{\"balance\":{\"type\":\"integer\"}}}}}"
    "}";

/* Documentation of the core's main-listener routes, keyed "METHOD path". */
static const char core_docs[] =
    "{"
    "\"GET /health\":{\"summary\":\"Liveness and dependency state\","
    " \"responses\":{\"200\":{\"description\":\"Always 200 while serving; status says whether "
    "  every plugin loaded and the database is up\","
    "  \"schema\":{\"$ref\":\"#/components/schemas/Health\"}},"
    "  \"503\":{\"description\":\"Draining before shutdown\","
    "  \"schema\":{\"$ref\":\"#/components/schemas/Health\"}}}},"
    "\"GET /api/v1/auth/me\":{\"summary\":\"The signed-in user and their credit balance\","
    " \"description\":\"With the database down the balance reads 0 and the answer carries "
    "X-Keel-Degraded: database.\","
    " \"responses\":{\"200\":{\"description\":\"The user\","
    "  \"schema\":{\"$ref\":\"#/components/schemas/Me\"}}}},"
    "\"GET /openapi.json\":{\"summary\":\"This document\","
    " \"description\":\"Built from the route table that serves now.\","
    " \"responses\":{\"200\":{\"description\":\"OpenAPI 3.1 document\","
    "  \"schema\":{\"type\":\"object\"}}}},"
    "\"GET /docs\":{\"summary\":\"API reference page (Swagger UI)\","
    " \"responses\":{\"200\":{\"description\":\"HTML page\"},"
    "  \"503\":{\"description\":\"Swagger UI is not installed\"}}},"
    "\"GET /docs/{file}\":{\"summary\":\"Static files of the API reference page\","
    " \"responses\":{\"200\":{\"description\":\"The file\"},"
    "  \"404\":{\"description\":\"Not one of the page's files\","
    "   \"schema\":{\"$ref\":\"#/components/schemas/Detail\"}}}}"
    "}";

static const char *auth_name(int auth)
{
    return auth == KEEL__AUTH_PUBLIC ? "public" : auth == KEEL__AUTH_USER ? "user" : "admin";
}

/* Rewrites every "$ref" into this plugin's namespace, in place. */
static void namespace_refs(json_t *v, const char *plugin)
{
    const char *key;
    json_t *x;
    size_t i;

    if (json_is_object(v)) {
        json_object_foreach(v, key, x)
        {
            const char *ref = json_string_value(x);
            if (strcmp(key, "$ref") == 0 && ref != NULL &&
                strncmp(ref, REF_PREFIX, strlen(REF_PREFIX)) == 0) {
                size_t n = strlen(ref) + strlen(plugin) + 2;
                char *buf = malloc(n);
                if (buf != NULL) {
                    snprintf(buf, n, "%s%s.%s", REF_PREFIX, plugin, ref + strlen(REF_PREFIX));
                    json_string_set(x, buf);
                    free(buf);
                }
            } else {
                namespace_refs(x, plugin);
            }
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, x) namespace_refs(x, plugin);
    }
}

/* A deep copy of v with references namespaced for plugin (NULL: core). */
static json_t *doc_copy(const json_t *v, const char *plugin)
{
    json_t *c = json_deep_copy(v);

    if (c != NULL && plugin != NULL)
        namespace_refs(c, plugin);
    return c;
}

/* "get_api_v1_jobs_job_id_status": unique per method and path. */
static json_t *operation_id(const char *method, const char *path)
{
    char buf[512];
    size_t n = 0;

    for (const char *m = method; *m != '\0' && n + 1 < sizeof buf; m++)
        buf[n++] = (char)(*m >= 'A' && *m <= 'Z' ? *m - 'A' + 'a' : *m);
    for (const char *p = path; *p != '\0' && n + 1 < sizeof buf; p++) {
        char c = *p;
        bool word = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (word)
            buf[n++] = c;
        else if (buf[n - 1] != '_')
            buf[n++] = '_';
    }
    while (n > 0 && buf[n - 1] == '_')
        n--;
    buf[n] = '\0';
    return json_string(buf);
}

/* Finds parameter (name, in) in an array of parameter objects. */
static bool has_param(const json_t *params, const char *name, const char *in)
{
    size_t i;
    json_t *p;

    json_array_foreach(params, i, p)
    {
        const char *pn = json_string_value(json_object_get(p, "name"));
        const char *pi = json_string_value(json_object_get(p, "in"));
        if (pn != NULL && pi != NULL && strcmp(pn, name) == 0 && strcmp(pi, in) == 0)
            return true;
    }
    return false;
}

/* The manifest's parameters plus every {name} of the template it left out. */
static json_t *parameters(const char *path, const json_t *doc, const char *plugin)
{
    json_t *params = json_object_get(doc, "parameters") != NULL
                         ? doc_copy(json_object_get(doc, "parameters"), plugin)
                         : json_array();

    for (const char *p = strchr(path, '{'); params != NULL && p != NULL; p = strchr(p + 1, '{')) {
        const char *end = strchr(p, '}');
        char name[128];
        if (end == NULL || (size_t)(end - p) >= sizeof name)
            break;
        snprintf(name, sizeof name, "%.*s", (int)(end - p - 1), p + 1);
        if (!has_param(params, name, "path"))
            json_array_append_new(params,
                                  json_pack("{s:s,s:s,s:b,s:{s:s}}", "name", name, "in", "path",
                                            "required", 1, "schema", "type", "string"));
    }
    /* OpenAPI requires path parameters to say required: true. */
    size_t i;
    json_t *x;
    json_array_foreach(params, i, x)
    {
        const char *in = json_string_value(json_object_get(x, "in"));
        if (in != NULL && strcmp(in, "path") == 0)
            json_object_set_new(x, "required", json_true());
    }
    return params;
}

/* One manifest response {description, schema, headers} as OpenAPI has it. */
static json_t *response(const char *status, const json_t *r, const char *plugin)
{
    const char *desc = json_string_value(json_object_get(r, "description"));
    json_t *schema = json_object_get(r, "schema");
    json_t *headers = json_object_get(r, "headers");
    char fallback[32];
    json_t *out;

    snprintf(fallback, sizeof fallback, "HTTP %s", status);
    out = json_pack("{s:s}", "description", desc != NULL ? desc : fallback);
    if (out != NULL && schema != NULL)
        json_object_set_new(out, "content",
                            json_pack("{s:{s:o}}", "application/json", "schema",
                                      doc_copy(schema, plugin)));
    if (out != NULL && headers != NULL)
        json_object_set_new(out, "headers", doc_copy(headers, plugin));
    return out;
}

static void add_auth_responses(json_t *responses)
{
    if (json_object_get(responses, "401") == NULL)
        json_object_set_new(
            responses, "401",
            json_pack("{s:s,s:{s:{s:{s:s},s:s}},s:{s:{s:{s:s}}}}", "description",
                      "The bearer token failed verification", "headers", "WWW-Authenticate",
                      "schema", "type", "string", "description", "Bearer error=\"invalid_token\"",
                      "content", "application/json", "schema", "$ref", REF_PREFIX "InvalidToken"));
    if (json_object_get(responses, "403") == NULL)
        json_object_set_new(responses, "403",
                            json_pack("{s:s,s:{s:{s:{s:s}}}}", "description",
                                      "No credentials, or the account is not active", "content",
                                      "application/json", "schema", "$ref",
                                      REF_PREFIX "NotAuthenticated"));
}

/* The stub's answer, for a route whose plugin is down. */
static json_t *fallback_info(const struct keel__route *r)
{
    json_t *body = r->stub_body != NULL ? json_loads(r->stub_body, JSON_DECODE_ANY, NULL) : NULL;

    return json_pack("{s:s,s:I,s:o,s:s}", "reason", keel__reason_name(r->reason), "status",
                     (json_int_t)r->stub_status, "body", body != NULL ? body : json_null(),
                     "header", r->fallback_header != NULL ? r->fallback_header : "");
}

static json_t *operation(const struct keel__route *r, const json_t *doc)
{
    const char *plugin = r->plugin;
    bool stub = plugin != NULL && r->handler == NULL;
    const char *summary = json_string_value(json_object_get(doc, "summary"));
    const char *desc = json_string_value(json_object_get(doc, "description"));
    json_t *op, *responses = json_object();
    const char *key;
    json_t *x;
    char label[600];

    snprintf(label, sizeof label, "%s %s", r->method, r->path_template);
    op = json_pack("{s:o,s:[s],s:s,s:o,s:s,s:s}", "operationId",
                   operation_id(r->method, r->path_template), "tags",
                   plugin != NULL ? plugin : "core", "summary", summary != NULL ? summary : label,
                   "parameters", parameters(r->path_template, doc, plugin), "x-keel-auth",
                   auth_name(r->auth), "x-keel-served-by",
                   plugin == NULL ? "core"
                   : stub         ? "fallback"
                                  : "plugin");
    if (op == NULL || responses == NULL) {
        json_decref(op);
        json_decref(responses);
        return NULL;
    }
    if (plugin != NULL)
        json_object_set_new(op, "x-keel-plugin", json_string(plugin));
    if (stub) {
        json_object_set_new(
            op, "description",
            json_sprintf("**Served by a fallback stub**: the %s plugin is down (%s), so this "
                         "route answers %u with its manifest's fallback body and "
                         "X-Keel-Fallback.%s%s",
                         plugin, keel__reason_name(r->reason), r->stub_status,
                         desc != NULL ? "\n\n" : "", desc != NULL ? desc : ""));
        json_object_set_new(op, "x-keel-fallback", fallback_info(r));
    } else if (desc != NULL) {
        json_object_set_new(op, "description", json_string(desc));
    }
    if (json_object_get(doc, "request_body") != NULL)
        json_object_set_new(op, "requestBody",
                            json_pack("{s:b,s:{s:{s:o}}}", "required", 1, "content",
                                      "application/json", "schema",
                                      doc_copy(json_object_get(doc, "request_body"), plugin)));
    json_object_foreach(json_object_get(doc, "responses"), key, x)
        json_object_set_new(responses, key, response(key, x, plugin));
    if (r->auth != KEEL__AUTH_PUBLIC) {
        add_auth_responses(responses);
        json_object_set_new(op, "security", json_pack("[{s:[]}]", "bearerAuth"));
    }
    if (json_object_size(responses) == 0)
        json_object_set_new(responses, "default",
                            json_pack("{s:s}", "description", "Not documented by the manifest"));
    json_object_set_new(op, "responses", responses);
    return op;
}

/* The lower-case method name OpenAPI uses as a path item key. */
static void lower(const char *in, char *out, size_t size)
{
    size_t i = 0;

    for (; in[i] != '\0' && i + 1 < size; i++)
        out[i] = (char)(in[i] >= 'A' && in[i] <= 'Z' ? in[i] - 'A' + 'a' : in[i]);
    out[i] = '\0';
}

json_t *keel__openapi_document(const struct keel__table *t)
{
    json_t *core_doc = json_loads(core_docs, 0, NULL);
    json_t *schemas = json_loads(core_components, 0, NULL);
    json_t *paths = json_object();
    json_t *tags = json_array();
    json_t *doc = NULL;

    if (core_doc == NULL || schemas == NULL || paths == NULL || tags == NULL)
        goto out;
    for (size_t i = 0; t != NULL && i < t->nroutes; i++) {
        const struct keel__route *r = &t->routes[i];
        char key[600], method[16];
        const json_t *rdoc;
        json_t *item, *op;

        if (r->listener != KEEL__LISTENER_MAIN)
            continue;
        snprintf(key, sizeof key, "%s %s", r->method, r->path_template);
        rdoc = r->plugin != NULL ? r->doc : json_object_get(core_doc, key);
        if ((op = operation(r, rdoc)) == NULL)
            goto out;
        item = json_object_get(paths, r->path_template);
        if (item == NULL) {
            item = json_object();
            json_object_set_new(paths, r->path_template, item);
        }
        lower(r->method, method, sizeof method);
        json_object_set_new(item, method, op);

        /* A plugin's named schemas and its tag, once per plugin. */
        if (r->plugin != NULL) {
            bool seen = false;
            size_t j;
            json_t *tag;
            json_array_foreach(tags, j, tag) seen =
                seen || strcmp(json_string_value(json_object_get(tag, "name")), r->plugin) == 0;
            if (!seen) {
                const char *name;
                json_t *s;
                char about[200];
                snprintf(about, sizeof about, "Routes of the %s plugin%s", r->plugin,
                         r->handler == NULL ? " (down: answered by its fallback stubs)" : "");
                json_array_append_new(tags, json_pack("{s:s,s:s}", "name", r->plugin, "description",
                                                      about));
                json_object_foreach(r->schemas, name, s)
                {
                    char full[300];
                    snprintf(full, sizeof full, "%s.%s", r->plugin, name);
                    json_object_set_new(schemas, full, doc_copy(s, r->plugin));
                }
            }
        }
    }
    /* Plugins first: they are what a reader of the page comes for. */
    json_array_append_new(tags, json_pack("{s:s,s:s}", "name", "core", "description",
                                          "Routes keeld serves itself"));
    doc = json_pack("{s:s,s:{s:s,s:s,s:s},s:O,s:O,s:{s:O,s:{s:{s:s,s:s,s:s,s:s}}}}", "openapi",
                    "3.1.0", "info", "title", "keel API", "version", PACKAGE_VERSION, "description",
                    "The creator-analytics API served by keeld.  Built from the route table "
                    "that serves now: each operation says whether its plugin or a fallback stub "
                    "answers it (x-keel-served-by).",
                    "tags", tags, "paths", paths, "components", "schemas", schemas,
                    "securitySchemes", "bearerAuth", "type", "http", "scheme", "bearer",
                    "bearerFormat", "JWT", "description",
                    "A Supabase access token (HS256, RS256 or ES256)");
out:
    json_decref(core_doc);
    json_decref(schemas);
    json_decref(paths);
    json_decref(tags);
    return doc;
}

/*
 * The serialised document of the last table asked for.  A table never
 * changes, so its serial names the document; building it again only after
 * a reload keeps a public route from costing a full build per request.
 */
static struct {
    pthread_mutex_t lock;
    uint64_t serial;
    char *text; /* malloc'd, or NULL */
    size_t len;
} cache = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* GET /openapi.json */
int keel__route_openapi(keel_request *req)
{
    const struct keel__table *t = req->table;
    uint64_t serial = t != NULL ? t->serial : 0;
    int rc;

    pthread_mutex_lock(&cache.lock);
    if (cache.text == NULL || cache.serial != serial) {
        json_t *doc = keel__openapi_document(t);
        char *text = doc != NULL ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
        json_decref(doc);
        if (text != NULL) {
            free(cache.text);
            cache.text = text;
            cache.len = strlen(text);
            cache.serial = serial;
        }
    }
    if (cache.text != NULL && cache.serial == serial)
        rc = keel__respond(req, 200, cache.text, cache.len); /* copies the text */
    else
        rc = keel__respond_detail(req, 500, "Internal Server Error");
    pthread_mutex_unlock(&cache.lock);
    return rc;
}

/* ------------------------------------------------------------------ /docs */

static const char docs_page[] =
    "<!doctype html>\n"
    "<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
    "<title>keel API reference</title>\n"
    "<link rel=\"icon\" href=\"data:,\">\n"
    "<link rel=\"stylesheet\" href=\"/docs/swagger-ui.css\">\n"
    "</head><body><div id=\"swagger-ui\"></div>\n"
    "<script src=\"/docs/swagger-ui-bundle.js\"></script>\n"
    "<script>\n"
    "window.ui = SwaggerUIBundle({url: '/openapi.json', dom_id: '#swagger-ui',\n"
    "  deepLinking: true, docExpansion: 'list', validatorUrl: null,\n"
    "  persistAuthorization: true});\n"
    "</script></body></html>\n";

static const char docs_missing[] =
    "<!doctype html>\n"
    "<html lang=\"en\"><head><meta charset=\"utf-8\"><title>keel API reference</title>"
    "<link rel=\"icon\" href=\"data:,\"></head><body>\n"
    "<p>The API reference page is not installed (swagger-ui-dist was not found when keel was "
    "installed). The API is described by <a href=\"/openapi.json\">/openapi.json</a>.</p>\n"
    "</body></html>\n";

static const struct {
    const char *name;
    const char *type;
} docs_files[] = {
    {"swagger-ui-bundle.js", "text/javascript; charset=utf-8"},
    {"swagger-ui.css", "text/css; charset=utf-8"},
};

/* Queues a non-JSON response (the JSON helpers always say application/json). */
static int respond_raw(keel_request *req, unsigned status, struct MHD_Response *resp,
                       const char *type)
{
    if (resp != NULL)
        MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    return keel__respond_mhd(req, status, resp, type);
}

static bool docs_installed(void)
{
    return access(KEEL_DATADIR "/docs/swagger-ui-bundle.js", R_OK) == 0;
}

/* GET /docs */
int keel__route_docs(keel_request *req)
{
    bool ok = docs_installed();
    const char *page = ok ? docs_page : docs_missing;

    if (req->conn == NULL || req->responded)
        return keel__respond(req, ok ? 200 : 503, page, strlen(page));
    return respond_raw(req, ok ? 200 : 503,
                       MHD_create_response_from_buffer(strlen(page), (void *)page,
                                                       MHD_RESPMEM_PERSISTENT),
                       "text/html; charset=utf-8");
}

/* GET /docs/{file}: only the page's own files, from the install's data dir. */
int keel__route_docs_file(keel_request *req)
{
    const char *name = keel__host_api()->req_param(req, "file");
    char path[1024];
    struct stat st;
    size_t i;
    int fd;

    for (i = 0; name != NULL && i < sizeof docs_files / sizeof docs_files[0]; i++)
        if (strcmp(docs_files[i].name, name) == 0)
            break;
    if (name == NULL || i == sizeof docs_files / sizeof docs_files[0])
        return keel__respond_detail(req, 404, "Not Found");
    snprintf(path, sizeof path, "%s/docs/%s", KEEL_DATADIR, docs_files[i].name);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > DOCS_MAX_FILE) {
        if (fd >= 0)
            close(fd);
        else
            keel__log(KEEL_LOG_WARN, "core", "docs: %s: %s", path, strerror(errno));
        return keel__respond_detail(req, 404, "Not Found");
    }
    if (req->conn == NULL || req->responded) {
        close(fd);
        return keel__respond_detail(req, 404, "Not Found");
    }
    /* libmicrohttpd closes fd when the response is destroyed. */
    struct MHD_Response *resp = MHD_create_response_from_fd((uint64_t)st.st_size, fd);
    if (resp == NULL) {
        close(fd);
        return KEEL_ENOMEM;
    }
    MHD_add_response_header(resp, "Cache-Control", "public, max-age=3600");
    return respond_raw(req, 200, resp, docs_files[i].type);
}
