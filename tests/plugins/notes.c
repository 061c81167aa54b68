/*
 * A test plugin that uses every ABI 1.3 capability (tests/integration/
 * test_jobs.py): its own migration (notes_migrations/), a periodic task that
 * writes a row per run, an optional upstream it pings from that task
 * (config.upstream), and a counter and a histogram.  GET
 * /api/v1/notes/count answers {"ticks":N,"pinged":N}.
 */
#include <stdio.h>
#include <stdlib.h>

#include <keel/plugin.h>

static const keel_host *host;

struct notes {
    keel_upstream *up, *tls;
    keel_metric *ticks, *ping_seconds;
};

static int notes_tick(keel_task *task, keel_request *req, void *arg)
{
    struct notes *n = arg;
    long status = 0;
    char text[16];
    const char *param[1] = {NULL};

    (void)task;
    if (n->up != NULL) {
        json_t *answer = NULL;

        if (host->upstream_request(req, n->up, "GET", "/ping", NULL, 0, &status, &answer) == 0) {
            snprintf(text, sizeof text, "%ld", status);
            param[0] = text;
        }
    }
    if (host->db_query(req, "INSERT INTO notes_ticks (upstream) VALUES ($1::int)", 1, param,
                       NULL) != 0)
        return KEEL_EDB_UNAVAILABLE;
    host->metric_observe(n->ticks, 1);
    host->metric_observe(n->ping_seconds, 0.002);
    return 0;
}

static int notes_count(keel_request *req, void *state)
{
    keel_db_result *res = NULL;

    (void)state;
    if (host->db_query(req, "SELECT count(*) AS n, count(upstream) AS p FROM notes_ticks", 0, NULL,
                       &res) != 0)
        return host->respond_error(req, 503, "database unavailable");
    return host->respond_json(
        req, 200,
        json_pack("{s:I,s:I}", "ticks",
                  (json_int_t)strtoll(host->db_value(res, 0, host->db_column(res, "n")), NULL, 10),
                  "pinged",
                  (json_int_t)strtoll(host->db_value(res, 0, host->db_column(res, "p")), NULL,
                                      10)));
}

/* GET /api/v1/notes/ping?path=/x&deadline=N[&tls=1]: one upstream call from
 * a handler, answering what the host returned. */
static int notes_ping(keel_request *req, void *state)
{
    struct notes *n = state;
    const char *path = host->req_query(req, "path");
    const char *deadline = host->req_query(req, "deadline");
    const char *tls = host->req_query(req, "tls");
    keel_upstream *up = tls != NULL ? n->tls : n->up;
    long status = 0;
    json_t *answer = NULL;
    int rc;

    if (up == NULL)
        return host->respond_error(req, 404, "no upstream configured");
    rc = host->upstream_request(req, up, "GET", path ? path : "/ping", NULL,
                                deadline ? (unsigned)strtoul(deadline, NULL, 10) : 0, &status,
                                &answer);
    return host->respond_json(req, 200,
                              json_pack("{s:i,s:I,s:s,s:O?}", "rc", rc, "status",
                                        (json_int_t)status, "error", host->upstream_last_error(req),
                                        "answer", answer));
}

static int notes_init(const keel_host *h, const json_t *config, void **state)
{
    struct notes *n;
    const json_t *up = json_object_get(config, "upstream");
    json_int_t every = json_integer_value(json_object_get(config, "every_ms"));
    int rc;

    if (!KEEL_HOST_HAS(h, task_add) || !KEEL_HOST_HAS(h, metric_add))
        return KEEL_EUNSUPPORTED;
    host = h;
    if ((n = calloc(1, sizeof *n)) == NULL)
        return KEEL_ENOMEM;
    rc = h->metric_add(KEEL_METRIC_COUNTER, "notes_ticks_total", "Runs of the notes task.",
                       &n->ticks);
    if (rc == 0)
        rc = h->metric_add(KEEL_METRIC_HISTOGRAM, "notes_ping_seconds", "A fixed observation.",
                           &n->ping_seconds);
    if (rc == 0 && up != NULL)
        rc = h->upstream_add("pinger", up, &n->up);
    if (rc == 0 && json_object_get(config, "tls_upstream") != NULL)
        rc = h->upstream_add("tls", json_object_get(config, "tls_upstream"), &n->tls);
    if (rc == 0)
        rc = h->task_add("tick", every > 0 ? (unsigned)every : 200, notes_tick, n, NULL);
    if (rc != 0) {
        free(n);
        return rc;
    }
    *state = n;
    return 0;
}

static void notes_fini(void *state)
{
    free(state);
}

static const keel_route notes_routes[] = {
    {"GET", "/api/v1/notes/count", notes_count},
    {"GET", "/api/v1/notes/ping", notes_ping},
    {NULL, NULL, NULL},
};

static const char *const notes_requires[] = {"tasks", "upstream", "metrics", "db", NULL};

static const keel_plugin notes_plugin = {
    KEEL_PLUGIN_HEADER, .name = "notes",        .version = "1.0.0",         .init = notes_init,
    .fini = notes_fini, .routes = notes_routes, .requires = notes_requires,
};

KEEL_EXPORT const keel_plugin *keel_plugin_entry(void)
{
    return &notes_plugin;
}
