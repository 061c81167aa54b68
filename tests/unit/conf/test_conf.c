/* Unit tests for core/conf/conf.c: each test builds a conf.d in a temporary directory. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <keel/error.h>
#include <keel/plugin.h>

#include "conf/conf.h"
#include "plugin/manifest.h"

struct fixture {
    char dir[64];
    char err[1024];
    struct keel__conf *conf;
};

static const char *const env_vars[] = {"KEEL_LISTEN",     "KEEL_ADMIN_LISTEN", "KEEL_DATABASE_URL",
                                       "KEEL_JWT_SECRET", "KEEL_PLUGIN_DIR",   "KEEL_LOG_LEVEL"};

static void clear_env(void)
{
    for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++)
        unsetenv(env_vars[i]);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/keel-conf-test.XXXXXX");
    if (mkdtemp(f->dir) == NULL) {
        free(f);
        return -1;
    }
    clear_env();
    *state = f;
    return 0;
}

/* Removes a directory tree the tests created (no symlinks in it). */
static void remove_tree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d != NULL && (e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char child[PATH_MAX];
            snprintf(child, sizeof child, "%s/%s", path, e->d_name);
            remove_tree(child);
        }
        if (d != NULL)
            closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    keel__conf_free(f->conf);
    remove_tree(f->dir);
    clear_env();
    free(f);
    return 0;
}

static void write_file(const struct fixture *f, const char *name, const char *text)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
}

static int load(struct fixture *f)
{
    keel__conf_free(f->conf);
    f->conf = NULL;
    f->err[0] = '\0';
    int rc = keel__conf_load(f->dir, &f->conf, f->err, sizeof f->err);
    if (rc == 0)
        assert_non_null(f->conf);
    else
        assert_null(f->conf);
    return rc;
}

static void load_ok(struct fixture *f)
{
    if (load(f) != 0)
        fail_msg("load failed: %s", f->err);
}

/* Loads expecting failure with exactly "DIR/file: message". */
static void load_fails_with(struct fixture *f, const char *file, const char *message)
{
    char want[1024];
    assert_int_equal(load(f), KEEL_ECONFIG);
    snprintf(want, sizeof want, "%s/%s: %s", f->dir, file, message);
    assert_string_equal(f->err, want);
}

/* Loads expecting failure whose message contains every given fragment. */
static void load_fails_containing(struct fixture *f, const char *frag1, const char *frag2)
{
    assert_int_equal(load(f), KEEL_ECONFIG);
    if (strstr(f->err, frag1) == NULL || (frag2 && strstr(f->err, frag2) == NULL))
        fail_msg("error \"%s\" lacks \"%s\"%s%s", f->err, frag1, frag2 ? " or " : "",
                 frag2 ? frag2 : "");
}

