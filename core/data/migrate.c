#include "config.h"

#include "data/migrate.h"

#include <dirent.h>
#include <stdbool.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <libpq-fe.h>

#include <keel/error.h>

#include "data/db.h"
#include "util/file.h"
#include "util/log.h"
#include "util/text.h"

/*
 * Schema migrations: db/migrations/NNNN_name.sql, applied in file-name order.
 * Each file runs in its own transaction together with the row that records
 * it, so a file is either fully applied and recorded or not at all.  Every
 * such transaction first takes a transaction-scoped advisory lock, so two
 * keelds started at once apply each file exactly once: the second waits,
 * then sees the first's row and skips the file.
 *
 * A plugin's own migrations (its manifest's "migrations" directory) follow
 * the same rules under the same lock; they are recorded per plugin in
 * plugin_migrations(plugin, version, name), so their numbers never collide
 * with the core's or another plugin's.
 */

/* An arbitrary constant ("keelmig" in ASCII) naming keel's advisory lock. */
#define MIGRATE_LOCK_SQL "SELECT pg_advisory_xact_lock(30229308793252199)"
#define MIGRATION_MAX_BYTES (16 * 1024 * 1024)
#define MIGRATIONS_MAX 9999
#define MIGRATION_NAME_MAX 128

struct migration {
    int version;
    char file[MIGRATION_NAME_MAX];
    char name[MIGRATION_NAME_MAX]; /* the file name without "NNNN_" and ".sql" */
};

/* ^[0-9]{4}_[a-z0-9_]+\.sql$ */
static bool migration_file_name(const char *n)
{
    size_t len = strlen(n);
    if (len < 10 || len >= MIGRATION_NAME_MAX || strcmp(n + len - 4, ".sql") != 0 || n[4] != '_')
        return false;
    for (int i = 0; i < 4; i++)
        if (n[i] < '0' || n[i] > '9')
            return false;
    for (size_t i = 5; i < len - 4; i++)
        if (!((n[i] >= 'a' && n[i] <= 'z') || (n[i] >= '0' && n[i] <= '9') || n[i] == '_'))
            return false;
    return true;
}

static int by_file(const void *a, const void *b)
{
    return strcmp(((const struct migration *)a)->file, ((const struct migration *)b)->file);
}

/* Lists dir's migrations in order; *out is the caller's to free. */
static int list_migrations(const char *dir, struct migration **out, int *count, char *err,
                           size_t errlen)
{
    *out = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (d == NULL) {
        keel__set_err(err, errlen, "cannot open migrations directory %s: %s", dir, strerror(errno));
        return KEEL_EIO;
    }
    struct migration *list = NULL;
    int n = 0, cap = 0, rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!migration_file_name(de->d_name))
            continue;
        if (n == MIGRATIONS_MAX) {
            keel__set_err(err, errlen, "more than %d migrations in %s", MIGRATIONS_MAX, dir);
            rc = KEEL_ETOOBIG;
            goto out;
        }
        if (n == cap) {
            int ncap = cap ? cap * 2 : 16;
            struct migration *grown = realloc(list, (size_t)ncap * sizeof *list);
            if (grown == NULL) {
                rc = KEEL_ENOMEM;
                goto out;
            }
            list = grown;
            cap = ncap;
        }
        struct migration *m = &list[n++];
        size_t len = strlen(de->d_name);
        memcpy(m->file, de->d_name, len + 1);
        memcpy(m->name, de->d_name + 5, len - 9);
        m->name[len - 9] = '\0';
        m->version = (de->d_name[0] - '0') * 1000 + (de->d_name[1] - '0') * 100 +
                     (de->d_name[2] - '0') * 10 + (de->d_name[3] - '0');
    }
    qsort(list, (size_t)n, sizeof *list, by_file);
    for (int i = 1; i < n; i++) {
        if (list[i].version == list[i - 1].version) {
            keel__set_err(err, errlen, "migrations %s and %s share version %d", list[i - 1].file,
                          list[i].file, list[i].version);
            rc = KEEL_ECONFIG;
            goto out;
        }
    }
