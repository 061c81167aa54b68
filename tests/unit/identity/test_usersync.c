/*
 * Tests for core/identity/usersync.c.  The cache-less cases run anywhere; the rest
 * sync against the real PostgreSQL named by KEEL_TEST_DATABASE_URL (./dev
 * test sets it) and are skipped, saying so, when it is not set.  Rows they
 * create use emails under a per-run domain and are deleted at the end.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <keel/error.h>

#include "util/log.h"
#include "data/migrate.h"
#include "identity/usersync.h"

#define NOW ((int64_t)1700000000)
#define THREADS 64

/* ------------------------------------------------------------ helpers */

/* A request arena stand-in: every block is remembered and freed at once. */
struct arena {
    void **blocks;
    size_t n, cap;
    bool fail;
};

static void *arena_alloc(void *ctx, size_t size)
{
    struct arena *a = ctx;
    if (a->fail)
        return NULL;
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 16;
        void **b = realloc(a->blocks, cap * sizeof *b);
        if (b == NULL)
            return NULL;
        a->blocks = b;
        a->cap = cap;
    }
    void *p = malloc(size);
    if (p != NULL)
        a->blocks[a->n++] = p;
    return p;
}

static void arena_reset(struct arena *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->blocks[i]);
    a->n = 0;
}

static void arena_done(struct arena *a)
{
    arena_reset(a);
    free(a->blocks);
    a->blocks = NULL;
    a->cap = 0;
}

/* meta: "full_name", "name" or NULL for which user_metadata member to set. */
static void claims_make(struct keel__claims *c, const char *sub, const char *email,
                        const char *meta, const char *name)
{
    memset(c, 0, sizeof *c);
    snprintf(c->sub, sizeof c->sub, "%s", sub);
    c->email = strdup(email);
    c->role = strdup("authenticated");
    c->exp = NOW + 3600;
    if (meta != NULL) {
        c->user_metadata = json_object();
        json_object_set_new(c->user_metadata, meta, json_string(name));
    }
    assert_non_null(c->email);
    assert_non_null(c->role);
}

static void claims_release(struct keel__claims *c)
{
    free(c->email);
    free(c->role);
    json_decref(c->user_metadata);
    memset(c, 0, sizeof *c);
}

static unsigned run_id;

/* A v4-shaped UUID unique to this run, n-th of its kind. */
static void make_sub(char out[37], unsigned kind, unsigned n)
{
    snprintf(out, 37, "%08x-%04x-4000-8000-%012x", run_id, kind & 0xffffu, n);
}

static void make_email(char *out, size_t len, const char *local, unsigned n)
{
    snprintf(out, len, "%s%u@r%08x.usersync.test", local, n, run_id);
}

/* Points the log at a fresh temporary file and returns its fd. */
static int log_capture(void)
{
    char path[] = "/tmp/test_usersync_log_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    keel__log_set_fd(fd);
    return fd;
}

/* Everything logged to fd so far, NUL-terminated; caller frees. */
static char *log_read(int fd)
{
    off_t end = lseek(fd, 0, SEEK_END);
    assert_true(end >= 0);
    char *buf = calloc(1, (size_t)end + 1);
    assert_non_null(buf);
    assert_int_equal(pread(fd, buf, (size_t)end, 0), end);
    return buf;
}

static void log_restore(int fd)
{
    keel__log_set_fd(2);
    close(fd);
}

static int log_quiet(void)
{
    int fd = open("/dev/null", O_WRONLY);
    assert_true(fd >= 0);
    keel__log_set_fd(fd);
    return fd;
}

/* ------------------------------------------------------------ no database */

/* user_metadata.role -> the role of a new user, as the replaced system mapped it. */
static void test_role_from_metadata(void **state)
{
    static const char *const cases[][2] = {
        {"{\"role\":\"free\"}", "free"},
        {"{\"role\":\"premium\"}", "premium"},
        {"{\"role\":\"standard\"}", "standard"},
        {"{\"role\":\"super_admin\"}", "super_admin"},
        {"{\"role\":\"superadmin\"}", "super_admin"},
        {"{\"role\":\"admin\"}", "free"},
        {"{\"role\":\"enterprise\"}", "free"},
        {"{\"role\":\"Premium\"}", "free"},
        {"{\"role\":7}", "free"},
        {"{}", "free"},
        {"[]", "free"},
    };
    (void)state;
    assert_string_equal(keel__role_from_metadata(NULL), "free");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *md = json_loads(cases[i][0], JSON_DECODE_ANY, NULL);
        assert_non_null(md);
        assert_string_equal(keel__role_from_metadata(md), cases[i][1]);
        json_decref(md);
    }
}

/* A stored role -> a role the frontend knows. */
static void test_role_public(void **state)
{
    static const char *const known[] = {"free",       "standard", "premium",
                                        "enterprise", "admin",    "super_admin"};
    (void)state;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        assert_string_equal(keel__role_public(known[i]), known[i]);
    assert_string_equal(keel__role_public("superadmin"), "super_admin");
    assert_string_equal(keel__role_public("user"), "free");
    assert_string_equal(keel__role_public("root"), "free");
    assert_string_equal(keel__role_public(""), "free");
    assert_string_equal(keel__role_public(NULL), "free");
}

