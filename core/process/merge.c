#include "config.h"

#include "process/merge.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *find_by(json_t *list, const char *key, const char *value)
{
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e)
    {
        const char *v = json_string_value(json_object_get(e, key));
        if (v != NULL && strcmp(v, value) == 0)
            return e;
    }
    return NULL;
}

static void add_int(json_t *obj, const char *key, json_int_t more)
{
    json_int_t v = json_integer_value(json_object_get(obj, key));
    json_object_set_new(obj, key, json_integer(v + more));
}

json_t *keel__merge_describe(json_t *const *parts, size_t n)
{
    json_t *out = json_array();
    bool in_progress = false;
    for (size_t p = 0; p < n; p++) {
        if (parts[p] == NULL)
            continue;
        if (json_is_true(json_object_get(parts[p], "reload_in_progress")))
            in_progress = true;
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(parts[p], "plugins"), i, e)
        {
            const char *name = json_string_value(json_object_get(e, "name"));
            if (name == NULL)
                continue;
            json_t *have = find_by(out, "name", name);
            if (have == NULL) {
                json_array_append_new(out, json_deep_copy(e));
                continue;
            }
            json_int_t requests = json_integer_value(json_object_get(have, "requests")) +
                                  json_integer_value(json_object_get(e, "requests"));
            json_int_t in_flight = json_integer_value(json_object_get(have, "in_flight")) +
                                   json_integer_value(json_object_get(e, "in_flight"));
            const char *st = json_string_value(json_object_get(e, "state"));
            const char *hs = json_string_value(json_object_get(have, "state"));
            if (st != NULL && hs != NULL && strcmp(hs, "loaded") == 0 &&
                strcmp(st, "loaded") != 0) {
                /* This worker does not serve the plugin's code: show why. */
                json_object_update(have, e);
            }
            json_object_set_new(have, "requests", json_integer(requests));
            json_object_set_new(have, "in_flight", json_integer(in_flight));
        }
    }
    json_t *d = json_pack("{s:o}", "plugins", out);
    if (d != NULL && in_progress)
        json_object_set_new(d, "reload_in_progress", json_true());
    return d;
}

json_t *keel__merge_reload(json_t *const *parts, size_t n)
{
    json_t *results = json_array();
    bool ok = true, any = false;
    for (size_t p = 0; p < n; p++) {
        if (parts[p] == NULL)
            continue;
        if (json_is_true(json_object_get(parts[p], "unknown"))) {
            json_decref(results);
            return json_pack("{s:b, s:b, s:[]}", "ok", 0, "unknown", 1, "results");
        }
        any = true;
        if (!json_is_true(json_object_get(parts[p], "ok")))
            ok = false;
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(parts[p], "results"), i, e)
        {
            const char *name = json_string_value(json_object_get(e, "plugin"));
            if (name == NULL)
                continue;
            json_t *have = find_by(results, "plugin", name);
            if (have == NULL) {
                json_array_append_new(results, json_deep_copy(e));
                continue;
            }
            if (json_is_true(json_object_get(have, "ok")) &&
                !json_is_true(json_object_get(e, "ok")))
                json_object_update(have, e);
        }
    }
    return json_pack("{s:b, s:o}", "ok", ok && any, "results", results);
}

json_t *keel__merge_status(json_t *const *parts, size_t n)
{
    json_t *out = NULL;
    for (size_t p = 0; p < n; p++) {
        if (parts[p] == NULL)
            continue;
        if (out == NULL) {
            out = json_deep_copy(parts[p]);
            continue;
        }
        add_int(out, "requests_total",
                json_integer_value(json_object_get(parts[p], "requests_total")));
        add_int(out, "in_flight", json_integer_value(json_object_get(parts[p], "in_flight")));
        /* Every worker has its own pool and cache: the server has them all. */
        static const char *const pool_keys[] = {"size", "in_use", "idle", "waits", NULL};
        json_t *pool = json_object_get(json_object_get(out, "database"), "pool");
        json_t *theirs = json_object_get(json_object_get(parts[p], "database"), "pool");
        for (size_t k = 0; pool != NULL && pool_keys[k] != NULL; k++)
            add_int(pool, pool_keys[k], json_integer_value(json_object_get(theirs, pool_keys[k])));
        static const char *const cache_keys[] = {"hits", "misses", "evictions", "entries", NULL};
        json_t *cache = json_object_get(out, "usersync");
        json_t *their_cache = json_object_get(parts[p], "usersync");
        for (size_t k = 0; cache != NULL && cache_keys[k] != NULL; k++)
            add_int(cache, cache_keys[k],
                    json_integer_value(json_object_get(their_cache, cache_keys[k])));
    }
    return out ? out : json_object();
}

/* ------------------------------------------------------------ metrics */

enum agg { AGG_SUM, AGG_MAX, AGG_MIN };

struct sample {
    char *key; /* name{labels} */
    double value;
};

struct family {
    char *name;
    char *help, *type; /* whole lines, or NULL */
    enum agg agg;
    struct sample *samples;
    size_t nsamples, cap;
    json_t *index; /* key -> sample index */
};

static enum agg agg_for(const char *family)
{
    static const char *const max[] = {"keel_plugin_generation",    "keel_reloads_total",
                                      "keel_plugin_reloads_total", "keel_db_breaker_state",
                                      "keel_build_info",           NULL};
    for (size_t i = 0; max[i] != NULL; i++)
        if (strcmp(family, max[i]) == 0)
            return AGG_MAX;
    /* The oldest worker's start: close to the supervisor's. */
    if (strcmp(family, "keel_plugin_up") == 0 || strcmp(family, "keel_start_time_seconds") == 0)
        return AGG_MIN;
    return AGG_SUM;
}

