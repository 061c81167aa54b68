#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ops/core_routes.h"
#include "identity/auth.h"
#include "conf/conf.h"
#include "data/db.h"
#include "data/migrate.h"
#include "plugin/hostapi.h"
#include "plugin/loader.h"
#include "plugin/manifest.h"
#include "util/cpus.h"
#include "util/heap.h"
#include "util/log.h"
#include "ops/metrics.h"
#include "http/server.h"
#include "plugin/registry.h"
#include "util/counters.h"
#include "identity/usersync.h"
#include "net/upstream.h"
#include "plugin/plugin_metrics.h"
#include "plugin/tasks.h"
#include "util/scoreboard.h"
#include "process/supervisor.h"
#include "process/worker.h"
#include "process/check.h"
#include "identity/notify.h"

/* keeld's calloc, for every library in the process (util/heap.h says
 * why).  Sanitizer runtimes replace the allocator themselves and must see
 * every calloc, so their builds keep the C library's. */
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
KEEL_EXPORT void *calloc(size_t n, size_t size)
{
    return keel__calloc(n, size);
}
#endif

#ifndef KEEL_SYSCONFDIR
#define KEEL_SYSCONFDIR "/usr/local/etc/keel"
#endif

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: keeld [--config-dir DIR] [--check [--connect] | --migrate | --version]\n"
            "\n"
            "  --config-dir DIR  read configuration from DIR (default %s/conf.d)\n"
            "  --check           validate configuration, load every enabled plugin, print a\n"
            "                    per-plugin report and exit non-zero on any problem\n"
            "  --connect         with --check: also connect to the database and check that\n"
            "                    its schema is up to date\n"
            "  --migrate         apply pending database migrations and exit\n"
            "  --version         print the version and exit\n"
            "\n"
            "Environment: KEEL_LISTEN, KEEL_ADMIN_LISTEN, KEEL_DATABASE_URL, KEEL_JWT_SECRET,\n"
            "KEEL_PLUGIN_DIR, KEEL_LOG_LEVEL override the files.\n",
            KEEL_SYSCONFDIR);
}

static int setup_auth(const struct keel__conf *c)
{
    struct keel__auth_conf ac = {
        .audience = c->auth.audience,
        .issuer = c->auth.issuer,
        .leeway_s = c->auth.leeway_s,
        .max_token_bytes = (size_t)c->auth.max_token_bytes,
    };
    if (keel__auth_new(&ac, &keel__rt.auth) != 0) {
        log_error("cannot set up token verification");
        return -1;
    }
    int keys = 0;
    if (c->auth.jwt_secret != NULL && *c->auth.jwt_secret != '\0') {
        if (keel__auth_add_hs256(keel__rt.auth, c->auth.jwt_kid,
                                 (const unsigned char *)c->auth.jwt_secret,
                                 strlen(c->auth.jwt_secret)) != 0) {
            log_error("auth: cannot use the HS256 secret");
            return -1;
        }
        keys++;
    }
    for (size_t i = 0; i < c->auth.nkeys; i++) {
        char err[256];
        const struct keel__key_conf *k = &c->auth.keys[i];
        if (keel__auth_add_pem(keel__rt.auth, k->kid, k->alg, k->pem, err, sizeof err) != 0) {
            log_error("auth: key \"%s\" (%s): %s", k->kid, k->alg, err);
            return -1;
        }
        keys++;
    }
    if (keys == 0)
        log_warn("auth: no JWT secret or key configured (set KEEL_JWT_SECRET): every token will "
                 "be refused");
    return 0;
}

/* The HTTP layer's settings; strings stay owned by c, which outlives the
 * servers. */
