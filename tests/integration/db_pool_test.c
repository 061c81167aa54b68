/*
 * Integration test of the connection pool, the breaker and migrations
 * against a real PostgreSQL.
 *
 *   KEEL_TEST_DATABASE_URL  conninfo of a database whose role may CREATE
 *                           DATABASE (the test works in scratch databases
 *                           it creates and drops)
 *   KEEL_TEST_PGDATA        data directory and bin directory of that
 *   KEEL_TEST_PGBIN         server, for the stop/start part (skipped when
 *                           unset); as root, pg_ctl runs as the data
 *                           directory's owner
 *   KEEL_SRCDIR             source tree (for db/migrations); default "."
 *
 * Exits 77 (skipped) without KEEL_TEST_DATABASE_URL.  The stop/start part
 * stops the server, so do not run this next to other users of it.
 * Nothing here asserts on durations: waits are bounded only so that a bug
 * ends the run instead of hanging it.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include <keel/error.h>

#include "data/breaker.h"
#include "data/db.h"
#include "data/migrate.h"
#include "util/log.h"

static int checks;
static const char *pgdata, *pgbin, *root_url;
static bool server_stopped;
static char scratch[2][64]; /* databases this run created */

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ------------------------------------------------------------ plain libpq */

static PGconn *plain_connect(const char *conninfo)
{
    PGconn *pg = PQconnectdb(conninfo);
    CHECK(PQstatus(pg) == CONNECTION_OK, "connect %s: %s", conninfo, PQerrorMessage(pg));
    return pg;
}

static void plain_exec(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    CHECK(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s",
          sql, PQresultErrorMessage(r));
    PQclear(r);
}

static long plain_long(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    CHECK(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1, "%s: %s", sql,
          PQresultErrorMessage(r));
    long v = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

/* The conninfo of base with its database replaced by dbname. */
static char *conninfo_for(const char *base, const char *dbname)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(base, &perr);
    CHECK(opts != NULL, "parse %s: %s", base, perr ? perr : "?");
    size_t cap = 4096, n = 0;
    char *out = malloc(cap);
    CHECK(out != NULL, "oom");
    out[0] = '\0';
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        const char *v = strcmp(o->keyword, "dbname") == 0 ? dbname : o->val;
        if (v == NULL || v[0] == '\0')
            continue;
        n += (size_t)snprintf(out + n, cap - n, "%s='", o->keyword);
        for (const char *p = v; *p != '\0' && n + 4 < cap; p++) {
            if (*p == '\'' || *p == '\\')
                out[n++] = '\\';
            out[n++] = *p;
        }
        n += (size_t)snprintf(out + n, cap - n, "' ");
        CHECK(n + 64 < cap, "conninfo too long");
    }
    if (strstr(out, "dbname=") == NULL)
        n += (size_t)snprintf(out + n, cap - n, "dbname='%s'", dbname);
    PQconninfoFree(opts);
    return out;
}

/* ------------------------------------------------------------ server control */

/* Runs pg_ctl ACTION; its exit status (-1 when it could not run).  No
 * CHECK here: the exit handler calls this too. */
static int pg_ctl_run(const char *action)
{
    char ctl[1024];
    snprintf(ctl, sizeof ctl, "%s/pg_ctl", pgbin);
    struct stat st;
    if (stat(pgdata, &st) != 0)
        return -1;
    char logfile[1100];
    snprintf(logfile, sizeof logfile, "%s/../db_pool_test.log", pgdata);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (geteuid() == 0 && st.st_uid != 0) {
            /* pg_ctl refuses to run as root. */
            struct passwd *pw = getpwuid(st.st_uid);
            if (pw != NULL)
                execl("/usr/sbin/runuser", "runuser", "-u", pw->pw_name, "--", ctl, action, "-s",
                      "-D", pgdata, "-w", "-m", "fast", "-l", logfile, (char *)NULL);
            _exit(127);
        }
        execl(ctl, "pg_ctl", action, "-s", "-D", pgdata, "-w", "-m", "fast", "-l", logfile,
              (char *)NULL);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
        return -1;
    return WEXITSTATUS(status);
}

static void pg_ctl(const char *action)
{
    int rc = pg_ctl_run(action);
    CHECK(rc == 0, "pg_ctl %s -D %s failed (%d)", action, pgdata, rc);
    server_stopped = strcmp(action, "stop") == 0;
}

/* Never leave the server down or scratch databases behind, also when a
 * check failed half-way. */
static void cleanup_on_exit(void)
{
    if (server_stopped) {
        server_stopped = false;
        if (pg_ctl_run("start") != 0)
            fprintf(stderr, "could not restart the server in %s\n", pgdata);
    }
    PGconn *pg = PQconnectdb(root_url);
    for (int i = 0; i < 2 && PQstatus(pg) == CONNECTION_OK; i++) {
        if (scratch[i][0] == '\0')
            continue;
        char sql[256];
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", scratch[i]);
        PQclear(PQexec(pg, sql));
    }
    PQfinish(pg);
}

/* ------------------------------------------------------------ pool helpers */

static keel__db *pool_new(const char *conninfo, int size, int wait_ms, int stmt_ms, int lock_ms,
                          int failures, int open_ms)
{
    struct keel__db_conf conf = {
        .conninfo = conninfo,
        .pool_size = size,
        .wait_ms = wait_ms,
        .connect_timeout_s = 5,
        .statement_timeout_ms = stmt_ms,
        .lock_timeout_ms = lock_ms,
        .breaker_failures = failures,
        .breaker_open_ms = open_ms,
    };
    keel__db *db = NULL;
    CHECK(keel__db_new(&conf, &db) == 0 && db != NULL, "keel__db_new");
    return db;
}