out:
    closedir(d);
    if (rc != 0) {
        free(list);
        return rc;
    }
    *out = list;
    *count = n;
    return 0;
}

/* Reads a whole migration file as one NUL-terminated string. */
static int read_file(const char *dir, const char *file, char **out, char *err, size_t errlen)
{
    *out = NULL;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path) {
        keel__set_err(err, errlen, "path too long: %s/%s", dir, file);
        return KEEL_ETOOBIG;
    }
    size_t len;
    int rc = keel__file_read(path, MIGRATION_MAX_BYTES, out, &len, err, errlen);
    if (rc == 0 && strlen(*out) != len) {
        free(*out);
        *out = NULL;
        keel__set_err(err, errlen, "%s: NUL byte in the file", path);
        rc = KEEL_EIO;
    }
    return rc;
}

static void migrate_notice(void *arg, const PGresult *res)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
    keel__trim_newlines(msg, 1);
    keel__log(KEEL_LOG_DEBUG, "migrate", "%s", msg);
}

static PGconn *migrate_connect(const char *conninfo, char *err, size_t errlen)
{
    /* The defaults come before the conninfo so that it can override them. */
    const char *const keywords[] = {"application_name", "connect_timeout", "dbname", NULL};
    const char *const values[] = {"keeld-migrate", "10", conninfo ? conninfo : "", NULL};
    PGconn *pg = PQconnectdbParams(keywords, values, 1);
    if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", pg ? PQerrorMessage(pg) : "out of memory");
        keel__trim_newlines(msg, 1);
        keel__set_err(err, errlen, "cannot connect to the database: %s", msg);
        PQfinish(pg);
        return NULL;
    }
    PQsetNoticeReceiver(pg, migrate_notice, NULL);
    return pg;
}

/* The 1-based line of a 1-based character position in text. */
static int line_of(const char *text, long position)
{
    int line = 1;
    long chars = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p != '\0'; p++) {
        if ((*p & 0xC0) != 0x80 && ++chars >= position)
            break;
        if (*p == '\n')
            line++;
    }
    return line;
}

/* Turns a failed result into an error code and message; consumes res. */
static int sql_failure(PGconn *pg, PGresult *res, const char *what, const char *text, char *err,
                       size_t errlen)
{
    const char *sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *pos = res ? PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION) : NULL;
    char msg[512];
    if (primary == NULL) {
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(pg));
        keel__trim_newlines(msg, 1);
        primary = msg;
    }
    char where[32] = "";
    if (pos != NULL && text != NULL) {
        long p = strtol(pos, NULL, 10);
        if (p > 0)
            snprintf(where, sizeof where, " at line %d", line_of(text, p));
    }
    keel__set_err(err, errlen, "%s: %s%s (SQLSTATE %s)", what, primary, where,
                  sqlstate ? sqlstate : "none");
    bool unavailable = PQstatus(pg) != CONNECTION_OK ||
                       keel__db_classify(sqlstate) == KEEL_EDB_UNAVAILABLE;
    PQclear(res);
    return unavailable ? KEEL_EDB_UNAVAILABLE : KEEL_EDB_BUG;
}

/* Runs a statement that must succeed; 0 or a KEEL_EDB_* code. */
static int run(PGconn *pg, const char *sql, const char *what, char *err, size_t errlen)
{
    PGresult *res = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        PQclear(res);
        return 0;
    }
    return sql_failure(pg, res, what, sql, err, errlen);
}

static void rollback_quietly(PGconn *pg)
{
    if (PQtransactionStatus(pg) != PQTRANS_IDLE)
        PQclear(PQexec(pg, "ROLLBACK"));
}

