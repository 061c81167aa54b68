#include "config.h"

/*
 * keel-plugin-check: the conformance check for keel plugins
 * (docs/plugin-guide.md, "Checking a plugin").
 *
 *   keel-plugin-check PLUGIN.so [--manifest FILE] [--iterations N]
 *
 * It links the core itself (libkeelcore), so the plugin goes through the same
 * loader, ABI check and host API table as in keeld:
 *  1. static checks of the ELF file (tools/elfcheck.h): only the entry symbol
 *     exported; nothing that prevents unloading (constructors/destructors,
 *     thread-local storage, -z nodelete, unique symbols);
 *  2. N cycles (default 50) of load (private copy, RTLD_NOW) -> ABI check ->
 *     init -> every route once with a synthetic request -> fini -> unload,
 *     checking after each cycle that the copy is no longer mapped and that
 *     no thread was left behind.
 * Synthetic requests (core/http/request.h, struct keel__synthetic) carry a user
 * for "user" routes and an admin for "admin" routes; POST, PUT and PATCH get
 * the body {} as application/json; path parameters get the value
 * "keelcheck".  No database is configured, so every database call answers
 * KEEL_EDB_UNAVAILABLE: a conforming plugin still answers, with a degraded
 * body or a 503, never a 500.  Without --manifest one is made from the
 * descriptor's route table with every route "public", and every request then
 * carries a user.
 *
 * This is a command-line program: the report goes to stdout and usage errors
 * to stderr directly; the core's logger (plugin log lines) writes to stderr
 * at the level given by --log-level (default error).
 *
 * Exit status: 0 the plugin conforms; 1 it does not (the report lists why);
 * 2 usage error or the check could not run.
 */

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include <keel/plugin.h>

#include "conf/conf.h"
#include "elfcheck.h"
#include "plugin/hostapi.h"
#include "plugin/loader.h"
#include "plugin/manifest.h"
#include "plugin/tasks.h"
#include "net/upstream.h"
#include "plugin/plugin_metrics.h"
#include "util/time.h"
#include "util/log.h"
#include "http/request.h"
#include "http/routes.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

enum { EXIT_CONFORMS = 0, EXIT_FINDINGS = 1, EXIT_USAGE = 2 };

#define DEFAULT_ITERATIONS 50
#define MAX_ITERATIONS 100000
/* The value every {param} of a route template gets. */
#define PARAM_VALUE "keelcheck"
/* How long a thread that was joined may still show in /proc/self/task. */
#define THREAD_SETTLE_TRIES 50
#define THREAD_SETTLE_NS 10000000L

struct finding {
    char *text;
    unsigned count; /* identical findings of later cycles are counted, not repeated */
};

struct check {
    const char *plugin; /* absolute path of the .so */
    const char *manifest_path;
    long iterations;
    struct finding *findings;
    size_t nfindings;
    bool stop;        /* further cycles would add nothing (or do harm) */
    bool kept_loaded; /* a generation was left mapped on purpose */
    char name[65];    /* from the descriptor */
    char version[65];
    unsigned abi_major, abi_minor;
};

/* ------------------------------------------------------------ findings */

static void finding(struct check *c, const char *fmt, ...) KEEL_PRINTF(2, 3);

static void finding(struct check *c, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    for (size_t i = 0; i < c->nfindings; i++)
        if (strcmp(c->findings[i].text, text) == 0) {
            c->findings[i].count++;
            return;
        }
    struct finding *grown = realloc(c->findings, (c->nfindings + 1) * sizeof *grown);
    char *copy = strdup(text);
    if (grown == NULL || copy == NULL) {
        free(copy);
        if (grown != NULL)
            c->findings = grown;
        fputs("keel-plugin-check: out of memory\n", stderr);
        exit(EXIT_USAGE);
    }
    c->findings = grown;
    c->findings[c->nfindings].text = copy;
    c->findings[c->nfindings].count = 1;
    c->nfindings++;
}

/* ------------------------------------------------------------ crash report */

/* What the check is doing, for the message written if the plugin crashes. */
static char crash_step[512] = "starting";

static void set_step(const char *fmt, ...) KEEL_PRINTF(1, 2);

