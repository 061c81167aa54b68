/* A test plugin whose init fails: its routes must be served by stubs with
 * reason init_failed. */
#include <keel/plugin.h>

static int fail_init(const keel_host *h, const json_t *config, void **state)
{
    (void)config;
    (void)state;
    h->log(NULL, KEEL_LOG_ERROR, "init_fail: refusing to start on purpose");
    return KEEL_EINIT;
}

static int fail_hello(keel_request *req, void *s)
{
    (void)req;
    (void)s;
    return 0;
}

static const keel_route fail_routes[] = {
    {"GET", "/api/v1/testplug/hello", fail_hello},
    {NULL, NULL, NULL},
};

static const keel_plugin fail_plugin = {
    KEEL_PLUGIN_HEADER, .name = "testplug",    .version = "0.0.1",
    .init = fail_init,  .routes = fail_routes,
};

const keel_plugin *keel_plugin_entry(void)
{
    return &fail_plugin;
}