struct fams {
    struct family *f;
    size_t n, cap;
    json_t *index;
};

static struct family *family_get(struct fams *fs, const char *name, size_t len)
{
    char key[256];
    snprintf(key, sizeof key, "%.*s", (int)(len < 255 ? len : 255), name);
    json_t *at = json_object_get(fs->index, key);
    if (at != NULL)
        return &fs->f[json_integer_value(at)];
    if (fs->n == fs->cap) {
        size_t ncap = fs->cap ? fs->cap * 2 : 64;
        struct family *grown = realloc(fs->f, ncap * sizeof *grown);
        if (grown == NULL)
            return NULL;
        fs->f = grown;
        fs->cap = ncap;
    }
    struct family *f = &fs->f[fs->n];
    memset(f, 0, sizeof *f);
    f->name = strdup(key);
    f->index = json_object();
    f->agg = agg_for(key);
    if (f->name == NULL || f->index == NULL)
        return NULL;
    json_object_set_new(fs->index, key, json_integer((json_int_t)fs->n));
    fs->n++;
    return f;
}

static int family_add(struct family *f, const char *key, size_t klen, double v)
{
    char *k = strndup(key, klen);
    if (k == NULL)
        return -1;
    json_t *at = json_object_get(f->index, k);
    if (at != NULL) {
        struct sample *s = &f->samples[json_integer_value(at)];
        free(k);
        if (f->agg == AGG_SUM)
            s->value += v;
        else if (f->agg == AGG_MAX ? v > s->value : v < s->value)
            s->value = v;
        return 0;
    }
    if (f->nsamples == f->cap) {
        size_t ncap = f->cap ? f->cap * 2 : 16;
        struct sample *grown = realloc(f->samples, ncap * sizeof *grown);
        if (grown == NULL) {
            free(k);
            return -1;
        }
        f->samples = grown;
        f->cap = ncap;
    }
    json_object_set_new(f->index, k, json_integer((json_int_t)f->nsamples));
    f->samples[f->nsamples++] = (struct sample){k, v};
    return 0;
}

struct out {
    char *buf;
    size_t len, cap;
    bool failed;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->failed)
        return;
    if (o->len + n + 1 > o->cap) {
        size_t ncap = o->cap ? o->cap : 16384;
        while (o->len + n + 1 > ncap)
            ncap *= 2;
        char *grown = realloc(o->buf, ncap);
        if (grown == NULL) {
            o->failed = true;
            return;
        }
        o->buf = grown;
        o->cap = ncap;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

char *keel__merge_metrics(const char *const *texts, size_t n)
{
    struct fams fs = {.index = json_object()};
    bool failed = fs.index == NULL;
    for (size_t t = 0; t < n && !failed; t++) {
        if (texts[t] == NULL)
            continue;
        struct family *cur = NULL;
        for (const char *line = texts[t]; *line != '\0' && !failed;) {
            const char *eol = strchr(line, '\n');
            size_t len = eol ? (size_t)(eol - line) : strlen(line);
            if (len > 7 && (strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0)) {
                const char *name = line + 7;
                size_t nl = strcspn(name, " \n");
                cur = family_get(&fs, name, nl);
                if (cur == NULL) {
                    failed = true;
                    break;
                }
                char **slot = line[2] == 'H' ? &cur->help : &cur->type;
                if (*slot == NULL && (*slot = strndup(line, len)) == NULL)
                    failed = true;
            } else if (len > 0 && line[0] != '#') {
                const char *sp = NULL;
                for (size_t i = len; i > 0; i--)
                    if (line[i - 1] == ' ') {
                        sp = line + i - 1;
                        break;
                    }
                if (sp != NULL) {
                    if (cur == NULL) {
                        size_t nl = strcspn(line, "{ ");
                        cur = family_get(&fs, line, nl);
                    }
                    char *end;
                    double v = strtod(sp + 1, &end);
                    if (cur == NULL || family_add(cur, line, (size_t)(sp - line), v) != 0)
                        failed = true;
                }
            }
            line += len + (eol ? 1 : 0);
        }
    }
    struct out o = {0};
    put(&o, "", 0);
    for (size_t i = 0; i < fs.n; i++) {
        struct family *f = &fs.f[i];
        if (!failed) {
            if (f->help) {
                put(&o, f->help, strlen(f->help));
                put(&o, "\n", 1);
            }
            if (f->type) {
                put(&o, f->type, strlen(f->type));
                put(&o, "\n", 1);
            }
            for (size_t s = 0; s < f->nsamples; s++) {
                char num[64];
                double v = f->samples[s].value;
                if (v == floor(v) && fabs(v) < 1e15)
                    snprintf(num, sizeof num, " %.0f\n", v);
                else
                    snprintf(num, sizeof num, " %.9f\n", v);
                put(&o, f->samples[s].key, strlen(f->samples[s].key));
                put(&o, num, strlen(num));
            }
        }
        for (size_t s = 0; s < f->nsamples; s++)
            free(f->samples[s].key);
        free(f->samples);
        free(f->name);
        free(f->help);
        free(f->type);
        json_decref(f->index);
    }
    free(fs.f);
    json_decref(fs.index);
    if (failed || o.failed) {
        free(o.buf);
        return NULL;
    }
    return o.buf;
}
