/* The conf.d loader: reads the directory's files in name order, applies
 * each section through the schema (schema.c) and parses plugin manifests
 * once plugin_dir is final. */
#include "config.h"

#include "conf/conf.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <keel/error.h>

#include "conf/schema.h"
#include "util/file.h"

/* More than there are sections; checked against the schema at load. */
#define KEEL__CONF_MAX_SECTIONS 16

static const struct keel__manifest_ops *manifest_ops;

void keel__conf_set_manifest_ops(const struct keel__manifest_ops *ops)
{
    manifest_ops = ops;
}

const struct keel__manifest_ops *keel__conf_manifest_ops(void)
{
    return manifest_ops;
}

/* A manifest seen while reading files, parsed once plugin_dir is final. */
struct pending_plugin {
    json_t *obj;
    char *source;
};

struct load_state {
    struct keel__conf *conf;
    const char *seen[KEEL__CONF_MAX_SECTIONS]; /* the file that defined each section */
    char **files;                              /* paths of the files read, owned */
    size_t nfiles;
    struct pending_plugin *pending;
    size_t npending;
    unsigned long load; /* this load's number, for the parsed files */
};

static int json_file_filter(const struct dirent *d)
{
    size_t n = strlen(d->d_name);
    return d->d_name[0] != '.' && n > 5 && strcmp(d->d_name + n - 5, ".json") == 0;
}