/* Runs one statement on its own checkout; returns the KEEL code. */
static int pool_query(keel__db *db, const char *sql, long *value, char *err, size_t errlen)
{
    keel__db_conn *c;
    int rc = keel__db_acquire(db, &c, err, errlen);
    if (rc != 0)
        return rc;
    PGresult *res;
    rc = keel__db_exec(db, c, sql, 0, NULL, &res, err, errlen);
    if (rc == 0) {
        if (value != NULL && PQntuples(res) == 1)
            *value = strtol(PQgetvalue(res, 0, 0), NULL, 10);
        PQclear(res);
    }
    keel__db_release(db, c);
    return rc;
}

static int exec_on(keel__db *db, keel__db_conn *c, const char *sql, char *err, size_t errlen)
{
    PGresult *res;
    int rc = keel__db_exec(db, c, sql, 0, NULL, &res, err, errlen);
    if (rc == 0)
        PQclear(res);
    return rc;
}

static struct keel__db_stats stats_of(keel__db *db)
{
    struct keel__db_stats s;
    keel__db_stats(db, &s);
    return s;
}

/* ------------------------------------------------------------ migrations */

struct migrate_job {
    const char *conninfo, *dir;
    int rc, applied;
    char err[512];
};

static void *migrate_thread(void *arg)
{
    struct migrate_job *j = arg;
    j->rc = keel__db_migrate(j->conninfo, j->dir, &j->applied, j->err, sizeof j->err);
    return NULL;
}

static void test_migrations(const char *conninfo, const char *dir)
{
    char err[512];
    int behind = -1;
    CHECK(keel__db_schema_behind(conninfo, dir, &behind, err, sizeof err) == 0, "%s", err);
    CHECK(behind >= 1, "a fresh database is behind by every file, got %d", behind);

    /* Two migrators at once: the advisory lock makes each file apply once. */
    struct migrate_job jobs[2] = {{.conninfo = conninfo, .dir = dir},
                                  {.conninfo = conninfo, .dir = dir}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&t[i], NULL, migrate_thread, &jobs[i]) == 0, "pthread_create");
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    CHECK(jobs[0].rc == 0, "migrate: %s", jobs[0].err);
    CHECK(jobs[1].rc == 0, "migrate: %s", jobs[1].err);
    CHECK(jobs[0].applied + jobs[1].applied == behind, "applied %d + %d, expected %d",
          jobs[0].applied, jobs[1].applied, behind);

    int applied = -1;
    CHECK(keel__db_migrate(conninfo, dir, &applied, err, sizeof err) == 0, "%s", err);
    CHECK(applied == 0, "second run applied %d", applied);
    CHECK(keel__db_schema_behind(conninfo, dir, &behind, err, sizeof err) == 0, "%s", err);
    CHECK(behind == 0, "behind %d after migrating", behind);

    PGconn *pg = plain_connect(conninfo);
    CHECK(plain_long(
              pg, "SELECT count(*) FROM schema_migrations WHERE version = 1 AND name = 'init'") ==
              1,
          "0001 recorded");
    CHECK(plain_long(pg, "SELECT count(*) FROM pg_tables WHERE tablename = 'credit_wallets'") == 1,
          "0001 applied");
    PQfinish(pg);
    printf("ok - migrations apply once under concurrency and are idempotent\n");
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "create %s: %s", path, strerror(errno));
    fputs(text, f);
    fclose(f);
}

static void test_failed_migration(const char *conninfo)
{
    char dir[] = "/tmp/keel-migrations-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    write_file(dir, "0001_first.sql", "CREATE TABLE first_t (id int);\n");
    write_file(dir, "0002_broken.sql",
               "CREATE TABLE second_t (id int);\n-- a comment\nCREATE TABLEX oops;\n");
    write_file(dir, "0003_never.sql", "CREATE TABLE third_t (id int);\n");
    write_file(dir, "README.md", "not a migration\n");
    write_file(dir, "4_bad_name.sql", "not a migration either\n");

    char err[512];
    int applied = -1, behind = -1;
    CHECK(keel__db_schema_behind(conninfo, dir, &behind, err, sizeof err) == 0, "%s", err);
    CHECK(behind == 3, "three migration files, behind %d", behind);
    int rc = keel__db_migrate(conninfo, dir, &applied, err, sizeof err);
    CHECK(rc == KEEL_EDB_BUG, "broken migration gives DB_BUG, got %d (%s)", rc, err);
    CHECK(applied == 1, "only the first applied, got %d", applied);
    CHECK(strstr(err, "0002_broken.sql") != NULL && strstr(err, "line 3") != NULL,
          "error names the file and line: %s", err);
    CHECK(keel__db_schema_behind(conninfo, dir, &behind, err, sizeof err) == 0, "%s", err);
    CHECK(behind == 2, "behind %d", behind);

    PGconn *pg = plain_connect(conninfo);
    CHECK(plain_long(pg, "SELECT count(*) FROM pg_tables WHERE tablename = 'first_t'") == 1,
          "first applied");
    CHECK(plain_long(pg, "SELECT count(*) FROM pg_tables WHERE tablename = 'second_t'") == 0,
          "the broken file rolled back whole");
    CHECK(plain_long(pg, "SELECT count(*) FROM schema_migrations") == 1, "one row recorded");
    PQfinish(pg);

    /* A file that commits on its own would escape the recording
     * transaction; it is refused. */
    write_file(dir, "0002_broken.sql", "CREATE TABLE second_t (id int);\nCOMMIT;\n");
    rc = keel__db_migrate(conninfo, dir, &applied, err, sizeof err);
    CHECK(rc == KEEL_ECONFIG && strstr(err, "0002_broken.sql") != NULL, "got %d: %s", rc, err);

    char path[1024];
    const char *names[] = {"0001_first.sql", "0002_broken.sql", "0003_never.sql", "README.md",
                           "4_bad_name.sql"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);

    rc = keel__db_migrate(conninfo, "/nonexistent/keel", &applied, err, sizeof err);
    CHECK(rc == KEEL_EIO, "missing directory gives EIO, got %d", rc);
    printf("ok - a failing migration rolls back whole and names file and line\n");
}