static void test_defaults(void **state)
{
    struct fixture *f = *state;
    /* Files that must be skipped: not .json, dotfiles, a directory. */
    write_file(f, "README", "not json at all");
    write_file(f, ".hidden.json", "{ broken");
    write_file(f, "10-server.json.bak", "{ broken");
    char sub[PATH_MAX];
    snprintf(sub, sizeof sub, "%s/sub.json", f->dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    load_ok(f);

    const struct keel__conf *c = f->conf;
    assert_string_equal(c->dir, f->dir);
    assert_string_equal(c->server.host, "127.0.0.1");
    assert_int_equal(c->server.port, 8080);
    assert_int_equal(c->server.threads, 0);
    assert_int_equal(c->server.connection_timeout_s, 30);
    assert_int_equal(c->server.shutdown_timeout_s, 10);
    assert_string_equal(c->server.plugin_dir, KEEL_PLUGINDIR);
    assert_string_equal(c->admin.host, "127.0.0.1");
    assert_int_equal(c->admin.port, 8081);
    assert_null(c->admin.token);
    assert_int_equal(c->log.level, KEEL_LOG_INFO);
    assert_null(c->log.access_log);
    assert_string_equal(c->log.access_format, "text");
    assert_null(c->database.url);
    assert_int_equal(c->database.pool_size, 8);
    assert_int_equal(c->database.pool_wait_ms, 2000);
    assert_int_equal(c->database.connect_timeout_s, 3);
    assert_int_equal(c->database.statement_timeout_ms, 5000);
    assert_int_equal(c->database.lock_timeout_ms, 2000);
    assert_int_equal(c->database.breaker_failures, 3);
    assert_int_equal(c->database.breaker_open_ms, 2000);
    assert_string_equal(c->database.migrations_dir, KEEL_DATADIR "/migrations");
    assert_null(c->auth.jwt_secret);
    assert_null(c->auth.jwt_kid);
    assert_int_equal(c->auth.nkeys, 0);
    assert_null(c->auth.issuer);
    assert_string_equal(c->auth.audience, "authenticated");
    assert_int_equal(c->auth.leeway_s, 30);
    assert_int_equal(c->auth.max_token_bytes, 8192);
    assert_int_equal(c->usersync.ttl_s, 300);
    assert_int_equal(c->usersync.max_entries, 10000);
    assert_int_equal(c->usersync.initial_credits, 0);
    assert_int_equal(c->cors.norigins, 0);
    assert_string_equal(c->cors.methods, "GET, POST, PUT, PATCH, DELETE, OPTIONS");
    assert_string_equal(c->cors.headers, "Authorization, Content-Type");
    assert_int_equal(c->cors.max_age, 600);
    assert_false(c->cors.credentials);
    assert_int_equal(c->limits.max_body_bytes, 1024 * 1024);
    assert_int_equal(c->limits.max_json_depth, 32);
    assert_int_equal(c->limits.max_header_bytes, 12 * 1024);
    assert_int_equal(c->limits.max_uri_bytes, 4 * 1024);
    assert_int_equal(c->limits.max_connections, 1024);
    assert_int_equal(c->limits.max_per_ip, 0);
    assert_int_equal(c->limits.rate_per_user, 0);
    assert_int_equal(c->limits.rate_burst, 0);
    assert_int_equal(c->nplugins, 0);
}

static void test_every_section(void **state)
{
    struct fixture *f = *state;
    write_file(f, "10-server.json",
               "{\"server\":{\"host\":\"0.0.0.0\",\"port\":9000,\"threads\":3,"
               "\"connection_timeout_s\":12,\"shutdown_timeout_s\":4,\"plugin_dir\":\"/opt/p\"},"
               " \"admin\":{\"host\":\"::1\",\"port\":9001,\"token\":\"tok\"},"
               " \"log\":{\"level\":\"debug\",\"access_log\":\"/var/log/a.log\","
               "\"access_format\":\"json\"},"
               " \"limits\":{\"max_body_bytes\":2048,\"max_json_depth\":8,"
               "\"max_header_bytes\":8192,\"max_connections\":50,\"max_per_ip\":5,"
               "\"rate_per_user\":10,\"rate_burst\":20}}\n");
    write_file(f, "20-database.json",
               "{\"database\":{\"url\":\"postgresql://u@h/db\",\"pool_size\":2,"
               "\"pool_wait_ms\":10,\"connect_timeout_s\":5,\"statement_timeout_ms\":0,"
               "\"lock_timeout_ms\":7,\"breaker_failures\":9,\"breaker_open_ms\":11,"
               "\"migrations_dir\":\"/m\"}}");
    write_file(f, "30-auth.json",
               "{\"auth\":{\"jwt_secret\":\"s3cret\",\"jwt_kid\":\"hs\",\"issuer\":\"https://i\","
               "\"audience\":\"aud\",\"leeway_s\":0,\"max_token_bytes\":4096,"
               "\"keys\":[{\"kid\":\"k1\",\"alg\":\"RS256\","
               "\"pem\":\"-----BEGIN PUBLIC KEY-----\\nAA\\n-----END PUBLIC KEY-----\\n\"}]},"
               " \"usersync\":{\"ttl_s\":0,\"max_entries\":5,\"initial_credits\":100}}");
    write_file(f, "40-cors.json",
               "{\"cors\":{\"origins\":[\"http://localhost:3000\","
               "\"https://app.example.com\",\"*\"],"
               "\"methods\":\"GET\",\"headers\":\"X-A\",\"max_age\":0,\"credentials\":true}}");
    load_ok(f);

    const struct keel__conf *c = f->conf;
    assert_string_equal(c->server.host, "0.0.0.0");
    assert_int_equal(c->server.port, 9000);
    assert_int_equal(c->server.threads, 3);
    assert_int_equal(c->server.connection_timeout_s, 12);
    assert_int_equal(c->server.shutdown_timeout_s, 4);
    assert_string_equal(c->server.plugin_dir, "/opt/p");
    assert_string_equal(c->admin.host, "::1");
    assert_int_equal(c->admin.port, 9001);
    assert_string_equal(c->admin.token, "tok");
    assert_int_equal(c->log.level, KEEL_LOG_DEBUG);
    assert_string_equal(c->log.access_log, "/var/log/a.log");
    assert_string_equal(c->log.access_format, "json");
    assert_string_equal(c->database.url, "postgresql://u@h/db");
    assert_int_equal(c->database.pool_size, 2);
    assert_int_equal(c->database.pool_wait_ms, 10);
    assert_int_equal(c->database.connect_timeout_s, 5);
    assert_int_equal(c->database.statement_timeout_ms, 0);
    assert_int_equal(c->database.lock_timeout_ms, 7);
    assert_int_equal(c->database.breaker_failures, 9);
    assert_int_equal(c->database.breaker_open_ms, 11);
    assert_string_equal(c->database.migrations_dir, "/m");
    assert_string_equal(c->auth.jwt_secret, "s3cret");
    assert_string_equal(c->auth.jwt_kid, "hs");
    assert_string_equal(c->auth.issuer, "https://i");
    assert_string_equal(c->auth.audience, "aud");
    assert_int_equal(c->auth.leeway_s, 0);
    assert_int_equal(c->auth.max_token_bytes, 4096);
    assert_int_equal(c->auth.nkeys, 1);
    assert_string_equal(c->auth.keys[0].kid, "k1");
    assert_string_equal(c->auth.keys[0].alg, "RS256");
    assert_string_equal(c->auth.keys[0].pem,
                        "-----BEGIN PUBLIC KEY-----\nAA\n-----END PUBLIC KEY-----\n");
    assert_int_equal(c->usersync.ttl_s, 0);
    assert_int_equal(c->usersync.max_entries, 5);
    assert_int_equal(c->usersync.initial_credits, 100);
    assert_int_equal(c->cors.norigins, 3);
    assert_string_equal(c->cors.origins[0], "http://localhost:3000");
    assert_string_equal(c->cors.origins[1], "https://app.example.com");
    assert_string_equal(c->cors.origins[2], "*");
    assert_string_equal(c->cors.methods, "GET");
    assert_string_equal(c->cors.headers, "X-A");
    assert_int_equal(c->cors.max_age, 0);
    assert_true(c->cors.credentials);
    assert_int_equal(c->limits.max_body_bytes, 2048);
    assert_int_equal(c->limits.max_json_depth, 8);
    assert_int_equal(c->limits.max_header_bytes, 8192);
    assert_int_equal(c->limits.max_connections, 50);
    assert_int_equal(c->limits.max_per_ip, 5);
    assert_int_equal(c->limits.rate_per_user, 10);
    assert_int_equal(c->limits.rate_burst, 20);

    /* Nullable strings accept null and go back to NULL. */
    write_file(f, "20-database.json", "{\"database\":{\"url\":null}}");
    write_file(f, "10-server.json", "{\"log\":{\"access_log\":null}}");
    load_ok(f);
    assert_null(f->conf->database.url);
    assert_null(f->conf->log.access_log);
}

static void test_unknown_key_and_section(void **state)
{
    struct fixture *f = *state;
    write_file(f, "10-server.json", "{\"server\":{\"host\":\"127.0.0.1\",\"prot\":8080}}");
    load_fails_with(f, "10-server.json", "server.prot: unknown key (did you mean \"port\"?)");

    write_file(f, "10-server.json", "{\"serve\":{}}");
    load_fails_with(f, "10-server.json", "serve: unknown section (did you mean \"server\"?)");

    /* Nothing close: no guess. */
    write_file(f, "10-server.json", "{\"server\":{\"zzzzzz\":1}}");
    load_fails_with(f, "10-server.json", "server.zzzzzz: unknown key");
    write_file(f, "10-server.json", "{\"database\":{\"statment_timeout_ms\":1}}");
    load_fails_with(f, "10-server.json",
                    "database.statment_timeout_ms: unknown key (did you mean "
                    "\"statement_timeout_ms\"?)");

    write_file(f, "10-server.json",
               "{\"auth\":{\"keys\":[{\"kid\":\"a\",\"alg\":\"RS256\","
               "\"pem\":\"-----BEGIN X\",\"extra\":1}]}}");
    load_fails_with(f, "10-server.json", "auth.keys[0].extra: unknown key");

    write_file(f, "10-server.json", "[1,2]");
    load_fails_with(f, "10-server.json", "expected a JSON object of sections");
    write_file(f, "10-server.json", "{\"server\":[]}");
    load_fails_with(f, "10-server.json", "server: expected an object");
}

static void test_wrong_types(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *json;
        const char *message;
    } cases[] = {
        {"{\"server\":{\"port\":\"8080\"}}", "server.port: expected an integer 1-65535"},
        {"{\"server\":{\"port\":0}}", "server.port: expected an integer 1-65535"},
        {"{\"server\":{\"port\":65536}}", "server.port: expected an integer 1-65535"},
        {"{\"server\":{\"port\":80.5}}", "server.port: expected an integer 1-65535"},
        {"{\"server\":{\"threads\":-1}}", "server.threads: expected an integer 0-1024"},
        {"{\"server\":{\"host\":5}}", "server.host: expected a non-empty string"},
        {"{\"server\":{\"host\":\"\"}}", "server.host: expected a non-empty string"},
        {"{\"server\":{\"host\":null}}", "server.host: expected a non-empty string"},
        {"{\"admin\":{\"token\":1}}", "admin.token: expected a non-empty string or null"},
        {"{\"cors\":{\"credentials\":\"yes\"}}", "cors.credentials: expected true or false"},
        {"{\"log\":{\"level\":\"verbose\"}}",
         "log.level: expected one of \"error\", \"warn\", \"info\", \"debug\""},
        {"{\"log\":{\"access_format\":\"xml\"}}",
         "log.access_format: expected one of \"text\", \"json\""},
        {"{\"usersync\":{\"initial_credits\":-5}}",
         "usersync.initial_credits: expected an integer 0-1000000000"},
        {"{\"limits\":{\"max_body_bytes\":0}}",
         "limits.max_body_bytes: expected an integer 1-1073741824"},
        {"{\"cors\":{\"origins\":\"http://a\"}}",
         "cors.origins: expected an array of at most 256 strings"},
        {"{\"cors\":{\"origins\":[\"http://a/\"]}}",
         "cors.origins[0]: expected \"*\" or an origin like \"https://example.com:8443\" (no "
         "path, no trailing slash)"},
        {"{\"cors\":{\"origins\":[\"http://ok\",\"ftp://x\"]}}",
         "cors.origins[1]: expected \"*\" or an origin like \"https://example.com:8443\" (no "
         "path, no trailing slash)"},
        {"{\"auth\":{\"keys\":{}}}", "auth.keys: expected an array of at most 64 key objects"},
        {"{\"auth\":{\"keys\":[{\"kid\":\"a\",\"alg\":\"HS256\",\"pem\":\"-----BEGIN X\"}]}}",
         "auth.keys[0].alg: expected \"RS256\" or \"ES256\""},
        {"{\"auth\":{\"keys\":[{\"alg\":\"ES256\",\"pem\":\"-----BEGIN X\"}]}}",
         "auth.keys[0].kid: expected a non-empty string"},
        {"{\"auth\":{\"keys\":[{\"kid\":\"a\",\"alg\":\"ES256\"}]}}",
         "auth.keys[0]: give exactly one of pem and pem_file"},
        {"{\"auth\":{\"keys\":[{\"kid\":\"a\",\"alg\":\"ES256\",\"pem\":\"junk\"}]}}",
         "auth.keys[0].pem: not a PEM text (no -----BEGIN line)"},
        {"{\"auth\":{\"keys\":[{\"kid\":\"a\",\"alg\":\"ES256\",\"pem\":\"-----BEGIN X\"},"
         "{\"kid\":\"a\",\"alg\":\"RS256\",\"pem\":\"-----BEGIN Y\"}]}}",
         "auth.keys[1].kid: \"a\" is also the kid of auth.keys[0]"},
        {"{\"auth\":{\"jwt_secret\":\"x\",\"jwt_secret_file\":\"s\"}}",
         "auth.jwt_secret_file: give either jwt_secret or jwt_secret_file"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_file(f, "10-x.json", cases[i].json);
        load_fails_with(f, "10-x.json", cases[i].message);
    }
}

static void test_duplicate_section(void **state)
{
    struct fixture *f = *state;
    char want[1024];
    /* Byte order: "10-b" is read before "9-a". */
    write_file(f, "9-a.json", "{\"server\":{\"port\":1}}");
    write_file(f, "10-b.json", "{\"server\":{\"port\":2}}");
    assert_int_equal(load(f), KEEL_ECONFIG);
    snprintf(want, sizeof want,
             "%s/9-a.json: section \"server\" is already defined in %s/10-b.json", f->dir, f->dir);
    assert_string_equal(f->err, want);
}

static void test_malformed_json(void **state)
{
    struct fixture *f = *state;
    char want[PATH_MAX];
    write_file(f, "10-server.json", "{\n  \"server\": {\n    \"port\": 80,,\n  }\n}\n");
    assert_int_equal(load(f), KEEL_ECONFIG);
    snprintf(want, sizeof want, "%s/10-server.json: line 3, column ", f->dir);
    assert_memory_equal(f->err, want, strlen(want));

    /* Duplicate keys inside one file are rejected by the parser. */
    write_file(f, "10-server.json", "{\"server\":{\"port\":1,\n\"port\":2}}");
    load_fails_containing(f, "10-server.json: line 2", "duplicate");

    write_file(f, "10-server.json", "");
    load_fails_containing(f, "10-server.json: line ", NULL);

    char missing[PATH_MAX];
    snprintf(missing, sizeof missing, "%s/nope", f->dir);
    struct keel__conf *c = (void *)1;
    assert_int_equal(keel__conf_load(missing, &c, f->err, sizeof f->err), KEEL_ECONFIG);
    assert_null(c);
    assert_non_null(strstr(f->err, "nope: cannot read the configuration directory"));
}

/* A file is parsed again only when its bytes change; a change that keeps
 * the size (and so, within the clock's tick, maybe the mtime) counts. */
static void test_unchanged_files_not_parsed_again(void **state)
{
    struct fixture *f = *state;
    write_file(f, "10-server.json", "{\"server\":{\"port\":9001}}");
    write_file(f, "20-log.json", "{\"log\":{\"level\":\"debug\"}}");
    unsigned long before = keel__conf_files_parsed();
    load_ok(f);
    assert_int_equal(f->conf->server.port, 9001);
    assert_int_equal(keel__conf_files_parsed() - before, 2);

    load_ok(f);
    assert_int_equal(f->conf->server.port, 9001);
    assert_int_equal(f->conf->log.level, KEEL_LOG_DEBUG);
    assert_int_equal(keel__conf_files_parsed() - before, 2);

    write_file(f, "10-server.json", "{\"server\":{\"port\":9002}}");
    load_ok(f);
    assert_int_equal(f->conf->server.port, 9002);
    assert_int_equal(f->conf->log.level, KEEL_LOG_DEBUG);
    assert_int_equal(keel__conf_files_parsed() - before, 3);

    /* A broken edit is refused; putting the file back as it was needs no
     * parse, and a removed file's settings are gone. */
    write_file(f, "10-server.json", "{\"server\":{\"port\":9002,}}");
    load_fails_containing(f, "10-server.json: line 1", NULL);
    write_file(f, "10-server.json", "{\"server\":{\"port\":9002}}");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/20-log.json", f->dir);
    assert_int_equal(unlink(path), 0);
    unsigned long mid = keel__conf_files_parsed();
    load_ok(f);
    assert_int_equal(f->conf->server.port, 9002);
    assert_int_equal(f->conf->log.level, KEEL_LOG_INFO);
    assert_int_equal(keel__conf_files_parsed(), mid);

    /* The removed file was forgotten: written again, it is parsed again. */
    write_file(f, "20-log.json", "{\"log\":{\"level\":\"debug\"}}");
    load_ok(f);
    assert_int_equal(f->conf->log.level, KEEL_LOG_DEBUG);
    assert_int_equal(keel__conf_files_parsed(), mid + 1);

    keel__conf_forget_parsed();
    load_ok(f);
    assert_int_equal(keel__conf_files_parsed(), mid + 3);
}

static const char *good_manifest =
    "{\"plugin\":{\"name\":\"creator\",\"file\":\"creator.so\",\"config\":{\"unlock_cost\":25},"
    "\"routes\":["
    "{\"method\":\"GET\",\"path\":\"/api/v1/simple/creator/system/stats\",\"auth\":\"user\","
    " \"fallback\":{\"status\":200,\"body\":{\"error\":\"down: ${reason}\"}}},"
    "{\"method\":\"POST\",\"path\":\"/api/v1/simple/creator/unlock/{username}\",\"auth\":\"user\","
    " \"fallback\":{\"status\":503,\"headers\":{\"Retry-After\":\"30\"},"
    "  \"body\":{\"detail\":\"Creator service unavailable\"}}},"
    "{\"method\":\"POST\",\"path\":\"/admin/import\",\"auth\":\"admin\",\"listener\":\"admin\"},"
    "{\"method\":\"GET\",\"path\":\"/health/x\",\"auth\":\"public\",\"fallback\":{}}"
    "]}}";

static void test_manifest(void **state)
{
    struct fixture *f = *state;
    write_file(f, "10-server.json", "{\"server\":{\"plugin_dir\":\"/opt/keel/plugins/\"}}");
    write_file(f, "60-creator.json", good_manifest);
    write_file(f, "50-example.json",
               "{\"plugin\":{\"name\":\"example\",\"enabled\":false,"
               "\"file\":\"/abs/example.so\"}}");
    load_ok(f);

    const struct keel__conf *c = f->conf;
    assert_int_equal(c->nplugins, 2);
    const struct keel__manifest *ex = &c->plugins[0];
    assert_string_equal(ex->name, "example");
    assert_false(ex->enabled);
    assert_string_equal(ex->file, "/abs/example.so");
    assert_true(json_is_object(ex->config));
    assert_int_equal(json_object_size(ex->config), 0);
    assert_int_equal(ex->nroutes, 0);

    const struct keel__manifest *m = &c->plugins[1];
    char src[PATH_MAX];
    snprintf(src, sizeof src, "%s/60-creator.json", f->dir);
    assert_string_equal(m->name, "creator");
    assert_string_equal(m->source, src);
    assert_true(m->enabled);
    assert_string_equal(m->file_spec, "creator.so");
    assert_string_equal(m->file, "/opt/keel/plugins/creator.so");
    assert_int_equal(json_integer_value(json_object_get(m->config, "unlock_cost")), 25);
    assert_int_equal(m->nroutes, 4);

    assert_string_equal(m->routes[0].method, "GET");
    assert_string_equal(m->routes[0].path, "/api/v1/simple/creator/system/stats");
    assert_int_equal(m->routes[0].auth, KEEL__AUTH_USER);
    assert_int_equal(m->routes[0].listener, KEEL__LISTENER_MAIN);
    assert_int_equal(m->routes[0].fallback_status, 200);
    assert_string_equal(json_string_value(json_object_get(m->routes[0].fallback, "error")),
                        "down: ${reason}");
    assert_null(m->routes[0].fallback_headers);

    assert_int_equal(m->routes[1].fallback_status, 503);
    assert_string_equal(
        json_string_value(json_object_get(m->routes[1].fallback_headers, "Retry-After")), "30");

    /* No fallback: 503 with the default body. */
    assert_int_equal(m->routes[2].auth, KEEL__AUTH_ADMIN);
    assert_int_equal(m->routes[2].listener, KEEL__LISTENER_ADMIN);
    assert_int_equal(m->routes[2].fallback_status, 503);
    assert_string_equal(json_string_value(json_object_get(m->routes[2].fallback, "detail")),
                        "Service unavailable");

    /* An empty fallback object: status 200, default body. */
    assert_int_equal(m->routes[3].auth, KEEL__AUTH_PUBLIC);
    assert_int_equal(m->routes[3].fallback_status, 200);
    assert_string_equal(json_string_value(json_object_get(m->routes[3].fallback, "detail")),
                        "Service unavailable");
}

static void test_manifest_errors(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *plugin;
        const char *message;
    } cases[] = {
        {"[]", "plugin: expected an object"},
        {"{\"file\":\"x.so\"}", "plugin.name: expected 1-64 characters of [a-z0-9_-]"},
        {"{\"name\":\"Bad\",\"file\":\"x.so\"}",
         "plugin.name: expected 1-64 characters of [a-z0-9_-]"},
        {"{\"name\":\"x\"}", "plugin.file: expected the file name of the plugin's .so"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"versin\":1}", "plugin.versin: unknown key"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"enabled\":1}",
         "plugin.enabled: expected true or false"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"config\":[]}", "plugin.config: expected an object"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":{}}",
         "plugin.routes: expected an array of at most 512 routes"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":[{\"method\":\"get\",\"path\":\"/a\","
         "\"auth\":\"user\"}]}",
         "plugin.routes[0].method: expected one of GET, POST, PUT, PATCH, DELETE"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":[{\"method\":\"HEAD\",\"path\":\"/a\","
         "\"auth\":\"user\"}]}",
         "plugin.routes[0].method: expected one of GET, POST, PUT, PATCH, DELETE"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":[{\"method\":\"GET\",\"path\":\"a\","
         "\"auth\":\"user\"}]}",
         "plugin.routes[0].path: path must start with '/'"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":[{\"method\":\"GET\",\"path\":\"/a//b\","
         "\"auth\":\"user\"}]}",
         "plugin.routes[0].path: empty segment in path"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":[{\"method\":\"GET\",\"path\":\"/a/{b\","
         "\"auth\":\"user\"}]}",
         "plugin.routes[0].path: segment 2: a parameter is a whole segment \"{name}\""},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":[{\"method\":\"GET\",\"path\":\"/a\"}]}",
         "plugin.routes[0].auth: expected \"public\", \"user\" or \"admin\""},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":[{\"method\":\"GET\",\"path\":\"/a\","
         "\"auth\":\"user\",\"listener\":\"side\"}]}",
         "plugin.routes[0].listener: expected \"main\" or \"admin\""},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":[{\"method\":\"GET\",\"path\":\"/a\","
         "\"auth\":\"user\",\"fallback\":{\"status\":99}}]}",
         "plugin.routes[0].fallback.status: expected an integer 100-599"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":[{\"method\":\"GET\",\"path\":\"/a\","
         "\"auth\":\"user\",\"fallback\":{\"code\":200}}]}",
         "plugin.routes[0].fallback.code: unknown key"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":[{\"method\":\"GET\",\"path\":\"/a\","
         "\"auth\":\"user\",\"fallback\":[]}]}",
         "plugin.routes[0].fallback: expected an object with status, headers and body"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":[{\"method\":\"GET\",\"path\":\"/a\","
         "\"auth\":\"user\",\"fallback\":{\"headers\":{\"X-A\":\"1\\r\\nX-B: 2\"}}}]}",
         "plugin.routes[0].fallback.headers.X-A: expected a string without control characters"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":[{\"method\":\"GET\",\"path\":\"/a\","
         "\"auth\":\"user\",\"fallback\":{\"headers\":{\"Bad Name\":\"1\"}}}]}",
         "plugin.routes[0].fallback.headers.Bad Name: not a valid header name"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":[{\"method\":\"GET\",\"path\":\"/a\","
         "\"auth\":\"user\",\"verb\":1}]}",
         "plugin.routes[0].verb: unknown key"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":[7]}",
         "plugin.routes[0]: expected an object"},
        {"{\"name\":\"x\",\"file\":\"x.so\",\"routes\":["
         "{\"method\":\"GET\",\"path\":\"/a/{id}\",\"auth\":\"user\"},"
         "{\"method\":\"GET\",\"path\":\"/a/{name}\",\"auth\":\"public\"}]}",
         "plugin.routes[1]: route GET /a/{name} of plugin \"x\" conflicts with GET /a/{id} of "
         "plugin \"x\""},
    };
    char text[2048];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(text, sizeof text, "{\"plugin\":%s}", cases[i].plugin);
        write_file(f, "60-x.json", text);
        load_fails_with(f, "60-x.json", cases[i].message);
    }

    /* Same path and method on different listeners, or other methods: fine. */
    write_file(f, "60-x.json",
               "{\"plugin\":{\"name\":\"x\",\"file\":\"x.so\",\"routes\":["
               "{\"method\":\"GET\",\"path\":\"/a\",\"auth\":\"user\"},"
               "{\"method\":\"POST\",\"path\":\"/a\",\"auth\":\"user\"},"
               "{\"method\":\"GET\",\"path\":\"/a\",\"auth\":\"admin\","
               "\"listener\":\"admin\"}]}}");
    load_ok(f);
    assert_int_equal(f->conf->plugins[0].nroutes, 3);
}

