/*
 * Breaks a conformance rule on purpose (keel-plugin-check must fail it): a
 * constructor runs at dlopen, outside init, and so outside the host's
 * control of when set-up happens.
 */
#include <keel/plugin.h>

static const keel_host *has_ctor_host;
static int has_ctor_ready;

__attribute__((constructor)) static void has_ctor_setup(void)
{
    has_ctor_ready = 1;
}

static int has_ctor_init(const keel_host *host, const json_t *config, void **state)
{
    (void)config;
    has_ctor_host = host;
    *state = NULL;
    return 0;
}

static int has_ctor_hello(keel_request *req, void *state)
{
    (void)state;
    return has_ctor_host->respond_json(
        req, 200, json_pack("{s:s, s:b}", "plugin", "has_ctor", "ready", has_ctor_ready));
}

static const keel_route has_ctor_routes[] = {
    {"GET", "/api/v1/has_ctor/hello", has_ctor_hello},
    {NULL, NULL, NULL},
};

static const keel_plugin has_ctor_plugin = {
    KEEL_PLUGIN_HEADER,    .name = "has_ctor",        .version = "1.0.0",
    .init = has_ctor_init, .routes = has_ctor_routes,
};

const keel_plugin *keel_plugin_entry(void)
{
    return &has_ctor_plugin;
}
