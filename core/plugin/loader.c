#include "config.h"

#include "plugin/loader.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <libltdl/lt_dlloader.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util/scoreboard.h"
#include "util/log.h"
#include "util/thread.h"
#include "util/time.h"
#include "plugin/tasks.h"
#include "data/migrate.h"

/* Loads are serialised: libltdl keeps global state, and so does the message
 * our loader vtable leaves for the caller. */
static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static char copy_dir[256];
static char now_error[512];
static atomic_long live_generations;
static atomic_int init_timeout_ms = 10000;

/*
 * The libltdl loader keel uses instead of the stock dlopen loader: the stock
 * one opens with RTLD_LAZY, so a plugin with an unresolved function would load
 * and crash on its first request.  RTLD_NOW makes that a load failure with
 * the dynamic linker's message; RTLD_LOCAL keeps generations of the same
 * plugin (which all export the same entry symbol) apart.
 */
static lt_module now_open(lt_user_data data, const char *filename, lt_dladvise advise)
{
    (void)data;
    (void)advise;
    if (filename == NULL)
        return NULL;
    void *h = dlopen(filename, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        const char *e = dlerror();
        snprintf(now_error, sizeof now_error, "%s", e ? e : "dlopen failed");
    }
    return h;
}

static int now_close(lt_user_data data, lt_module module)
{
    (void)data;
    return dlclose(module) == 0 ? 0 : 1;
}

static void *now_sym(lt_user_data data, lt_module module, const char *name)
{
    (void)data;
    return dlsym(module, name);
}

static char runtime_dir[256];

void keel__loader_set_runtime_dir(const char *dir)
{
    snprintf(runtime_dir, sizeof runtime_dir, "%s", dir ? dir : "");
}

/*
 * True while the process that made a copy directory may still be running: a
 * live process with that pid, not a zombie nobody has reaped yet.  Any
 * command name counts: keel-plugin-check and a keeld run under valgrind use
 * the same loader under other names, and a directory kept by mistake after
 * its pid was reused costs a few files until the next start, while one
 * removed by mistake breaks a running server.
 */
static bool copier_alive(long pid)
{
    if (pid <= 0 || (kill((pid_t)pid, 0) != 0 && errno == ESRCH))
        return false;
    char path[64], stat[512] = "";
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *sf = fopen(path, "re");
    if (sf != NULL) {
        size_t n = fread(stat, 1, sizeof stat - 1, sf);
        stat[n] = '\0';
        fclose(sf);
        const char *paren = strrchr(stat, ')');
        if (paren != NULL && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X'))
            return false;
    }
    return true;
}

/*
 * Removes the copy directories "keeld-PID-XXXXXX" of dir whose keeld is
 * gone (killed with SIGKILL, or crashed, so it never cleaned up): only the
 * regular files in them, then the directory; nothing is followed.
 */
static void remove_stale_copies(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        long pid = 0;
        char tail[16];
        if (strncmp(de->d_name, "keeld-", 6) != 0 ||
            sscanf(de->d_name + 6, "%ld-%15s", &pid, tail) != 2 || strlen(tail) != 6 ||
            pid == (long)getpid() || copier_alive(pid))
            continue;
        int fd = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            continue;
        DIR *sub = fdopendir(fd);
        if (sub == NULL) {
            close(fd);
            continue;
        }
        int removed = 0;
        struct dirent *e;
        while ((e = readdir(sub)) != NULL) {
            struct stat st;
            if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
                unlinkat(fd, e->d_name, 0) == 0)
                removed++;
        }
        closedir(sub);
        if (unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR) == 0)
            log_info("removed %s/%s (%d plugin cop%s left by keeld %ld, which is gone)", dir,
                     de->d_name, removed, removed == 1 ? "y" : "ies", pid);
    }
    closedir(d);
}