/* ------------------------------------------------------------ classification */

static void test_classify(keel__db *db)
{
    CHECK(keel__db_classify(NULL) == KEEL_EDB_UNAVAILABLE, "NULL");
    const char *unavailable[] = {"08006", "08001", "57P01", "57P02", "57P03",
                                 "53300", "53200", "57014", "55P03"};
    for (size_t i = 0; i < sizeof unavailable / sizeof *unavailable; i++)
        CHECK(keel__db_classify(unavailable[i]) == KEEL_EDB_UNAVAILABLE, "%s", unavailable[i]);
    const char *conflict[] = {"23505", "23503", "23514", "40001", "40P01"};
    for (size_t i = 0; i < sizeof conflict / sizeof *conflict; i++)
        CHECK(keel__db_classify(conflict[i]) == KEEL_EDB_CONFLICT, "%s", conflict[i]);
    const char *badreq[] = {"22P02", "22003", "22012", "42P02"};
    for (size_t i = 0; i < sizeof badreq / sizeof *badreq; i++)
        CHECK(keel__db_classify(badreq[i]) == KEEL_EDB_BADREQ, "%s", badreq[i]);
    const char *bug[] = {"42601", "42P01", "42703", "0A000", "57P04", "XX000", "", "123"};
    for (size_t i = 0; i < sizeof bug / sizeof *bug; i++)
        CHECK(keel__db_classify(bug[i]) == KEEL_EDB_BUG, "%s", bug[i]);

    /* The same classes from the real server. */
    char err[512];
    keel__db_conn *c;
    CHECK(keel__db_acquire(db, &c, err, sizeof err) == 0, "%s", err);
    CHECK(exec_on(db, c, "CREATE TEMP TABLE uniq (k int PRIMARY KEY)", err, sizeof err) == 0, "%s",
          err);
    CHECK(exec_on(db, c, "INSERT INTO uniq VALUES (1)", err, sizeof err) == 0, "%s", err);
    int rc = exec_on(db, c, "INSERT INTO uniq VALUES (1)", err, sizeof err);
    CHECK(rc == KEEL_EDB_CONFLICT && strstr(err, "23505") != NULL, "duplicate key: %d %s", rc, err);
    const char *const bad_uuid[] = {"not-a-uuid"};
    PGresult *res;
    rc = keel__db_exec(db, c, "SELECT $1::uuid", 1, bad_uuid, &res, err, sizeof err);
    CHECK(rc == KEEL_EDB_BADREQ && strstr(err, "22P02") != NULL, "bad uuid: %d %s", rc, err);
    rc = exec_on(db, c, "SELEC 1", err, sizeof err);
    CHECK(rc == KEEL_EDB_BUG && strstr(err, "42601") != NULL, "syntax error: %d %s", rc, err);
    rc = exec_on(db, c, "SELECT 1/0", err, sizeof err);
    CHECK(rc == KEEL_EDB_BADREQ, "division by zero: %d %s", rc, err);
    /* None of that is the breaker's business, and the connection is fine. */
    CHECK(keel__db_up(db), "breaker still closed");
    CHECK(exec_on(db, c, "SELECT 1", err, sizeof err) == 0, "%s", err);
    CHECK(PQtransactionStatus(keel__db_conn_pg(c)) == PQTRANS_IDLE, "idle");
    keel__db_release(db, c);
    printf("ok - errors are classified by SQLSTATE\n");
}

/* ------------------------------------------------------------ statement cache */

static void test_statement_cache(keel__db *db)
{
    char err[512];
    keel__db_conn *c;
    CHECK(keel__db_acquire(db, &c, err, sizeof err) == 0, "%s", err);
    PGresult *res;
    const char *count_sql = "SELECT count(*) FROM pg_prepared_statements";
    CHECK(keel__db_exec(db, c, count_sql, 0, NULL, &res, err, sizeof err) == 0, "%s", err);
    long before = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);

    /* Ten runs of one text prepare it once. */
    for (int i = 0; i < 10; i++) {
        char v[16];
        snprintf(v, sizeof v, "%d", i);
        const char *const p[] = {v};
        CHECK(keel__db_exec(db, c, "SELECT $1::int * 2", 1, p, &res, err, sizeof err) == 0, "%s",
              err);
        CHECK(strtol(PQgetvalue(res, 0, 0), NULL, 10) == i * 2, "value");
        PQclear(res);
    }
    CHECK(keel__db_exec(db, c, count_sql, 0, NULL, &res, err, sizeof err) == 0, "%s", err);
    long after = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    CHECK(after == before + 1, "one new prepared statement, %ld -> %ld", before, after);

    /* Many distinct texts: the cache stops at its bound and the rest still
     * run, unprepared. */
    for (int i = 0; i < 300; i++) {
        char sql[64];
        snprintf(sql, sizeof sql, "SELECT %d AS n", i);
        CHECK(keel__db_exec(db, c, sql, 0, NULL, &res, err, sizeof err) == 0, "%s", err);
        CHECK(strtol(PQgetvalue(res, 0, 0), NULL, 10) == i, "value");
        PQclear(res);
    }
    CHECK(keel__db_exec(db, c, count_sql, 0, NULL, &res, err, sizeof err) == 0, "%s", err);
    after = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    CHECK(after == 128, "statement cache bounded at 128, server holds %ld", after);

    /* Prepared statements survive a rolled-back transaction (they are not
     * transactional), so the cache stays truthful. */
    CHECK(exec_on(db, c, "BEGIN", err, sizeof err) == 0, "%s", err);
    CHECK(exec_on(db, c, "SELECT 'inside a transaction'", err, sizeof err) == 0, "%s", err);
    CHECK(exec_on(db, c, "ROLLBACK", err, sizeof err) == 0, "%s", err);
    CHECK(exec_on(db, c, "SELECT 'inside a transaction'", err, sizeof err) == 0, "%s", err);
    keel__db_release(db, c);
    printf("ok - statements are prepared once per connection, cache bounded\n");
}

