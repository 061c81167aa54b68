/*
 * Fuzzes the creator plugin's NDJSON import (POST /admin/import) through its
 * real entry point: keel_plugin_entry() -> init -> the route's handler, with
 * a host table written here.  The plugin's sources are compiled into this
 * program, so the line splitter, the JSON parsing, every field reader and
 * validator of a profile line and its posts, the per-line error reports and
 * the answer are all exercised exactly as keeld runs them.
 *
 * The fake host runs each line's transaction callback against a fake
 * database: every statement "returns" one row whose every column is a fixed
 * UUID.  So valid lines go all the way through the transaction code, and
 * the statement parameters the plugin builds are checked: every one valid
 * UTF-8 (PostgreSQL refuses anything else), the posts recordset a JSON
 * array of objects.
 *
 * Input: the request body.  Properties checked besides memory safety: the
 * handler queues exactly one response, 200 with "lines" equal to the number
 * of lines, one result per non-blank line in increasing line order, and
 * imported + failed equal to the number of results.
 */
#include "config.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <keel/error.h>
#include <keel/plugin.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifndef KEEL_FUZZ_SRCDIR
#define KEEL_FUZZ_SRCDIR "."
#endif

#define FAKE_ID "00000000-0000-4000-8000-000000000001"

struct chunk {
    struct chunk *next;
    max_align_t data[];
};

struct keel_request {
    const char *body;
    size_t len;
    struct chunk *mem;
    int responses;
    unsigned status;
    json_t *answer;
};

struct keel_db_tx {
    keel_request *req;
};

struct keel_db_result {
    int rows;
};

static keel_db_result one_row = {1};
static const keel_route *import_route;
static void *plugin_state;

/* ------------------------------------------------------------ the fake host */

static void host_log(keel_request *req, int level, const char *fmt, ...)
{
    (void)req, (void)level, (void)fmt;
}

static const char *host_null(const keel_request *req)
{
    (void)req;
    return NULL;
}

static const char *host_named_null(const keel_request *req, const char *name)
{
    (void)req, (void)name;
    return NULL;
}

static const char *host_body(const keel_request *req, size_t *len)
{
    *len = req->len;
    return req->body;
}

static void *host_alloc(keel_request *req, size_t size)
{
    struct chunk *c = calloc(1, sizeof *c + size);
    if (c == NULL)
        return NULL;
    c->next = req->mem;
    req->mem = c;
    return c->data;
}

static int host_on_cleanup(keel_request *req, void (*fn)(void *), void *arg)
{
    (void)req, (void)fn, (void)arg;
    return KEEL_EUNSUPPORTED;
}

static int host_respond_json(keel_request *req, unsigned status, json_t *body)
{
    req->responses++;
    if (req->responses > 1) {
        json_decref(body);
        return KEEL_ERESPONDED;
    }
    req->status = status;
    req->answer = body;
    return 0;
}

static int host_respond_error(keel_request *req, unsigned status, const char *detail)
{
    return host_respond_json(req, status, json_pack("{s:s}", "detail", detail));
}

static int host_set_header(keel_request *req, const char *name, const char *value)
{
    (void)req, (void)name, (void)value;
    return 0;
}

static int host_json_body(keel_request *req, json_t **out)
{
    *out = NULL;
    host_respond_error(req, 400, "not used by the import");
    return KEEL_EINVAL;
}

static const char *host_user(const keel_request *req, int field)
{
    (void)req, (void)field;
    return NULL;
}

static int host_query(keel_request *req, const char *sql, int nparams, const char *const *params,
                      keel_db_result **out)
{
    (void)req, (void)sql, (void)nparams, (void)params;
    *out = NULL;
    return KEEL_EDB_UNAVAILABLE;
}

static bool valid_utf8(const unsigned char *s)
{
    while (*s) {
        int n = *s < 0x80             ? 0
                : (*s & 0xE0) == 0xC0 ? 1
                : (*s & 0xF0) == 0xE0 ? 2
                : (*s & 0xF8) == 0xF0 ? 3
                                      : -1;
        if (n < 0 || (n == 1 && *s < 0xC2))
            return false;
        for (int i = 1; i <= n; i++)
            if ((s[i] & 0xC0) != 0x80)
                return false;
        s += n + 1;
    }
    return true;
}

/* What the plugin hands the database must be what the SQL expects. */
static void check_params(const char *sql, int nparams, const char *const *params)
{
    for (int i = 0; i < nparams; i++) {
        const char *p = params[i];
        if (p == NULL)
            continue;
        size_t n = strlen(p);
        if (!valid_utf8((const unsigned char *)p))
            abort();
        if (strstr(sql, "json_to_recordset") != NULL && i == 1) {
            json_t *rows = json_loadb(p, n, 0, NULL);
            if (!json_is_array(rows))
                abort();
            size_t k;
            json_t *row;
            json_array_foreach(rows, k, row) if (!json_is_object(row)) abort();
            json_decref(rows);
        }
    }
}

