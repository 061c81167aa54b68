/*
 * Fuzzes request-body validation (keel__json_body_parse, the pure part of
 * the host API's req_json_body): strict JSON with duplicate keys refused,
 * the nesting limit (32, the default limits.max_json_depth), and the
 * object-only rule.  A body that is accepted must be an object that nests
 * no deeper than the limit and serialises back to JSON that parses again,
 * with keel's writer (util/jsonout.c) giving json_dumpb's bytes exactly;
 * a refusal's message must be valid UTF-8, since it is sent as JSON.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <keel/error.h>

#include "fuzz_common.h"
#include "http/request.h"
#include "util/jsonout.h"

#define MAX_DEPTH 32

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    return 0;
}

static int depth(const json_t *v)
{
    int deepest = 0;
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x)
        {
            int d = depth(x);
            if (d > deepest)
                deepest = d;
        }
        return deepest + 1;
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x)
        {
            int d = depth(x);
            if (d > deepest)
                deepest = d;
        }
        return deepest + 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy, so reading past the body is caught. */
    char *body = malloc(size ? size : 1);
    if (body == NULL)
        abort();
    memcpy(body, data, size);
    json_t *v = NULL;
    char msg[256] = "";
    int rc = keel__json_body_parse(size ? body : NULL, size, MAX_DEPTH, &v, msg, sizeof msg);
    if (rc == 0) {
        if (!json_is_object(v) || depth(v) > MAX_DEPTH)
            abort();
        char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (text == NULL)
            abort();
        json_t *again = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
        if (again == NULL || !json_equal(v, again))
            abort();
        json_decref(again);
        free(text);
        /* keel's writer answers with exactly jansson's bytes. */
        size_t flags = JSON_COMPACT | JSON_REAL_PRECISION(15);
        size_t want = json_dumpb(v, NULL, 0, flags);
        char *ref = malloc(want ? want : 1);
        char small[64];
        char *out = NULL;
        size_t len = 0;
        if (ref == NULL || want == 0 || json_dumpb(v, ref, want, flags) != want ||
            keel__json_dump(v, small, sizeof small, &out, &len) != 0 || len != want ||
            memcmp(out, ref, want) != 0 || keel__json_write(v, NULL, 0) != (ssize_t)want)
            abort();
        if (out != small)
            free(out);
        free(ref);
        json_decref(v);
    } else {
        if (rc != KEEL_EINVAL || v != NULL || msg[0] == '\0')
            abort();
        /* The message is sent as {"detail": msg}: it must be a valid JSON
         * string (jansson refuses invalid UTF-8). */
        json_t *detail = json_string(msg);
        if (detail == NULL)
            abort();
        json_decref(detail);
    }
    free(body);
    return 0;
}
