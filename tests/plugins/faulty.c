/*
 * Test-only plugins that misbehave on purpose, one per build (FAULTY_KIND):
 *   1 crash_null  GET /api/v1/crash_null/boom dereferences NULL
 *   2 crash_abort GET /api/v1/crash_abort/boom calls abort()
 *   3 spin        GET /api/v1/spin/boom never returns (a busy loop)
 *   4 init_hang   init never returns (or, with config "init_ms", is slow)
 *   5 leak        GET /api/v1/leak/boom leaks 1 MiB (touched) per request
 * Each also has GET /api/v1/<name>/ok, which behaves.  Public routes, so
 * the tests need no token.  GET .../boom?slow_ms=N behaves too, after N ms:
 * a few of those send the route to the pool of handlers that wait
 * (core/http/offload.h), so the next boom misbehaves on a pool thread.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <keel/plugin.h>

#if FAULTY_KIND == 1
#define FAULTY_NAME "crash_null"
#elif FAULTY_KIND == 2
#define FAULTY_NAME "crash_abort"
#elif FAULTY_KIND == 3
#define FAULTY_NAME "spin"
#elif FAULTY_KIND == 4
#define FAULTY_NAME "init_hang"
#else
#define FAULTY_NAME "leak"
#endif

static const keel_host *host;

static int faulty_init(const keel_host *h, const json_t *config, void **state)
{
    (void)config;
    (void)state;
    host = h;
#if FAULTY_KIND == 4
    /* "init_ms": N makes init slow but finite (it returns after N ms). */
    json_int_t ms = json_integer_value(json_object_get(config, "init_ms"));
    if (ms > 0) {
        usleep((useconds_t)ms * 1000);
        return 0;
    }
    for (;;)
        pause();
#endif
    return 0;
}

/* Volatile so the compiler keeps the fault where the source puts it. */
static int *volatile nowhere;
static volatile unsigned long spins;
/* The leaked blocks stay reachable from here, so the compiler cannot drop
 * the allocation; nothing ever frees them. */
static void *volatile leaked;

/* In a UBSan build the null check would stop the NULL store with a report and
 * exit(1) before any signal: this plugin exists to die of the signal. */
#if defined(__has_attribute) && __has_attribute(no_sanitize)
#define FAULTY_NO_UBSAN __attribute__((no_sanitize("undefined")))
#else
#define FAULTY_NO_UBSAN
#endif

static FAULTY_NO_UBSAN int faulty_boom(keel_request *req, void *state)
{
    (void)state;
    const char *slow = host->req_query(req, "slow_ms");
    if (slow != NULL) {
        usleep((useconds_t)strtoul(slow, NULL, 10) * 1000);
        return host->respond_json(req, 200,
                                  json_pack("{s:s, s:b}", "plugin", FAULTY_NAME, "slow", 1));
    }
#if FAULTY_KIND == 1
    *nowhere = 42;
#elif FAULTY_KIND == 2
    abort();
#elif FAULTY_KIND == 3
    for (;;)
        spins++;
#elif FAULTY_KIND == 5
    size_t n = 1024 * 1024;
    char *lost = malloc(n);
    if (lost != NULL) {
        memset(lost, 0x5a, n);
        memcpy(lost, (const void *)&leaked, sizeof(void *));
        leaked = lost;
    }
#endif
    return host->respond_json(req, 200, json_pack("{s:s}", "plugin", FAULTY_NAME));
}

static int faulty_ok(keel_request *req, void *state)
{
    (void)state;
    return host->respond_json(req, 200, json_pack("{s:s, s:b}", "plugin", FAULTY_NAME, "ok", 1));
}

static const keel_route faulty_routes[] = {
    {"GET", "/api/v1/" FAULTY_NAME "/boom", faulty_boom},
    {"GET", "/api/v1/" FAULTY_NAME "/ok", faulty_ok},
    {NULL, NULL, NULL},
};

static const keel_plugin faulty_plugin = {
    KEEL_PLUGIN_HEADER,  .name = FAULTY_NAME,     .version = "0.0.1",
    .init = faulty_init, .routes = faulty_routes,
};

const keel_plugin *keel_plugin_entry(void)
{
    return &faulty_plugin;
}