/* Byte order, not the locale's collation: "10-x" < "9-y" everywhere. */
static int name_order(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

/* The parsed files, by path and content.  A reload reads every file of
 * conf.d again, in the supervisor and in each worker, but a file is parsed
 * only when its bytes changed: parsing the creator plugin's manifest was
 * most of a reload's CPU, taken from the requests being served.  The bytes
 * themselves are compared, not a size and mtime, which a quick edit can
 * leave unchanged.  The trees are shared read-only (jansson's counts are
 * atomic); a worker forked from the supervisor starts with its entries. */
struct parsed_file {
    char *dir; /* as the load was given it */
    char *path;
    char *bytes;
    size_t len;
    json_t *root;
    unsigned long used; /* the load that last asked for it */
    struct parsed_file *next;
};

static pthread_mutex_t parsed_lock = PTHREAD_MUTEX_INITIALIZER;
static struct parsed_file *parsed;
static unsigned long parsed_loads;
static atomic_ulong parses; /* for the tests */

/* Larger than any conf.d file has reason to be. */
#define KEEL__CONF_MAX_FILE ((size_t)64 << 20)

/* Frees a list of entries already out of the cache. */
static void parsed_free(struct parsed_file *e)
{
    while (e != NULL) {
        struct parsed_file *next = e->next;
        free(e->dir);
        free(e->path);
        free(e->bytes);
        json_decref(e->root);
        free(e);
        e = next;
    }
}

/* The file's tree, parsed now or earlier from the same bytes: a reference
 * the caller drops. */
static int parse_file(const struct load_state *st, const char *path, json_t **out, char *err,
                      size_t errlen)
{
    char *bytes = NULL;
    size_t len = 0;
    int rc = keel__file_read(path, KEEL__CONF_MAX_FILE, &bytes, &len, err, errlen);
    if (rc < 0)
        return rc == KEEL_ENOMEM ? rc : KEEL_ECONFIG;
    pthread_mutex_lock(&parsed_lock);
    struct parsed_file *e = parsed;
    while (e != NULL && strcmp(e->path, path) != 0)
        e = e->next;
    if (e != NULL && e->len == len && memcmp(e->bytes, bytes, len) == 0) {
        e->used = st->load;
        *out = json_incref(e->root);
        pthread_mutex_unlock(&parsed_lock);
        free(bytes);
        return 0;
    }
    pthread_mutex_unlock(&parsed_lock);

    json_error_t je;
    json_t *root = json_loadb(bytes, len, JSON_REJECT_DUPLICATES, &je);
    atomic_fetch_add_explicit(&parses, 1, memory_order_relaxed);
    if (root == NULL) {
        free(bytes);
        return keel__conf_fail(err, errlen, "%s: line %d, column %d: %s", path, je.line, je.column,
                               je.text);
    }
    *out = root;
    struct parsed_file *fresh = calloc(1, sizeof *fresh);
    if (fresh == NULL || (fresh->dir = strdup(st->conf->dir)) == NULL ||
        (fresh->path = strdup(path)) == NULL) {
        /* Parsed all the same: only the next reload pays again. */
        parsed_free(fresh);
        free(bytes);
        return 0;
    }
    fresh->bytes = bytes;
    fresh->len = len;
    fresh->root = json_incref(root);
    fresh->used = st->load;
    pthread_mutex_lock(&parsed_lock);
    fresh->next = parsed;
    parsed = fresh;
    pthread_mutex_unlock(&parsed_lock);
    return 0;
}

/* After a load of dir: forget its files that this load did not ask for
 * (removed, or replaced by a newer parse), so that the cache holds one
 * tree per file. */
static void parsed_forget(const char *dir, unsigned long load)
{
    struct parsed_file *gone = NULL;
    pthread_mutex_lock(&parsed_lock);
    for (struct parsed_file **pp = &parsed; *pp != NULL;) {
        struct parsed_file *e = *pp;
        if (e->used != load && strcmp(e->dir, dir) == 0) {
            *pp = e->next;
            e->next = gone;
            gone = e;
        } else {
            pp = &e->next;
        }
    }
    pthread_mutex_unlock(&parsed_lock);
    parsed_free(gone);
}

unsigned long keel__conf_files_parsed(void)
{
    return atomic_load_explicit(&parses, memory_order_relaxed);
}

void keel__conf_forget_parsed(void)
{
    pthread_mutex_lock(&parsed_lock);
    struct parsed_file *all = parsed;
    parsed = NULL;
    pthread_mutex_unlock(&parsed_lock);
    parsed_free(all);
}

static int load_file(struct load_state *st, const char *path, char *err, size_t errlen)
{
    const char *key;
    json_t *value;
    int rc = 0;

    json_t *root = NULL;
    rc = parse_file(st, path, &root, err, errlen);
    if (rc < 0)
        return rc;
    if (!json_is_object(root)) {
        json_decref(root);
        return keel__conf_fail(err, errlen, "%s: expected a JSON object of sections", path);
    }

    struct parse_ctx c = {.conf = st->conf, .file = path, .err = err, .errlen = errlen};
    json_object_foreach(root, key, value)
    {
        if (strcmp(key, "plugin") == 0) {
            struct pending_plugin *grown = realloc(st->pending,
                                                   (st->npending + 1) * sizeof *st->pending);
            if (grown == NULL) {
                rc = keel__conf_nomem(err, errlen);
                break;
            }
            st->pending = grown;
            grown[st->npending].source = strdup(path);
            if (grown[st->npending].source == NULL) {
                rc = keel__conf_nomem(err, errlen);
                break;
            }
            grown[st->npending].obj = json_incref(value);
            st->npending++;
            continue;
        }
        size_t s = 0;
        while (s < keel__conf_nsections && strcmp(keel__conf_section_names[s], key) != 0)
            s++;
        if (s == keel__conf_nsections) {
            const char *known[KEEL__CONF_MAX_SECTIONS + 2];
            size_t k = 0;
            for (; k < keel__conf_nsections && k < KEEL__CONF_MAX_SECTIONS; k++)
                known[k] = keel__conf_section_names[k];
            known[k++] = "plugin";
            known[k] = NULL;
            char hint[96];
            rc = keel__conf_fail(err, errlen, "%s: %s: unknown section%s", path, key,
                                 keel__conf_hint(key, known, hint, sizeof hint));
            break;
        }
        if (st->seen[s] != NULL) {
            rc = keel__conf_fail(err, errlen, "%s: section \"%s\" is already defined in %s", path,
                                 key, st->seen[s]);
            break;
        }
        st->seen[s] = path;
        rc = keel__conf_apply_section(&c, s, value);
        if (rc < 0)
            break;
    }
    json_decref(root);
    return rc;
}

static int load_plugins(struct load_state *st, char *err, size_t errlen)
{
    struct keel__conf *conf = st->conf;

    if (st->npending == 0)
        return 0;
    if (manifest_ops == NULL)
        return keel__conf_fail(err, errlen, "%s: plugin manifests cannot be read here",
                               st->pending[0].source);
    conf->plugins = calloc(st->npending, sizeof *conf->plugins);
    if (conf->plugins == NULL)
        return keel__conf_nomem(err, errlen);
    for (size_t i = 0; i < st->npending; i++) {
        struct keel__manifest *m = &conf->plugins[conf->nplugins];
        int rc = manifest_ops->parse(st->pending[i].obj, st->pending[i].source,
                                     conf->server.plugin_dir, m, err, errlen);
        if (rc < 0)
            return rc;
        conf->nplugins++;
        for (size_t j = 0; j + 1 < conf->nplugins; j++) {
            if (strcmp(conf->plugins[j].name, m->name) == 0)
                return keel__conf_fail(err, errlen, "%s: plugin \"%s\" is already defined in %s",
                                       m->source, m->name, conf->plugins[j].source);
        }
    }
    return 0;
}

int keel__conf_load(const char *dir, struct keel__conf **out, char *err, size_t errlen)
{
    struct load_state st = {0};
    struct dirent **names = NULL;
    int n = 0, rc;

    *out = NULL;
    if (dir == NULL || dir[0] == '\0')
        return keel__conf_fail(err, errlen, "no configuration directory given");
    st.conf = calloc(1, sizeof *st.conf);
    if (st.conf == NULL)
        return keel__conf_nomem(err, errlen);
    rc = keel__conf_set_defaults(st.conf);
    if (rc == 0)
        rc = keel__conf_set_string(&st.conf->dir, dir);
    if (rc < 0) {
        rc = keel__conf_nomem(err, errlen);
        goto out;
    }

    pthread_mutex_lock(&parsed_lock);
    st.load = ++parsed_loads;
    pthread_mutex_unlock(&parsed_lock);
    n = scandir(dir, &names, json_file_filter, name_order);
    if (n < 0) {
        rc = keel__conf_fail(err, errlen, "%s: cannot read the configuration directory: %s", dir,
                             strerror(errno));
        n = 0;
        goto out;
    }
    st.files = calloc((size_t)n + 1, sizeof *st.files);
    if (st.files == NULL) {
        rc = keel__conf_nomem(err, errlen);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        struct stat sb;
        char *path = keel__path_join(dir, names[i]->d_name);
        if (path == NULL) {
            rc = keel__conf_nomem(err, errlen);
            goto out;
        }
        st.files[st.nfiles++] = path;
        /* A directory that happens to be called x.json is not a file to read. */
        if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode))
            continue;
        rc = load_file(&st, path, err, errlen);
        if (rc < 0)
            goto out;
    }
    rc = load_plugins(&st, err, errlen);

out:
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    for (size_t i = 0; i < st.nfiles; i++)
        free(st.files[i]);
    free(st.files);
    for (size_t i = 0; i < st.npending; i++) {
        json_decref(st.pending[i].obj);
        free(st.pending[i].source);
    }
    free(st.pending);
    if (rc < 0) {
        keel__conf_free(st.conf);
        return rc == KEEL_ENOMEM ? rc : KEEL_ECONFIG;
    }
    parsed_forget(dir, st.load);
    *out = st.conf;
    return 0;
}

void keel__conf_free(struct keel__conf *conf)
{
    if (conf == NULL)
        return;
    free(conf->dir);
    keel__conf_free_members(conf);
    for (size_t i = 0; i < conf->nplugins; i++)
        manifest_ops->clear(&conf->plugins[i]);
    free(conf->plugins);
    free(conf);
}