static void test_conf_rejected(void **state)
{
    keel__usersync *us = (keel__usersync *)1;
    struct keel__usersync_conf bad[] = {
        {.ttl_s = -1, .max_entries = 10},
        {.ttl_s = 10, .max_entries = -1},
        {.ttl_s = 10, .max_entries = 10, .initial_credits = -5},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(keel__usersync_new(&bad[i], NULL, &us), KEEL_EINVAL);
    assert_int_equal(keel__usersync_new(NULL, NULL, &us), KEEL_EINVAL);
}

static void test_no_db_every_lookup_misses(void **state)
{
    struct keel__usersync_conf conf = {.ttl_s = 300, .max_entries = 1000, .initial_credits = 10};
    keel__usersync *us = NULL;
    struct arena a = {0};
    struct keel__claims c1, c2, c3;
    struct keel__principal p;
    struct keel__usersync_stats st;

    assert_int_equal(keel__usersync_new(&conf, NULL, &us), 0);
    claims_make(&c1, "0a1b2c3d-0000-4000-8000-000000000001", "ann@example.test", "full_name",
                "Ann Example");
    claims_make(&c2, "0a1b2c3d-0000-4000-8000-000000000002", "bob@example.test", "name", "Bob");
    claims_make(&c3, "0a1b2c3d-0000-4000-8000-000000000003", "", NULL, NULL);

    int fd = log_capture();
    for (int i = 0; i < 3; i++) {
        assert_int_equal(keel__usersync_resolve(us, &c1, NOW + i, arena_alloc, &a, &p), 0);
        assert_false(p.synced);
        assert_null(p.user_id);
        assert_string_equal(p.supabase_id, c1.sub);
        assert_string_equal(p.email, "ann@example.test");
        assert_string_equal(p.full_name, "Ann Example");
        assert_string_equal(p.role, "free");
        assert_string_equal(p.status, "active");
        assert_string_equal(p.tier, "free");
    }
    assert_int_equal(keel__usersync_resolve(us, &c2, NOW, arena_alloc, &a, &p), 0);
    assert_string_equal(p.full_name, "Bob");
    assert_int_equal(keel__usersync_resolve(us, &c3, NOW, arena_alloc, &a, &p), 0);
    assert_null(p.full_name);
    assert_string_equal(p.email, "");
    assert_string_equal(p.supabase_id, c3.sub);

    char *log = log_read(fd);
    log_restore(fd);
    assert_non_null(strstr(log, "info [usersync] SYNC-CACHE: Cache MISS for ann@example.test"));
    assert_non_null(strstr(log, "warn [usersync] user sync failed for ann@example.test: "
                                "no database configured; using token claims"));
    assert_null(strstr(log, "Cache HIT"));
    free(log);

    keel__usersync_stats(us, &st);
    assert_int_equal(st.hits, 0);
    assert_int_equal(st.misses, 5);
    assert_int_equal(st.sync_failures, 5);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.evictions, 0);
    assert_int_equal(keel__usersync_evict(us, c1.sub), 0);
    assert_int_equal(keel__usersync_evict(us, "ann@example.test"), 0);

    claims_release(&c1);
    claims_release(&c2);
    claims_release(&c3);
    arena_done(&a);
    keel__usersync_free(us);
}

static void test_alloc_failure_is_enomem(void **state)
{
    struct keel__usersync_conf conf = {.ttl_s = 300, .max_entries = 10};
    keel__usersync *us = NULL;
    struct arena a = {.fail = true};
    struct keel__claims c;
    struct keel__principal p;

    assert_int_equal(keel__usersync_new(&conf, NULL, &us), 0);
    claims_make(&c, "0a1b2c3d-0000-4000-8000-000000000009", "x@example.test", NULL, NULL);
    int fd = log_quiet();
    assert_int_equal(keel__usersync_resolve(us, &c, NOW, arena_alloc, &a, &p), KEEL_ENOMEM);
    log_restore(fd);
    claims_release(&c);
    arena_done(&a);
    keel__usersync_free(us);
}

/* A configured database that refuses connections: the request still gets a
 * principal from its claims, and nothing is cached. */
static void test_unreachable_db_falls_back(void **state)
{
    struct keel__db_conf dconf = {
        .conninfo = "host=127.0.0.1 port=1 dbname=none user=none connect_timeout=2",
        .pool_size = 2,
        .wait_ms = 2000,
        .connect_timeout_s = 2,
        .statement_timeout_ms = 2000,
        .lock_timeout_ms = 1000,
        .breaker_failures = 100,
        .breaker_open_ms = 1000,
    };
    struct keel__usersync_conf conf = {.ttl_s = 300, .max_entries = 100};
    keel__db *db = NULL;
    keel__usersync *us = NULL;
    struct arena a = {0};
    struct keel__claims c;
    struct keel__principal p;
    struct keel__usersync_stats st;

    assert_int_equal(keel__db_new(&dconf, &db), 0);
    assert_int_equal(keel__usersync_new(&conf, db, &us), 0);
    claims_make(&c, "0a1b2c3d-0000-4000-8000-00000000000a", "down@example.test", "name", "D");
    int fd = log_capture();
    for (int i = 0; i < 2; i++) {
        assert_int_equal(keel__usersync_resolve(us, &c, NOW, arena_alloc, &a, &p), 0);
        assert_false(p.synced);
        assert_null(p.user_id);
        assert_string_equal(p.email, "down@example.test");
        assert_string_equal(p.full_name, "D");
    }
    char *log = log_read(fd);
    log_restore(fd);
    assert_non_null(strstr(log, "user sync failed for down@example.test: "));
    assert_non_null(strstr(log, "; using token claims"));
    free(log);
    keel__usersync_stats(us, &st);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.sync_failures, 2);
    assert_int_equal(st.entries, 0);

    claims_release(&c);
    arena_done(&a);
    keel__usersync_free(us);
    keel__db_free(db);
}