static int ensure_table(PGconn *pg, const char *plugin, char *err, size_t errlen)
{
    /* Under the lock too: two concurrent CREATE TABLE IF NOT EXISTS can
     * both decide to create and one then fails on a catalog unique index. */
    int rc = run(pg, "BEGIN", "schema_migrations", err, errlen);
    if (rc == 0)
        rc = run(pg, MIGRATE_LOCK_SQL, "schema_migrations", err, errlen);
    if (rc == 0)
        rc = run(pg,
                 "CREATE TABLE IF NOT EXISTS schema_migrations ("
                 " version int PRIMARY KEY,"
                 " name text NOT NULL,"
                 " applied_at timestamptz NOT NULL DEFAULT now())",
                 "schema_migrations", err, errlen);
    if (rc == 0 && plugin != NULL)
        rc = run(pg,
                 "CREATE TABLE IF NOT EXISTS plugin_migrations ("
                 " plugin text NOT NULL,"
                 " version int NOT NULL,"
                 " name text NOT NULL,"
                 " applied_at timestamptz NOT NULL DEFAULT now(),"
                 " PRIMARY KEY (plugin, version))",
                 "plugin_migrations", err, errlen);
    if (rc == 0)
        rc = run(pg, "COMMIT", "schema_migrations", err, errlen);
    if (rc != 0)
        rollback_quietly(pg);
    return rc;
}

/* Applies one migration unless it is recorded already; *did says which. */
static int apply_one(PGconn *pg, const char *plugin, const char *dir, const struct migration *m,
                     bool *did, char *err, size_t errlen)
{
    *did = false;
    char version[16];
    snprintf(version, sizeof version, "%d", m->version);
    const char *const params[3] = {version, m->name, plugin};
    char *text = NULL;

    int rc = run(pg, "BEGIN", m->file, err, errlen);
    if (rc == 0)
        rc = run(pg, MIGRATE_LOCK_SQL, m->file, err, errlen);
    if (rc != 0)
        goto out;

    PGresult *res =
        plugin != NULL
            ? PQexecParams(pg, "SELECT 1 FROM plugin_migrations WHERE version = $1 AND plugin = $2",
                           2, NULL, (const char *const[]){version, plugin}, NULL, NULL, 0)
            : PQexecParams(pg, "SELECT 1 FROM schema_migrations WHERE version = $1", 1, NULL,
                           params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = sql_failure(pg, res, m->file, NULL, err, errlen);
        goto out;
    }
    bool applied = PQntuples(res) > 0;
    PQclear(res);
    if (applied)
        goto out;

    rc = read_file(dir, m->file, &text, err, errlen);
    if (rc != 0)
        goto out;
    /* The whole file in one simple-protocol round trip: it has no
     * parameters, and inside our BEGIN its statements share the
     * transaction. */
    res = PQexec(pg, text);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        rc = sql_failure(pg, res, m->file, text, err, errlen);
        goto out;
    }
    PQclear(res);
    if (PQtransactionStatus(pg) != PQTRANS_INTRANS) {
        keel__set_err(err, errlen,
                      "%s: the file ends the transaction itself (remove its BEGIN/COMMIT)",
                      m->file);
        rc = KEEL_ECONFIG;
        goto out;
    }
    res = plugin != NULL
              ? PQexecParams(pg,
                             "INSERT INTO plugin_migrations (version, name, plugin)"
                             " VALUES ($1, $2, $3)",
                             3, NULL, params, NULL, NULL, 0)
              : PQexecParams(pg, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", 2,
                             NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        rc = sql_failure(pg, res, m->file, NULL, err, errlen);
        goto out;
    }
    PQclear(res);
    rc = run(pg, "COMMIT", m->file, err, errlen);
    if (rc == 0) {
        *did = true;
        keel__log(KEEL_LOG_INFO, "migrate", "applied %s%s%s", plugin ? plugin : "",
                  plugin ? "/" : "", m->file);
    }

out:
    free(text);
    rollback_quietly(pg);
    return rc;
}

/* Warns about recorded versions that no file explains: a database migrated
 * by a newer keel, or a renamed file. */
