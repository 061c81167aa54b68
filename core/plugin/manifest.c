/*
 * Plugin manifests: the "plugin" object of a conf.d file, parsed into a
 * struct keel__manifest (conf/conf.h).  The conf.d loader (conf/conf.c) hands
 * every manifest it reads to keel__manifest_parse(), through the ops that
 * keel__manifest_install() gives it, once plugin_dir is final; a reload reads
 * conf.d again and so parses the file's fresh contents (a file whose bytes
 * did not change keeps its tree, and its manifest shares it).
 */
#include "config.h"

#include "plugin/manifest.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <keel/error.h>

#include "http/router.h"

/* Makefile.am passes the install path; unit tests built by hand may not. */
#ifndef KEEL_PLUGINDIR
#define KEEL_PLUGINDIR "/usr/local/lib/keel"
#endif

/* Bounds on what a manifest may ask for, so a typo cannot ask for huge tables. */
#define MAX_ROUTES 512
#define MAX_FALLBACK_HEADERS 32

void keel__manifest_clear(struct keel__manifest *m)
{
    if (m == NULL)
        return;
    free(m->name);
    free(m->source);
    free(m->file);
    free(m->file_spec);
    free(m->migrations);
    json_decref(m->config);
    json_decref(m->schemas);
    for (size_t i = 0; i < m->nroutes; i++) {
        struct keel__manifest_route *r = &m->routes[i];
        free(r->method);
        free(r->path);
        json_decref(r->fallback);
        json_decref(r->fallback_headers);
        json_decref(r->doc);
    }
    free(m->routes);
    memset(m, 0, sizeof *m);
}

static bool valid_plugin_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

/* An HTTP header name is an RFC 9110 token. */
static bool valid_header_name(const char *s)
{
    if (*s == '\0' || strlen(s) > 128)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *p) != NULL))
            return false;
    }
    return true;
}

/* Header values may not smuggle in another header or a control character. */
static bool valid_header_value(const char *s, size_t len)
{
    if (len > 1024 || strlen(s) != len)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return false;
    }
    return true;
}

char *keel__manifest_resolve_file(const char *spec, const char *plugin_dir)
{
    if (spec[0] == '/')
        return strdup(spec);
    if (plugin_dir == NULL || plugin_dir[0] == '\0')
        plugin_dir = KEEL_PLUGINDIR;
    if (plugin_dir[0] == '/')
        return keel__path_join(plugin_dir, spec);

    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) == NULL)
        return keel__path_join(plugin_dir, spec); /* best effort: stays relative */
    char *dir = keel__path_join(cwd, plugin_dir);
    if (dir == NULL)
        return NULL;
    char *p = keel__path_join(dir, spec);
    free(dir);
    return p;
}

/* A manifest keeps references into the parsed conf.d tree, not copies: the
 * loader keeps that tree for the next reload (conf/conf.c), and nothing
 * modifies it or the manifest's JSON once parsed (a plugin's init gets its
 * own copy of its config, loader.c).  A reload of an unchanged file then
 * builds its manifest without copying its documentation. */
static json_t *share(const json_t *v)
{
    return json_incref((json_t *)v);
}

static int parse_fallback(const json_t *fb, const char *source, size_t i,
                          struct keel__manifest_route *r, char *err, size_t errlen)
{
    static const char *const keys[] = {"status", "headers", "body", NULL};
    const char *key;
    json_t *value;

    if (!json_is_object(fb))
        return keel__conf_fail(err, errlen,
                               "%s: plugin.routes[%zu].fallback: expected an object with "
                               "status, headers and body",
                               source, i);
    char hint[96];
    if ((key = keel__conf_unknown_key(fb, keys)) != NULL)
        return keel__conf_fail(err, errlen, "%s: plugin.routes[%zu].fallback.%s: unknown key%s",
                               source, i, key, keel__conf_hint(key, keys, hint, sizeof hint));
    json_t *status = json_object_get(fb, "status");
    json_t *headers = json_object_get(fb, "headers");
    json_t *body = json_object_get(fb, "body");