/* When the current step began (CLOCK_MONOTONIC ns); the deadline thread
 * fails the check when one step takes longer than step_timeout_ms. */
static atomic_llong step_since_ns;
static int step_timeout_ms = 10000;

static long long monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void set_step(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(crash_step, sizeof crash_step, fmt, ap);
    va_end(ap);
    atomic_store(&step_since_ns, monotonic_ns());
}

/* A plugin call that never returns (a loop, a blocking wait) would hang the
 * check for ever: past the deadline it is reported by step and the process
 * leaves, since the stuck thread cannot be stopped. */
static void *step_deadline(void *arg)
{
    (void)arg;
    for (;;) {
        struct timespec tick = {0, 100 * 1000 * 1000};
        nanosleep(&tick, NULL);
        long long since = atomic_load(&step_since_ns);
        if (since == 0 || monotonic_ns() - since <= (long long)step_timeout_ms * 1000000LL)
            continue;
        fflush(stdout);
        fprintf(stderr,
                "keel-plugin-check: FAIL: hang: no return within %d ms while %s (a plugin call "
                "must not block or loop)\n",
                step_timeout_ms, crash_step);
        printf("result: FAIL (hang while %s)\n", crash_step);
        fflush(NULL);
        _exit(EXIT_FINDINGS);
    }
    return NULL;
}

static void write_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

/* Only async-signal-safe calls: names the step, then dies of the signal
 * (SA_RESETHAND restored the default action). */
static void on_crash(int sig)
{
    static const char head[] = "keel-plugin-check: FAIL: the plugin crashed (signal ";
    char num[12];
    size_t n = sizeof num;
    unsigned v = (unsigned)sig;
    do {
        num[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0 && n > 0);
    write_all(2, head, sizeof head - 1);
    write_all(2, num + n, sizeof num - n);
    write_all(2, ") while ", 8);
    write_all(2, crash_step, strnlen(crash_step, sizeof crash_step));
    write_all(2, "\n", 1);
    raise(sig);
}

static void install_crash_handlers(void)
{
    static const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_crash;
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaction(sigs[i], &sa, NULL);
}

/* ------------------------------------------------------------ the process */

/* Threads of this process, from /proc/self/task; -1 when unreadable. */
static long count_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    if (d == NULL)
        return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* The thread count once threads that already ended have left /proc; gives
 * up waiting after THREAD_SETTLE_TRIES short sleeps. */
static long settled_threads(long baseline)
{
    long n = count_threads();
    for (int i = 0; i < THREAD_SETTLE_TRIES && n > baseline; i++) {
        struct timespec ts = {0, THREAD_SETTLE_NS};
        nanosleep(&ts, NULL);
        n = count_threads();
    }
    return n;
}

/* True when path (the generation's private copy) is still mapped. */
static bool still_mapped(const char *path)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (f == NULL)
        return false;
    char line[PATH_MAX + 256];
    bool found = false;
    while (!found && fgets(line, sizeof line, f) != NULL)
        found = strstr(line, path) != NULL;
    fclose(f);
    return found;
}

/* ------------------------------------------------------------ static checks */

static void list_names(char *out, size_t outlen, const char names[][ELFCHECK_NAME_LEN],
                       size_t count)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < count && i < ELFCHECK_MAX_NAMES && used < outlen; i++)
        used += (size_t)snprintf(out + used, outlen - used, "%s%s", i ? ", " : "", names[i]);
    if (count > ELFCHECK_MAX_NAMES && used < outlen)
        snprintf(out + used, outlen - used, " and %zu more", count - ELFCHECK_MAX_NAMES);
}

