/*
 * A test plugin for ABI 1.1 and for what the core must do around plugins:
 * it keeps the host table with KEEL_PLUGIN_INIT1/2, needs the 1.1
 * capabilities, tells absent query arguments from malformed ones, answers
 * whatever status it is asked for (so a status libmicrohttpd refuses to
 * queue can be tried) and logs when its init runs (so a refusal before init
 * can be seen).
 */
#include <stdlib.h>
#include <string.h>

#include <keel/plugin.h>

KEEL_PLUGIN_INIT1;

static int abi11_init(const keel_host *host, const json_t *config, void **state)
{
    (void)config;
    KEEL_PLUGIN_INIT2(host);
    keel_api->log(NULL, KEEL_LOG_INFO, "abi11 init ran");
    *state = NULL;
    return 0;
}

/* GET /api/v1/abi11/status?code=N: answers N (a JSON body). */
static int abi11_status(keel_request *req, void *state)
{
    (void)state;
    const char *code = keel_api->req_query(req, "code");
    long n = code ? strtol(code, NULL, 10) : 200;
    return keel_api->respond_json(req, (unsigned)n, json_pack("{s:i}", "status", (int)n));
}

/* GET /api/v1/abi11/query?name=...: what req_query_arg says about "name". */
static int abi11_query(keel_request *req, void *state)
{
    (void)state;
    const char *value = NULL;
    int rc = keel_api->req_query_arg(req, "name", &value);
    const char *verdict = rc == 0                ? "present"
                          : rc == KEEL_ENOTFOUND ? "absent"
                          : rc == KEEL_EINVAL    ? "malformed"
                                                 : "error";
    return keel_api->respond_json(req, 200,
                                  json_pack("{s:s, s:s?}", "name", verdict, "value", value));
}

static const keel_route abi11_routes[] = {
    {"GET", "/api/v1/abi11/status", abi11_status},
    {"GET", "/api/v1/abi11/query", abi11_query},
    {NULL, NULL, NULL},
};

static const char *const abi11_requires[] = {"log", "request", "response", "query_arg", NULL};

static const keel_plugin abi11_plugin = {
    KEEL_PLUGIN_HEADER, .name = "abi11",        .version = "1.0.0",
    .init = abi11_init, .routes = abi11_routes, .requires = abi11_requires,
};

const keel_plugin *keel_plugin_entry(void)
{
    return &abi11_plugin;
}