static void setup_http(const struct keel__conf *c)
{
    keel__rt.server = (struct keel__server_conf){
        .host = c->server.host,
        .port = c->server.port,
        .threads = (int)keel__per_cpu(c->server.threads),
        .connection_timeout_s = c->server.connection_timeout_s,
        .admin_host = c->admin.host,
        .admin_port = c->admin.port,
        .admin_token = c->admin.token,
        .admin_allowed_hosts = (const char *const *)c->admin.allowed_hosts,
        .admin_nallowed_hosts = c->admin.nallowed_hosts,
        .access_log = c->log.access_log,
        .access_json = c->log.access_format != NULL && strcmp(c->log.access_format, "json") == 0,
        .trusted_proxies = c->server.trusted_proxies,
        .ntrusted_proxies = c->server.ntrusted_proxies,
    };
    keel__rt.limits = (struct keel__limits_conf){
        .max_body_bytes = c->limits.max_body_bytes,
        .max_admin_body_bytes = c->limits.max_admin_body_bytes,
        .max_admin_stream_bytes = c->limits.max_admin_stream_bytes,
        .max_admin_bodies = c->limits.max_admin_bodies,
        .max_body_line_bytes = c->limits.max_body_line_bytes,
        .max_json_depth = c->limits.max_json_depth,
        .max_header_bytes = c->limits.max_header_bytes,
        .max_uri_bytes = c->limits.max_uri_bytes,
        .max_drain_bytes = c->limits.max_drain_bytes,
        .max_connections = c->limits.max_connections,
        .max_per_ip = c->limits.max_per_ip,
        .rate_per_user = c->limits.rate_per_user,
        .rate_burst = c->limits.rate_burst,
    };
    keel__rt.cors = (struct keel__cors_conf){
        .origins = (const char *const *)c->cors.origins,
        .norigins = c->cors.norigins,
        .methods = c->cors.methods,
        .headers = c->cors.headers,
        .max_age = c->cors.max_age,
        .credentials = c->cors.credentials,
    };
}

static int setup_db(const struct keel__conf *c)
{
    if (c->database.url == NULL || *c->database.url == '\0') {
        log_warn("database: no url configured (KEEL_DATABASE_URL); running without a database");
        return 0;
    }
    struct keel__db_conf dc = {
        .conninfo = c->database.url,
        .pooler = strcmp(c->database.pooler, "pgbouncer-transaction") == 0
                      ? KEEL__DB_POOLER_TRANSACTION
                  : strcmp(c->database.pooler, "pgbouncer-session") == 0 ? KEEL__DB_POOLER_SESSION
                                                                         : KEEL__DB_POOLER_NONE,
        .pool_size = c->database.pool_size,
        .wait_ms = c->database.pool_wait_ms,
        .connect_timeout_s = c->database.connect_timeout_s,
        .statement_timeout_ms = c->database.statement_timeout_ms,
        .lock_timeout_ms = c->database.lock_timeout_ms,
        .breaker_failures = c->database.breaker_failures,
        .breaker_open_ms = c->database.breaker_open_ms,
    };
    if (keel__db_new(&dc, &keel__rt.db) != 0) {
        log_error("database: cannot create the pool");
        return -1;
    }
    return 0;
}

/* Refuses to serve against a schema that is behind; a database that cannot
 * be reached is not a reason to refuse (the breaker and degraded answers
 * exist for that). */
static int check_schema(const struct keel__conf *c)
{
    if (c->database.url == NULL || *c->database.url == '\0')
        return 0;
    int behind = 0;
    char err[512];
    int rc = keel__db_schema_behind(c->database.url, c->database.migrations_dir, &behind, err,
                                    sizeof err);
    if (rc == KEEL_EDB_UNAVAILABLE) {
        log_warn("database unreachable at start-up (%s); serving degraded until it is back", err);
        if (keel__rt.db != NULL)
            keel__db_note_unreachable(keel__rt.db);
        return 0;
    }
    if (rc != 0) {
        log_error("cannot check the database schema: %s", err);
        return -1;
    }
    if (behind > 0) {
        log_error("database schema is %d migration(s) behind %s: run `keeld --migrate` first",
                  behind, c->database.migrations_dir);
        return -1;
    }
    return 0;
}

/* Written by main, read by the ticker thread: an atomic, since volatile
 * orders nothing between threads. */
static atomic_int ticker_stop;

/* Lets the breaker close again after an outage even when no request comes. */
static void *db_ticker(void *arg)
{
    (void)arg;
    while (!atomic_load(&ticker_stop)) {
        struct timespec ts = {0, 250 * 1000 * 1000};
        nanosleep(&ts, NULL);
        if (keel__rt.db != NULL)
            keel__db_tick(keel__rt.db);
    }
    return NULL;
}

