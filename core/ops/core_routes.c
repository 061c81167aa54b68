#include "config.h"

#include "ops/core_routes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "data/breaker.h"
#include "data/db.h"
#include "identity/notify.h"
#include "util/log.h"
#include "ops/metrics.h"
#include "ops/openapi.h"
#include "http/server.h"
#include "plugin/hostapi.h"
#include "plugin/registry.h"
#include "plugin/snapshot.h"

static bool no_worker(void)
{
    return false;
}

static int default_reload_timeout_ms(void)
{
    return 60000;
}

static int no_fanout(const char *verb, const char *arg, int timeout_ms, char **reply)
{
    (void)verb, (void)arg, (void)timeout_ms;
    *reply = NULL;
    return KEEL_EUNSUPPORTED;
}

static const struct keel__process_hooks alone = {no_worker, no_worker, default_reload_timeout_ms,
                                                 no_fanout};
static const struct keel__process_hooks *proc = &alone;

void keel__core_routes_set_process(const struct keel__process_hooks *hooks)
{
    proc = hooks ? hooks : &alone;
}

static bool db_up(void)
{
    return keel__rt.db != NULL && keel__db_up(keel__rt.db);
}

/* GET /health: no query, no lock: the breaker's state and the table's
 * precomputed plugin states. */
static int route_health(keel_request *req)
{
    const struct keel__snapshot *t = req->table ? keel__snapshot_of(req->table) : NULL;
    bool up = db_up(), draining = proc->draining();
    const char *database = up ? "up" : "down";
    /* No table yet: no plugin states to report. */
    if (t == NULL)
        return keel__respond_pack(req, draining ? 503 : 200, "{s:s, s:s, s:{}}", "status",
                                  draining ? "draining" : "degraded", "database", database,
                                  "plugins");
    /* Lame duck: load balancers take this instance out of rotation while
     * its routes still answer.  The plugin states are written straight
     * from the table ('O' only reads them: other lanes read the same
     * object); a published table always has them (snapshot.c). */
    if (draining)
        return keel__respond_pack(req, 503, "{s:s, s:s, s:O}", "status", "draining", "database",
                                  database, "plugins", t->health);
    const char *body = t->health_body[up ? 1 : 0];
    return keel__respond(req, 200, body, strlen(body));
}

/* The user's wallet balance (0 without a wallet) and the account's creation
 * time (ISO 8601 UTC into created_at; "" when unknown). */
static int read_account(keel_request *req, const char *user_id, json_int_t *balance,
                        char *created_at, size_t size)
{
    keel__db_conn *conn;
    int rc = keel__req_db_acquire(req, &conn);
    if (rc != 0)
        return rc;
    const char *params[] = {user_id};
    PGresult *res;
    rc = keel__db_exec(keel__rt.db, conn,
                       "SELECT (SELECT balance FROM credit_wallets WHERE user_id = $1::uuid),"
                       " (SELECT to_char(created_at AT TIME ZONE 'UTC',"
                       "  'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM users WHERE id = $1::uuid)",
                       1, params, &res, req->db_error, sizeof req->db_error);
    keel__db_release(keel__rt.db, conn);
    if (rc != 0)
        return rc;
    *balance = PQntuples(res) > 0 && !PQgetisnull(res, 0, 0)
                   ? (json_int_t)strtoll(PQgetvalue(res, 0, 0), NULL, 10)
                   : 0;
    snprintf(created_at, size, "%s",
             PQntuples(res) > 0 && !PQgetisnull(res, 0, 1) ? PQgetvalue(res, 0, 1) : "");
    PQclear(res);
    return 0;
}

/* GET /api/v1/auth/me: the principal plus the wallet balance and the
 * account's creation time.  Served by the core because it needs nothing but
 * the principal and one indexed read; a failed read degrades the balance to
 * 0 (created_at null) with X-Keel-Degraded.  The role is one the frontend
 * knows (keel__role_public). */