static void test_duplicate_plugin(void **state)
{
    struct fixture *f = *state;
    char want[1024];
    write_file(f, "50-a.json", "{\"plugin\":{\"name\":\"same\",\"file\":\"a.so\"}}");
    write_file(f, "60-b.json", "{\"plugin\":{\"name\":\"same\",\"file\":\"b.so\"}}");
    assert_int_equal(load(f), KEEL_ECONFIG);
    snprintf(want, sizeof want, "%s/60-b.json: plugin \"same\" is already defined in %s/50-a.json",
             f->dir, f->dir);
    assert_string_equal(f->err, want);
}

static void test_manifest_parse_direct(void **state)
{
    (void)state;
    char err[512], cwd[PATH_MAX], want[PATH_MAX + 32];
    struct keel__manifest m;
    json_error_t je;
    json_t *obj = json_loads("{\"name\":\"p\",\"file\":\"sub/p.so\"}", 0, &je);
    assert_non_null(obj);
    assert_non_null(getcwd(cwd, sizeof cwd));

    /* A relative plugin dir is taken from the working directory. */
    assert_int_equal(keel__manifest_parse(obj, "src.json", "rel/dir", &m, err, sizeof err), 0);
    snprintf(want, sizeof want, "%s/rel/dir/sub/p.so", cwd);
    assert_string_equal(m.file, want);
    assert_string_equal(m.source, "src.json");
    keel__manifest_clear(&m);
    assert_null(m.name);
    keel__manifest_clear(&m); /* clearing twice is harmless */

    assert_int_equal(keel__manifest_parse(obj, "src.json", "/", &m, err, sizeof err), 0);
    assert_string_equal(m.file, "/sub/p.so");
    keel__manifest_clear(&m);

    /* A failure leaves *out empty; the route parsed before it is freed. */
    json_decref(obj);
    obj = json_loads("{\"name\":\"p\",\"file\":\"p.so\",\"routes\":[{\"method\":\"GET\","
                     "\"path\":\"/a\",\"auth\":\"user\",\"fallback\":{\"body\":[1]}},{}]}",
                     0, &je);
    assert_non_null(obj);
    assert_int_equal(keel__manifest_parse(obj, "src.json", "/d", &m, err, sizeof err),
                     KEEL_ECONFIG);
    assert_null(m.name);
    assert_null(m.routes);
    assert_int_equal(m.nroutes, 0);
    assert_string_equal(err, "src.json: plugin.routes[1].method: expected one of GET, POST, PUT, "
                             "PATCH, DELETE");
    json_decref(obj);
}