    r->fallback_status = 200;
    if (status != NULL) {
        if (!json_is_integer(status) || json_integer_value(status) < 100 ||
            json_integer_value(status) > 599)
            return keel__conf_fail(err, errlen,
                                   "%s: plugin.routes[%zu].fallback.status: expected an "
                                   "integer 100-599",
                                   source, i);
        r->fallback_status = (unsigned)json_integer_value(status);
    }
    if (headers != NULL) {
        if (!json_is_object(headers) || json_object_size(headers) > MAX_FALLBACK_HEADERS)
            return keel__conf_fail(err, errlen,
                                   "%s: plugin.routes[%zu].fallback.headers: expected an "
                                   "object of at most %d strings",
                                   source, i, MAX_FALLBACK_HEADERS);
        json_object_foreach(headers, key, value)
        {
            if (!valid_header_name(key))
                return keel__conf_fail(err, errlen,
                                       "%s: plugin.routes[%zu].fallback.headers.%s: not a "
                                       "valid header name",
                                       source, i, key);
            if (!json_is_string(value) ||
                !valid_header_value(json_string_value(value), json_string_length(value)))
                return keel__conf_fail(err, errlen,
                                       "%s: plugin.routes[%zu].fallback.headers.%s: expected "
                                       "a string without control characters",
                                       source, i, key);
        }
        r->fallback_headers = share(headers);
        if (r->fallback_headers == NULL)
            return keel__conf_nomem(err, errlen);
    }
    if (body != NULL) {
        r->fallback = share(body);
        if (r->fallback == NULL)
            return keel__conf_nomem(err, errlen);
    }
    return 0;
}

/* A JSON Schema is an object or a boolean (OpenAPI 3.1 takes JSON Schema
 * 2020-12 as it is; the document's validators check the rest). */
static bool is_schema(const json_t *v)
{
    return json_is_object(v) || json_is_boolean(v);
}

/* "100".."599" or "default", the keys of an OpenAPI responses object. */
static bool valid_status_key(const char *k)
{
    if (strcmp(k, "default") == 0)
        return true;
    return strlen(k) == 3 && k[0] >= '1' && k[0] <= '5' && k[1] >= '0' && k[1] <= '9' &&
           k[2] >= '0' && k[2] <= '9';
}

/*
 * The optional documentation keys of a route, checked for shape so that a
 * typo fails at --check instead of producing a document validators refuse.
 * The accepted value is kept as written in r->doc.
 */
static int parse_doc(const json_t *obj, const char *source, size_t i,
                     struct keel__manifest_route *r, char *err, size_t errlen)
{
    static const char *const doc_keys[] = {"summary", "description", "parameters", "request_body",
                                           "responses"};
    static const char *const response_keys[] = {"description", "schema", "headers", NULL};
    const char *key;
    json_t *v, *x;
    size_t j;

