/*
 * Breaks a conformance rule on purpose (keel-plugin-check must fail it):
 * it exports a second symbol besides keel_plugin_entry.  Built without
 * libtool's -export-symbols-regex, so the explicit default visibility below
 * reaches .dynsym.
 */
#include <keel/plugin.h>

static const keel_host *exports_extra_host;

/* The offending export. */
KEEL_EXPORT int exports_extra_calls;

static int exports_extra_init(const keel_host *host, const json_t *config, void **state)
{
    (void)config;
    exports_extra_host = host;
    *state = NULL;
    return 0;
}

static int exports_extra_hello(keel_request *req, void *state)
{
    (void)state;
    return exports_extra_host->respond_json(req, 200,
                                            json_pack("{s:s}", "plugin", "exports_extra"));
}

static const keel_route exports_extra_routes[] = {
    {"GET", "/api/v1/exports_extra/hello", exports_extra_hello},
    {NULL, NULL, NULL},
};

static const keel_plugin exports_extra_plugin = {
    KEEL_PLUGIN_HEADER,         .name = "exports_extra",        .version = "1.0.0",
    .init = exports_extra_init, .routes = exports_extra_routes,
};

const keel_plugin *keel_plugin_entry(void)
{
    return &exports_extra_plugin;
}