static int route_me(keel_request *req)
{
    const struct keel__principal *p = &req->principal;
    json_int_t balance = 0;
    char created_at[40] = "";
    bool degraded = true;
    if (p->user_id != NULL) {
        if (read_account(req, p->user_id, &balance, created_at, sizeof created_at) == 0) {
            degraded = false;
        } else {
            keel__log(KEEL_LOG_WARN, "core", "req=%llu auth/me: balance unavailable: %s",
                      (unsigned long long)req->id, req->db_error);
        }
    }
    if (degraded)
        keel__req_add_header(req, "X-Keel-Degraded", "database");
    return keel__respond_json(
        req, 200,
        json_pack("{s:s?, s:s?, s:s?, s:s?, s:s?, s:s?, s:s?, s:{s:I}}", "id",
                  p->user_id ? p->user_id : p->supabase_id, "email", p->email, "full_name",
                  p->full_name, "role", keel__role_public(p->role), "status", p->status,
                  "subscription_tier", p->tier, "created_at",
                  created_at[0] != '\0' ? created_at : NULL, "credits", "balance", balance));
}

/* Answers for a fan-out the supervisor did not complete (rc from
 * proc->fanout): 504 when it ran out of time, 503 otherwise. */
static int supervisor_silent(keel_request *req, const char *verb, int rc)
{
    keel__log(KEEL_LOG_ERROR, "admin", "%s: no answer from the supervisor (%s)", verb,
              keel_strerror(rc));
    return keel__respond_detail(req, rc == KEEL_ETIMEOUT ? 504 : 503,
                                "The supervisor did not answer for every worker");
}

/*
 * In a worker, asks the supervisor for verb run on every worker and merged.
 * Returns the parsed JSON (new reference); NULL with *answered set when a
 * response was queued (the supervisor did not answer), NULL without it
 * outside a worker (the caller answers for this process).
 */
static json_t *whole_server(keel_request *req, const char *verb, const char *arg, int timeout_ms,
                            bool *answered)
{
    *answered = false;
    char *text = NULL;
    int rc = proc->fanout(verb, arg, timeout_ms, &text);
    if (rc == KEEL_EUNSUPPORTED)
        return NULL;
    json_t *j = rc == 0 ? json_loads(text, 0, NULL) : NULL;
    free(text);
    if (j == NULL) {
        supervisor_silent(req, verb, rc);
        *answered = true;
    }
    return j;
}

static int route_plugins(keel_request *req)
{
    bool answered;
    json_t *j = whole_server(req, "describe", NULL, 5000, &answered);
    if (answered)
        return 0;
    return keel__respond_json(req, 200, j ? j : keel__plugins_describe());
}

static int route_reload(keel_request *req)
{
    const char *only = keel__req_query(req, "plugin");
    bool unknown = false;
    json_t *r;
    if (proc->active()) {
        /* Every plugin's init may take up to its timeout. */
        bool answered;
        r = whole_server(req, "reload", only && *only ? only : NULL, proc->reload_timeout_ms(),
                         &answered);
        if (answered)
            return 0;
        unknown = json_is_true(json_object_get(r, "unknown"));
        if (unknown) {
            json_decref(r);
            r = NULL;
        }
    } else {
        r = keel__plugins_reload(only && *only ? only : NULL, &unknown);
    }
    if (r == NULL) {
        char msg[160];
        snprintf(msg, sizeof msg, "Unknown plugin: %s", only ? only : "");
        return keel__respond_detail(req, unknown ? 404 : 500, unknown ? msg : "Reload failed");
    }
    return keel__respond_json(req, 200, r);
}

static int route_status(keel_request *req)
{
    bool answered;
    json_t *j = whole_server(req, "status", NULL, 5000, &answered);
    if (answered)
        return 0;
    return keel__respond_json(req, 200, j ? j : keel__admin_status(req->table));
}