/* Parses {"name":"p","file":"p.so","routes":[<route>]} plus extra members. */
static int parse_one_route(const char *route, const char *extra, struct keel__manifest *m,
                           char *err, size_t errlen)
{
    char text[2048];
    json_error_t je;
    snprintf(text, sizeof text, "{\"name\":\"p\",\"file\":\"p.so\"%s,\"routes\":[%s]}", extra,
             route);
    json_t *obj = json_loads(text, 0, &je);
    assert_non_null(obj);
    int rc = keel__manifest_parse(obj, "doc.json", "/d", m, err, errlen);
    json_decref(obj);
    return rc;
}

/* The optional documentation of a route (GET /openapi.json). */
static void test_manifest_route_docs(void **state)
{
    (void)state;
    char err[512];
    struct keel__manifest m;
    static const char *const bad[][2] = {
        {"\"summary\":3", "plugin.routes[0].summary: expected a string"},
        {"\"description\":[]", "plugin.routes[0].description: expected a string"},
        {"\"request_body\":\"x\"", "plugin.routes[0].request_body: expected a JSON Schema"},
        {"\"parameters\":{}", "plugin.routes[0].parameters: expected an array"},
        {"\"parameters\":[{\"name\":\"q\",\"in\":\"body\"}]",
         "plugin.routes[0].parameters[0]: expected an object with \"name\" and \"in\""},
        {"\"parameters\":[{\"in\":\"query\"}]",
         "plugin.routes[0].parameters[0]: expected an object with \"name\" and \"in\""},
        {"\"responses\":[]", "plugin.routes[0].responses: expected an object"},
        {"\"responses\":{\"2xx\":{}}", "plugin.routes[0].responses.2xx: expected a status code"},
        {"\"responses\":{\"600\":{}}", "plugin.routes[0].responses.600: expected a status code"},
        {"\"responses\":{\"200\":{\"schema\":3}}",
         "plugin.routes[0].responses.200: description must be a string"},
        {"\"responses\":{\"200\":{\"example\":{}}}",
         "plugin.routes[0].responses.200.example: unknown key"},
        {"\"sumary\":\"typo\"", "plugin.routes[0].sumary: unknown key"},
    };
    char route[512];

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(route, sizeof route,
                 "{\"method\":\"GET\",\"path\":\"/a/{x}\",\"auth\":\"user\",%s}", bad[i][0]);
        assert_int_equal(parse_one_route(route, "", &m, err, sizeof err), KEEL_ECONFIG);
        if (strstr(err, bad[i][1]) == NULL)
            fail_msg("%s: got \"%s\"", bad[i][0], err);
    }
    assert_int_equal(parse_one_route("{\"method\":\"GET\",\"path\":\"/a\",\"auth\":\"user\"}",
                                     ",\"schemas\":[]", &m, err, sizeof err),
                     KEEL_ECONFIG);
    assert_non_null(strstr(err, "plugin.schemas: expected an object"));

    /* Accepted documentation is kept as written; no documentation is NULL. */
    assert_int_equal(
        parse_one_route("{\"method\":\"GET\",\"path\":\"/a\",\"auth\":\"user\",\"summary\":\"S\","
                        "\"parameters\":[{\"name\":\"q\",\"in\":\"query\"}],"
                        "\"responses\":{\"200\":{\"description\":\"ok\",\"schema\":{\"$ref\":"
                        "\"#/components/schemas/T\"}},\"default\":{}}},"
                        "{\"method\":\"GET\",\"path\":\"/b\",\"auth\":\"user\"}",
                        ",\"schemas\":{\"T\":{\"type\":\"object\"}}", &m, err, sizeof err),
        0);
    assert_int_equal(m.nroutes, 2);
    assert_non_null(m.routes[0].doc);
    assert_string_equal(json_string_value(json_object_get(m.routes[0].doc, "summary")), "S");
    assert_int_equal(json_object_size(m.routes[0].doc), 3);
    assert_null(m.routes[1].doc);
    assert_non_null(json_object_get(m.schemas, "T"));
    keel__manifest_clear(&m);
    assert_null(m.schemas);
}

