/*
 * Loading one generation of a plugin (docs/operations.md describes reload).
 *
 * Each load of a plugin is a numbered generation.  The .so is first copied to
 * a private, unique path so that a plugin rebuilt or replaced at the same path
 * is really loaded anew and overwriting the installed file cannot disturb the
 * mapped copy.  The copy is opened through libltdl with a loader that binds
 * every symbol at load time (RTLD_NOW), so a missing symbol fails the load and
 * not the first request.  Stages: dlopen -> abi -> routes -> init (routes are
 * checked against the manifest before any plugin code but the entry point
 * runs); the caller (registry.c, reload.c) adds manifest before and commit
 * after.
 *
 * A generation is reference counted: the route table that lists it holds one
 * reference and so does every request dispatched on such a table.  When the
 * last reference goes, fini runs, the library is closed and the copy removed.
 */
#ifndef KEEL_CORE_PLUGIN_LOADER_H
#define KEEL_CORE_PLUGIN_LOADER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <ltdl.h>

#include <keel/plugin.h>

#include "conf/conf.h"

enum keel__stage {
    KEEL__STAGE_MANIFEST = 0,
    KEEL__STAGE_DLOPEN,
    KEEL__STAGE_ABI,
    KEEL__STAGE_INIT,
    KEEL__STAGE_ROUTES,
    KEEL__STAGE_COMMIT
};

enum keel__reason {
    KEEL__REASON_NONE = 0,
    KEEL__REASON_NOT_INSTALLED,
    KEEL__REASON_ABI_MISMATCH,
    KEEL__REASON_INIT_FAILED,
    KEEL__REASON_DISABLED,
    KEEL__REASON_LOAD_FAILED,
    KEEL__REASON_CRASHED, /* quarantined: crashed a worker */
    KEEL__REASON_HUNG,    /* quarantined: a handler ran past its timeout */
    KEEL__REASON_STARTING /* init still running at start-up (stubs answer 503) */
};

struct keel__load_error {
    int stage;  /* enum keel__stage */
    int reason; /* enum keel__reason the stubs will report */
    char message[512];
};

struct keel__generation {
    atomic_long refs;
    uint64_t number;
    char *name;
    char *file;      /* the installed path it was loaded from */
    char *copy_path; /* the private copy actually mapped */
    lt_dlhandle handle;
    const keel_plugin *desc;
    void *state;
    int64_t loaded_at; /* unix seconds */
    atomic_long in_flight;
    atomic_ullong requests;
    struct keel__gen_res *res; /* tasks and upstreams init declared (plugin/tasks.h) */
};

/* Sets up libltdl and the private copy directory.  Call once at start-up. */
int keel__loader_init(void) KEEL_WARN_UNUSED;
/* Where each plugin's own migrations ("migrations" in its manifest) are
 * compared with the database before init (copied; conninfo NULL or ""
 * turns the check off).  0 or KEEL_ENOMEM. */
int keel__loader_set_schema(const char *conninfo, const char *migrations_dir) KEEL_WARN_UNUSED;
/* Where keel__loader_init makes its directory of private plugin copies
 * (server.runtime_dir); NULL or "" = $TMPDIR or /tmp.  Copies left there by
 * a keeld that no longer runs are removed by keel__loader_init. */
void keel__loader_set_runtime_dir(const char *dir);
/* Plugin init runs on a thread of its own and is abandoned (the plugin
 * refused at stage init) past this many milliseconds.  Default 10000. */
void keel__loader_set_init_timeout(int ms);
/* Removes the private copy directory (generations must be gone). */
void keel__loader_shutdown(void);

/*
 * Loads generation `number` of the plugin described by m.  On success *out
 * holds one reference.  On failure *err says the stage, the reason and the
 * loader's message, and nothing is left loaded.
 */
int keel__generation_load(const struct keel__manifest *m, uint64_t number, const keel_host *host,
                          struct keel__generation **out,
                          struct keel__load_error *err) KEEL_WARN_UNUSED;

/*
 * The same, but with pending non-NULL and wait_ms below the init timeout,
 * an init still running after wait_ms is left to run: KEEL_EBUSY, and
 * *pending is for keel__generation_load_finish, which waits for it until
 * the init deadline and completes the load (or refuses it at stage init).
 */
struct keel__pending_init;
int keel__generation_load_start(const struct keel__manifest *m, uint64_t number,
                                const keel_host *host, int wait_ms, struct keel__generation **out,
                                struct keel__pending_init **pending,
                                struct keel__load_error *err) KEEL_WARN_UNUSED;
/* Takes p (freed).  Returns as keel__generation_load. */
int keel__generation_load_finish(struct keel__pending_init *p, struct keel__generation **out,
                                 struct keel__load_error *err) KEEL_WARN_UNUSED;

void keel__generation_ref(struct keel__generation *g);
/* Drops a reference; the last one finalises and unloads the generation,
 * here or through the finaliser below. */
void keel__generation_unref(struct keel__generation *g);

/* Where the last reference's work goes: post(fn, arg) runs fn(arg) later on
 * a thread that serves no requests and returns 0, or returns nonzero (then
 * the generation is finalised where its last reference went, as without a
 * finaliser).  The last reference is often a request finishing on a
 * serving thread: stopping the generation's tasks, its fini and the unload
 * would hold up every connection of that thread (docs/performance.md,
 * round 12).  NULL (the default) finalises in place. */
typedef int keel__finaliser_post(void (*fn)(void *), void *arg);
void keel__generation_set_finaliser(keel__finaliser_post *post);

/* The handler of method+template in g's route table, or NULL. */
keel_handler_fn keel__generation_handler(const struct keel__generation *g, const char *method,
                                         const char *path_template);

/*
 * Checks a descriptor against this host: magic, ABI major, descriptor size,
 * required capabilities, name.  Returns 0 or KEEL_EABI with a message that
 * says what to rebuild against.
 */
int keel__abi_check(const keel_plugin *d, const char *expected_name, char *err,
                    size_t errlen) KEEL_WARN_UNUSED;

/* Number of generations currently mapped (for tests and metrics). */
long keel__generations_live(void);

const char *keel__stage_name(int stage);
const char *keel__reason_name(int reason);

#endif