static void static_checks(struct check *c)
{
    struct elfcheck_result r;
    char err[512], names[1024];
    if (elfcheck_file(c->plugin, &r, err, sizeof err) != 0) {
        finding(c, "elf: %s", err);
        c->stop = true;
        return;
    }
    if (!r.has_dynsym)
        finding(c, "exports: no .dynsym section, so the exported symbols cannot be checked");
    else if (!r.entry_exported)
        finding(c, "exports: %s() is not exported as a function", KEEL_PLUGIN_ENTRY_SYMBOL);
    if (r.nextra > 0) {
        list_names(names, sizeof names, r.extra, r.nextra);
        finding(c,
                "exports: %zu symbol(s) exported besides %s: %s (compile with "
                "-fvisibility=hidden and link with a version script that keeps only %s)",
                r.nextra, KEEL_PLUGIN_ENTRY_SYMBOL, names, KEEL_PLUGIN_ENTRY_SYMBOL);
    }
    if (r.nunique > 0) {
        list_names(names, sizeof names, r.unique, r.nunique);
        finding(c, "unload: STB_GNU_UNIQUE symbol(s) %s keep the library loaded forever", names);
    }
    if (r.nodelete)
        finding(c, "unload: DF_1_NODELETE is set (linked with -z nodelete): the library can never "
                   "be unloaded, so every reload leaks a copy");
    if (r.tls)
        finding(c, "unload: the library uses thread-local storage (a PT_TLS segment, e.g. a "
                   "__thread variable); keep per-request data in req_alloc memory instead");
    if (r.names_known) {
        if (r.nctors > 0) {
            list_names(names, sizeof names, r.ctors, r.nctors);
            finding(c,
                    "unload: %zu constructor(s): %s (.init_array has %zu entries; only the "
                    "compiler's and a sanitizer's are allowed); do set-up in init",
                    r.nctors, names, r.init_array);
        }
        if (r.ndtors > 0) {
            list_names(names, sizeof names, r.dtors, r.ndtors);
            finding(c,
                    "unload: %zu destructor(s): %s (.fini_array has %zu entries; only the "
                    "compiler's and a sanitizer's are allowed); do tear-down in fini",
                    r.ndtors, names, r.fini_array);
        }
    } else {
        /* No symbol table to name the entries: crtbegin's one entry each
         * is all a conforming plugin has. */
        if (r.init_array > 1)
            finding(c,
                    "unload: %zu constructor(s) (.init_array has %zu entries, only the "
                    "compiler's frame_dummy is allowed; no symbol table names them); do set-up "
                    "in init",
                    r.init_array - 1, r.init_array);
        if (r.fini_array > 1)
            finding(c,
                    "unload: %zu destructor(s) (.fini_array has %zu entries, only the "
                    "compiler's __do_global_dtors_aux is allowed; no symbol table names them); "
                    "do tear-down in fini",
                    r.fini_array - 1, r.fini_array);
    }

    printf("exports:    %s\n", r.nextra == 0 && r.entry_exported ? KEEL_PLUGIN_ENTRY_SYMBOL " only"
                                                                 : "see problems below");
    printf("unloading:  .init_array %zu, .fini_array %zu%s, TLS %s, NODELETE %s, unique "
           "symbols %zu, bind now %s\n",
           r.init_array, r.fini_array, r.sanitized ? " (sanitizer build)" : "",
           r.tls ? "yes" : "no", r.nodelete ? "yes" : "no", r.nunique,
           r.bind_now ? "yes" : "no (the loader binds at load time anyway)");
}

/* ------------------------------------------------------------ the descriptor */

/*
 * Opens the plugin once, outside the loader, to read its descriptor: the
 * name and version for the report, and the route table when no manifest was
 * given (*routes then receives a manifest "routes" array).  A descriptor the
 * host would refuse is a finding (the same message keeld logs).
 */
