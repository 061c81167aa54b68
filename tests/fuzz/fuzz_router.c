/*
 * Fuzzes route matching (keel__router_match) on the router keeld builds
 * for its main listener: the core routes plus the routes of the shipped
 * example and creator manifests (conf.d/50-example.json, 60-creator.json,
 * read from the source tree at start-up).
 *
 * Input: "METHOD\nPATH" (the path still percent-encoded, as it comes off the
 * wire).  Besides memory safety it checks the router's documented promises:
 * strlen(path) + 1 bytes of scratch always suffice (a larger buffer gives
 * the same answer), a match yields at most KEEL__ROUTER_MAX_PARAMS
 * parameters, none of them empty, ".", "..", containing '/' or not valid
 * UTF-8, and the
 * Allow list of a 405 ends with OPTIONS.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <keel/error.h>

#include "ops/core_routes.h"
#include "conf/conf.h"
#include "plugin/manifest.h"
#include "fuzz_common.h"
#include "http/router.h"

#ifndef KEEL_FUZZ_SRCDIR
#define KEEL_FUZZ_SRCDIR "."
#endif

static keel__router *router;
static int tag;

static void add_manifest(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/conf.d/%s", KEEL_FUZZ_SRCDIR, name);
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    if (doc == NULL) {
        fprintf(stderr, "fuzz_router: cannot read %s: %s\n", path, jerr.text);
        abort();
    }
    struct keel__manifest m;
    char err[512];
    if (keel__manifest_parse(json_object_get(doc, "plugin"), path, "/nonexistent", &m, err,
                             sizeof err) != 0) {
        fprintf(stderr, "fuzz_router: %s\n", err);
        abort();
    }
    for (size_t i = 0; i < m.nroutes; i++) {
        if (m.routes[i].listener != KEEL__LISTENER_MAIN)
            continue;
        if (keel__router_add(router, m.routes[i].method, m.routes[i].path, m.name, &tag, err,
                             sizeof err) != 0) {
            fprintf(stderr, "fuzz_router: %s\n", err);
            abort();
        }
    }
    keel__manifest_clear(&m);
    json_decref(doc);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    router = keel__router_new();
    if (router == NULL)
        abort();
    char err[512];
    for (size_t i = 0; i < keel__ncore_routes; i++) {
        const struct keel__core_route *r = &keel__core_routes[i];
        if (r->listener == KEEL__LISTENER_MAIN &&
            keel__router_add(router, r->method, r->path, "core", &tag, err, sizeof err) != 0)
            abort();
    }
    add_manifest("50-example.json");
    add_manifest("60-creator.json");
    return 0;
}

/* An oracle written apart from the router's: decodes code points and checks
 * each one's range and shortest form. */
static bool valid_utf8(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    while (*s) {
        unsigned cp;
        int n;
        if (*s < 0x80) {
            s++;
            continue;
        }
        if ((*s & 0xE0) == 0xC0) {
            cp = *s & 0x1F;
            n = 1;
        } else if ((*s & 0xF0) == 0xE0) {
            cp = *s & 0x0F;
            n = 2;
        } else if ((*s & 0xF8) == 0xF0) {
            cp = *s & 0x07;
            n = 3;
        } else {
            return false;
        }
        for (int i = 1; i <= n; i++) {
            if ((s[i] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i] & 0x3F);
        }
        static const unsigned min[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        s += n + 1;
    }
    return true;
}

static void check_match(int rc, const struct keel__route_match *m, const char *allow,
                        size_t pathlen)
{
    if (rc == KEEL__MATCH_OK) {
        if (m->data != &tag || m->nparams > KEEL__ROUTER_MAX_PARAMS || m->template_path == NULL)
            abort();
        for (size_t i = 0; i < m->nparams; i++) {
            const char *v = m->values[i];
            if (v == NULL || m->names[i] == NULL || *v == '\0' || strlen(v) > pathlen ||
                strchr(v, '/') != NULL || strcmp(v, ".") == 0 || strcmp(v, "..") == 0 ||
                !valid_utf8(v))
                abort();
        }
    } else if (rc == KEEL__MATCH_NO_METHOD) {
        size_t n = strlen(allow);
        if (n < 7 || strcmp(allow + n - 7, "OPTIONS") != 0)
            abort();
    } else if (rc != KEEL__MATCH_NOT_FOUND) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    if (nl == NULL || nl - data > 16)
        return 0;
    char method[17];
    size_t ml = (size_t)(nl - data);
    memcpy(method, data, ml);
    method[ml] = '\0';
    if (strlen(method) != ml)
        return 0;
    size_t pl = size - ml - 1;
    char *path = malloc(pl + 1);
    if (path == NULL)
        abort();
    memcpy(path, nl + 1, pl);
    path[pl] = '\0';
    pl = strlen(path); /* MHD hands over a C string: an embedded NUL ends it */

    /* Exactly the documented minimum of scratch, then a roomy buffer. */
    char *tight = malloc(pl + 1);
    char *roomy = malloc(2 * pl + 64);
    if (tight == NULL || roomy == NULL)
        abort();
    struct keel__route_match m1, m2;
    char allow1[256], allow2[256];
    int rc1 = keel__router_match(router, method, path, &m1, tight, pl + 1, allow1, sizeof allow1);
    check_match(rc1, &m1, allow1, pl);
    int rc2 = keel__router_match(router, method, path, &m2, roomy, 2 * pl + 64, allow2,
                                 sizeof allow2);
    check_match(rc2, &m2, allow2, pl);
    if (rc1 != rc2)
        abort();
    if (rc1 == KEEL__MATCH_OK) {
        if (m1.nparams != m2.nparams || strcmp(m1.template_path, m2.template_path) != 0)
            abort();
        for (size_t i = 0; i < m1.nparams; i++)
            if (strcmp(m1.values[i], m2.values[i]) != 0)
                abort();
    }
    if (rc1 == KEEL__MATCH_NO_METHOD && strcmp(allow1, allow2) != 0)
        abort();
    /* A tiny scratch buffer must fail cleanly, never overflow. */
    char small[8];
    struct keel__route_match m3;
    keel__router_match(router, method, path, &m3, small, sizeof small, NULL, 0);
    free(tight);
    free(roomy);
    free(path);
    return 0;
}