    for (j = 0; j < sizeof doc_keys / sizeof doc_keys[0]; j++) {
        v = json_object_get(obj, doc_keys[j]);
        if (v == NULL)
            continue;
        if (j < 2 && !keel__conf_is_text(v))
            return keel__conf_fail(err, errlen, "%s: plugin.routes[%zu].%s: expected a string",
                                   source, i, doc_keys[j]);
        if (j == 3 && !is_schema(v))
            return keel__conf_fail(err, errlen,
                                   "%s: plugin.routes[%zu].request_body: expected a JSON Schema",
                                   source, i);
        if (r->doc == NULL && (r->doc = json_object()) == NULL)
            return keel__conf_nomem(err, errlen);
        if (json_object_set_new(r->doc, doc_keys[j], share(v)) != 0)
            return keel__conf_nomem(err, errlen);
    }
    v = json_object_get(obj, "parameters");
    if (v != NULL && !json_is_array(v))
        return keel__conf_fail(err, errlen, "%s: plugin.routes[%zu].parameters: expected an array",
                               source, i);
    json_array_foreach(v, j, x)
    {
        const char *in = json_string_value(json_object_get(x, "in"));
        if (!json_is_object(x) || !keel__conf_is_text(json_object_get(x, "name")) || in == NULL ||
            (strcmp(in, "query") != 0 && strcmp(in, "header") != 0 && strcmp(in, "path") != 0))
            return keel__conf_fail(err, errlen,
                                   "%s: plugin.routes[%zu].parameters[%zu]: expected an object "
                                   "with \"name\" and \"in\" (query, header or path)",
                                   source, i, j);
    }
    v = json_object_get(obj, "responses");
    if (v != NULL && !json_is_object(v))
        return keel__conf_fail(err, errlen,
                               "%s: plugin.routes[%zu].responses: expected an object keyed by "
                               "status code",
                               source, i);
    json_object_foreach(v, key, x)
    {
        const char *bad;
        if (!valid_status_key(key) || !json_is_object(x))
            return keel__conf_fail(err, errlen,
                                   "%s: plugin.routes[%zu].responses.%s: expected a status code "
                                   "(100-599) mapped to {description, schema, headers}",
                                   source, i, key);
        if ((bad = keel__conf_unknown_key(x, response_keys)) != NULL)
            return keel__conf_fail(err, errlen,
                                   "%s: plugin.routes[%zu].responses.%s.%s: unknown key", source, i,
                                   key, bad);
        if ((json_object_get(x, "description") != NULL &&
             !keel__conf_is_text(json_object_get(x, "description"))) ||
            (json_object_get(x, "schema") != NULL && !is_schema(json_object_get(x, "schema"))) ||
            (json_object_get(x, "headers") != NULL &&
             !json_is_object(json_object_get(x, "headers"))))
            return keel__conf_fail(err, errlen,
                                   "%s: plugin.routes[%zu].responses.%s: description must be a "
                                   "string, schema a JSON Schema, headers an object",
                                   source, i, key);
    }
    return 0;
}

static int parse_route(const json_t *obj, const char *source, size_t i,
                       struct keel__manifest_route *r, char *err, size_t errlen)
{
    static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE"};
    static const char *const keys[] = {"method",     "path",         "auth",      "listener",
                                       "body",       "fallback",     "summary",   "description",
                                       "parameters", "request_body", "responses", NULL};
    const char *key;
    char why[256];

    if (!json_is_object(obj))
        return keel__conf_fail(err, errlen, "%s: plugin.routes[%zu]: expected an object", source,
                               i);
    char hint[96];
    if ((key = keel__conf_unknown_key(obj, keys)) != NULL)
        return keel__conf_fail(err, errlen, "%s: plugin.routes[%zu].%s: unknown key%s", source, i,
                               key, keel__conf_hint(key, keys, hint, sizeof hint));

    json_t *method = json_object_get(obj, "method");
    size_t mi = 0;
    if (json_is_string(method))
        while (mi < 5 && strcmp(methods[mi], json_string_value(method)) != 0)
            mi++;
    if (!json_is_string(method) || mi == 5)
        return keel__conf_fail(err, errlen,
                               "%s: plugin.routes[%zu].method: expected one of GET, POST, PUT, "
                               "PATCH, DELETE",
                               source, i);

    json_t *path = json_object_get(obj, "path");
    if (!keel__conf_is_text(path))
        return keel__conf_fail(err, errlen,
                               "%s: plugin.routes[%zu].path: expected a path template such as "
                               "\"/api/v1/x/{name}\"",
                               source, i);
    if (keel__router_check_template(json_string_value(path), why, sizeof why) < 0)
        return keel__conf_fail(err, errlen, "%s: plugin.routes[%zu].path: %s", source, i, why);

