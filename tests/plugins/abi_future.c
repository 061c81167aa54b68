/* A test plugin built for an ABI major this host does not have: the loader
 * must refuse it at the abi stage, saying what to rebuild against. */
#include <keel/plugin.h>

static int future_hello(keel_request *req, void *s)
{
    (void)req;
    (void)s;
    return 0;
}

static const keel_route future_routes[] = {
    {"GET", "/api/v1/testplug/hello", future_hello},
    {NULL, NULL, NULL},
};

static const keel_plugin future_plugin = {
    .magic = KEEL_PLUGIN_MAGIC,
    .abi_major = KEEL_ABI_MAJOR + 1,
    .abi_minor = 3,
    .struct_size = sizeof(keel_plugin),
    .name = "testplug",
    .version = "9.0.0",
    .routes = future_routes,
};

const keel_plugin *keel_plugin_entry(void)
{
    return &future_plugin;
}