static void check_recorded(PGconn *pg, const struct migration *list, int n)
{
    PGresult *res = PQexec(pg, "SELECT version, name FROM schema_migrations ORDER BY version");
    if (PQresultStatus(res) == PGRES_TUPLES_OK) {
        for (int r = 0; r < PQntuples(res); r++) {
            long v = strtol(PQgetvalue(res, r, 0), NULL, 10);
            const char *name = PQgetvalue(res, r, 1);
            const struct migration *m = NULL;
            for (int i = 0; i < n && m == NULL; i++)
                if (list[i].version == v)
                    m = &list[i];
            if (m == NULL)
                keel__log(
                    KEEL_LOG_WARN, "migrate",
                    "database has migration %ld (%s) that this keel does not know; is it newer?", v,
                    name);
            else if (strcmp(m->name, name) != 0)
                keel__log(KEEL_LOG_WARN, "migrate",
                          "migration %ld is recorded as \"%s\" but the file is %s", v, name,
                          m->file);
        }
    }
    PQclear(res);
}

/* Lists the migration files of dir and connects; on success the caller owns
 * both *list and *pg. */
static int open_migrations(const char *conninfo, const char *dir, struct migration **list, int *n,
                           PGconn **pg, char *err, size_t errlen)
{
    int rc = list_migrations(dir, list, n, err, errlen);
    if (rc != 0)
        return rc;
    *pg = migrate_connect(conninfo, err, errlen);
    if (*pg == NULL) {
        free(*list);
        *list = NULL;
        return KEEL_EDB_UNAVAILABLE;
    }
    return 0;
}

static int migrate_scope(const char *conninfo, const char *plugin, const char *dir, int *applied,
                         char *err, size_t errlen)
{
    if (applied != NULL)
        *applied = 0;
    struct migration *list;
    int n;
    PGconn *pg;
    int rc = open_migrations(conninfo, dir, &list, &n, &pg, err, errlen);
    if (rc != 0)
        return rc;
    rc = ensure_table(pg, plugin, err, errlen);
    for (int i = 0; rc == 0 && i < n; i++) {
        bool did;
        rc = apply_one(pg, plugin, dir, &list[i], &did, err, errlen);
        if (rc == 0 && did && applied != NULL)
            (*applied)++;
    }
    if (rc == 0) {
        if (plugin == NULL)
            check_recorded(pg, list, n);
    } else {
        keel__log(KEEL_LOG_ERROR, "migrate", "migration failed: %s", err ? err : keel_strerror(rc));
    }
    PQfinish(pg);
    free(list);
    return rc;
}

int keel__db_migrate(const char *conninfo, const char *dir, int *applied, char *err, size_t errlen)
{
    return migrate_scope(conninfo, NULL, dir, applied, err, errlen);
}

int keel__db_migrate_plugin(const char *conninfo, const char *plugin, const char *dir, int *applied,
                            char *err, size_t errlen)
{
    return migrate_scope(conninfo, plugin, dir, applied, err, errlen);
}

/*
 * The checks that found every file applied, one per scope (database, plugin,
 * directory) with the file names it saw.  A worker checks a plugin's schema
 * on every load, and so on every reload; asked again with the same files, the
 * answer is the one it already had, without a new connection: each one cost
 * PostgreSQL a backend's start-up, on the CPUs serving requests, and a reload
 * most of its time.  New files are checked again.  (A row removed from the
 * migrations table by hand is not seen until keeld restarts; nothing keel
 * does removes one.)
 */
struct current {
    char *scope;
    char *files;
    struct current *next;
};

static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static struct current *currents;

/* "conninfo\nplugin\ndir" and the files' names, one after the other; NULL
 * when out of memory (then nothing is remembered). */
static char *scope_key(const char *conninfo, const char *plugin, const char *dir)
{
    if (plugin == NULL)
        plugin = "";
    size_t len = strlen(conninfo) + strlen(plugin) + strlen(dir) + 3;
    char *k = malloc(len);
    if (k != NULL)
        snprintf(k, len, "%s\n%s\n%s", conninfo, plugin, dir);
    return k;
}

static char *files_key(const struct migration *list, int n)
{
    size_t len = 1;
    for (int i = 0; i < n; i++)
        len += strlen(list[i].file) + 1;
    char *k = malloc(len), *p = k;
    for (int i = 0; k != NULL && i < n; i++) {
        size_t l = strlen(list[i].file);
        memcpy(p, list[i].file, l);
        p[l] = '\n';
        p += l + 1;
    }
    if (k != NULL)
        *p = '\0';
    return k;
}