static void test_parse_listen(void **state)
{
    (void)state;
    char *host;
    int port;
    assert_int_equal(keel__parse_listen("0.0.0.0:80", &host, &port), 0);
    assert_string_equal(host, "0.0.0.0");
    assert_int_equal(port, 80);
    free(host);
    assert_int_equal(keel__parse_listen("[::1]:8080", &host, &port), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 8080);
    free(host);
    assert_int_equal(keel__parse_listen("localhost:65535", &host, &port), 0);
    assert_string_equal(host, "localhost");
    free(host);
    assert_int_equal(keel__parse_listen(":8081", &host, &port), 0);
    assert_null(host);
    assert_int_equal(port, 8081);
    assert_int_equal(keel__parse_listen("9", &host, &port), 0);
    assert_null(host);
    assert_int_equal(port, 9);

    static const char *const bad[] = {"",           "host",     "host:",        "host:0",
                                      "host:65536", "host:80x", "::1:8080",     "[::1]",
                                      "[::1]8080",  "[]:80",    "[nothost]:80", "a b:80",
                                      "host:-1",    "host:+80", "host:000080",  NULL};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        host = (char *)1;
        if (keel__parse_listen(bad[i], &host, &port) != KEEL_EINVAL)
            fail_msg("\"%s\" was accepted", bad[i] ? bad[i] : "(null)");
        assert_null(host);
    }
}