static int probe_descriptor(struct check *c, json_t **routes)
{
    *routes = NULL;
    set_step("opening %s to read its descriptor", c->plugin);
    void *h = dlopen(c->plugin, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        const char *e = dlerror();
        finding(c, "load: stage dlopen: %s", e ? e : "dlopen failed");
        return -1;
    }
    void *sym = dlsym(h, KEEL_PLUGIN_ENTRY_SYMBOL);
    if (sym == NULL) {
        finding(c, "load: stage abi: %s does not export %s()", c->plugin, KEEL_PLUGIN_ENTRY_SYMBOL);
        dlclose(h);
        return -1;
    }
    const keel_plugin *(*entry)(void);
    memcpy(&entry, &sym, sizeof entry);
    set_step("calling %s()", KEEL_PLUGIN_ENTRY_SYMBOL);
    const keel_plugin *d = entry();
    bool readable = d != NULL && d->magic == KEEL_PLUGIN_MAGIC &&
                    d->struct_size >= offsetof(keel_plugin, spare);
    char msg[512];
    if (keel__abi_check(d, readable ? d->name : NULL, msg, sizeof msg) != 0) {
        finding(c, "load: stage abi: %s", msg);
        dlclose(h);
        return -1;
    }
    snprintf(c->name, sizeof c->name, "%s", d->name);
    snprintf(c->version, sizeof c->version, "%s", d->version ? d->version : "(none)");
    c->abi_major = d->abi_major;
    c->abi_minor = d->abi_minor;

    int rc = 0;
    json_t *arr = json_array();
    for (const keel_route *r = d->routes; arr != NULL && r->method != NULL; r++) {
        if (r->path == NULL || r->handler == NULL) {
            finding(c, "routes: route %s has no path or handler", r->method);
            rc = -1;
            break;
        }
        json_array_append_new(arr, json_pack("{s:s, s:s, s:s}", "method", r->method, "path",
                                             r->path, "auth", "public"));
    }
    dlclose(h);
    if (arr == NULL || rc != 0) {
        json_decref(arr);
        return -1;
    }
    *routes = arr;
    return 0;
}

/* ------------------------------------------------------------ the manifest */

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

static const char *base_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Builds the manifest the cycles load with: from --manifest, or made from
 * the route table.  Either way "file" is the plugin being checked. */
static int build_manifest(struct check *c, json_t *routes, struct keel__manifest *m)
{
    json_t *root = NULL;
    const json_t *obj;
    const char *source;
    char err[1024];

    if (c->manifest_path != NULL) {
        json_error_t jerr;
        root = json_load_file(c->manifest_path, JSON_REJECT_DUPLICATES, &jerr);
        if (root == NULL) {
            finding(c, "manifest: %s: line %d: %s", c->manifest_path, jerr.line, jerr.text);
            return -1;
        }
        /* A conf.d file ({"plugin": {...}}) or the bare manifest object. */
        obj = json_object_get(root, "plugin") ? json_object_get(root, "plugin") : root;
        source = c->manifest_path;
    } else {
        root = json_pack("{s:s, s:s, s:O}", "name", c->name, "file", c->plugin, "routes", routes);
        if (root == NULL) {
            finding(c, "manifest: cannot make one from the route table (bad method or path?)");
            return -1;
        }
        obj = root;
        source = "(made from the route table)";
    }
    char *dir = dir_of(c->plugin);
    int rc = dir ? keel__manifest_parse(obj, source, dir, m, err, sizeof err) : KEEL_ENOMEM;
    free(dir);
    json_decref(root);
    if (rc != 0) {
        finding(c, "manifest: %s", rc == KEEL_ENOMEM ? "out of memory" : err);
        return -1;
    }
    if (c->manifest_path != NULL && m->file_spec != NULL &&
        strcmp(base_of(m->file_spec), base_of(c->plugin)) != 0)
        printf("note:       the manifest names \"%s\"; checking %s instead\n", m->file_spec,
               c->plugin);
    if (!m->enabled)
        printf("note:       the manifest disables the plugin; checking it anyway\n");
    char *file = strdup(c->plugin);
    if (file == NULL) {
        keel__manifest_clear(m);
        return -1;
    }
    free(m->file);
    m->file = file;
    printf("manifest:   %s (%zu route%s%s)\n",
           c->manifest_path ? c->manifest_path : "made from the route table", m->nroutes,
           m->nroutes == 1 ? "" : "s",
           c->manifest_path ? "" : ", all public; requests carry a user");
    return 0;
}

/* ------------------------------------------------------------ one request */

static const char *const plain_headers[] = {
    "Accept", "application/json", "User-Agent", "keel-plugin-check", NULL,
};
static const char *const json_headers[] = {
    "Accept",     "application/json",  "Content-Type", "application/json",
    "User-Agent", "keel-plugin-check", NULL,
};

static const char *auth_name(int auth)
{
    return auth == KEEL__AUTH_ADMIN ? "admin" : auth == KEEL__AUTH_USER ? "user" : "public";
}

static bool has_body(const char *method)
{
    return strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
           strcmp(method, "PATCH") == 0;
}

