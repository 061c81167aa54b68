/*
 * Breaks a conformance rule on purpose (keel-plugin-check must fail it): a
 * thread-local variable gives the library a PT_TLS segment, storage the
 * server threads keep for the plugin beyond any one request.
 */
#include <keel/plugin.h>

static const keel_host *uses_tls_host;
static __thread int uses_tls_calls;

static int uses_tls_init(const keel_host *host, const json_t *config, void **state)
{
    (void)config;
    uses_tls_host = host;
    *state = NULL;
    return 0;
}

static int uses_tls_hello(keel_request *req, void *state)
{
    (void)state;
    uses_tls_calls++;
    return uses_tls_host->respond_json(
        req, 200, json_pack("{s:s, s:i}", "plugin", "uses_tls", "calls", uses_tls_calls));
}

static const keel_route uses_tls_routes[] = {
    {"GET", "/api/v1/uses_tls/hello", uses_tls_hello},
    {NULL, NULL, NULL},
};

static const keel_plugin uses_tls_plugin = {
    KEEL_PLUGIN_HEADER,    .name = "uses_tls",        .version = "1.0.0",
    .init = uses_tls_init, .routes = uses_tls_routes,
};

const keel_plugin *keel_plugin_entry(void)
{
    return &uses_tls_plugin;
}