static bool known_current(const char *scope, const char *files)
{
    bool yes = false;
    pthread_mutex_lock(&current_lock);
    for (const struct current *c = currents; c != NULL && !yes; c = c->next)
        yes = strcmp(c->scope, scope) == 0 && strcmp(c->files, files) == 0;
    pthread_mutex_unlock(&current_lock);
    return yes;
}

/* Takes scope and files. */
static void remember_current(char *scope, char *files)
{
    pthread_mutex_lock(&current_lock);
    struct current *c = currents;
    while (c != NULL && strcmp(c->scope, scope) != 0)
        c = c->next;
    if (c == NULL && (c = calloc(1, sizeof *c)) != NULL) {
        c->next = currents;
        currents = c;
    }
    if (c != NULL) {
        free(c->scope);
        free(c->files);
        c->scope = scope;
        c->files = files;
        scope = files = NULL;
    }
    pthread_mutex_unlock(&current_lock);
    free(scope);
    free(files);
}

/* Counts into *behind the files of list the database has not recorded. */
static int count_behind(const char *conninfo, const char *plugin, const struct migration *list,
                        int n, int *behind, char *err, size_t errlen)
{
    PGconn *pg = migrate_connect(conninfo, err, errlen);
    if (pg == NULL)
        return KEEL_EDB_UNAVAILABLE;
    int rc = 0;
    /* Asking first avoids an error (and a line in the server's log) when
     * the table does not exist yet: then every file is pending. */
    PGresult *res = PQexec(pg, plugin != NULL
                                   ? "SELECT to_regclass('plugin_migrations') IS NOT NULL"
                                   : "SELECT to_regclass('schema_migrations') IS NOT NULL");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = sql_failure(pg, res, "schema_migrations", NULL, err, errlen);
        goto out;
    }
    bool exists = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!exists) {
        *behind = n;
        goto out;
    }
    res = plugin != NULL
              ? PQexecParams(pg, "SELECT version FROM plugin_migrations WHERE plugin = $1", 1, NULL,
                             &plugin, NULL, NULL, 0)
              : PQexec(pg, "SELECT version FROM schema_migrations");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = sql_failure(pg, res, "schema_migrations", NULL, err, errlen);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        bool found = false;
        for (int r = 0; r < PQntuples(res) && !found; r++)
            found = strtol(PQgetvalue(res, r, 0), NULL, 10) == list[i].version;
        if (!found)
            (*behind)++;
    }
    PQclear(res);
out:
    PQfinish(pg);
    return rc;
}

static int behind_scope(const char *conninfo, const char *plugin, const char *dir, int *behind,
                        char *err, size_t errlen)
{
    *behind = 0;
    struct migration *list;
    int n;
    int rc = list_migrations(dir, &list, &n, err, errlen);
    if (rc != 0)
        return rc;
    char *scope = scope_key(conninfo, plugin, dir);
    char *files = files_key(list, n);
    bool keys = scope != NULL && files != NULL;
    if (!keys || !known_current(scope, files)) {
        rc = count_behind(conninfo, plugin, list, n, behind, err, errlen);
        if (rc == 0 && *behind == 0 && keys) {
            remember_current(scope, files);
            scope = files = NULL;
        }
    }
    free(scope);
    free(files);
    free(list);
    return rc;
}

int keel__db_schema_behind(const char *conninfo, const char *dir, int *behind, char *err,
                           size_t errlen)
{
    return behind_scope(conninfo, NULL, dir, behind, err, errlen);
}

int keel__db_plugin_schema_behind(const char *conninfo, const char *plugin, const char *dir,
                                  int *behind, char *err, size_t errlen)
{
    return behind_scope(conninfo, plugin, dir, behind, err, errlen);
}

char *keel__plugin_migrations_dir(const char *spec, const char *core_dir)
{
    if (spec == NULL)
        return NULL;
    if (spec[0] == '/' || core_dir == NULL)
        return strdup(spec);
    size_t n = strlen(core_dir) + strlen(spec) + 2;
    char *p = malloc(n);
    if (p != NULL)
        snprintf(p, n, "%s/%s", core_dir, spec);
    return p;
}