/* ------------------------------------------------------------ concurrency */

struct worker {
    keel__db *db;
    int iterations, ok, failed, id;
    char err[256];
};

static void *worker_thread(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < w->iterations; i++) {
        char a[16], b[16];
        snprintf(a, sizeof a, "%d", w->id);
        snprintf(b, sizeof b, "%d", i);
        const char *const p[] = {a, b};
        keel__db_conn *c;
        char err[256];
        int rc = keel__db_acquire(w->db, &c, err, sizeof err);
        if (rc == 0) {
            PGresult *res;
            rc = keel__db_exec(w->db, c, "SELECT $1::int * 1000 + $2::int", 2, p, &res, err,
                               sizeof err);
            if (rc == 0) {
                if (strtol(PQgetvalue(res, 0, 0), NULL, 10) != w->id * 1000 + i)
                    rc = -999;
                PQclear(res);
            }
            keel__db_release(w->db, c);
        }
        if (rc == 0) {
            w->ok++;
        } else {
            w->failed++;
            snprintf(w->err, sizeof w->err, "%s", err);
        }
    }
    return NULL;
}

static void test_many_threads(const char *conninfo)
{
    enum { THREADS = 32, ITER = 200 };
    keel__db *db = pool_new(conninfo, 4, 30000, 5000, 1000, 5, 2000);
    pthread_t t[THREADS];
    struct worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){.db = db, .iterations = ITER, .id = i};
        CHECK(pthread_create(&t[i], NULL, worker_thread, &w[i]) == 0, "pthread_create");
    }
    int ok = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        CHECK(w[i].failed == 0, "thread %d: %d failures, last: %s", i, w[i].failed, w[i].err);
        ok += w[i].ok;
    }
    CHECK(ok == THREADS * ITER, "%d of %d succeeded", ok, THREADS * ITER);
    struct keel__db_stats s = stats_of(db);
    CHECK(s.in_use == 0 && s.idle == 4 && s.size == 4, "in_use %d idle %d", s.in_use, s.idle);
    CHECK(s.connects == 4 && s.connect_failures == 0 && s.discarded == 0,
          "connects %llu failures %llu", (unsigned long long)s.connects,
          (unsigned long long)s.connect_failures);
    CHECK(s.wait_timeouts == 0, "no wait timed out");
    keel__db_free(db);
    printf("ok - %d threads x %d queries on a pool of 4 (%llu waits)\n", THREADS, ITER,
           (unsigned long long)s.waits);
}

struct holder {
    keel__db *db;
    pthread_barrier_t *held;
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    bool *release;
    int acquire_rc; /* written before the barrier */
    int exec_rc;    /* read only after join */
};

static void *holder_thread(void *arg)
{
    struct holder *h = arg;
    keel__db_conn *c;
    char err[256];
    h->acquire_rc = keel__db_acquire(h->db, &c, err, sizeof err);
    pthread_barrier_wait(h->held);
    if (h->acquire_rc != 0)
        return NULL;
    h->exec_rc = exec_on(h->db, c, "SELECT pg_sleep(0.3)", err, sizeof err);
    pthread_mutex_lock(h->mu);
    while (!*h->release)
        pthread_cond_wait(h->cv, h->mu);
    pthread_mutex_unlock(h->mu);
    keel__db_release(h->db, c);
    return NULL;
}

struct waiter {
    keel__db *db;
    int rc;
    char err[256];
};

static void *waiter_thread(void *arg)
{
    struct waiter *w = arg;
    keel__db_conn *c = NULL;
    w->rc = keel__db_acquire(w->db, &c, w->err, sizeof w->err);
    if (w->rc == 0)
        keel__db_release(w->db, c);
    return NULL;
}