int keel__loader_init(void)
{
    if (lt_dlinit() != 0) {
        log_error("libltdl: %s", lt_dlerror());
        return KEEL_ELOAD;
    }
    /* Without the stock loaders a failure of ours is final instead of being
     * retried lazily by the next loader in the chain. */
    lt_dlvtable *stock = lt_dlloader_remove("lt_dlopen");
    if (stock != NULL) {
        /* Removed loaders belong to the caller now. */
        if (stock->dlloader_exit != NULL)
            stock->dlloader_exit(stock->dlloader_data);
        free(stock);
    }
    /* lt_dlexit() frees the vtables of the loaders it removes, so ours must
     * come from the heap. */
    lt_dlvtable *vt = calloc(1, sizeof *vt);
    if (vt == NULL)
        return KEEL_ENOMEM;
    vt->name = "keel_now";
    vt->module_open = now_open;
    vt->module_close = now_close;
    vt->find_sym = now_sym;
    vt->priority = LT_DLLOADER_PREPEND;
    if (lt_dlloader_add(vt) != 0) {
        free(vt);
        log_error("libltdl: cannot add loader: %s", lt_dlerror());
        return KEEL_ELOAD;
    }
    const char *tmp = runtime_dir[0] != '\0' ? runtime_dir : getenv("TMPDIR");
    if (tmp == NULL || *tmp == '\0')
        tmp = "/tmp";
    remove_stale_copies(tmp);
    int len = snprintf(copy_dir, sizeof copy_dir, "%.200s/keeld-%ld-XXXXXX", tmp, (long)getpid());
    if (len < 0 || (size_t)len >= sizeof copy_dir || strlen(tmp) > 200) {
        log_error("runtime directory name too long: %s", tmp);
        copy_dir[0] = '\0';
        return KEEL_EINVAL;
    }
    if (mkdtemp(copy_dir) == NULL) {
        log_error("cannot create plugin copy directory %s: %s", copy_dir, strerror(errno));
        return KEEL_EIO;
    }
    return 0;
}

/* Where plugins' own migrations are checked; NULL (keel-plugin-check, no
 * database) skips the check. */
static char *schema_conninfo, *schema_dir;

void keel__loader_shutdown(void)
{
    free(schema_conninfo);
    free(schema_dir);
    schema_conninfo = schema_dir = NULL;
    if (copy_dir[0] != '\0' && rmdir(copy_dir) != 0 && errno != ENOENT)
        log_warn("cannot remove %s: %s", copy_dir, strerror(errno));
    copy_dir[0] = '\0';
    lt_dlexit();
}

void keel__loader_set_init_timeout(int ms)
{
    atomic_store(&init_timeout_ms, ms > 0 ? ms : 10000);
}

const char *keel__stage_name(int stage)
{
    static const char *const names[] = {"manifest", "dlopen", "abi", "init", "routes", "commit"};
    return stage >= 0 && stage <= KEEL__STAGE_COMMIT ? names[stage] : "unknown";
}

const char *keel__reason_name(int reason)
{
    static const char *const names[] = {"none",        "not_installed", "abi_mismatch",
                                        "init_failed", "disabled",      "load_failed",
                                        "crashed",     "hung",          "starting"};
    return reason >= 0 && reason <= KEEL__REASON_STARTING ? names[reason] : "load_failed";
}

long keel__generations_live(void)
{
    return atomic_load(&live_generations);
}

/* Capabilities of this host, by the minor version that introduced them.  A
 * plugin lists those it cannot run without in its descriptor's `requires`. */
static const struct {
    const char *name;
    unsigned minor;
} host_capabilities[] = {
    {"log", 0},      {"request", 0},        {"response", 0},      {"json_body", 0},  {"user", 0},
    {"db", 0},       {"db_result_free", 1}, {"query_arg", 1},     {"body_lines", 2}, {"tasks", 3},
    {"upstream", 3}, {"metrics", 3},        {"response_pack", 4},
};

