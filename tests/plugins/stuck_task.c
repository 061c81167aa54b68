/* A test plugin whose task ignores task_stopping() for 3 s: keel-plugin-check
 * must report that it did not stop when asked (tests/integration/test_jobs.py). */
#include <time.h>

#include <keel/plugin.h>

static int stuck_run(keel_task *task, keel_request *req, void *arg)
{
    struct timespec ts = {3, 0};

    (void)task;
    (void)req;
    (void)arg;
    nanosleep(&ts, NULL);
    return 0;
}

static int stuck_init(const keel_host *h, const json_t *config, void **state)
{
    (void)config;
    (void)state;
    return h->task_add("stuck", 0, stuck_run, NULL, NULL);
}

static const keel_route stuck_routes[] = {{NULL, NULL, NULL}};

static const keel_plugin stuck_plugin = {
    KEEL_PLUGIN_HEADER, .name = "stuck_task",   .version = "0.0.1",
    .init = stuck_init, .routes = stuck_routes,
};

KEEL_EXPORT const keel_plugin *keel_plugin_entry(void)
{
    return &stuck_plugin;
}