    json_t *auth = json_object_get(obj, "auth");
    const char *a = json_is_string(auth) ? json_string_value(auth) : "";
    if (strcmp(a, "public") == 0)
        r->auth = KEEL__AUTH_PUBLIC;
    else if (strcmp(a, "user") == 0)
        r->auth = KEEL__AUTH_USER;
    else if (strcmp(a, "admin") == 0)
        r->auth = KEEL__AUTH_ADMIN;
    else
        return keel__conf_fail(err, errlen,
                               "%s: plugin.routes[%zu].auth: expected \"public\", \"user\" or "
                               "\"admin\"",
                               source, i);

    json_t *listener = json_object_get(obj, "listener");
    const char *l = listener == NULL           ? "main"
                    : json_is_string(listener) ? json_string_value(listener)
                                               : "";
    if (strcmp(l, "main") == 0)
        r->listener = KEEL__LISTENER_MAIN;
    else if (strcmp(l, "admin") == 0)
        r->listener = KEEL__LISTENER_ADMIN;
    else
        return keel__conf_fail(err, errlen,
                               "%s: plugin.routes[%zu].listener: expected \"main\" or \"admin\"",
                               source, i);

    json_t *body = json_object_get(obj, "body");
    if (body != NULL && !(json_is_string(body) && (strcmp(json_string_value(body), "stream") == 0 ||
                                                   strcmp(json_string_value(body), "memory") == 0)))
        return keel__conf_fail(err, errlen,
                               "%s: plugin.routes[%zu].body: expected \"memory\" (the default) or "
                               "\"stream\"",
                               source, i);
    r->stream_body = body != NULL && strcmp(json_string_value(body), "stream") == 0;

    r->method = strdup(methods[mi]);
    r->path = strdup(json_string_value(path));
    if (r->method == NULL || r->path == NULL)
        return keel__conf_nomem(err, errlen);
    int drc = parse_doc(obj, source, i, r, err, errlen);
    if (drc < 0)
        return drc;

    json_t *fb = json_object_get(obj, "fallback");
    if (fb != NULL) {
        int rc = parse_fallback(fb, source, i, r, err, errlen);
        if (rc < 0)
            return rc;
    } else {
        r->fallback_status = 503;
    }
    if (r->fallback == NULL) {
        r->fallback = json_pack("{s:s}", "detail", "Service unavailable");
        if (r->fallback == NULL)
            return keel__conf_nomem(err, errlen);
    }
    return 0;
}

/* Two routes of one manifest may not claim the same method and shape. */
static int check_route_conflicts(const struct keel__manifest *m, const char *source, char *err,
                                 size_t errlen)
{
    keel__router *routers[2] = {keel__router_new(), keel__router_new()};
    char why[512];
    int rc = 0;

    if (routers[0] == NULL || routers[1] == NULL) {
        rc = keel__conf_nomem(err, errlen);
        goto out;
    }
    for (size_t i = 0; i < m->nroutes; i++) {
        const struct keel__manifest_route *r = &m->routes[i];
        int arc = keel__router_add(routers[r->listener], r->method, r->path, m->name, NULL, why,
                                   sizeof why);
        if (arc == KEEL_ENOMEM) {
            rc = keel__conf_nomem(err, errlen);
            goto out;
        }
        if (arc < 0) {
            rc = keel__conf_fail(err, errlen, "%s: plugin.routes[%zu]: %s", source, i, why);
            goto out;
        }
    }
out:
    keel__router_free(routers[0]);
    keel__router_free(routers[1]);
    return rc;
}

static int manifest_parse(const json_t *obj, const char *source, const char *plugin_dir,
                          struct keel__manifest *out, char *err, size_t errlen)
{
    static const char *const keys[] = {"name",   "enabled", "file",       "config",
                                       "routes", "schemas", "migrations", NULL};
    const char *key;

    if (!json_is_object(obj))
        return keel__conf_fail(err, errlen, "%s: plugin: expected an object", source);
    char hint[96];
    if ((key = keel__conf_unknown_key(obj, keys)) != NULL)
        return keel__conf_fail(err, errlen, "%s: plugin.%s: unknown key%s", source, key,
                               keel__conf_hint(key, keys, hint, sizeof hint));