/* Turns the template into a path and the match the router would produce:
 * every {name} segment becomes PARAM_VALUE. */
static int fill_route(keel_request *req, const char *tmpl)
{
    size_t len = strlen(tmpl);
    char *path = keel__req_alloc(req, len + KEEL__ROUTER_MAX_PARAMS * sizeof PARAM_VALUE + 1);
    if (path == NULL)
        return KEEL_ENOMEM;
    size_t out = 0;
    req->match.template_path = tmpl;
    for (size_t i = 0; i < len;) {
        if (tmpl[i] == '{' && (i == 0 || tmpl[i - 1] == '/')) {
            const char *close = strchr(tmpl + i, '}');
            if (close == NULL || req->match.nparams >= KEEL__ROUTER_MAX_PARAMS)
                return KEEL_EINVAL;
            size_t n = (size_t)(close - (tmpl + i + 1));
            char *name = keel__req_alloc(req, n + 1);
            if (name == NULL)
                return KEEL_ENOMEM;
            memcpy(name, tmpl + i + 1, n);
            req->match.names[req->match.nparams] = name;
            req->match.values[req->match.nparams] = PARAM_VALUE;
            req->match.nparams++;
            memcpy(path + out, PARAM_VALUE, sizeof PARAM_VALUE - 1);
            out += sizeof PARAM_VALUE - 1;
            i += n + 2;
        } else {
            path[out++] = tmpl[i++];
        }
    }
    path[out] = '\0';
    req->path = path;
    return 0;
}

static int set_principal(keel_request *req, int auth)
{
    struct keel__principal *p = &req->principal;
    p->user_id = keel__req_strdup(req, "00000000-0000-4000-8000-00000000c0de");
    p->supabase_id = keel__req_strdup(req, "00000000-0000-4000-8000-0000000000ab");
    p->email = keel__req_strdup(req, "conformance@keel.invalid");
    p->full_name = keel__req_strdup(req, "keel-plugin-check");
    p->role = keel__req_strdup(req, auth == KEEL__AUTH_ADMIN ? "admin" : "user");
    p->status = keel__req_strdup(req, "active");
    p->tier = keel__req_strdup(req, "free");
    p->synced = true;
    if (p->user_id == NULL || p->supabase_id == NULL || p->email == NULL || p->full_name == NULL ||
        p->role == NULL || p->status == NULL || p->tier == NULL)
        return KEEL_ENOMEM;
    req->has_principal = true;
    return 0;
}

/* Prints at most 100 characters of a body on one line. */
static void print_snippet(const char *body, size_t len)
{
    size_t n = len < 100 ? len : 100;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)body[i];
        putchar(ch < 0x20 || ch == 0x7f ? '?' : ch);
    }
    if (len > n)
        fputs("...", stdout);
}

/* Runs one route of generation g once and records what is wrong with the
 * answer.  print: show the route's line in the report (first cycle). */