static void test_env(void **state)
{
    struct fixture *f = *state;
    write_file(f, "10-server.json",
               "{\"database\":{\"url\":\"postgresql://file\"},"
               "\"auth\":{\"jwt_secret\":\"from-file\"}}");
    write_file(f, "60-p.json", "{\"plugin\":{\"name\":\"p\",\"file\":\"p.so\"}}");
    load_ok(f);
    struct keel__conf *c = f->conf;

    /* No variables: nothing changes; empty ones count as unset. */
    setenv("KEEL_DATABASE_URL", "", 1);
    assert_int_equal(keel__conf_apply_env(c, f->err, sizeof f->err), 0);
    assert_string_equal(c->database.url, "postgresql://file");
    assert_string_equal(c->plugins[0].file, KEEL_PLUGINDIR "/p.so");

    setenv("KEEL_LISTEN", "0.0.0.0:9090", 1);
    setenv("KEEL_ADMIN_LISTEN", "[::1]:9091", 1);
    setenv("KEEL_DATABASE_URL", "postgresql://env", 1);
    setenv("KEEL_JWT_SECRET", "from-env", 1);
    setenv("KEEL_PLUGIN_DIR", "/env/plugins", 1);
    setenv("KEEL_LOG_LEVEL", "warn", 1);
    assert_int_equal(keel__conf_apply_env(c, f->err, sizeof f->err), 0);
    assert_string_equal(c->server.host, "0.0.0.0");
    assert_int_equal(c->server.port, 9090);
    assert_string_equal(c->admin.host, "::1");
    assert_int_equal(c->admin.port, 9091);
    assert_string_equal(c->database.url, "postgresql://env");
    assert_string_equal(c->auth.jwt_secret, "from-env");
    assert_string_equal(c->server.plugin_dir, "/env/plugins");
    assert_string_equal(c->plugins[0].file, "/env/plugins/p.so");
    assert_string_equal(c->plugins[0].file_spec, "p.so");
    assert_int_equal(c->log.level, KEEL_LOG_WARN);

    /* A port alone keeps the host. */
    clear_env();
    setenv("KEEL_LISTEN", ":7000", 1);
    assert_int_equal(keel__conf_apply_env(c, f->err, sizeof f->err), 0);
    assert_string_equal(c->server.host, "0.0.0.0");
    assert_int_equal(c->server.port, 7000);

    /* A bad variable names itself and changes nothing, even the good ones. */
    clear_env();
    setenv("KEEL_DATABASE_URL", "postgresql://other", 1);
    setenv("KEEL_LOG_LEVEL", "loud", 1);
    assert_int_equal(keel__conf_apply_env(c, f->err, sizeof f->err), KEEL_ECONFIG);
    assert_string_equal(f->err,
                        "KEEL_LOG_LEVEL: expected error, warn, info or debug, got \"loud\"");
    assert_string_equal(c->database.url, "postgresql://env");
    assert_int_equal(c->log.level, KEEL_LOG_WARN);

    clear_env();
    setenv("KEEL_LISTEN", "localhost:http", 1);
    assert_int_equal(keel__conf_apply_env(c, f->err, sizeof f->err), KEEL_ECONFIG);
    assert_memory_equal(f->err, "KEEL_LISTEN: ", strlen("KEEL_LISTEN: "));
    assert_int_equal(c->server.port, 7000);

    clear_env();
    setenv("KEEL_ADMIN_LISTEN", "::1:80", 1);
    assert_int_equal(keel__conf_apply_env(c, f->err, sizeof f->err), KEEL_ECONFIG);
    assert_memory_equal(f->err, "KEEL_ADMIN_LISTEN: ", strlen("KEEL_ADMIN_LISTEN: "));

    /* An admin listener off loopback needs a token. */
    clear_env();
    setenv("KEEL_ADMIN_LISTEN", "0.0.0.0:8081", 1);
    assert_int_equal(keel__conf_apply_env(c, f->err, sizeof f->err), KEEL_ECONFIG);
    assert_non_null(strstr(f->err, "admin.token is required"));
    assert_string_equal(c->admin.host, "::1");
    c->admin.token = strdup("a-long-admin-token");
    assert_non_null(c->admin.token);
    assert_int_equal(keel__conf_apply_env(c, f->err, sizeof f->err), 0);
    assert_string_equal(c->admin.host, "0.0.0.0");
}