json_t *keel__admin_status(const struct keel__table *table)
{
    const struct keel__server_conf *c = &keel__rt.server;
    struct keel__db_stats ds = {0};
    if (keel__rt.db != NULL)
        keel__db_stats(keel__rt.db, &ds);
    struct keel__usersync_stats us = {0};
    if (keel__rt.usersync != NULL)
        keel__usersync_stats(keel__rt.usersync, &us);
    char listen[300], admin[300];
    snprintf(listen, sizeof listen, "%s:%d", c->host, c->port);
    snprintf(admin, sizeof admin, "%s:%d", c->admin_host, c->admin_port);
    long loaded = 0, fallback = 0;
    /* {"<plugin>": generation serving, 0 for stubs}, from the same snapshot
     * as the counts, so `keelctl status` shows what each plugin runs. */
    json_t *generations = json_object();
    const struct keel__snapshot *snap = table ? keel__snapshot_of(table) : NULL;
    if (snap != NULL && snap->health != NULL) {
        const char *k;
        json_t *v;
        json_object_foreach(snap->health, k, v)
        {
            if (strcmp(json_string_value(v), "loaded") == 0)
                loaded++;
            else
                fallback++;
            json_int_t number = 0;
            for (size_t i = 0; i < snap->ngens; i++)
                if (strcmp(snap->gens[i]->name, k) == 0)
                    number = (json_int_t)snap->gens[i]->number;
            json_object_set_new(generations, k, json_integer(number));
        }
    }
    json_t *body = json_pack(
        "{s:s, s:o, s:I, s:s, s:s, s:I, s:I, s:{s:s, s:s, s:{s:i, s:i, s:i, s:I}}, "
        "s:{s:I, s:I}, s:o, s:{s:I, s:I, s:I, s:I}}",
        "version", PACKAGE_VERSION, "started_at", keel__json_time(keel__rt.started_at), "uptime_s",
        (json_int_t)(time(NULL) - keel__rt.started_at), "listen", listen, "admin_listen", admin,
        "requests_total", (json_int_t)keel__server_requests_total(), "in_flight",
        (json_int_t)keel__server_in_flight(), "database", "state", db_up() ? "up" : "down",
        "breaker", keel__breaker_state_name(ds.breaker_state), "pool", "size", ds.size, "in_use",
        ds.in_use, "idle", ds.idle, "waits", (json_int_t)ds.waits, "plugins", "loaded",
        (json_int_t)loaded, "fallback", (json_int_t)fallback, "generations", generations,
        "usersync", "hits", (json_int_t)us.hits, "misses", (json_int_t)us.misses, "evictions",
        (json_int_t)us.evictions, "entries", (json_int_t)us.entries);
    return body;
}

static int route_metrics(keel_request *req)
{
    char *text = NULL;
    int frc = proc->fanout("metrics", NULL, 5000, &text);
    if (frc != 0 && frc != KEEL_EUNSUPPORTED)
        return supervisor_silent(req, "metrics", frc);
    if (frc == KEEL_EUNSUPPORTED)
        text = keel__metrics_render();
    if (text == NULL)
        return keel__respond_detail(req, 500, "Internal Server Error");
    return keel__respond_owned(req, 200, "text/plain; version=0.0.4; charset=utf-8", text,
                               strlen(text));
}

/* POST /admin/upgrade: the supervisor starts the keeld binary anew on the
 * same sockets and answers once it serves (or why it did not). */
static int route_upgrade(keel_request *req)
{
    bool answered;
    json_t *j = whole_server(req, "upgrade", NULL, proc->reload_timeout_ms() + 10000, &answered);
    if (answered)
        return 0;
    if (j == NULL)
        return keel__respond_detail(req, 501, "Upgrade needs the supervisor (keeld serving)");
    return keel__respond_json(req, 200, j);
}

/* Tells every instance LISTENing on the database (this one included) to
 * drop the user too. */
