/*
 * Fuzzes plugin manifest parsing (keel__manifest_parse): the route
 * templates, methods, auth levels, listeners, fallbacks and their
 * ${reason} bodies that the core reads from conf.d and on every reload.
 *
 * Input: JSON text.  An object is parsed as the value of "plugin"; an
 * object that has a "plugin" member is parsed through that member, so the
 * shipped conf.d files are valid seeds as they are.  A manifest that parses
 * must also build a router without error (the parser promised its routes
 * are well-formed and free of conflicts).
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <keel/error.h>

#include "conf/conf.h"
#include "plugin/manifest.h"
#include "fuzz_common.h"
#include "http/router.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    if (doc == NULL)
        return 0;
    const json_t *obj = json_object_get(doc, "plugin");
    if (obj == NULL)
        obj = doc;
    struct keel__manifest m;
    char err[512];
    int rc = keel__manifest_parse(obj, "fuzz.json", "/nonexistent/plugins", &m, err, sizeof err);
    if (rc == 0) {
        if (m.name == NULL || m.file == NULL || m.config == NULL)
            abort();
        keel__router *r[2] = {keel__router_new(), keel__router_new()};
        if (r[0] == NULL || r[1] == NULL)
            abort();
        static int tag;
        for (size_t i = 0; i < m.nroutes; i++) {
            const struct keel__manifest_route *mr = &m.routes[i];
            if (mr->fallback == NULL || mr->listener < 0 || mr->listener > 1)
                abort();
            if (keel__router_add(r[mr->listener], mr->method, mr->path, m.name, &tag, err,
                                 sizeof err) != 0)
                abort();
        }
        keel__router_free(r[0]);
        keel__router_free(r[1]);
        keel__manifest_clear(&m);
    } else if (rc != KEEL_ECONFIG && rc != KEEL_ENOMEM && rc != KEEL_EINVAL) {
        abort();
    } else if (err[0] == '\0') {
        abort();
    }
    json_decref(doc);
    return 0;
}