static int host_transaction(keel_request *req, keel_db_tx_fn fn, void *arg)
{
    struct keel_db_tx tx = {req};
    return fn(&tx, arg);
}

static int host_tx_query(keel_db_tx *tx, const char *sql, int nparams, const char *const *params,
                         keel_db_result **out)
{
    (void)tx;
    check_params(sql, nparams, params);
    if (out != NULL)
        *out = &one_row;
    return 0;
}

static int host_rows(const keel_db_result *res)
{
    return res ? res->rows : 0;
}

static int host_column(const keel_db_result *res, const char *name)
{
    (void)res, (void)name;
    return 0;
}

static const char *host_value(const keel_db_result *res, int row, int col)
{
    return res != NULL && row == 0 && col == 0 ? FAKE_ID : NULL;
}

static const char *host_last_error(const keel_request *req)
{
    (void)req;
    return "";
}

static long host_affected(const keel_db_result *res)
{
    (void)res;
    return 0;
}

static const keel_host host = {
    .size = sizeof(keel_host),
    .abi_major = KEEL_ABI_MAJOR,
    .abi_minor = KEEL_ABI_MINOR,
    .log = host_log,
    .req_method = host_null,
    .req_path = host_null,
    .req_param = host_named_null,
    .req_query = host_named_null,
    .req_header = host_named_null,
    .req_body = host_body,
    .req_alloc = host_alloc,
    .req_on_cleanup = host_on_cleanup,
    .respond_json = host_respond_json,
    .respond_error = host_respond_error,
    .set_header = host_set_header,
    .req_json_body = host_json_body,
    .req_user = host_user,
    .db_query = host_query,
    .db_transaction = host_transaction,
    .db_tx_query = host_tx_query,
    .db_rows = host_rows,
    .db_column = host_column,
    .db_value = host_value,
    .db_last_error = host_last_error,
    .db_affected = host_affected,
};

/* ------------------------------------------------------------ harness */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const keel_plugin *p = keel_plugin_entry();
    if (p == NULL || p->magic != KEEL_PLUGIN_MAGIC)
        abort();
    json_t *doc = json_load_file(KEEL_FUZZ_SRCDIR "/conf.d/60-creator.json", 0, NULL);
    const json_t *config = json_object_get(json_object_get(doc, "plugin"), "config");
    if (p->init(&host, config, &plugin_state) != 0)
        abort();
    json_decref(doc);
    for (const keel_route *r = p->routes; r->method != NULL; r++)
        if (strcmp(r->method, "POST") == 0 && strcmp(r->path, "/admin/import") == 0)
            import_route = r;
    if (import_route == NULL)
        abort();
    return 0;
}

static size_t count_lines(const char *s, size_t n, size_t *nonblank)
{
    size_t lines = 0, pos = 0;
    *nonblank = 0;
    while (pos < n) {
        const char *nl = memchr(s + pos, '\n', n - pos);
        size_t len = nl ? (size_t)(nl - (s + pos)) : n - pos;
        bool blank = true;
        for (size_t i = 0; i < len; i++)
            if (s[pos + i] != ' ' && s[pos + i] != '\t' && s[pos + i] != '\r')
                blank = false;
        lines++;
        if (!blank)
            (*nonblank)++;
        pos += len + (nl != NULL);
    }
    return lines;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The host hands plugins a NUL-terminated body of exactly len bytes. */
    char *body = malloc(size + 1);
    if (body == NULL)
        abort();
    memcpy(body, data, size);
    body[size] = '\0';
    keel_request req = {.body = size ? body : NULL, .len = size};

    import_route->handler(&req, plugin_state);

    if (req.responses != 1)
        abort();
    if (req.status == 200) {
        size_t nonblank, lines = count_lines(body, size, &nonblank);
        json_t *a = req.answer;
        json_t *results = json_object_get(a, "results");
        json_int_t imported = json_integer_value(json_object_get(a, "imported"));
        json_int_t failed = json_integer_value(json_object_get(a, "failed"));
        if (!json_is_array(results) || json_array_size(results) != nonblank ||
            json_integer_value(json_object_get(a, "lines")) != (json_int_t)lines ||
            imported + failed != (json_int_t)nonblank ||
            json_is_true(json_object_get(a, "ok")) != (failed == 0))
            abort();
        json_int_t prev = 0;
        size_t i;
        json_t *r;
        json_array_foreach(results, i, r)
        {
            json_int_t line = json_integer_value(json_object_get(r, "line"));
            bool ok = json_is_true(json_object_get(r, "ok"));
            if (line <= prev || line > (json_int_t)lines)
                abort();
            if (ok ? !json_is_string(json_object_get(r, "username"))
                   : !json_is_string(json_object_get(r, "error")))
                abort();
            prev = line;
        }
    } else if (req.status != 500) {
        abort();
    }
    json_decref(req.answer);
    while (req.mem != NULL) {
        struct chunk *next = req.mem->next;
        free(req.mem);
        req.mem = next;
    }
    free(body);
    return 0;
}