/* Applies one plugin's own migrations (its manifest's "migrations"),
 * disabled plugins included, so enabling one later finds its tables. */
static int migrate_plugin(const struct keel__conf *c, const struct keel__manifest *m)
{
    if (m->migrations == NULL)
        return 0;
    char *dir = keel__plugin_migrations_dir(m->migrations, c->database.migrations_dir);
    if (dir == NULL)
        return KEEL_ENOMEM;
    char err[1024];
    int applied = 0;
    int rc = keel__db_migrate_plugin(c->database.url, m->name, dir, &applied, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "keeld: migration of plugin %s failed: %s\n", m->name, err);
    else
        printf("keeld: %d migration(s) of plugin %s applied from %s\n", applied, m->name, dir);
    free(dir);
    return rc;
}

/* The LISTEN connection that keeps this process's user cache in step with
 * the rest of the fleet (every worker has its own, as it has its own cache). */
static keel__notify *user_changes;

static void start_notify(const struct keel__conf *c)
{
    const char *url = c->database.listen_url ? c->database.listen_url : c->database.url;
    if (url == NULL || *url == '\0' || keel__rt.usersync == NULL)
        return;
    if (c->database.listen_url == NULL &&
        strcmp(c->database.pooler, "pgbouncer-transaction") == 0) {
        log_warn("database: no listen_url and a transaction pooler, where LISTEN cannot work: "
                 "user changes made elsewhere reach this instance only after usersync.ttl_s");
        return;
    }
    if (keel__notify_start(url, keel__rt.usersync, &user_changes) != 0)
        log_warn("database: cannot start the LISTEN thread; user changes made elsewhere reach "
                 "this instance only after usersync.ttl_s");
}

static void print_check_report(void)
{
    json_t *d = keel__plugins_describe();
    size_t i;
    json_t *p;
    printf("%-12s %-9s %-9s %-14s %-8s %s\n", "PLUGIN", "VERSION", "STATE", "REASON", "STAGE",
           "FILE / ERROR");
    json_array_foreach(json_object_get(d, "plugins"), i, p)
    {
        const char *state = json_string_value(json_object_get(p, "state"));
        const char *reason = json_string_value(json_object_get(p, "reason"));
        const char *version = json_string_value(json_object_get(p, "version"));
        const char *stage = json_string_value(json_object_get(p, "stage"));
        printf("%-12s %-9s %-9s %-14s %-8s %s\n", json_string_value(json_object_get(p, "name")),
               version ? version : "-", state, reason ? reason : "-", stage ? stage : "-",
               json_string_value(json_object_get(p, "file")));
        const char *error = json_string_value(json_object_get(p, "error"));
        char where[512];
        if (error != NULL && *error != '\0')
            printf("%-12s   error: %s: %s\n", "",
                   keel__check_where(json_string_value(json_object_get(p, "source")), stage, where,
                                     sizeof where),
                   error);
    }
    json_decref(d);
}

/* --check verdict: every plugin that is enabled must have loaded. */
static bool check_ok(void)
{
    json_t *d = keel__plugins_describe();
    size_t i;
    json_t *p;
    bool ok = true;
    json_array_foreach(json_object_get(d, "plugins"), i, p)
    {
        const char *reason = json_string_value(json_object_get(p, "reason"));
        if (reason != NULL && strcmp(reason, "disabled") != 0)
            ok = false;
    }
    json_decref(d);
    return ok;
}

static int serve(struct keel__conf *conf);
/* --connect: --check also reaches the database. */
static bool check_connect;
static int serve_check(struct keel__conf *conf, const char *confdir);

