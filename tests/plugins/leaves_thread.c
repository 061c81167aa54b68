/*
 * Breaks a conformance rule on purpose (keel-plugin-check must fail it):
 * init starts a thread that fini never stops or joins.  The thread only
 * waits in pause(), so it never runs plugin code again once the library is
 * unmapped; the check must still notice it and stop cycling.
 */
#include <pthread.h>
#include <unistd.h>

#include <keel/plugin.h>

static const keel_host *leaves_thread_host;

static void *leaves_thread_main(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

static int leaves_thread_init(const keel_host *host, const json_t *config, void **state)
{
    (void)config;
    leaves_thread_host = host;
    *state = NULL;
    pthread_t t;
    if (pthread_create(&t, NULL, leaves_thread_main, NULL) != 0)
        return KEEL_EINIT;
    pthread_detach(t);
    return 0;
}

static int leaves_thread_hello(keel_request *req, void *state)
{
    (void)state;
    return leaves_thread_host->respond_json(req, 200,
                                            json_pack("{s:s}", "plugin", "leaves_thread"));
}

static const keel_route leaves_thread_routes[] = {
    {"GET", "/api/v1/leaves_thread/hello", leaves_thread_hello},
    {NULL, NULL, NULL},
};

static const keel_plugin leaves_thread_plugin = {
    KEEL_PLUGIN_HEADER,         .name = "leaves_thread",        .version = "1.0.0",
    .init = leaves_thread_init, .routes = leaves_thread_routes,
};

const keel_plugin *keel_plugin_entry(void)
{
    return &leaves_thread_plugin;
}