static void test_admin_host_in_file(void **state)
{
    struct fixture *f = *state;
    write_file(f, "10-server.json", "{\"admin\":{\"host\":\"10.0.0.5\"}}");
    load_ok(f);
    assert_int_equal(keel__conf_apply_env(f->conf, f->err, sizeof f->err), KEEL_ECONFIG);
    assert_string_equal(f->err, "admin.host: the admin listener on 10.0.0.5 is not loopback-only, "
                                "so admin.token is required");
    /* The environment can move it back to loopback. */
    setenv("KEEL_ADMIN_LISTEN", "127.0.0.2:8081", 1);
    assert_int_equal(keel__conf_apply_env(f->conf, f->err, sizeof f->err), 0);
    assert_string_equal(f->conf->admin.host, "127.0.0.2");
}

static void test_pem_and_secret_files(void **state)
{
    struct fixture *f = *state;
    const char *pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
                      "-----END PUBLIC KEY-----\n";
    char sub[PATH_MAX], abs_pem[PATH_MAX], text[PATH_MAX + 256];
    snprintf(sub, sizeof sub, "%s/keys", f->dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    write_file(f, "keys/es.pem", pem);
    write_file(f, "keys/rs.pem", "-----BEGIN PUBLIC KEY-----\nrsa\n-----END PUBLIC KEY-----\n");
    write_file(f, "jwt.secret", "top-secret\r\n\n");
    snprintf(abs_pem, sizeof abs_pem, "%s/keys/rs.pem", f->dir);
    snprintf(text, sizeof text,
             "{\"auth\":{\"jwt_secret_file\":\"jwt.secret\",\"keys\":["
             "{\"kid\":\"es\",\"alg\":\"ES256\",\"pem_file\":\"keys/es.pem\"},"
             "{\"kid\":\"rs\",\"alg\":\"RS256\",\"pem_file\":\"%s\"}]}}",
             abs_pem);
    write_file(f, "30-auth.json", text);
    load_ok(f);
    assert_string_equal(f->conf->auth.jwt_secret, "top-secret");
    assert_int_equal(f->conf->auth.nkeys, 2);
    assert_string_equal(f->conf->auth.keys[0].kid, "es");
    assert_string_equal(f->conf->auth.keys[0].alg, "ES256");
    assert_string_equal(f->conf->auth.keys[0].pem, pem);
    assert_string_equal(f->conf->auth.keys[1].kid, "rs");
    assert_non_null(strstr(f->conf->auth.keys[1].pem, "\nrsa\n"));

    /* Missing file. */
    write_file(f, "30-auth.json",
               "{\"auth\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"ES256\","
               "\"pem_file\":\"keys/none.pem\"}]}}");
    load_fails_containing(f, "30-auth.json: auth.keys[0].pem_file: cannot open ", "none.pem");

    /* Over the 64 KiB cap. */
    size_t big = 64 * 1024 + 1;
    char *blob = malloc(big + 1);
    assert_non_null(blob);
    memset(blob, 'A', big);
    memcpy(blob, "-----BEGIN ", 11);
    blob[big] = '\0';
    write_file(f, "keys/big.pem", blob);
    free(blob);
    write_file(f, "30-auth.json",
               "{\"auth\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"ES256\","
               "\"pem_file\":\"keys/big.pem\"}]}}");
    load_fails_containing(f, "30-auth.json: auth.keys[0].pem_file: ",
                          "big.pem is larger than 65536 bytes");

    /* A directory is not a key file. */
    write_file(f, "30-auth.json",
               "{\"auth\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"ES256\","
               "\"pem_file\":\"keys\"}]}}");
    load_fails_containing(f, "auth.keys[0].pem_file: ", "is not a regular file");

    /* A file that is not PEM. */
    write_file(f, "keys/junk.pem", "hello\n");
    write_file(f, "30-auth.json",
               "{\"auth\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"ES256\","
               "\"pem_file\":\"keys/junk.pem\"}]}}");
    load_fails_with(f, "30-auth.json",
                    "auth.keys[0].pem_file: not a PEM text (no -----BEGIN line)");

    /* An empty secret file. */
    write_file(f, "jwt.secret", "\n");
    write_file(f, "30-auth.json", "{\"auth\":{\"jwt_secret_file\":\"jwt.secret\"}}");
    load_fails_with(f, "30-auth.json", "auth.jwt_secret_file: the secret file is empty");
}

/* The conf.d shipped in the tree must load, with the values it documents.
 * make check exports KEEL_SRCDIR; run by hand, the test is skipped. */
static void test_shipped_conf_d(void **state)
{
    (void)state;
    const char *srcdir = getenv("KEEL_SRCDIR");
    char dir[PATH_MAX], err[1024];
    struct keel__conf *c = NULL;

    if (srcdir == NULL || srcdir[0] == '\0')
        skip();
    snprintf(dir, sizeof dir, "%s/conf.d", srcdir);
    if (keel__conf_load(dir, &c, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_string_equal(c->server.host, "127.0.0.1");
    assert_int_equal(c->server.port, 8080);
    assert_int_equal(c->server.threads, 0);
    assert_string_equal(c->server.plugin_dir, KEEL_PLUGINDIR);
    assert_string_equal(c->admin.host, "127.0.0.1");
    assert_int_equal(c->admin.port, 8081);
    assert_int_equal(c->log.level, KEEL_LOG_INFO);
    assert_string_equal(c->log.access_log, "-");
    assert_string_equal(c->database.url, "postgresql://keel@127.0.0.1:5432/keel");
    assert_int_equal(c->database.pool_size, 8);
    assert_null(c->auth.jwt_secret); /* secrets come from KEEL_JWT_SECRET */
    assert_string_equal(c->auth.audience, "authenticated");
    assert_int_equal(c->usersync.ttl_s, 300);
    assert_int_equal(c->cors.norigins, 2);
    assert_string_equal(c->cors.origins[0], "http://localhost:3000");
    assert_true(c->cors.credentials);
    assert_int_equal(c->limits.max_body_bytes, 1048576);
    for (size_t i = 0; i < c->nplugins; i++)
        assert_true(c->plugins[i].file[0] == '/');
    keel__conf_free(c);
}

int main(void)
{
    keel__manifest_install();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_section, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_key_and_section, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_section, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_plugin, setup, teardown),
        cmocka_unit_test(test_manifest_parse_direct),
        cmocka_unit_test(test_manifest_route_docs),
        cmocka_unit_test(test_parse_listen),
        cmocka_unit_test_setup_teardown(test_env, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_host_in_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unchanged_files_not_parsed_again, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pem_and_secret_files, setup, teardown),
        cmocka_unit_test(test_shipped_conf_d),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
