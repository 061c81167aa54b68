/*
 * A plugin built against a newer minor ABI (KEEL_ABI_MINOR + 1) that cannot
 * run without a capability this host lacks ("kv_store").  The ABI policy
 * (docs/plugin-guide.md): a newer minor is accepted as long as every
 * capability in `requires` exists, so this one must be refused at the abi
 * stage with a message that names "kv_store".
 */
#include <keel/plugin.h>

static const keel_host *needs_cap_host;

static int needs_cap_init(const keel_host *host, const json_t *config, void **state)
{
    (void)config;
    needs_cap_host = host;
    *state = NULL;
    return 0;
}

static int needs_cap_hello(keel_request *req, void *state)
{
    (void)state;
    return needs_cap_host->respond_json(req, 200, json_pack("{s:s}", "plugin", "needs_cap"));
}

static const keel_route needs_cap_routes[] = {
    {"GET", "/api/v1/needs_cap/hello", needs_cap_hello},
    {NULL, NULL, NULL},
};

static const char *const needs_cap_requires[] = {"log", "response", "kv_store", NULL};

static const keel_plugin needs_cap_plugin = {
    .magic = KEEL_PLUGIN_MAGIC,
    .abi_major = KEEL_ABI_MAJOR,
    .abi_minor = KEEL_ABI_MINOR + 1,
    .struct_size = sizeof(keel_plugin),
    .name = "needs_cap",
    .version = "1.0.0",
    .init = needs_cap_init,
    .routes = needs_cap_routes,
    .requires = needs_cap_requires,
};

const keel_plugin *keel_plugin_entry(void)
{
    return &needs_cap_plugin;
}