int keel__abi_check(const keel_plugin *d, const char *expected_name, char *err, size_t errlen)
{
    /* Format arguments as unsigned: the macros are int, the fields uint16_t. */
    const unsigned host_major = KEEL_ABI_MAJOR, host_minor = KEEL_ABI_MINOR;
    if (d == NULL) {
        snprintf(err, errlen, "%s() returned NULL", KEEL_PLUGIN_ENTRY_SYMBOL);
        return KEEL_EABI;
    }
    if (d->magic != KEEL_PLUGIN_MAGIC) {
        snprintf(err, errlen, "not a keel plugin descriptor (magic 0x%08x, expected 0x%08x)",
                 d->magic, KEEL_PLUGIN_MAGIC);
        return KEEL_EABI;
    }
    if (d->abi_major != KEEL_ABI_MAJOR) {
        snprintf(
            err, errlen,
            "built for ABI %u.%u, host has %u.%u; rebuild the plugin against keel %u.x headers",
            (unsigned)d->abi_major, (unsigned)d->abi_minor, host_major, host_minor, host_major);
        return KEEL_EABI;
    }
    if (d->struct_size < offsetof(keel_plugin, spare)) {
        snprintf(err, errlen, "descriptor is %u bytes, ABI %u.0 needs at least %zu", d->struct_size,
                 host_major, offsetof(keel_plugin, spare));
        return KEEL_EABI;
    }
    for (const char *const *r = d->requires; r != NULL && *r != NULL; r++) {
        bool found = false;
        for (size_t i = 0; i < sizeof host_capabilities / sizeof host_capabilities[0]; i++)
            if (strcmp(*r, host_capabilities[i].name) == 0 &&
                host_capabilities[i].minor <= KEEL_ABI_MINOR)
                found = true;
        if (!found) {
            snprintf(err, errlen,
                     "needs capability \"%s\" which this host (ABI %u.%u) lacks; the plugin was "
                     "built for ABI %u.%u: upgrade keeld or rebuild against ABI %u.%u headers",
                     *r, host_major, host_minor, (unsigned)d->abi_major, (unsigned)d->abi_minor,
                     host_major, host_minor);
            return KEEL_EABI;
        }
    }
    if (d->name == NULL || expected_name == NULL || strcmp(d->name, expected_name) != 0) {
        snprintf(err, errlen, "descriptor name \"%s\" does not match manifest name \"%s\"",
                 d->name ? d->name : "(null)", expected_name ? expected_name : "(null)");
        return KEEL_EABI;
    }
    if (d->routes == NULL) {
        snprintf(err, errlen, "descriptor has no route table");
        return KEEL_EABI;
    }
    return 0;
}

keel_handler_fn keel__generation_handler(const struct keel__generation *g, const char *method,
                                         const char *path_template)
{
    for (const keel_route *r = g->desc->routes; r->method != NULL; r++)
        if (strcmp(r->method, method) == 0 && strcmp(r->path, path_template) == 0)
            return r->handler;
    return NULL;
}

/* Every route the plugin implements must be in its manifest (that is where
 * its auth level is decided) and every manifest route must be implemented. */
static int check_routes(const struct keel__manifest *m, const keel_plugin *d, char *err,
                        size_t errlen)
{
    for (const keel_route *r = d->routes; r->method != NULL; r++) {
        if (r->path == NULL || r->handler == NULL) {
            snprintf(err, errlen, "route %s has no path or handler", r->method);
            return KEEL_EROUTES;
        }
        bool listed = false;
        for (size_t i = 0; i < m->nroutes && !listed; i++)
            listed = strcmp(m->routes[i].method, r->method) == 0 &&
                     strcmp(m->routes[i].path, r->path) == 0;
        if (!listed) {
            snprintf(err, errlen, "route %s %s is not in the manifest %s", r->method, r->path,
                     m->source ? m->source : "");
            return KEEL_EROUTES;
        }
    }
    for (size_t i = 0; i < m->nroutes; i++) {
        bool found = false;
        for (const keel_route *r = d->routes; r->method != NULL && !found; r++)
            found = strcmp(m->routes[i].method, r->method) == 0 &&
                    strcmp(m->routes[i].path, r->path) == 0;
        if (!found) {
            snprintf(err, errlen, "manifest route %s %s is not implemented by the plugin",
                     m->routes[i].method, m->routes[i].path);
            return KEEL_EROUTES;
        }
    }
    return 0;
}