static void test_wait_bound(const char *conninfo)
{
    enum { HOLDERS = 4, WAITERS = 8 };
    keel__db *db = pool_new(conninfo, HOLDERS, 50, 5000, 1000, 3, 2000);
    pthread_barrier_t held;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    bool release = false;
    pthread_barrier_init(&held, NULL, HOLDERS + 1);
    pthread_t ht[HOLDERS], wt[WAITERS];
    struct holder h[HOLDERS];
    for (int i = 0; i < HOLDERS; i++) {
        h[i] = (struct holder){.db = db, .held = &held, .mu = &mu, .cv = &cv, .release = &release};
        CHECK(pthread_create(&ht[i], NULL, holder_thread, &h[i]) == 0, "pthread_create");
    }
    pthread_barrier_wait(&held);
    for (int i = 0; i < HOLDERS; i++)
        CHECK(h[i].acquire_rc == 0, "holder %d could not acquire", i);

    /* Every connection is held until we say so: each waiter must give up. */
    struct waiter w[WAITERS];
    for (int i = 0; i < WAITERS; i++) {
        w[i] = (struct waiter){.db = db};
        CHECK(pthread_create(&wt[i], NULL, waiter_thread, &w[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < WAITERS; i++) {
        pthread_join(wt[i], NULL);
        CHECK(w[i].rc == KEEL_EDB_UNAVAILABLE, "waiter %d got %d", i, w[i].rc);
        CHECK(strstr(w[i].err, "no connection became free within 50 ms") != NULL, "message: %s",
              w[i].err);
    }
    struct keel__db_stats s = stats_of(db);
    CHECK(s.wait_timeouts == WAITERS && s.waits == WAITERS, "waits %llu timeouts %llu",
          (unsigned long long)s.waits, (unsigned long long)s.wait_timeouts);
    CHECK(s.in_use == HOLDERS && s.idle == 0, "in_use %d idle %d", s.in_use, s.idle);
    /* A busy pool is not an unavailable database. */
    CHECK(keel__db_up(db) && s.breaker_to_open == 0, "breaker untouched");

    pthread_mutex_lock(&mu);
    release = true;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < HOLDERS; i++) {
        pthread_join(ht[i], NULL);
        CHECK(h[i].exec_rc == 0, "holder %d's pg_sleep failed", i);
    }
    char err[256];
    CHECK(pool_query(db, "SELECT 1", NULL, err, sizeof err) == 0, "%s", err);
    s = stats_of(db);
    CHECK(s.in_use == 0 && s.idle == HOLDERS, "all back: in_use %d idle %d", s.in_use, s.idle);
    pthread_barrier_destroy(&held);
    keel__db_free(db);
    printf("ok - a full pool turns callers away after wait_ms with a clear message\n");
}

/* Waiters are served in the order they came, and a newcomer does not take a
 * slot past them: the tail of a request's wait on a full pool is bounded by
 * the requests queued before it. */
struct queued {
    keel__db *db;
    atomic_int *served;
    int order; /* 0-based position it was served in */
    int rc;
};

static void *queued_thread(void *arg)
{
    struct queued *q = arg;
    keel__db_conn *c = NULL;
    char err[256];
    q->rc = keel__db_acquire(q->db, &c, err, sizeof err);
    if (q->rc == 0) {
        q->order = atomic_fetch_add(q->served, 1);
        keel__db_release(q->db, c);
    }
    return NULL;
}

static void test_wait_order(const char *conninfo)
{
    enum { WAITERS = 6 };
    keel__db *db = pool_new(conninfo, 1, 20000, 5000, 1000, 3, 2000);
    keel__db_conn *held = NULL;
    char err[256];
    CHECK(keel__db_acquire(db, &held, err, sizeof err) == 0, "%s", err);
    atomic_int served = 0;
    struct queued q[WAITERS];
    pthread_t t[WAITERS];
    for (int i = 0; i < WAITERS; i++) {
        q[i] = (struct queued){.db = db, .served = &served, .order = -1};
        CHECK(pthread_create(&t[i], NULL, queued_thread, &q[i]) == 0, "pthread_create");
        /* Queued (counted under the pool's lock as it joins the line)
         * before the next one starts. */
        while (stats_of(db).waits < (uint64_t)i + 1)
            usleep(1000);
    }
    /* Give the slot back and ask again at once: the waiters come first. */
    keel__db_release(db, held);
    held = NULL;
    CHECK(keel__db_acquire(db, &held, err, sizeof err) == 0, "%s", err);
    int mine = atomic_fetch_add(&served, 1);
    keel__db_release(db, held);
    for (int i = 0; i < WAITERS; i++) {
        pthread_join(t[i], NULL);
        CHECK(q[i].rc == 0, "waiter %d got %d", i, q[i].rc);
        CHECK(q[i].order == i, "waiter %d was served %d-th", i, q[i].order);
    }
    CHECK(mine == WAITERS, "the newcomer was served %d-th, before %d waiters", mine,
          WAITERS - mine);
    keel__db_free(db);
    printf("ok - a full pool serves its waiters in order, newcomers behind them\n");
}

/* ------------------------------------------------------------ terminated backends */

static void wait_gone(PGconn *admin, const int *pids, int n)
{
    char sql[512];
    int len = snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE pid IN (");
    for (int i = 0; i < n; i++)
        len += snprintf(sql + len, sizeof sql - (size_t)len, "%s%d", i ? "," : "", pids[i]);
    snprintf(sql + len, sizeof sql - (size_t)len, ")");
    for (int round = 0; round < 1000; round++) {
        if (plain_long(admin, sql) == 0)
            return;
        sleep_ms(10);
    }
    CHECK(false, "terminated backends did not go away");
}

static void terminate(PGconn *admin, const int *pids, int n)
{
    for (int i = 0; i < n; i++) {
        char sql[64];
        snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)::int", pids[i]);
        CHECK(plain_long(admin, sql) == 1, "terminate %d", pids[i]);
    }
    wait_gone(admin, pids, n);
}

struct killer {
    const char *conninfo;
    int pid;
    bool killed;
};

/* Terminates k->pid once it is running a pg_sleep. */
static void *killer_thread(void *arg)
{
    struct killer *k = arg;
    PGconn *pg = plain_connect(k->conninfo);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
             "WHERE pid = %d AND state = 'active' AND query LIKE '%%pg_sleep%%'",
             k->pid);
    for (int round = 0; round < 1000 && !k->killed; round++) {
        k->killed = plain_long(pg, sql) == 1;
        if (!k->killed)
            sleep_ms(10);
    }
    PQfinish(pg);
    return NULL;
}

static void test_terminated_backends(const char *conninfo, PGconn *admin)
{
    enum { N = 4 };
    keel__db *db = pool_new(conninfo, N, 5000, 120000, 1000, 3, 2000);
    char err[256];
    keel__db_conn *c[N];
    int pids[N];

    /* Warm every connection (and prepare "SELECT 1" on each). */
    for (int i = 0; i < N; i++) {
        CHECK(keel__db_acquire(db, &c[i], err, sizeof err) == 0, "%s", err);
        CHECK(exec_on(db, c[i], "SELECT 1", err, sizeof err) == 0, "%s", err);
        pids[i] = PQbackendPID(keel__db_conn_pg(c[i]));
    }
    for (int i = 0; i < N; i++)
        keel__db_release(db, c[i]);

    /* 1. Idle pooled connections killed: acquire notices and reconnects. */
    terminate(admin, pids, N);
    struct keel__db_stats before = stats_of(db);
    for (int i = 0; i < N; i++) {
        CHECK(keel__db_acquire(db, &c[i], err, sizeof err) == 0, "%s", err);
        CHECK(exec_on(db, c[i], "SELECT 1", err, sizeof err) == 0, "after terminate: %s", err);
        int pid = PQbackendPID(keel__db_conn_pg(c[i]));
        for (int j = 0; j < N; j++)
            CHECK(pid != pids[j], "a new backend");
    }
    struct keel__db_stats after = stats_of(db);
    CHECK(after.connects == before.connects + N && after.discarded == before.discarded + N,
          "each dead connection replaced once: connects %llu->%llu",
          (unsigned long long)before.connects, (unsigned long long)after.connects);
    CHECK(keel__db_up(db), "breaker closed");

    /* 2. Killed while checked out, before the checkout's first statement:
     * exec replaces the connection and runs the statement, cached or not. */
    for (int i = 0; i < N; i++)
        keel__db_release(db, c[i]);
    for (int i = 0; i < N; i++) {
        CHECK(keel__db_acquire(db, &c[i], err, sizeof err) == 0, "%s", err);
        pids[i] = PQbackendPID(keel__db_conn_pg(c[i]));
    }
    terminate(admin, pids, N);
    for (int i = 0; i < N; i++) {
        const char *sql = i % 2 ? "SELECT 1" : "SELECT 'not prepared yet'";
        CHECK(exec_on(db, c[i], sql, err, sizeof err) == 0, "retry after terminate: %s", err);
        CHECK(PQbackendPID(keel__db_conn_pg(c[i])) != pids[i], "reconnected");
    }
    for (int i = 0; i < N; i++)
        keel__db_release(db, c[i]);

    /* 3. Killed after a statement of the checkout succeeded: that one is
     * not retried (the caller's session state is gone), the failure is
     * UNAVAILABLE, and the connection is replaced on release. */
    CHECK(keel__db_acquire(db, &c[0], err, sizeof err) == 0, "%s", err);
    CHECK(exec_on(db, c[0], "SELECT 1", err, sizeof err) == 0, "%s", err);
    pids[0] = PQbackendPID(keel__db_conn_pg(c[0]));
    terminate(admin, pids, 1);
    int rc = exec_on(db, c[0], "SELECT 1", err, sizeof err);
    CHECK(rc == KEEL_EDB_UNAVAILABLE, "got %d: %s", rc, err);
    rc = exec_on(db, c[0], "SELECT 1", err, sizeof err);
    CHECK(rc == KEEL_EDB_UNAVAILABLE && strstr(err, "lost earlier") != NULL, "stays failed: %d %s",
          rc, err);
    before = stats_of(db);
    keel__db_release(db, c[0]);
    after = stats_of(db);
    CHECK(after.discarded == before.discarded + 1, "discarded on release");
    CHECK(pool_query(db, "SELECT 1", NULL, err, sizeof err) == 0, "%s", err);

    /* 4. Killed while its first statement runs: the server reports 57P01,
     * which proves the statement was aborted, so it is retried.  The
     * statement sleeps only on the old backend, so the retry is quick. */
    CHECK(keel__db_acquire(db, &c[0], err, sizeof err) == 0, "%s", err);
    struct killer k = {.conninfo = conninfo, .pid = PQbackendPID(keel__db_conn_pg(c[0]))};
    pthread_t kt;
    CHECK(pthread_create(&kt, NULL, killer_thread, &k) == 0, "pthread_create");
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT pg_sleep(CASE WHEN pg_backend_pid() = %d THEN 60 ELSE 0 END)",
             k.pid);
    rc = exec_on(db, c[0], sql, err, sizeof err);
    pthread_join(kt, NULL);
    CHECK(k.killed, "the killer found the statement running");
    CHECK(rc == 0, "killed mid-statement (57P01) is retried: %d %s", rc, err);
    CHECK(PQbackendPID(keel__db_conn_pg(c[0])) != k.pid, "on a new connection");
    keel__db_release(db, c[0]);

    after = stats_of(db);
    CHECK(keel__db_up(db) && after.breaker_to_open == 0, "breaker never opened");
    CHECK(after.in_use == 0, "nothing leaked");
    keel__db_free(db);
    printf("ok - terminated backends are replaced without failing callers\n");
}