    json_t *name = json_object_get(obj, "name");
    if (!keel__conf_is_text(name) || !valid_plugin_name(json_string_value(name)))
        return keel__conf_fail(err, errlen,
                               "%s: plugin.name: expected 1-64 characters of [a-z0-9_-]", source);
    json_t *file = json_object_get(obj, "file");
    if (!keel__conf_is_text(file) || json_string_length(file) == 0)
        return keel__conf_fail(err, errlen,
                               "%s: plugin.file: expected the file name of the plugin's .so",
                               source);
    json_t *enabled = json_object_get(obj, "enabled");
    if (enabled != NULL && !json_is_boolean(enabled))
        return keel__conf_fail(err, errlen, "%s: plugin.enabled: expected true or false", source);
    json_t *config = json_object_get(obj, "config");
    if (config != NULL && !json_is_object(config))
        return keel__conf_fail(err, errlen, "%s: plugin.config: expected an object", source);
    json_t *migrations = json_object_get(obj, "migrations");
    if (migrations != NULL &&
        (!keel__conf_is_text(migrations) || json_string_length(migrations) == 0 ||
         strstr(json_string_value(migrations), "..") != NULL))
        return keel__conf_fail(err, errlen,
                               "%s: plugin.migrations: expected a directory name (no \"..\")",
                               source);
    if (migrations != NULL && (out->migrations = strdup(json_string_value(migrations))) == NULL)
        return keel__conf_nomem(err, errlen);
    json_t *schemas = json_object_get(obj, "schemas");
    if (schemas != NULL && !json_is_object(schemas))
        return keel__conf_fail(err, errlen,
                               "%s: plugin.schemas: expected an object of named JSON Schemas",
                               source);
    json_t *routes = json_object_get(obj, "routes");
    if (routes != NULL && (!json_is_array(routes) || json_array_size(routes) > MAX_ROUTES))
        return keel__conf_fail(err, errlen,
                               "%s: plugin.routes: expected an array of at most %d routes", source,
                               MAX_ROUTES);

    out->name = strdup(json_string_value(name));
    out->source = strdup(source);
    out->file_spec = strdup(json_string_value(file));
    out->enabled = enabled == NULL || json_is_true(enabled);
    out->config = config ? share(config) : json_object();
    out->schemas = schemas ? share(schemas) : NULL;
    if ((schemas != NULL && out->schemas == NULL) || out->name == NULL || out->source == NULL ||
        out->file_spec == NULL || out->config == NULL)
        return keel__conf_nomem(err, errlen);
    out->file = keel__manifest_resolve_file(out->file_spec, plugin_dir);
    if (out->file == NULL)
        return keel__conf_nomem(err, errlen);

    size_t n = routes ? json_array_size(routes) : 0;
    if (n > 0) {
        out->routes = calloc(n, sizeof *out->routes);
        if (out->routes == NULL)
            return keel__conf_nomem(err, errlen);
    }
    for (size_t i = 0; i < n; i++) {
        /* Counted before parsing so that a failure frees the partial route. */
        out->nroutes = i + 1;
        int rc = parse_route(json_array_get(routes, i), source, i, &out->routes[i], err, errlen);
        if (rc < 0)
            return rc;
    }
    return check_route_conflicts(out, source, err, errlen);
}

int keel__manifest_parse(const json_t *obj, const char *source, const char *plugin_dir,
                         struct keel__manifest *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    int rc = manifest_parse(obj, source ? source : "(manifest)", plugin_dir, out, err, errlen);
    if (rc < 0)
        keel__manifest_clear(out);
    return rc;
}

void keel__manifest_install(void)
{
    static const struct keel__manifest_ops ops = {
        .parse = keel__manifest_parse,
        .clear = keel__manifest_clear,
        .resolve_file = keel__manifest_resolve_file,
    };
    keel__conf_set_manifest_ops(&ops);
}