static void run_route(struct check *c, struct keel__generation *g,
                      const struct keel__manifest_route *mr, bool with_user, bool print)
{
    keel_handler_fn handler = keel__generation_handler(g, mr->method, mr->path);
    if (handler == NULL) {
        finding(c, "routes: %s %s is in the manifest but has no handler", mr->method, mr->path);
        return;
    }
    keel_request *req = keel__request_new(NULL, mr->listener, mr->method, mr->path);
    if (req == NULL) {
        fputs("keel-plugin-check: out of memory\n", stderr);
        exit(EXIT_USAGE);
    }
    struct keel__synthetic syn = {.headers = plain_headers};
    req->synthetic = &syn;
    /* host->log tags lines with the route's plugin. */
    struct keel__route route = {
        .listener = mr->listener,
        .auth = mr->auth,
        .method = mr->method,
        .path_template = mr->path,
        .plugin = g->name,
        .generation = g->number,
        .handler = handler,
        .state = g->state,
    };
    req->route = &route;
    int rc = fill_route(req, mr->path);
    if (rc == 0 && with_user)
        rc = set_principal(req, mr->auth);
    if (rc == 0 && has_body(mr->method)) {
        syn.headers = json_headers;
        req->body = strdup("{}");
        if (req->body == NULL)
            rc = KEEL_ENOMEM;
        req->body_len = 2;
        req->body_cap = 3;
    }
    if (rc != 0) {
        finding(c, "routes: %s %s: cannot build a request: %s", mr->method, mr->path,
                keel_strerror(rc));
        keel__request_free(req);
        return;
    }

    set_step("running %s %s (generation %llu)", mr->method, req->path,
             (unsigned long long)g->number);
    rc = handler(req, g->state);

    if (syn.responses == 0) {
        finding(c,
                "response: %s %s: the handler returned %d (%s) without queuing a response "
                "(keeld would answer 500)",
                mr->method, mr->path, rc, keel_strerror(rc));
    } else if (syn.responses > 1) {
        finding(c,
                "response: %s %s: the handler tried to respond %u times; exactly one response "
                "per request is allowed",
                mr->method, mr->path, syn.responses);
    }
    if (syn.responses > 0) {
        json_error_t jerr;
        json_t *parsed = syn.body_len > 0
                             ? json_loadb(syn.body, syn.body_len, JSON_DECODE_ANY, &jerr)
                             : NULL;
        if (syn.body_len == 0)
            finding(c, "response: %s %s: the response body is empty (JSON expected)", mr->method,
                    mr->path);
        else if (parsed == NULL)
            finding(c, "response: %s %s: the response body is not JSON: %s", mr->method, mr->path,
                    jerr.text);
        json_decref(parsed);
        if (syn.status == 500)
            finding(c,
                    "response: %s %s: answered 500 with no database; answer a degraded body or "
                    "503 when db_* returns KEEL_EDB_UNAVAILABLE",
                    mr->method, mr->path);
    }
    if (print) {
        printf("  %-6s %-44s %-6s -> ", mr->method, req->path, auth_name(mr->auth));
        if (syn.responses == 0)
            printf("no response (handler returned %d)", rc);
        else {
            printf("%u ", syn.status);
            print_snippet(syn.body ? syn.body : "", syn.body_len);
        }
        putchar('\n');
    }
    keel__request_free(req);
}

/* ------------------------------------------------------------ the cycles */

/* How long a task may take to return once asked to stop. */
#define TASK_STOP_MS 2000

/* A generation left loaded because threads still run in it (reachable
 * until exit, so leak checkers do not count it as lost). */
static struct keel__generation *kept_generation;