/* ------------------------------------------------------------ timeouts */

static void test_timeouts(const char *conninfo, PGconn *admin)
{
    keel__db *db = pool_new(conninfo, 2, 5000, 200, 100, 5, 2000);
    char err[256];
    keel__db_conn *c;

    /* Outside a transaction. */
    CHECK(keel__db_acquire(db, &c, err, sizeof err) == 0, "%s", err);
    int pid = PQbackendPID(keel__db_conn_pg(c));
    int rc = exec_on(db, c, "SELECT pg_sleep(5)", err, sizeof err);
    CHECK(rc == KEEL_EDB_UNAVAILABLE && strstr(err, "57014") != NULL, "statement timeout: %d %s",
          rc, err);
    CHECK(PQtransactionStatus(keel__db_conn_pg(c)) == PQTRANS_IDLE, "idle after the timeout");
    CHECK(exec_on(db, c, "SELECT 1", err, sizeof err) == 0, "same connection works: %s", err);
    keel__db_release(db, c);

    /* Inside a transaction: release rolls back and keeps the connection. */
    struct keel__db_stats before = stats_of(db);
    CHECK(keel__db_acquire(db, &c, err, sizeof err) == 0, "%s", err);
    CHECK(PQbackendPID(keel__db_conn_pg(c)) == pid, "the pooled connection came back");
    CHECK(exec_on(db, c, "BEGIN", err, sizeof err) == 0, "%s", err);
    rc = exec_on(db, c, "SELECT pg_sleep(5)", err, sizeof err);
    CHECK(rc == KEEL_EDB_UNAVAILABLE && strstr(err, "57014") != NULL, "%d %s", rc, err);
    CHECK(PQtransactionStatus(keel__db_conn_pg(c)) == PQTRANS_INERROR, "aborted transaction");
    keel__db_release(db, c);
    CHECK(keel__db_acquire(db, &c, err, sizeof err) == 0, "%s", err);
    CHECK(PQbackendPID(keel__db_conn_pg(c)) == pid, "rolled back and pooled, not replaced");
    CHECK(PQtransactionStatus(keel__db_conn_pg(c)) == PQTRANS_IDLE, "clean");
    CHECK(exec_on(db, c, "SELECT 1", err, sizeof err) == 0, "%s", err);
    keel__db_release(db, c);

    /* An open transaction left behind is rolled back too, its effects gone. */
    CHECK(keel__db_acquire(db, &c, err, sizeof err) == 0, "%s", err);
    CHECK(exec_on(db, c, "BEGIN", err, sizeof err) == 0, "%s", err);
    CHECK(exec_on(db, c, "INSERT INTO users (email) VALUES ('left-open@example.com')", err,
                  sizeof err) == 0,
          "%s", err);
    keel__db_release(db, c);
    CHECK(plain_long(admin, "SELECT count(*) FROM users WHERE email = 'left-open@example.com'") ==
              0,
          "rolled back");
    struct keel__db_stats after = stats_of(db);
    CHECK(after.discarded == before.discarded, "nothing discarded");

    /* lock_timeout: a row locked elsewhere fails fast with 55P03. */
    plain_exec(admin, "INSERT INTO users (email) VALUES ('locked@example.com')");
    plain_exec(admin, "BEGIN");
    plain_exec(admin, "SELECT * FROM users WHERE email = 'locked@example.com' FOR UPDATE");
    CHECK(keel__db_acquire(db, &c, err, sizeof err) == 0, "%s", err);
    rc = exec_on(db, c, "UPDATE users SET full_name = 'x' WHERE email = 'locked@example.com'", err,
                 sizeof err);
    CHECK(rc == KEEL_EDB_UNAVAILABLE && strstr(err, "55P03") != NULL, "lock timeout: %d %s", rc,
          err);
    keel__db_release(db, c);
    plain_exec(admin, "ROLLBACK");

    CHECK(pool_query(db, "SELECT 1", NULL, err, sizeof err) == 0, "%s", err);
    CHECK(keel__db_up(db), "a few timeouts below the threshold leave the breaker closed");
    keel__db_free(db);
    printf("ok - statement and lock timeouts are UNAVAILABLE and leave the connection clean\n");
}