static bool notify_fleet(const char *user)
{
    if (keel__rt.db == NULL)
        return false;
    keel__db_conn *conn;
    char err[256];
    if (keel__db_acquire(keel__rt.db, &conn, err, sizeof err) != 0)
        return false;
    const char *const params[2] = {KEEL__NOTIFY_CHANNEL, user};
    int rc = keel__db_exec(keel__rt.db, conn, "SELECT pg_notify($1, $2)", 2, params, NULL, err,
                           sizeof err);
    keel__db_release(keel__rt.db, conn);
    if (rc != 0)
        keel__log(KEEL_LOG_WARN, "admin", "cannot notify the fleet of the eviction: %s", err);
    return rc == 0;
}

/* POST /admin/usersync/evict {"user": "<email or supabase id>"}: applies a
 * suspension at once instead of after the cache TTL. */
static int route_evict(keel_request *req)
{
    json_t *body;
    if (keel__req_json_body(req, &body) != 0)
        return 0;
    const char *user = json_string_value(json_object_get(body, "user"));
    if (user == NULL || *user == '\0')
        return keel__respond_json(
            req, 422,
            json_pack("{s:[{s:[s,s], s:s, s:s}]}", "detail", "loc", "body", "user", "msg",
                      "Field required: an email or a Supabase user id", "type", "missing"));
    /* Every worker has its own cache: the entry goes from all of them. */
    bool answered;
    json_t *all = whole_server(req, "evict", user, 5000, &answered);
    if (answered)
        return 0;
    int n = all                 ? (int)json_integer_value(json_object_get(all, "evicted"))
            : keel__rt.usersync ? keel__usersync_evict(keel__rt.usersync, user)
                                : 0;
    json_decref(all);
    /* Other keelds hear it through the database (LISTEN/NOTIFY). */
    bool notified = notify_fleet(user);
    keel__log(KEEL_LOG_INFO, "admin", "evicted %d sync-cache entr%s for %s%s", n,
              n == 1 ? "y" : "ies", user,
              notified ? " and told the other instances" : " (other instances not told)");
    return keel__respond_json(req, 200,
                              json_pack("{s:i, s:b}", "evicted", n, "notified", notified));
}

const struct keel__core_route keel__core_routes[] = {
    {KEEL__LISTENER_MAIN, "GET", "/health", KEEL__AUTH_PUBLIC, route_health},
    {KEEL__LISTENER_MAIN, "GET", "/api/v1/auth/me", KEEL__AUTH_USER, route_me},
    {KEEL__LISTENER_MAIN, "GET", "/openapi.json", KEEL__AUTH_PUBLIC, keel__route_openapi},
    {KEEL__LISTENER_MAIN, "GET", "/docs", KEEL__AUTH_PUBLIC, keel__route_docs},
    {KEEL__LISTENER_MAIN, "GET", "/docs/{file}", KEEL__AUTH_PUBLIC, keel__route_docs_file},
    {KEEL__LISTENER_ADMIN, "GET", "/health", KEEL__AUTH_ADMIN, route_health},
    {KEEL__LISTENER_ADMIN, "GET", "/admin/plugins", KEEL__AUTH_ADMIN, route_plugins},
    {KEEL__LISTENER_ADMIN, "POST", "/admin/reload", KEEL__AUTH_ADMIN, route_reload},
    {KEEL__LISTENER_ADMIN, "GET", "/admin/status", KEEL__AUTH_ADMIN, route_status},
    {KEEL__LISTENER_ADMIN, "GET", "/metrics", KEEL__AUTH_ADMIN, route_metrics},
    {KEEL__LISTENER_ADMIN, "POST", "/admin/usersync/evict", KEEL__AUTH_ADMIN, route_evict},
    {KEEL__LISTENER_ADMIN, "POST", "/admin/upgrade", KEEL__AUTH_ADMIN, route_upgrade},
};

const size_t keel__ncore_routes = sizeof keel__core_routes / sizeof keel__core_routes[0];