static void run_cycles(struct check *c, const struct keel__manifest *m)
{
    const keel_host *host = keel__host_api();
    long baseline = count_threads();
    long completed = 0, threads_after = baseline;

    for (long i = 1; i <= c->iterations && !c->stop; i++) {
        struct keel__generation *g = NULL;
        struct keel__load_error le;
        set_step("loading and initialising generation %ld", i);
        if (keel__generation_load(m, (uint64_t)i, host, &g, &le) != 0) {
            finding(c, "load: stage %s (reason %s): %s", keel__stage_name(le.stage),
                    keel__reason_name(le.reason), le.message);
            c->stop = true;
            break;
        }
        if (i == 1)
            printf("routes (generation 1):\n");
        for (size_t k = 0; k < m->nroutes; k++) {
            bool with_user = c->manifest_path == NULL || m->routes[k].auth != KEEL__AUTH_PUBLIC;
            run_route(c, g, &m->routes[k], with_user, i == 1);
        }
        /* Tasks: each is woken to run once, then asked to stop, as a reload
         * would; one that keeps running would hold up every reload. */
        int ntasks = keel__gen_ntasks(g->res);
        if (ntasks > 0) {
            set_step("stopping the %d task(s) of generation %ld", ntasks, i);
            keel__gen_notify_all(g->res);
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
            int64_t t0 = keel__now_ms();
            int slow = keel__gen_stop(g->res, TASK_STOP_MS);
            if (i == 1)
                printf("tasks:      %d, stopped %lld ms after being asked\n", ntasks,
                       (long long)(keel__now_ms() - t0));
            if (slow > 0) {
                finding(c,
                        "tasks: %d task(s) still running %d ms after being asked to stop (cycle "
                        "%ld); a task must return soon after task_stopping() turns true",
                        slow, TASK_STOP_MS, i);
                c->stop = true;
            }
        }
        /*
         * fini runs here, apart from the unload, so that threads can be
         * counted in between: a thread left running plugin code would crash
         * the process once dlclose() unmaps that code.  The generation then
         * unloads with a copy of its descriptor that has no fini.
         */
        keel_plugin shadow;
        memset(&shadow, 0, sizeof shadow);
        memcpy(&shadow, g->desc,
               g->desc->struct_size < sizeof shadow ? g->desc->struct_size : sizeof shadow);
        void (*fini)(void *) = shadow.fini;
        shadow.fini = NULL;
        g->desc = &shadow;
        set_step("finalising generation %ld", i);
        if (fini != NULL)
            fini(g->state);
        threads_after = settled_threads(baseline);
        completed = i;
        if (baseline >= 0 && threads_after > baseline) {
            finding(c,
                    "threads: %ld thread(s) left running after fini (cycle %ld); a plugin must "
                    "not start threads, or must join them in fini before it returns",
                    threads_after - baseline, i);
            /* Unloading now could pull the code from under those threads:
             * the generation stays mapped (its file and the loader's copy
             * directory are removed) and the cycles end. */
            char *dir = dir_of(g->copy_path);
            unlink(g->copy_path);
            if (dir != NULL)
                rmdir(dir);
            free(dir);
            kept_generation = g;
            c->kept_loaded = true;
            c->stop = true;
            break;
        }
        char *copy = strdup(g->copy_path);
        set_step("unloading generation %ld", i);
        keel__generation_unref(g);
        if (copy != NULL && still_mapped(copy)) {
            finding(c,
                    "unload: the library stayed mapped after fini and dlclose() (cycle %ld): "
                    "something keeps it loaded, so every reload leaks a copy",
                    i);
            c->stop = true;
        }
        free(copy);
    }
    printf("cycles:     %ld of %ld load/init/requests/fini/unload cycles; threads %ld before, "
           "%ld after\n",
           completed, c->iterations, baseline, threads_after);
}

/* ------------------------------------------------------------ main */

static void usage(FILE *out)
{
    fputs("Usage: keel-plugin-check [OPTIONS] PLUGIN.so\n"
          "Checks that a keel plugin conforms: it exports only keel_plugin_entry, has\n"
          "nothing that prevents unloading (constructors, destructors, thread-local\n"
          "storage, -z nodelete, unique symbols), loads through keeld's loader, and\n"
          "answers every route with exactly one JSON response, without a 500 when the\n"
          "database is unavailable, across repeated load/unload cycles that leave no\n"
          "thread behind.\n"
          "\n"
          "Options:\n"
          "  --manifest FILE    the plugin's conf.d manifest (default: one made from the\n"
          "                     route table, every route public)\n"
          "  --iterations N     load/unload cycles (default 50)\n"
          "  --timeout-ms MS    a plugin call (init, a handler, fini) running longer is a\n"
          "                     hang: reported with the route or stage (default 10000)\n"
          "  --log-level LEVEL  error, warn, info or debug for keel and plugin log lines\n"
          "                     on stderr (default error)\n"
          "  --help             show this help and exit\n"
          "  --version          show the version and exit\n"
          "\n"
          "Exit status: 0 the plugin conforms; 1 it does not; 2 usage error.\n",
          out);
}

static int usage_error(const char *fmt, ...) KEEL_PRINTF(1, 2);

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("keel-plugin-check: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\nTry 'keel-plugin-check --help' for more information.\n", stderr);
    va_end(ap);
    return EXIT_USAGE;
}

