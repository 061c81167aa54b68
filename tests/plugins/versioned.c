/* A test plugin built twice (VERSIONED_VERSION "1" and "2") so reload tests
 * can swap between two builds and see which one answers.  /slow sleeps so a
 * request can be in flight across a reload. */
#include <stdio.h>
#include <time.h>

#include <keel/plugin.h>

#ifndef VERSIONED_VERSION
#define VERSIONED_VERSION "0"
#endif

static const keel_host *host;

static int v_init(const keel_host *h, const json_t *config, void **state)
{
    (void)config;
    (void)state;
    host = h;
    return 0;
}

static int v_hello(keel_request *req, void *s)
{
    (void)s;
    return host->respond_json(
        req, 200, json_pack("{s:s, s:s}", "plugin", "testplug", "version", VERSIONED_VERSION));
}

static int v_slow(keel_request *req, void *s)
{
    (void)s;
    const char *ms = host->req_query(req, "ms");
    long n = 500;
    if (ms != NULL && sscanf(ms, "%ld", &n) != 1)
        n = 500;
    if (n < 0 || n > 10000)
        n = 500;
    host->log(req, KEEL_LOG_INFO, "slow request: sleeping %ld ms", n);
    struct timespec ts = {n / 1000, (n % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    return host->respond_json(
        req, 200, json_pack("{s:s, s:s}", "plugin", "testplug", "version", VERSIONED_VERSION));
}

static const keel_route v_routes[] = {
    {"GET", "/api/v1/testplug/hello", v_hello},
    {"GET", "/api/v1/testplug/slow", v_slow},
    {NULL, NULL, NULL},
};

static const keel_plugin v_plugin = {
    KEEL_PLUGIN_HEADER, .name = "testplug", .version = VERSIONED_VERSION ".0.0",
    .init = v_init,     .routes = v_routes,
};

const keel_plugin *keel_plugin_entry(void)
{
    return &v_plugin;
}
