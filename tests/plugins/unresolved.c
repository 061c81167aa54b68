/* A test plugin that calls a function nothing defines.  Built without
 * -z defs and loaded with RTLD_NOW, it must fail at dlopen with the dynamic
 * linker's message naming the symbol, not on its first request. */
#include <keel/plugin.h>

extern int keel_test_symbol_that_does_not_exist(void);

static int unresolved_hello(keel_request *req, void *s)
{
    (void)req;
    (void)s;
    return keel_test_symbol_that_does_not_exist();
}

static const keel_route unresolved_routes[] = {
    {"GET", "/api/v1/testplug/hello", unresolved_hello},
    {NULL, NULL, NULL},
};

static const keel_plugin unresolved_plugin = {
    KEEL_PLUGIN_HEADER,
    .name = "testplug",
    .version = "0.0.1",
    .routes = unresolved_routes,
};

const keel_plugin *keel_plugin_entry(void)
{
    return &unresolved_plugin;
}