/* ------------------------------------------------------------ real database */

static const char *db_url;
static PGconn *admin;

static int db_group_setup(void **state)
{
    db_url = getenv("KEEL_TEST_DATABASE_URL");
    if (db_url == NULL || db_url[0] == '\0')
        return 0;
    admin = PQconnectdb(db_url);
    if (PQstatus(admin) != CONNECTION_OK) {
        fprintf(stderr, "test_usersync: cannot connect to KEEL_TEST_DATABASE_URL: %s",
                PQerrorMessage(admin));
        return -1;
    }
    PGresult *r = PQexec(admin, "SELECT to_regclass('users') IS NOT NULL");
    bool have = PQresultStatus(r) == PGRES_TUPLES_OK && PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (!have) {
        const char *src = getenv("KEEL_SRCDIR");
        char dir[4096], err[512] = "";
        int applied = 0;
        snprintf(dir, sizeof dir, "%s/db/migrations", src ? src : ".");
        if (keel__db_migrate(db_url, dir, &applied, err, sizeof err) != 0) {
            fprintf(stderr, "test_usersync: migrating %s failed: %s\n", dir, err);
            return -1;
        }
    }
    return 0;
}

static int db_group_teardown(void **state)
{
    if (admin == NULL)
        return 0;
    char domain[64];
    snprintf(domain, sizeof domain, "%%@r%08x.usersync.test", run_id);
    const char *params[1] = {domain};
    PGresult *r = PQexecParams(admin, "DELETE FROM users WHERE email LIKE $1", 1, NULL, params,
                               NULL, NULL, 0);
    PQclear(r);
    PQfinish(admin);
    admin = NULL;
    return 0;
}

static bool need_db(void)
{
    if (admin != NULL)
        return true;
    print_message("skipped: KEEL_TEST_DATABASE_URL not set\n");
    return false;
}

