/*
 * Breaks a conformance rule on purpose (keel-plugin-check must fail it): the
 * code is an ordinary plugin, but Makefile.am links it with -z nodelete, so
 * the dynamic linker never unmaps it and every reload leaks a copy.
 */
#include <keel/plugin.h>

static const keel_host *nodelete_host;

static int nodelete_init(const keel_host *host, const json_t *config, void **state)
{
    (void)config;
    nodelete_host = host;
    *state = NULL;
    return 0;
}

static int nodelete_hello(keel_request *req, void *state)
{
    (void)state;
    return nodelete_host->respond_json(req, 200, json_pack("{s:s}", "plugin", "nodelete"));
}

static const keel_route nodelete_routes[] = {
    {"GET", "/api/v1/nodelete/hello", nodelete_hello},
    {NULL, NULL, NULL},
};

static const keel_plugin nodelete_plugin = {
    KEEL_PLUGIN_HEADER,    .name = "nodelete",        .version = "1.0.0",
    .init = nodelete_init, .routes = nodelete_routes,
};

const keel_plugin *keel_plugin_entry(void)
{
    return &nodelete_plugin;
}
