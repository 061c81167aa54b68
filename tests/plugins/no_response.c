/*
 * Breaks a conformance rule on purpose (keel-plugin-check must fail it): one
 * handler returns without queuing a response, which keeld turns into a
 * generic 500.  The other route is correct, so the report must single out
 * the broken one.
 */
#include <keel/plugin.h>

static const keel_host *no_response_host;

static int no_response_init(const keel_host *host, const json_t *config, void **state)
{
    (void)config;
    no_response_host = host;
    *state = NULL;
    return 0;
}

static int no_response_hello(keel_request *req, void *state)
{
    (void)state;
    return no_response_host->respond_json(req, 200, json_pack("{s:s}", "plugin", "no_response"));
}

/* Forgets to respond. */
static int no_response_silent(keel_request *req, void *state)
{
    (void)req;
    (void)state;
    return 0;
}

static const keel_route no_response_routes[] = {
    {"GET", "/api/v1/no_response/hello", no_response_hello},
    {"GET", "/api/v1/no_response/silent", no_response_silent},
    {NULL, NULL, NULL},
};

static const keel_plugin no_response_plugin = {
    KEEL_PLUGIN_HEADER,       .name = "no_response",        .version = "1.0.0",
    .init = no_response_init, .routes = no_response_routes,
};

const keel_plugin *keel_plugin_entry(void)
{
    return &no_response_plugin;
}