/* The first column of the first row of a one-parameter query, as a long. */
static long db_long(const char *sql, const char *param)
{
    const char *params[1] = {param};
    PGresult *r = PQexecParams(admin, sql, param ? 1 : 0, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        fail_msg("query failed: %s: %s", sql, PQresultErrorMessage(r));
    long v = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

static char *db_text(const char *sql, const char *param)
{
    const char *params[1] = {param};
    PGresult *r = PQexecParams(admin, sql, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        fail_msg("query failed: %s: %s", sql, PQresultErrorMessage(r));
    char *v = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static void db_command(const char *sql, const char *p1, const char *p2)
{
    const char *params[2] = {p1, p2};
    int n = p2 ? 2 : p1 ? 1 : 0;
    PGresult *r = PQexecParams(admin, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("command failed: %s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

static keel__db *pool_open(int size)
{
    struct keel__db_conf dconf = {
        .conninfo = db_url,
        .pool_size = size,
        .wait_ms = 60000,
        .connect_timeout_s = 5,
        .statement_timeout_ms = 30000,
        .lock_timeout_ms = 20000,
        .breaker_failures = 1000,
        .breaker_open_ms = 1000,
    };
    keel__db *db = NULL;
    assert_int_equal(keel__db_new(&dconf, &db), 0);
    return db;
}

#define SQL_UPDATES "SELECT update_count FROM users WHERE supabase_user_id = $1"
#define SQL_ROWS_FOR_SUB "SELECT count(*) FROM users WHERE supabase_user_id = $1"

static void test_db_sync_then_hit_then_expiry(void **state)
{
    if (!need_db()) {
        skip();
        return;
    }
    keel__db *db = pool_open(2);
    struct keel__usersync_conf conf = {.ttl_s = 300, .max_entries = 1000, .initial_credits = 25};
    keel__usersync *us = NULL;
    struct arena a = {0};
    struct keel__claims c;
    struct keel__principal p;
    struct keel__usersync_stats st;
    char sub[37], email[128];

    assert_int_equal(keel__usersync_new(&conf, db, &us), 0);
    make_sub(sub, 1, 1);
    make_email(email, sizeof email, "first", 1);
    claims_make(&c, sub, email, "full_name", "First User");

    int fd = log_capture();
    keel__log_set_level(KEEL_LOG_DEBUG);
    assert_int_equal(keel__usersync_resolve(us, &c, NOW, arena_alloc, &a, &p), 0);
    assert_true(p.synced);
    assert_non_null(p.user_id);
    assert_string_equal(p.supabase_id, sub);
    assert_string_equal(p.email, email);
    assert_string_equal(p.full_name, "First User");
    assert_string_equal(p.role, "free");
    assert_string_equal(p.status, "active");
    assert_string_equal(p.tier, "free");
    char *user_id = strdup(p.user_id);

    assert_int_equal(db_long(SQL_ROWS_FOR_SUB, sub), 1);
    assert_int_equal(db_long("SELECT count(*) FROM credit_wallets WHERE user_id = $1", user_id), 1);
    assert_int_equal(db_long("SELECT balance FROM credit_wallets WHERE user_id = $1", user_id), 25);
    assert_int_equal(db_long("SELECT count(*) FROM credit_transactions"
                             " WHERE user_id = $1 AND kind = 'grant' AND amount = 25",
                             user_id),
                     1);
    long updates = db_long(SQL_UPDATES, sub);

    /* Within the TTL: a hit that touches nothing in the database. */
    arena_reset(&a);
    assert_int_equal(keel__usersync_resolve(us, &c, NOW + 299, arena_alloc, &a, &p), 0);
    assert_true(p.synced);
    assert_string_equal(p.user_id, user_id);
    assert_string_equal(p.email, email);
    assert_string_equal(p.full_name, "First User");
    assert_int_equal(db_long(SQL_UPDATES, sub), updates);
    keel__usersync_stats(us, &st);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.entries, 1);

    /* At the TTL: a miss that syncs again, without a second wallet or grant. */
    arena_reset(&a);
    assert_int_equal(keel__usersync_resolve(us, &c, NOW + 300, arena_alloc, &a, &p), 0);
    assert_string_equal(p.user_id, user_id);
    assert_int_equal(db_long(SQL_UPDATES, sub), updates + 1);
    assert_int_equal(db_long(SQL_ROWS_FOR_SUB, sub), 1);
    assert_int_equal(
        db_long("SELECT count(*) FROM credit_transactions WHERE user_id = $1", user_id), 1);
    keel__usersync_stats(us, &st);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.sync_failures, 0);
    assert_int_equal(st.entries, 1);

    /* The wall clock going back does not extend an entry's life. */
    arena_reset(&a);
    assert_int_equal(keel__usersync_resolve(us, &c, NOW - 10, arena_alloc, &a, &p), 0);
    keel__usersync_stats(us, &st);
    assert_int_equal(st.misses, 3);

    char *log = log_read(fd);
    keel__log_set_level(KEEL_LOG_INFO);
    log_restore(fd);
    char hit[256], miss[256];
    snprintf(hit, sizeof hit, "debug [usersync] SYNC-CACHE: Cache HIT for %s", email);
    snprintf(miss, sizeof miss, "info [usersync] SYNC-CACHE: Cache MISS for %s", email);
    assert_non_null(strstr(log, hit));
    assert_non_null(strstr(log, miss));
    assert_null(strstr(log, "sync failed"));
    free(log);

    free(user_id);
    claims_release(&c);
    arena_done(&a);
    keel__usersync_free(us);
    keel__db_free(db);
}

/* A user the cache has seen keeps its last known status (and role) while
 * the sync cannot run, so a suspension is not lifted by a database outage;
 * a user never seen is admitted on its claims, and the log says so. */
static void test_db_down_keeps_last_known_status(void **state)
{
    if (!need_db()) {
        skip();
        return;
    }
    keel__db *db = pool_open(2);
    struct keel__usersync_conf conf = {.ttl_s = 60, .max_entries = 100};
    keel__usersync *us = NULL;
    struct arena a = {0};
    struct keel__claims c, fresh;
    struct keel__principal p;
    char sub[37], email[128], sub2[37], email2[128];

    assert_int_equal(keel__usersync_new(&conf, db, &us), 0);
    make_sub(sub, 9, 1);
    make_email(email, sizeof email, "suspended", 1);
    claims_make(&c, sub, email, NULL, NULL);
    assert_int_equal(keel__usersync_resolve(us, &c, NOW, arena_alloc, &a, &p), 0);
    assert_string_equal(p.status, "active");
    db_command("UPDATE users SET status = 'suspended', role = 'admin' WHERE supabase_user_id = $1",
               sub, NULL);
    /* After the TTL the next request syncs and sees the suspension. */
    assert_int_equal(keel__usersync_resolve(us, &c, NOW + 61, arena_alloc, &a, &p), 0);
    assert_true(p.synced);
    assert_string_equal(p.status, "suspended");

    /* The database goes away; the entry expires. */
    keel__db_note_unreachable(db);
    int fd = log_capture();
    assert_int_equal(keel__usersync_resolve(us, &c, NOW + 200, arena_alloc, &a, &p), 0);
    assert_false(p.synced);
    assert_string_equal(p.status, "suspended");
    assert_string_equal(p.role, "admin");
    assert_string_equal(p.email, email);

    make_sub(sub2, 9, 2);
    make_email(email2, sizeof email2, "newcomer", 2);
    claims_make(&fresh, sub2, email2, NULL, NULL);
    assert_int_equal(keel__usersync_resolve(us, &fresh, NOW + 200, arena_alloc, &a, &p), 0);
    assert_false(p.synced);
    assert_string_equal(p.status, "active");
    char *log = log_read(fd);
    log_restore(fd);
    assert_non_null(strstr(log, "its last known status (suspended)"));
    assert_non_null(strstr(log, "never seen"));
    free(log);

    claims_release(&c);
    claims_release(&fresh);
    arena_done(&a);
    keel__usersync_free(us);
    keel__db_free(db);
}

static void test_db_links_existing_email(void **state)
{
    if (!need_db()) {
        skip();
        return;
    }
    keel__db *db = pool_open(2);
    struct keel__usersync_conf conf = {.ttl_s = 300, .max_entries = 100};
    keel__usersync *us = NULL;
    struct arena a = {0};
    struct keel__claims c;
    struct keel__principal p;
    char sub[37], email[128], stored[128];

    assert_int_equal(keel__usersync_new(&conf, db, &us), 0);
    make_sub(sub, 2, 1);
    make_email(email, sizeof email, "linkme", 1);
    /* The pre-existing row differs in case: the match is case-insensitive. */
    make_email(stored, sizeof stored, "LinkMe", 1);
    db_command("INSERT INTO users (email, full_name, role, subscription_tier)"
               " VALUES ($1, 'Legacy Name', 'admin', 'pro')",
               stored, NULL);
    char *old_id = db_text("SELECT id FROM users WHERE email = $1", stored);

    claims_make(&c, sub, email, "full_name", "Token Name");
    int fd = log_quiet();
    assert_int_equal(keel__usersync_resolve(us, &c, NOW, arena_alloc, &a, &p), 0);
    log_restore(fd);
    assert_true(p.synced);
    assert_string_equal(p.user_id, old_id);
    assert_string_equal(p.role, "admin");
    assert_string_equal(p.tier, "pro");
    assert_string_equal(p.full_name, "Legacy Name");
    assert_int_equal(db_long("SELECT count(*) FROM users WHERE lower(email) = lower($1)", email),
                     1);
    char *linked = db_text("SELECT supabase_user_id FROM users WHERE id = $1", old_id);
    assert_string_equal(linked, sub);

    free(linked);
    free(old_id);
    claims_release(&c);
    arena_done(&a);
    keel__usersync_free(us);
    keel__db_free(db);
}

static void test_db_evict_and_changes(void **state)
{
    if (!need_db()) {
        skip();
        return;
    }
    keel__db *db = pool_open(2);
    struct keel__usersync_conf conf = {.ttl_s = 300, .max_entries = 1000};
    keel__usersync *us = NULL;
    struct arena a = {0};
    struct keel__claims c1, c2;
    struct keel__principal p;
    struct keel__usersync_stats st;
    char sub1[37], sub2[37], email1[128], email2[128], upper[128];

    assert_int_equal(keel__usersync_new(&conf, db, &us), 0);
    make_sub(sub1, 3, 1);
    make_sub(sub2, 3, 2);
    make_email(email1, sizeof email1, "evict", 1);
    make_email(email2, sizeof email2, "evict", 2);
    claims_make(&c1, sub1, email1, NULL, NULL);
    claims_make(&c2, sub2, email2, NULL, NULL);
    int fd = log_quiet();

    assert_int_equal(keel__usersync_resolve(us, &c1, NOW, arena_alloc, &a, &p), 0);
    assert_int_equal(keel__usersync_resolve(us, &c2, NOW, arena_alloc, &a, &p), 0);
    keel__usersync_stats(us, &st);
    assert_int_equal(st.entries, 2);

    /* An admin suspends user 1 and evicts by email (any case). */
    db_command("UPDATE users SET status = 'suspended' WHERE supabase_user_id = $1", sub1, NULL);
    snprintf(upper, sizeof upper, "EVICT1@R%08X.USERSYNC.TEST", run_id);
    assert_int_equal(keel__usersync_evict(us, upper), 1);
    assert_int_equal(keel__usersync_evict(us, upper), 0);
    keel__usersync_stats(us, &st);
    assert_int_equal(st.entries, 1);

    assert_int_equal(keel__usersync_resolve(us, &c1, NOW + 1, arena_alloc, &a, &p), 0);
    assert_string_equal(p.status, "suspended");
    assert_int_equal(keel__usersync_resolve(us, &c2, NOW + 1, arena_alloc, &a, &p), 0);
    keel__usersync_stats(us, &st);
    assert_int_equal(st.misses, 3);
    assert_int_equal(st.hits, 1);

    /* Eviction by Supabase id, given in upper case. */
    char sub_upper[37];
    for (int i = 0; i < 37; i++)
        sub_upper[i] = (sub2[i] >= 'a' && sub2[i] <= 'f') ? (char)(sub2[i] - 32) : sub2[i];
    assert_int_equal(keel__usersync_evict(us, sub_upper), 1);
    assert_int_equal(keel__usersync_evict(us, sub2), 0);
    assert_int_equal(keel__usersync_evict(us, "nobody@example.test"), 0);
    assert_int_equal(keel__usersync_resolve(us, &c2, NOW + 2, arena_alloc, &a, &p), 0);
    keel__usersync_stats(us, &st);
    assert_int_equal(st.misses, 4);

    /* A token carrying a new email is not served the cached old one: it
     * syncs, and the row follows the token. */
    char email3[128];
    make_email(email3, sizeof email3, "renamed", 2);
    free(c2.email);
    c2.email = strdup(email3);
    assert_int_equal(keel__usersync_resolve(us, &c2, NOW + 3, arena_alloc, &a, &p), 0);
    assert_string_equal(p.email, email3);
    keel__usersync_stats(us, &st);
    assert_int_equal(st.misses, 5);
    /* The new entry replaced the old one for the same user. */
    assert_int_equal(st.entries, 2);
    char *stored = db_text("SELECT email FROM users WHERE supabase_user_id = $1", sub2);
    assert_string_equal(stored, email3);
    free(stored);

    /* ... unless another user owns that email: the row keeps its own. */
    free(c2.email);
    c2.email = strdup(email1);
    assert_int_equal(keel__usersync_resolve(us, &c2, NOW + 4, arena_alloc, &a, &p), 0);
    assert_true(p.synced);
    assert_string_equal(p.email, email3);
    keel__usersync_stats(us, &st);
    assert_int_equal(st.sync_failures, 0);

    log_restore(fd);
    claims_release(&c1);
    claims_release(&c2);
    arena_done(&a);
    keel__usersync_free(us);
    keel__db_free(db);
}

static void test_db_lru_eviction(void **state)
{
    if (!need_db()) {
        skip();
        return;
    }
    keel__db *db = pool_open(2);
    /* Under 32 entries the cache is one shard, so LRU order is exact. */
    struct keel__usersync_conf conf = {.ttl_s = 300, .max_entries = 4};
    keel__usersync *us = NULL;
    struct arena a = {0};
    struct keel__claims c[5];
    struct keel__principal p;
    struct keel__usersync_stats st;

    assert_int_equal(keel__usersync_new(&conf, db, &us), 0);
    for (unsigned i = 0; i < 5; i++) {
        char sub[37], email[128];
        make_sub(sub, 4, i);
        make_email(email, sizeof email, "lru", i);
        claims_make(&c[i], sub, email, NULL, NULL);
    }
    int fd = log_quiet();
    for (int i = 0; i < 4; i++)
        assert_int_equal(keel__usersync_resolve(us, &c[i], NOW, arena_alloc, &a, &p), 0);
    /* Touch 0, so 1 is now the least recently used. */
    assert_int_equal(keel__usersync_resolve(us, &c[0], NOW, arena_alloc, &a, &p), 0);
    assert_int_equal(keel__usersync_resolve(us, &c[4], NOW, arena_alloc, &a, &p), 0);
    keel__usersync_stats(us, &st);
    assert_int_equal(st.misses, 5);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.entries, 4);

    /* 0, 2, 3, 4 are still cached. */
    for (int i = 0; i < 5; i++)
        if (i != 1)
            assert_int_equal(keel__usersync_resolve(us, &c[i], NOW, arena_alloc, &a, &p), 0);
    keel__usersync_stats(us, &st);
    assert_int_equal(st.hits, 5);
    assert_int_equal(st.misses, 5);

    /* 1 was evicted: a miss, which in turn evicts the LRU entry (0). */
    assert_int_equal(keel__usersync_resolve(us, &c[1], NOW, arena_alloc, &a, &p), 0);
    assert_true(p.synced);
    keel__usersync_stats(us, &st);
    assert_int_equal(st.misses, 6);
    assert_int_equal(st.evictions, 2);
    assert_int_equal(st.entries, 4);
    assert_int_equal(keel__usersync_resolve(us, &c[0], NOW, arena_alloc, &a, &p), 0);
    keel__usersync_stats(us, &st);
    assert_int_equal(st.misses, 7);
    log_restore(fd);

    for (int i = 0; i < 5; i++)
        claims_release(&c[i]);
    arena_done(&a);
    keel__usersync_free(us);
    keel__db_free(db);
}

/* ------------------------------------------------------------ threads */

struct race {
    keel__usersync *us;
    const struct keel__claims *claims;
    pthread_barrier_t *start;
    char user_id[64];
    bool synced;
    int rc;
};

static void *race_main(void *arg)
{
    struct race *r = arg;
    struct arena a = {0};
    struct keel__principal p;
    pthread_barrier_wait(r->start);
    r->rc = keel__usersync_resolve(r->us, r->claims, NOW, arena_alloc, &a, &p);
    if (r->rc == 0) {
        r->synced = p.synced;
        snprintf(r->user_id, sizeof r->user_id, "%s", p.user_id ? p.user_id : "");
    }
    arena_done(&a);
    return NULL;
}

/* Runs THREADS first requests for one user at once; returns the user_id
 * they all agreed on (caller frees). */
static char *race_first_request(keel__db *db, const struct keel__claims *c, long credits)
{
    struct keel__usersync_conf conf = {.ttl_s = 300,
                                       .max_entries = 1000,
                                       .initial_credits = credits};
    keel__usersync *us = NULL;
    pthread_barrier_t start;
    pthread_t tid[THREADS];
    static struct race r[THREADS];

    assert_int_equal(keel__usersync_new(&conf, db, &us), 0);
    pthread_barrier_init(&start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        r[i] = (struct race){.us = us, .claims = c, .start = &start};
        assert_int_equal(pthread_create(&tid[i], NULL, race_main, &r[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(tid[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(r[i].rc, 0);
        assert_true(r[i].synced);
        assert_string_equal(r[i].user_id, r[0].user_id);
    }
    struct keel__usersync_stats st;
    keel__usersync_stats(us, &st);
    assert_int_equal(st.hits + st.misses, THREADS);
    assert_int_equal(st.sync_failures, 0);
    /* However many threads missed at once, the user is cached once. */
    assert_int_equal(st.entries, 1);
    keel__usersync_free(us);
    return strdup(r[0].user_id);
}

static void test_db_concurrent_first_requests(void **state)
{
    if (!need_db()) {
        skip();
        return;
    }
    keel__db *db = pool_open(16);
    struct keel__claims c;
    char sub[37], email[128], stored[128];
    int fd = log_quiet();

    /* A brand new user: one row, one wallet, one grant. */
    make_sub(sub, 5, 1);
    make_email(email, sizeof email, "race", 1);
    claims_make(&c, sub, email, "name", "Racer");
    char *id = race_first_request(db, &c, 7);
    assert_int_equal(db_long(SQL_ROWS_FOR_SUB, sub), 1);
    assert_int_equal(db_long("SELECT count(*) FROM users WHERE lower(email) = lower($1)", email),
                     1);
    assert_int_equal(db_long("SELECT count(*) FROM credit_wallets WHERE user_id = $1", id), 1);
    assert_int_equal(db_long("SELECT count(*) FROM credit_transactions WHERE user_id = $1", id), 1);
    free(id);
    claims_release(&c);

    /* A legacy row to link: every thread ends on that row. */
    make_sub(sub, 5, 2);
    make_email(email, sizeof email, "racelink", 2);
    make_email(stored, sizeof stored, "RaceLink", 2);
    db_command("INSERT INTO users (email) VALUES ($1)", stored, NULL);
    char *old_id = db_text("SELECT id FROM users WHERE email = $1", stored);
    claims_make(&c, sub, email, NULL, NULL);
    id = race_first_request(db, &c, 0);
    assert_string_equal(id, old_id);
    assert_int_equal(db_long("SELECT count(*) FROM users WHERE lower(email) = lower($1)", email),
                     1);
    assert_int_equal(db_long(SQL_ROWS_FOR_SUB, sub), 1);
    assert_int_equal(db_long("SELECT count(*) FROM credit_wallets WHERE user_id = $1", id), 1);
    assert_int_equal(db_long("SELECT count(*) FROM credit_transactions WHERE user_id = $1", id), 0);
    free(id);
    free(old_id);
    claims_release(&c);

    log_restore(fd);
    keel__db_free(db);
}

struct blocked_resolve {
    keel__usersync *us;
    const struct keel__claims *claims;
    struct keel__principal p;
    struct arena a;
    int rc;
};

static void *blocked_resolve_main(void *arg)
{
    struct blocked_resolve *b = arg;
    b->rc = keel__usersync_resolve(b->us, b->claims, NOW, arena_alloc, &b->a, &b->p);
    return NULL;
}

/*
 * A legacy row for the same email is being inserted while the user's first
 * request syncs: the sync's insert waits on the email index, fails with a
 * unique violation once the other transaction commits, and the single retry
 * then links that row.  The test waits until the sync really is blocked.
 */
static void test_db_retry_after_email_race(void **state)
{
    if (!need_db()) {
        skip();
        return;
    }
    keel__db *db = pool_open(2);
    struct keel__usersync_conf conf = {.ttl_s = 300, .max_entries = 100};
    struct blocked_resolve b = {0};
    struct keel__claims c;
    struct keel__usersync_stats st;
    char sub[37], email[128];
    pthread_t tid;

    assert_int_equal(keel__usersync_new(&conf, db, &b.us), 0);
    make_sub(sub, 7, 1);
    make_email(email, sizeof email, "blocked", 1);
    claims_make(&c, sub, email, NULL, NULL);
    b.claims = &c;

    PGconn *other = PQconnectdb(db_url);
    assert_int_equal(PQstatus(other), CONNECTION_OK);
    PGresult *r = PQexec(other, "BEGIN");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    const char *params[1] = {email};
    r = PQexecParams(other, "INSERT INTO users (email) VALUES ($1) RETURNING id", 1, NULL, params,
                     NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    char *legacy_id = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);

    int fd = log_quiet();
    assert_int_equal(pthread_create(&tid, NULL, blocked_resolve_main, &b), 0);
    bool blocked = false;
    for (int i = 0; i < 3000 && !blocked; i++) {
        blocked = db_long("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                          " AND query LIKE 'WITH known AS%'",
                          NULL) > 0;
        if (!blocked)
            usleep(10000);
    }
    r = PQexec(other, "COMMIT");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    PQfinish(other);
    pthread_join(tid, NULL);
    log_restore(fd);
    if (!blocked)
        fail_msg("the sync never waited on the uncommitted legacy row");

    assert_int_equal(b.rc, 0);
    assert_true(b.p.synced);
    assert_string_equal(b.p.user_id, legacy_id);
    keel__usersync_stats(b.us, &st);
    assert_int_equal(st.sync_failures, 0);
    assert_int_equal(db_long("SELECT count(*) FROM users WHERE lower(email) = lower($1)", email),
                     1);
    assert_int_equal(db_long(SQL_ROWS_FOR_SUB, sub), 1);

    free(legacy_id);
    claims_release(&c);
    arena_done(&b.a);
    keel__usersync_free(b.us);
    keel__db_free(db);
}

#define HAMMER_USERS 200
#define HAMMER_OPS 400

struct hammer {
    keel__usersync *us;
    struct keel__claims *claims;
    char (*ids)[64];
    pthread_barrier_t *start;
    unsigned seed;
    unsigned long calls, wrong, unsynced, failed;
    char first_error[256];
};

static void hammer_wrong(struct hammer *h, const char *what, unsigned user)
{
    if (h->wrong++ == 0)
        snprintf(h->first_error, sizeof h->first_error, "user %u: %s", user, what);
}

static void *hammer_main(void *arg)
{
    struct hammer *h = arg;
    struct arena a = {0};
    struct keel__principal p;

    pthread_barrier_wait(h->start);
    for (int i = 0; i < HAMMER_OPS; i++) {
        unsigned u = (unsigned)rand_r(&h->seed) % HAMMER_USERS;
        struct keel__claims *c = &h->claims[u];
        if (rand_r(&h->seed) % 64 == 0) {
            /* Evictions race with lookups and syncs of the same users. */
            (void)keel__usersync_evict(h->us, (i & 1) ? c->sub : c->email);
            continue;
        }
        int rc = keel__usersync_resolve(h->us, c, NOW, arena_alloc, &a, &p);
        h->calls++;
        if (rc != 0) {
            h->failed++;
            continue;
        }
        if (!p.synced)
            h->unsynced++;
        if (p.supabase_id == NULL || strcmp(p.supabase_id, c->sub) != 0)
            hammer_wrong(h, "supabase_id differs", u);
        else if (p.email == NULL || strcmp(p.email, c->email) != 0)
            hammer_wrong(h, "email differs", u);
        else if (p.user_id == NULL || strcmp(p.user_id, h->ids[u]) != 0)
            hammer_wrong(h, "user_id differs", u);
        arena_reset(&a);
    }
    arena_done(&a);
    return NULL;
}

/* THREADS threads resolve a mix of cached, evicted and never-seen users
 * through a cache smaller than the user set: every principal must belong to
 * the user asked for. */
static void test_db_hammer_threads(void **state)
{
    if (!need_db()) {
        skip();
        return;
    }
    keel__db *db = pool_open(8);
    struct keel__usersync_conf conf = {.ttl_s = 300, .max_entries = 128, .initial_credits = 1};
    keel__usersync *us = NULL;
    static struct keel__claims claims[HAMMER_USERS];
    static char ids[HAMMER_USERS][64];
    static struct hammer h[THREADS];
    pthread_t tid[THREADS];
    pthread_barrier_t start;
    struct arena a = {0};
    struct keel__principal p;
    struct keel__usersync_stats st;

    assert_int_equal(keel__usersync_new(&conf, db, &us), 0);
    int fd = log_quiet();
    /* Every user's id is learnt up front so each principal can be checked;
     * the even ones go through the cache under test. */
    for (unsigned u = 0; u < HAMMER_USERS; u++) {
        char sub[37], email[128];
        make_sub(sub, 6, u);
        make_email(email, sizeof email, "hammer", u);
        claims_make(&claims[u], sub, email, "full_name", "Hammer");
        if (u % 2 == 0) {
            assert_int_equal(keel__usersync_resolve(us, &claims[u], NOW, arena_alloc, &a, &p), 0);
            assert_true(p.synced);
            snprintf(ids[u], sizeof ids[u], "%s", p.user_id);
        }
    }
    /* The odd users get their rows through a second, cache-less instance, so
     * their ids are known but this cache has never seen them: the threads'
     * first requests for them all miss at once. */
    {
        keel__usersync *other = NULL;
        struct keel__usersync_conf oc = {.ttl_s = 300, .max_entries = 0};
        assert_int_equal(keel__usersync_new(&oc, db, &other), 0);
        for (unsigned u = 1; u < HAMMER_USERS; u += 2) {
            assert_int_equal(keel__usersync_resolve(other, &claims[u], NOW, arena_alloc, &a, &p),
                             0);
            assert_true(p.synced);
            snprintf(ids[u], sizeof ids[u], "%s", p.user_id);
        }
        keel__usersync_free(other);
    }
    arena_done(&a);
    keel__usersync_stats(us, &st);
    uint64_t before = st.hits + st.misses;

    pthread_barrier_init(&start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        h[i] = (struct hammer){.us = us,
                               .claims = claims,
                               .ids = ids,
                               .start = &start,
                               .seed = run_id ^ (unsigned)(i * 2654435761u)};
        assert_int_equal(pthread_create(&tid[i], NULL, hammer_main, &h[i]), 0);
    }
    unsigned long calls = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(tid[i], NULL);
        calls += h[i].calls;
    }
    pthread_barrier_destroy(&start);
    log_restore(fd);

    for (int i = 0; i < THREADS; i++) {
        if (h[i].wrong != 0)
            fail_msg("thread %d: %lu wrong principals, first: %s", i, h[i].wrong, h[i].first_error);
        assert_int_equal(h[i].failed, 0);
        assert_int_equal(h[i].unsynced, 0);
    }
    keel__usersync_stats(us, &st);
    assert_int_equal(st.hits + st.misses - before, calls);
    assert_true(st.hits > 0);
    assert_true(st.misses > 0);
    assert_true(st.evictions > 0);
    assert_int_equal(st.sync_failures, 0);
    assert_true(st.entries <= 128);

    char pattern[64];
    snprintf(pattern, sizeof pattern, "hammer%%@r%08x.usersync.test", run_id);
    assert_int_equal(db_long("SELECT count(*) FROM users WHERE email LIKE $1", pattern),
                     HAMMER_USERS);
    assert_int_equal(db_long("SELECT count(*) FROM credit_wallets w JOIN users u"
                             " ON u.id = w.user_id WHERE u.email LIKE $1",
                             pattern),
                     HAMMER_USERS);

    for (int u = 0; u < HAMMER_USERS; u++)
        claims_release(&claims[u]);
    keel__usersync_free(us);
    keel__db_free(db);
}

int main(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    run_id = (unsigned)ts.tv_sec ^ ((unsigned)ts.tv_nsec << 8) ^ ((unsigned)getpid() << 16);

    const struct CMUnitTest local[] = {
        cmocka_unit_test(test_role_from_metadata),
        cmocka_unit_test(test_role_public),
        cmocka_unit_test(test_conf_rejected),
        cmocka_unit_test(test_no_db_every_lookup_misses),
        cmocka_unit_test(test_alloc_failure_is_enomem),
        cmocka_unit_test(test_unreachable_db_falls_back),
    };
    const struct CMUnitTest with_db[] = {
        cmocka_unit_test(test_db_sync_then_hit_then_expiry),
        cmocka_unit_test(test_db_links_existing_email),
        cmocka_unit_test(test_db_down_keeps_last_known_status),
        cmocka_unit_test(test_db_evict_and_changes),
        cmocka_unit_test(test_db_lru_eviction),
        cmocka_unit_test(test_db_concurrent_first_requests),
        cmocka_unit_test(test_db_retry_after_email_race),
        cmocka_unit_test(test_db_hammer_threads),
    };
    int failed = cmocka_run_group_tests_name("usersync", local, NULL, NULL);
    failed += cmocka_run_group_tests_name("usersync_db", with_db, db_group_setup,
                                          db_group_teardown);
    return failed;
}