/* Copies src to dst; returns 0 or -errno. */
static int copy_file(const char *src, const char *dst)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -errno;
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0700);
    if (out < 0) {
        int e = errno;
        close(in);
        return -e;
    }
    char buf[65536];
    int rc = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n == 0)
            break;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                rc = -errno;
                break;
            }
            off += w;
        }
        if (rc != 0)
            break;
    }
    close(in);
    if (close(out) != 0 && rc == 0)
        rc = -errno;
    if (rc != 0)
        unlink(dst);
    return rc;
}

static void fail(struct keel__load_error *err, int stage, int reason, const char *fmt, ...)
    KEEL_PRINTF(4, 5);

static void fail(struct keel__load_error *err, int stage, int reason, const char *fmt, ...)
{
    err->stage = stage;
    err->reason = reason;
    va_list ap;
    va_start(ap, fmt);
    keel__vset_err(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

static void generation_destroy(struct keel__generation *g)
{
    keel__gen_free(g->res);
    g->res = NULL;
    if (g->handle != NULL) {
        pthread_mutex_lock(&load_lock);
        lt_dlclose(g->handle);
        pthread_mutex_unlock(&load_lock);
    }
    keel__let_serve();
    if (g->copy_path != NULL && unlink(g->copy_path) != 0 && errno != ENOENT)
        log_warn("cannot remove plugin copy %s: %s", g->copy_path, strerror(errno));
    free(g->name);
    free(g->file);
    free(g->copy_path);
    free(g);
}

int keel__loader_set_schema(const char *conninfo, const char *migrations_dir)
{
    free(schema_conninfo);
    free(schema_dir);
    schema_conninfo = conninfo != NULL && *conninfo != '\0' ? strdup(conninfo) : NULL;
    schema_dir = migrations_dir != NULL ? strdup(migrations_dir) : NULL;
    return (conninfo != NULL && *conninfo != '\0' && schema_conninfo == NULL) ||
                   (migrations_dir != NULL && schema_dir == NULL)
               ? KEEL_ENOMEM
               : 0;
}

/* True (with a message) when the plugin's own migrations are not all
 * applied: its code would meet tables it does not know.  A database that
 * cannot be reached does not refuse the plugin; it serves degraded answers. */
static bool schema_behind(const struct keel__manifest *m, char *msg, size_t msglen)
{
    if (schema_conninfo == NULL)
        return false;
    char *dir = keel__plugin_migrations_dir(m->migrations, schema_dir);
    if (dir == NULL)
        return false;
    int behind = 0;
    char err[400];
    int rc = keel__db_plugin_schema_behind(schema_conninfo, m->name, dir, &behind, err, sizeof err);
    bool refuse = false;
    if (rc == KEEL_EDB_UNAVAILABLE) {
        keel__log(KEEL_LOG_WARN, m->name, "cannot check its schema (%s); loading anyway", err);
    } else if (rc != 0) {
        snprintf(msg, msglen, "cannot check the plugin's migrations: %s", err);
        refuse = true;
    } else if (behind > 0) {
        snprintf(msg, msglen,
                 "database schema is %d migration(s) behind %.300s: run `keeld --migrate` first",
                 behind, dir);
        refuse = true;
    }
    free(dir);
    return refuse;
}

/* One init call, shared by the loading thread and the thread running init:
 * whichever lets go last frees it, so an init that never returns can be
 * abandoned without leaving the other side a dangling pointer. */
struct init_call {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refs;
    bool done;
    int rc;
    void *state;
    const keel_plugin *desc;
    const keel_host *host;
    json_t *config;
    char *name;
    uint64_t number;
    /* What init registered (tasks, upstreams); taken by run_init, or freed
     * here when init was abandoned (its tasks never started). */
    struct keel__gen_res *res;
};

static void init_call_unref(struct init_call *c)
{
    pthread_mutex_lock(&c->lock);
    int left = --c->refs;
    pthread_mutex_unlock(&c->lock);
    if (left > 0)
        return;
    json_decref(c->config);
    keel__gen_free(c->res);
    free(c->name);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static void *init_thread(void *arg)
{
    struct init_call *c = arg;
    void *state = NULL;
    keel__plugin_call_enter(c->name, c->number, KEEL__CALL_INIT, "init", NULL, 0);
    /* Registrations (task_add, upstream_add, ...) are collected per thread:
     * this one, for the duration of init. */
    keel__gen_init_begin(c->name, c->number);
    int rc = c->desc->init(c->host, c->config, &state);
    struct keel__gen_res *res = keel__gen_init_end(rc == 0);
    keel__plugin_call_leave();
    pthread_mutex_lock(&c->lock);
    c->rc = rc;
    c->state = state;
    c->res = res;
    c->done = true;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
    init_call_unref(c);
    return NULL;
}

/* Starts g's init on a thread of its own; *out holds the caller's
 * reference to the call. */
static int start_init(struct keel__generation *g, const keel_host *host, json_t *config,
                      struct init_call **out)
{
    *out = NULL;
    /* The plugin may keep the config object, change it, and it runs on
     * another thread: it gets a copy of its own, never a value this thread
     * also holds. */
    json_t *own = config != NULL ? json_deep_copy(config) : NULL;
    if (config != NULL && own == NULL)
        return KEEL_ENOMEM;
    struct init_call *c = calloc(1, sizeof *c);
    if (c == NULL) {
        json_decref(own);
        return KEEL_ENOMEM;
    }
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    c->refs = 2;
    c->desc = g->desc;
    c->host = host;
    c->config = own;
    c->name = strdup(g->name ? g->name : "?");
    c->number = g->number;
    if (!keel__thread_detached(init_thread, c)) {
        c->refs = 1;
        init_call_unref(c);
        return KEEL_ENOMEM;
    }
    *out = c;
    return 0;
}

/*
 * Waits for init call c of g until `until` (CLOCK_REALTIME).  Returns 0
 * with the init's own result in *rc (and g->state set), or KEEL_ETIMEOUT
 * when init has not returned (it is left running; c stays the caller's).
 */
static int wait_init(struct keel__generation *g, struct init_call *c, const struct timespec *until,
                     int *rc)
{
    int result = 0;
    pthread_mutex_lock(&c->lock);
    while (!c->done)
        if (pthread_cond_timedwait(&c->cond, &c->lock, until) == ETIMEDOUT)
            break;
    if (c->done) {
        *rc = c->rc;
        g->state = c->state;
        g->res = c->res;
        c->res = NULL;
    } else {
        result = KEEL_ETIMEOUT;
    }
    pthread_mutex_unlock(&c->lock);
    return result;
}

/* An init still running when keel__generation_load_start returned. */
struct keel__pending_init {
    struct keel__generation *g;
    struct init_call *c;
    struct timespec until; /* the init deadline */
};

/* What follows init: its verdict, then the generation goes live. */
static int finish_load(struct keel__generation *g, int irc, int rc, struct keel__generation **out,
                       struct keel__load_error *err)
{
    if (irc == KEEL_ETIMEOUT) {
        /* The init thread still runs the library's code: it stays
         * mapped for good (only the copy's name goes). */
        g->handle = NULL;
        generation_destroy(g);
        fail(err, KEEL__STAGE_INIT, KEEL__REASON_INIT_FAILED,
             "init did not return within %d ms (timeout); its thread is abandoned",
             atomic_load(&init_timeout_ms));
        return KEEL_EINIT;
    }
    if (irc != 0) {
        generation_destroy(g);
        fail(err, KEEL__STAGE_INIT, KEEL__REASON_INIT_FAILED, "cannot start init: %s",
             keel_strerror(irc));
        return KEEL_EINIT;
    }
    if (rc != 0) {
        generation_destroy(g);
        fail(err, KEEL__STAGE_INIT, KEEL__REASON_INIT_FAILED, "init returned %d (%s)", rc,
             keel_strerror(rc));
        return KEEL_EINIT;
    }
    if (keel__tasks_autostart)
        keel__gen_start(g->res);
    g->loaded_at = (int64_t)time(NULL);
    atomic_store(&g->refs, 1);
    atomic_fetch_add(&live_generations, 1);
    *out = g;
    return 0;
}

int keel__generation_load_finish(struct keel__pending_init *p, struct keel__generation **out,
                                 struct keel__load_error *err)
{
    *out = NULL;
    memset(err, 0, sizeof *err);
    int rc = 0;
    int irc = wait_init(p->g, p->c, &p->until, &rc);
    init_call_unref(p->c);
    struct keel__generation *g = p->g;
    free(p);
    return finish_load(g, irc, rc, out, err);
}

int keel__generation_load(const struct keel__manifest *m, uint64_t number, const keel_host *host,
                          struct keel__generation **out, struct keel__load_error *err)
{
    return keel__generation_load_start(m, number, host, -1, out, NULL, err);
}

int keel__generation_load_start(const struct keel__manifest *m, uint64_t number,
                                const keel_host *host, int wait_ms, struct keel__generation **out,
                                struct keel__pending_init **pending, struct keel__load_error *err)
{
    *out = NULL;
    if (pending != NULL)
        *pending = NULL;
    memset(err, 0, sizeof *err);

    struct keel__generation *g = calloc(1, sizeof *g);
    if (g == NULL) {
        fail(err, KEEL__STAGE_DLOPEN, KEEL__REASON_LOAD_FAILED, "out of memory");
        return KEEL_ENOMEM;
    }
    g->number = number;
    g->name = strdup(m->name);
    g->file = strdup(m->file);
    size_t cplen = strlen(copy_dir) + strlen(m->name) + 48;
    g->copy_path = malloc(cplen);
    if (g->name == NULL || g->file == NULL || g->copy_path == NULL) {
        generation_destroy(g);
        fail(err, KEEL__STAGE_DLOPEN, KEEL__REASON_LOAD_FAILED, "out of memory");
        return KEEL_ENOMEM;
    }
    snprintf(g->copy_path, cplen, "%s/%s.%llu.so", copy_dir, m->name, (unsigned long long)number);

    struct stat st;
    if (stat(m->file, &st) != 0) {
        int e = errno;
        free(g->copy_path);
        g->copy_path = NULL;
        generation_destroy(g);
        fail(err, KEEL__STAGE_DLOPEN,
             e == ENOENT ? KEEL__REASON_NOT_INSTALLED : KEEL__REASON_LOAD_FAILED, "%s: %s", m->file,
             strerror(e));
        return KEEL_ELOAD;
    }
    int crc = copy_file(m->file, g->copy_path);
    if (crc != 0) {
        free(g->copy_path);
        g->copy_path = NULL;
        generation_destroy(g);
        fail(err, KEEL__STAGE_DLOPEN, KEEL__REASON_LOAD_FAILED, "cannot copy %s: %s", m->file,
             strerror(-crc));
        return KEEL_ELOAD;
    }
    /* Copying, mapping and the init are each a burst of system calls and
     * page faults: serving threads go first between them. */
    keel__let_serve();

    pthread_mutex_lock(&load_lock);
    now_error[0] = '\0';
    lt_dladvise advise;
    lt_dladvise_init(&advise);
    lt_dladvise_local(&advise);
    g->handle = lt_dlopenadvise(g->copy_path, advise);
    lt_dladvise_destroy(&advise);
    char msg[512];
    if (g->handle == NULL)
        snprintf(msg, sizeof msg, "%s", now_error[0] ? now_error : lt_dlerror());
    pthread_mutex_unlock(&load_lock);
    if (g->handle == NULL) {
        generation_destroy(g);
        fail(err, KEEL__STAGE_DLOPEN, KEEL__REASON_LOAD_FAILED, "%s", msg);
        return KEEL_ELOAD;
    }
    keel__let_serve();

    const keel_plugin *(*entry)(void) = NULL;
    void *sym = lt_dlsym(g->handle, KEEL_PLUGIN_ENTRY_SYMBOL);
    if (sym == NULL) {
        generation_destroy(g);
        fail(err, KEEL__STAGE_ABI, KEEL__REASON_ABI_MISMATCH, "%s does not export %s()", m->file,
             KEEL_PLUGIN_ENTRY_SYMBOL);
        return KEEL_EABI;
    }
    /* POSIX guarantees a data pointer from dlsym converts to a function pointer. */
    memcpy(&entry, &sym, sizeof entry);
    g->desc = entry();
    if (keel__abi_check(g->desc, m->name, msg, sizeof msg) != 0) {
        generation_destroy(g);
        fail(err, KEEL__STAGE_ABI, KEEL__REASON_ABI_MISMATCH, "%s", msg);
        return KEEL_EABI;
    }

    /* Every route must agree with the manifest, which is where its auth
     * level and fallback are decided.  Checked before init, so a plugin
     * refused for its routes has run none of its code but the entry point. */
    if (check_routes(m, g->desc, msg, sizeof msg) != 0) {
        generation_destroy(g);
        fail(err, KEEL__STAGE_ROUTES, KEEL__REASON_LOAD_FAILED, "%s", msg);
        return KEEL_EROUTES;
    }

    if (m->migrations != NULL && schema_behind(m, msg, sizeof msg)) {
        generation_destroy(g);
        fail(err, KEEL__STAGE_INIT, KEEL__REASON_INIT_FAILED, "%s", msg);
        return KEEL_EINIT;
    }

    if (g->desc->init == NULL)
        return finish_load(g, 0, 0, out, err);
    struct init_call *c = NULL;
    int irc = start_init(g, host, m->config, &c);
    if (irc != 0)
        return finish_load(g, irc, 0, out, err);
    int timeout = atomic_load(&init_timeout_ms);
    struct timespec deadline = keel__timespec_after(CLOCK_REALTIME, timeout);
    struct timespec until = pending != NULL && wait_ms >= 0 && wait_ms < timeout
                                ? keel__timespec_after(CLOCK_REALTIME, wait_ms)
                                : deadline;
    int rc = 0;
    irc = wait_init(g, c, &until, &rc);
    if (irc == KEEL_ETIMEOUT && pending != NULL && wait_ms >= 0 && wait_ms < timeout) {
        struct keel__pending_init *p = calloc(1, sizeof *p);
        if (p != NULL) {
            p->g = g;
            p->c = c;
            p->until = deadline;
            *pending = p;
            return KEEL_EBUSY;
        }
        irc = wait_init(g, c, &deadline, &rc);
    }
    init_call_unref(c);
    return finish_load(g, irc, rc, out, err);
}

void keel__generation_ref(struct keel__generation *g)
{
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
}

static _Atomic(keel__finaliser_post *) finaliser;

void keel__generation_set_finaliser(keel__finaliser_post *post)
{
    atomic_store(&finaliser, post);
}

static void generation_finalise(void *arg)
{
    struct keel__generation *g = arg;
    keel__log(KEEL_LOG_INFO, g->name, "generation %llu retired: finalising and unloading %s",
              (unsigned long long)g->number, g->copy_path);
    /* No task of this generation may run once its fini starts. */
    keel__gen_stop(g->res, 10000);
    if (g->desc != NULL && g->desc->fini != NULL) {
        keel__plugin_call_enter(g->name, g->number, KEEL__CALL_FINI, "fini", NULL, 0);
        g->desc->fini(g->state);
        keel__plugin_call_leave();
    }
    atomic_fetch_sub(&live_generations, 1);
    keel__let_serve();
    generation_destroy(g);
}

void keel__generation_unref(struct keel__generation *g)
{
    if (g == NULL)
        return;
    if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1)
        return;
    keel__finaliser_post *post = atomic_load(&finaliser);
    if (post == NULL || post(generation_finalise, g) != 0)
        generation_finalise(g);
}