/* ------------------------------------------------------------ server down */

static void test_server_down(const char *conninfo)
{
    enum { THRESHOLD = 3 };
    keel__db *db = pool_new(conninfo, 4, 1000, 5000, 1000, THRESHOLD, 2000);
    char err[256];
    keel__db_conn *c[4];
    for (int i = 0; i < 4; i++) {
        CHECK(keel__db_acquire(db, &c[i], err, sizeof err) == 0, "%s", err);
        CHECK(exec_on(db, c[i], "SELECT 1", err, sizeof err) == 0, "%s", err);
    }
    for (int i = 0; i < 4; i++)
        keel__db_release(db, c[i]);

    pg_ctl("stop");

    /* Each call that reaches the network fails once; THRESHOLD of them
     * open the breaker. */
    int calls = 0;
    while (keel__db_up(db)) {
        CHECK(calls < THRESHOLD, "breaker still closed after %d failures", calls);
        int rc = pool_query(db, "SELECT 1", NULL, err, sizeof err);
        CHECK(rc == KEEL_EDB_UNAVAILABLE, "server down: %d %s", rc, err);
        calls++;
    }
    CHECK(calls == THRESHOLD, "opened after %d calls", calls);
    struct keel__db_stats s = stats_of(db);
    CHECK(s.breaker_state == KEEL__BREAKER_OPEN && s.breaker_to_open == 1, "state %d",
          s.breaker_state);

    /* While open: refused without a connection attempt. */
    uint64_t connects = s.connects;
    for (int i = 0; i < 100; i++) {
        int rc = keel__db_acquire(db, &c[0], err, sizeof err);
        CHECK(rc == KEEL_EDB_UNAVAILABLE && strstr(err, "circuit breaker open") != NULL, "%d %s",
              rc, err);
    }
    s = stats_of(db);
    CHECK(s.connects == connects, "no connect attempt while open: %llu -> %llu",
          (unsigned long long)connects, (unsigned long long)s.connects);
    CHECK(s.breaker_state == KEEL__BREAKER_OPEN && !keel__db_up(db), "still open");

    /* The timer's probe against a stopped server reopens it. */
    uint64_t half = s.breaker_to_half_open;
    for (int round = 0; round < 600 && stats_of(db).breaker_to_half_open == half; round++) {
        keel__db_tick(db);
        sleep_ms(50);
    }
    s = stats_of(db);
    CHECK(s.breaker_to_half_open == half + 1 && s.breaker_state == KEEL__BREAKER_OPEN &&
              s.breaker_to_open == 2,
          "failed probe reopens: half %llu state %d", (unsigned long long)s.breaker_to_half_open,
          s.breaker_state);
    CHECK(s.connects == connects, "the probe is a ping, not a pool connection");

    pg_ctl("start");

    /* With no traffic at all, the timer closes the breaker. */
    for (int round = 0; round < 1200 && !keel__db_up(db); round++) {
        keel__db_tick(db);
        sleep_ms(50);
    }
    CHECK(keel__db_up(db), "tick closed the breaker");
    s = stats_of(db);
    CHECK(s.breaker_state == KEEL__BREAKER_CLOSED && s.breaker_to_closed == 1, "closed once");

    /* The pool's stale connections are replaced as they are used. */
    for (int i = 0; i < 4; i++) {
        CHECK(keel__db_acquire(db, &c[i], err, sizeof err) == 0, "after restart: %s", err);
        CHECK(exec_on(db, c[i], "SELECT 1", err, sizeof err) == 0, "after restart: %s", err);
    }
    for (int i = 0; i < 4; i++)
        keel__db_release(db, c[i]);
    for (int i = 0; i < 20; i++)
        CHECK(pool_query(db, "SELECT 1", NULL, err, sizeof err) == 0, "%s", err);
    keel__db_free(db);
    printf("ok - server stop opens the breaker, no I/O while open, tick closes it after start\n");
}

