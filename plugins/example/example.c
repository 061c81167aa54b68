/*
 * The example plugin: the smallest complete keel plugin, proving the ABI end
 * to end.  One public route and one route for an authenticated user.
 */
#include <stdio.h>
#include <string.h>

#include <keel/plugin.h>

/* The host table, kept in keel_api (include/keel/plugin.h). */
KEEL_PLUGIN_INIT1;

struct example_state {
    char greeting[64];
};

static struct example_state state;

static int example_init(const keel_host *h, const json_t *config, void **out)
{
    KEEL_PLUGIN_INIT2(h);
    const char *greeting = json_string_value(json_object_get(config, "greeting"));
    snprintf(state.greeting, sizeof state.greeting, "%s", greeting ? greeting : "hello");
    *out = &state;
    keel_api->log(NULL, KEEL_LOG_DEBUG, "example initialised (greeting \"%s\")", state.greeting);
    return 0;
}

static void example_fini(void *s)
{
    (void)s;
}

/* GET /api/v1/example/hello (public).  A body of a fixed shape is written
 * straight out by respond_pack (ABI 1.4): no json_t is built and freed. */
static int example_hello(keel_request *req, void *s)
{
    const struct example_state *st = s;
    return keel_api->respond_pack(req, 200, "{s:s, s:s}", "plugin", "example", "message",
                                  st->greeting);
}

/* GET /api/v1/example/whoami (user) */
static int example_whoami(keel_request *req, void *s)
{
    (void)s;
    return keel_api->respond_pack(req, 200, "{s:s, s:s?, s:s?, s:s?, s:b}", "plugin", "example",
                                  "email", keel_api->req_user(req, KEEL_USER_EMAIL), "supabase_id",
                                  keel_api->req_user(req, KEEL_USER_SUPABASE_ID), "role",
                                  keel_api->req_user(req, KEEL_USER_ROLE), "synced",
                                  strcmp(keel_api->req_user(req, KEEL_USER_SYNCED), "1") == 0);
}

/* GET /api/v1/example/echo/{word} (public): shows path parameters. */
static int example_echo(keel_request *req, void *s)
{
    (void)s;
    return keel_api->respond_pack(req, 200, "{s:s}", "word", keel_api->req_param(req, "word"));
}

static const keel_route example_routes[] = {
    {"GET", "/api/v1/example/hello", example_hello},
    {"GET", "/api/v1/example/whoami", example_whoami},
    {"GET", "/api/v1/example/echo/{word}", example_echo},
    {NULL, NULL, NULL},
};

static const char *const example_requires[] = {"log",  "request",       "response",
                                               "user", "response_pack", NULL};

static const keel_plugin example_plugin = {
    KEEL_PLUGIN_HEADER,           .name = "example",    .version = "1.0.0",
    .init = example_init,         .fini = example_fini, .routes = example_routes,
    .requires = example_requires,
};

const keel_plugin *keel_plugin_entry(void)
{
    return &example_plugin;
}