static int report(struct check *c)
{
    if (c->nfindings == 0) {
        printf("result:     PASS\n");
        return EXIT_CONFORMS;
    }
    printf("result:     FAIL (%zu problem%s)\n", c->nfindings, c->nfindings == 1 ? "" : "s");
    for (size_t i = 0; i < c->nfindings; i++) {
        if (c->findings[i].count > 1)
            printf("  - %s [%u times]\n", c->findings[i].text, c->findings[i].count);
        else
            printf("  - %s\n", c->findings[i].text);
    }
    return EXIT_FINDINGS;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"manifest", required_argument, NULL, 'm'},
        {"iterations", required_argument, NULL, 'n'},
        {"log-level", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"timeout-ms", required_argument, NULL, 't'},
        {NULL, 0, NULL, 0},
    };
    struct check c = {.iterations = DEFAULT_ITERATIONS};
    int level = KEEL_LOG_ERROR;

    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "hV", options, NULL)) != -1) {
        switch (opt) {
        case 'm':
            c.manifest_path = optarg;
            break;
        case 'n': {
            char *end = NULL;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0' || v < 1 || v > MAX_ITERATIONS)
                return usage_error("--iterations must be a whole number from 1 to %d, not '%s'",
                                   MAX_ITERATIONS, optarg);
            c.iterations = v;
            break;
        }
        case 't': {
            char *end = NULL;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0' || v < 10 || v > 3600000)
                return usage_error("--timeout-ms must be a whole number from 10 to 3600000, "
                                   "not '%s'",
                                   optarg);
            step_timeout_ms = (int)v;
            break;
        }
        case 'l':
            level = keel__log_parse_level(optarg);
            if (level < 0)
                return usage_error("--log-level must be error, warn, info or debug, not '%s'",
                                   optarg);
            break;
        case 'h':
            usage(stdout);
            return EXIT_CONFORMS;
        case 'V':
            printf("keel-plugin-check (keel) %s, plugin ABI %d.%d\n", PACKAGE_VERSION,
                   KEEL_ABI_MAJOR, KEEL_ABI_MINOR);
            return EXIT_CONFORMS;
        default:
            if (optopt != 0 && optopt != '?')
                return usage_error("unknown or incomplete option '-%c'", optopt);
            return usage_error("unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (argc - optind != 1)
        return usage_error(argc - optind < 1 ? "no plugin given" : "only one plugin at a time");
    char *plugin = realpath(argv[optind], NULL);
    if (plugin == NULL)
        return usage_error("%s: %s", argv[optind], strerror(errno));
    c.plugin = plugin;
    keel__log_set_level(level);
    install_crash_handlers();
    /* init has the loader's own deadline (refused at stage init, reported
     * as a finding); every other call has the step deadline, a little
     * longer so the loader's message wins for init. */
    keel__loader_set_init_timeout(step_timeout_ms);
    step_timeout_ms += 1000;
    pthread_t deadline_thread;
    if (pthread_create(&deadline_thread, NULL, step_deadline, NULL) == 0)
        pthread_detach(deadline_thread);

    printf("keel-plugin-check %s (host ABI %d.%d): %s\n", PACKAGE_VERSION, KEEL_ABI_MAJOR,
           KEEL_ABI_MINOR, plugin);
    static_checks(&c);

    json_t *routes = NULL;
    struct keel__manifest m;
    memset(&m, 0, sizeof m);
    bool have_manifest = false;
    if (!c.stop && probe_descriptor(&c, &routes) == 0) {
        printf("plugin:     %s %s (built for ABI %u.%u)\n", c.name, c.version, c.abi_major,
               c.abi_minor);
        have_manifest = build_manifest(&c, routes, &m) == 0;
    }
    json_decref(routes);

    int rc;
    if (have_manifest) {
        /* Plugins' tasks may call upstream services from their own threads:
         * libcurl's global set-up must happen once, before any of them. */
        if (keel__upstream_global_init() != 0 || keel__loader_init() != 0) {
            fputs("keel-plugin-check: cannot set up the plugin loader\n", stderr);
            keel__manifest_clear(&m);
            free(plugin);
            return EXIT_USAGE;
        }
        run_cycles(&c, &m);
        /* Shutting libltdl down closes every module, also one kept loaded
         * because threads still run in it. */
        if (!c.kept_loaded) {
            keel__loader_shutdown();
            keel__plugin_metrics_free();
            keel__upstream_global_cleanup();
        }
        keel__manifest_clear(&m);
    }
    rc = report(&c);
    for (size_t i = 0; i < c.nfindings; i++)
        free(c.findings[i].text);
    free(c.findings);
    free(plugin);
    if (fflush(stdout) != 0)
        rc = EXIT_USAGE;
    return rc;
}