/* ------------------------------------------------------------ main */

static void test_bad_config(void)
{
    struct keel__db_conf conf = {.conninfo = "host=localhost port=notaport' x", .pool_size = 2};
    keel__db *db = NULL;
    CHECK(keel__db_new(&conf, &db) == KEEL_ECONFIG && db == NULL, "bad conninfo refused");
    conf.conninfo = "postgresql://u@h/db";
    conf.pool_size = 0;
    CHECK(keel__db_new(&conf, &db) == KEEL_EINVAL, "pool size 0 refused");
    /* Lazy: an unreachable database does not fail creation. */
    conf.conninfo = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2";
    conf.pool_size = 2;
    conf.breaker_failures = 2;
    conf.breaker_open_ms = 60000;
    CHECK(keel__db_new(&conf, &db) == 0, "lazy");
    char err[256];
    keel__db_conn *c;
    CHECK(keel__db_acquire(db, &c, err, sizeof err) == KEEL_EDB_UNAVAILABLE &&
              strstr(err, "cannot connect"),
          "%s", err);
    keel__db_free(db);
    printf("ok - configuration is checked, connections are lazy\n");
}

int main(void)
{
    const char *url = getenv("KEEL_TEST_DATABASE_URL");
    if (url == NULL || url[0] == '\0') {
        printf("SKIP: KEEL_TEST_DATABASE_URL is not set\n");
        return 77;
    }
    pgdata = getenv("KEEL_TEST_PGDATA");
    pgbin = getenv("KEEL_TEST_PGBIN");
    const char *srcdir = getenv("KEEL_SRCDIR");
    char dir[2048];
    snprintf(dir, sizeof dir, "%s/db/migrations", srcdir ? srcdir : ".");
    keel__log_set_level(getenv("KEEL_TEST_VERBOSE") ? KEEL_LOG_DEBUG : KEEL_LOG_ERROR);
    root_url = url;

    char sql[160];
    PGconn *root = plain_connect(url);
    for (int i = 0; i < 2; i++) {
        snprintf(scratch[i], sizeof scratch[i], "keel_pool_test_%ld_%d", (long)getpid(), i);
        snprintf(sql, sizeof sql, "CREATE DATABASE %s", scratch[i]);
        plain_exec(root, sql);
    }
    PQfinish(root);
    atexit(cleanup_on_exit);
    char *conninfo = conninfo_for(url, scratch[0]);
    char *conninfo_b = conninfo_for(url, scratch[1]);

    test_bad_config();
    test_migrations(conninfo, dir);
    test_failed_migration(conninfo_b);

    PGconn *admin = plain_connect(conninfo);
    keel__db *db = pool_new(conninfo, 2, 5000, 5000, 1000, 5, 2000);
    test_classify(db);
    test_statement_cache(db);
    keel__db_free(db);
    test_many_threads(conninfo);
    test_wait_bound(conninfo);
    test_wait_order(conninfo);
    test_terminated_backends(conninfo, admin);
    test_timeouts(conninfo, admin);
    PQfinish(admin);

    if (pgdata != NULL && pgbin != NULL)
        test_server_down(conninfo);
    else
        printf("skip - server stop/start (KEEL_TEST_PGDATA and KEEL_TEST_PGBIN not set)\n");

    free(conninfo);
    free(conninfo_b);
    printf("all %d checks passed\n", checks);
    return 0;
}