int main(int argc, char **argv)
{
    /* Before any thread: large callocs go where they belong from here on. */
    keel__heap_init();
    const char *confdir = KEEL_SYSCONFDIR "/conf.d";
    bool check = false, migrate = false;
    check_connect = false;
    static const struct option longopts[] = {
        {"config-dir", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 't'},
        {"connect", no_argument, NULL, 'C'},
        {"migrate", no_argument, NULL, 'm'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static const struct keel__process_hooks worker_hooks = {keel__worker_active,
                                                            keel__worker_draining,
                                                            keel__worker_reload_timeout_ms,
                                                            keel__worker_fanout};
    keel__core_routes_set_process(&worker_hooks);
    int opt;
    while ((opt = getopt_long(argc, argv, "c:tCmVh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            confdir = optarg;
            break;
        case 't':
            check = true;
            break;
        case 'C':
            check_connect = true;
            break;
        case 'm':
            migrate = true;
            break;
        case 'V':
            printf("keeld %s (plugin ABI %d.%d)\n", PACKAGE_VERSION, KEEL_ABI_MAJOR,
                   KEEL_ABI_MINOR);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    /* A configuration check loads plugins but must not start their work. */
    if (check)
        keel__tasks_autostart = false;

    char err[1024];
    struct keel__conf *conf = NULL;
    keel__manifest_install();
    if (keel__conf_read(confdir, &conf, err, sizeof err) != 0) {
        log_error("configuration error: %s", err);
        fprintf(stderr, "keeld: configuration error: %s\n", err);
        return 1;
    }
    keel__log_set_level(conf->log.level);
    /* Before the workers are forked: they inherit it (and reopen it on
     * SIGUSR1 themselves). */
    if (keel__log_open(conf->log.error_log) != 0) {
        fprintf(stderr, "keeld: cannot open log.error_log %s\n", conf->log.error_log);
        keel__conf_free(conf);
        return 1;
    }
    setup_http(conf);
    keel__rt.started_at = (int64_t)time(NULL);

    if (migrate) {
        if (conf->database.url == NULL) {
            fprintf(stderr, "keeld: --migrate needs a database url (KEEL_DATABASE_URL)\n");
            keel__conf_free(conf);
            return 1;
        }
        int applied = 0;
        int rc = keel__db_migrate(conf->database.url, conf->database.migrations_dir, &applied, err,
                                  sizeof err);
        if (rc != 0)
            fprintf(stderr, "keeld: migration failed: %s\n", err);
        else
            printf("keeld: %d migration(s) applied from %s\n", applied,
                   conf->database.migrations_dir);
        for (size_t i = 0; rc == 0 && i < conf->nplugins; i++)
            rc = migrate_plugin(conf, &conf->plugins[i]);
        keel__conf_free(conf);
        return rc == 0 ? 0 : 1;
    }

    if (!check) {
        /* The supervisor forks the workers before any thread exists. */
        char self[4096];
        ssize_t sn = readlink("/proc/self/exe", self, sizeof self - 1);
        self[sn > 0 ? sn : 0] = '\0';
        return keel__supervisor_run(conf, sn > 0 ? self : argv[0], argv, serve);
    }
    return serve_check(conf, confdir);
}

/* The user-sync cache over the database set up by setup_db(). */
static int setup_usersync(const struct keel__conf *conf)
{
    struct keel__usersync_conf uc = {.ttl_s = conf->usersync.ttl_s,
                                     .max_entries = conf->usersync.max_entries,
                                     .initial_credits = conf->usersync.initial_credits};
    return keel__usersync_new(&uc, keel__rt.db, &keel__rt.usersync);
}

/* The host table, the upstream client and the plugin loader with the schema
 * check it applies to plugins; *loader_up says whether the loader needs
 * keel__loader_shutdown(), also on failure. */
static int setup_loader(const struct keel__conf *conf, bool *loader_up)
{
    keel__rt.host = keel__host_api();
    keel__loader_set_runtime_dir(conf->server.runtime_dir);
    if (keel__upstream_global_init() != 0)
        return KEEL_EINVAL;
    if (keel__loader_init() != 0)
        return KEEL_EINVAL;
    *loader_up = true;
    return keel__loader_set_schema(conf->database.url, conf->database.migrations_dir);
}

/* Undoes what serve() or serve_check() set up, in the reverse order, and
 * frees conf: the plugins and the loader when they were started, the rest
 * whatever of it exists. */
static void teardown(struct keel__conf *conf, bool plugins_up, bool loader_up)
{
    if (plugins_up)
        keel__plugins_stop();
    if (loader_up)
        keel__loader_shutdown();
    keel__plugin_metrics_free();
    keel__notify_stop(user_changes);
    keel__usersync_free(keel__rt.usersync);
    if (keel__rt.db != NULL)
        keel__db_free(keel__rt.db);
    keel__auth_free(keel__rt.auth);
    keel__metrics_free();
    keel__conf_free(conf);
}

/* keeld --check: one process, no listeners. */
static int serve_check(struct keel__conf *conf, const char *confdir)
{
    int status = 1;
    bool loader_up = false, plugins_up = false;
    keel__loader_set_init_timeout(conf->containment.init_timeout_ms);
    /* The report is about every plugin's init, however long it takes. */
    keel__plugins_wait_for_init(true);
    if (setup_auth(conf) != 0)
        goto out;
    if (setup_usersync(conf) != 0)
        goto out;
    if (setup_loader(conf, &loader_up) != 0)
        goto out;
    int prc = keel__plugins_start(conf, keel__rt.host, keel__core_routes, keel__ncore_routes);
    plugins_up = true;
    print_check_report();
    bool ok = keel__check_settings(conf, check_connect, stdout);
    ok = prc == 0 && check_ok() && ok;
    printf("keeld --check: configuration %s is %s\n", confdir, ok ? "OK" : "NOT OK");
    status = ok ? 0 : 1;
out:
    teardown(conf, plugins_up, loader_up);
    return status;
}

/* Runs on the worker's reload thread (keel__worker_run_on_reload_thread). */
static int start_plugins(void *conf)
{
    return keel__plugins_start(conf, keel__rt.host, keel__core_routes, keel__ncore_routes);
}

/*
 * A worker (after the fork): sets up as a single keeld always did, serves
 * on the supervisor's sockets and answers its control channel until told
 * to stop.  Returns the exit status.
 */
static int serve(struct keel__conf *conf)
{
    /* Again: the supervisor gave this worker its share of the limits. */
    setup_http(conf);
    keel__rt.started_at = (int64_t)time(NULL);
    keel__loader_set_init_timeout(conf->containment.init_timeout_ms);
    keel__worker_set_reload_timeout((int)(keel__sup_inits_ms(conf) + 30000));
    signal(SIGPIPE, SIG_IGN);

    int status = 1;
    bool loader_up = false, plugins_up = false;
    pthread_t ticker;
    bool ticker_up = false;

    if (setup_auth(conf) != 0)
        goto out;
    if (setup_db(conf) != 0)
        goto out;
    if (setup_usersync(conf) != 0)
        goto out;
    start_notify(conf);
    if (setup_loader(conf, &loader_up) != 0)
        goto out;
    int prc = keel__worker_run_on_reload_thread(start_plugins, conf);
    plugins_up = true;
    if (prc == KEEL_ENOMEM)
        goto out;
    if (check_schema(conf) != 0)
        goto out;
    if (keel__server_start() != 0)
        goto out;
    /* Inits still running go on while the listeners serve the others. */
    keel__plugins_finish_start();
    if (pthread_create(&ticker, NULL, db_ticker, NULL) == 0)
        ticker_up = true;
    log_info("keeld %s worker %d ready (config %s)", PACKAGE_VERSION, (int)getpid(), conf->dir);

    int stuck = keel__worker_loop(conf);
    if (stuck > 0) {
        /* Threads still in plugin code would keep the daemons from
         * stopping: leave now, the supervisor counts on it. */
        log_warn("worker %d leaves %d request(s) stuck in plugin code", (int)getpid(), stuck);
        _exit(0);
    }
    keel__server_stop(1);
    /* Plugins' tasks are stopped with the plugins below; cut their calls to
     * other services short so that cannot outlast the drain. */
    keel__tasks_abort_all();
    status = 0;

out:
    if (ticker_up) {
        atomic_store(&ticker_stop, 1);
        pthread_join(ticker, NULL);
    }
    teardown(conf, plugins_up, loader_up);
    if (status == 0)
        log_info("worker %d stopped", (int)getpid());
    return status;
}
