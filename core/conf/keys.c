/* The auth section's keys: HS256 secret files and the RS256/ES256 key list. */
#include "config.h"

#include "conf/schema.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <keel/error.h>

#include "util/file.h"
#include "util/text.h"

/* Secret and key files are small; anything bigger is a mistake. */
#define SMALL_FILE_MAX (64 * 1024)
#define MAX_KEYS 64
#define MAX_KID_LEN 256

/*
 * Reads a whole small text file.  Fails (with why) when it is not a regular
 * file, is larger than cap or contains a NUL byte.
 */
static int read_small_file(const char *path, size_t cap, char **out, char *why, size_t whylen)
{
    size_t len;
    int rc = keel__file_read(path, cap, out, &len, why, whylen);
    if (rc == 0 && memchr(*out, '\0', len) != NULL) {
        snprintf(why, whylen, "%s contains a NUL byte", path);
        free(*out);
        *out = NULL;
        rc = KEEL_EINVAL;
    }
    return rc;
}

/* Resolves a path written in conf.d: relative paths are relative to conf.d. */
static char *conf_path(const struct keel__conf *conf, const char *p)
{
    return p[0] == '/' ? strdup(p) : keel__path_join(conf->dir, p);
}

int keel__conf_parse_secret_file(struct parse_ctx *c, const char *section, const char *key,
                                 json_t *v)
{
    char why[512];
    char *text = NULL;

    if (json_object_get(c->section, "jwt_secret") != NULL)
        return keel__conf_fail(c->err, c->errlen,
                               "%s: %s.%s: give either jwt_secret or jwt_secret_file", c->file,
                               section, key);
    if (!json_is_string(v) || json_string_length(v) == 0)
        return keel__conf_fail(c->err, c->errlen, "%s: %s.%s: expected a file name", c->file,
                               section, key);
    char *path = conf_path(c->conf, json_string_value(v));
    if (path == NULL)
        return keel__conf_nomem(c->err, c->errlen);
    int rc = read_small_file(path, SMALL_FILE_MAX, &text, why, sizeof why);
    free(path);
    if (rc < 0)
        return keel__conf_fail(c->err, c->errlen, "%s: %s.%s: %s", c->file, section, key, why);
    /* Files written with echo or an editor end with a newline that is not
     * part of the secret. */
    size_t len = keel__trim_newlines(text, 0);
    if (len == 0) {
        free(text);
        return keel__conf_fail(c->err, c->errlen, "%s: %s.%s: the secret file is empty", c->file,
                               section, key);
    }
    free(c->conf->auth.jwt_secret);
    c->conf->auth.jwt_secret = text;
    return 0;
}

void keel__conf_free_keys(struct keel__conf *conf)
{
    for (size_t i = 0; i < conf->auth.nkeys; i++) {
        free(conf->auth.keys[i].kid);
        free(conf->auth.keys[i].alg);
        free(conf->auth.keys[i].pem);
    }
    free(conf->auth.keys);
    conf->auth.keys = NULL;
    conf->auth.nkeys = 0;
}

static int parse_one_key(struct parse_ctx *c, size_t i, json_t *obj, struct keel__key_conf *k)
{
    static const char *const keys[] = {"kid", "alg", "pem", "pem_file", NULL};
    const char *name;
    char why[512];

    if (!json_is_object(obj))
        return keel__conf_fail(c->err, c->errlen,
                               "%s: auth.keys[%zu]: expected an object with kid, alg and "
                               "pem or pem_file",
                               c->file, i);
    if ((name = keel__conf_unknown_key(obj, keys)) != NULL)
        return keel__conf_fail(c->err, c->errlen, "%s: auth.keys[%zu].%s: unknown key", c->file, i,
                               name);
    json_t *kid = json_object_get(obj, "kid");
    json_t *alg = json_object_get(obj, "alg");
    json_t *pem = json_object_get(obj, "pem");
    json_t *pem_file = json_object_get(obj, "pem_file");

    if (!keel__conf_is_text(kid) || json_string_length(kid) == 0 ||
        json_string_length(kid) > MAX_KID_LEN)
        return keel__conf_fail(c->err, c->errlen,
                               "%s: auth.keys[%zu].kid: expected a non-empty string", c->file, i);
    if (!json_is_string(alg) || (strcmp(json_string_value(alg), "RS256") != 0 &&
                                 strcmp(json_string_value(alg), "ES256") != 0))
        return keel__conf_fail(c->err, c->errlen,
                               "%s: auth.keys[%zu].alg: expected \"RS256\" or \"ES256\"", c->file,
                               i);
    if ((pem == NULL) == (pem_file == NULL))
        return keel__conf_fail(c->err, c->errlen,
                               "%s: auth.keys[%zu]: give exactly one of pem and pem_file", c->file,
                               i);

    k->kid = strdup(json_string_value(kid));
    k->alg = strdup(json_string_value(alg));
    if (k->kid == NULL || k->alg == NULL)
        return keel__conf_nomem(c->err, c->errlen);
    if (pem != NULL) {
        if (!keel__conf_is_text(pem))
            return keel__conf_fail(c->err, c->errlen, "%s: auth.keys[%zu].pem: expected a string",
                                   c->file, i);
        k->pem = strdup(json_string_value(pem));
        if (k->pem == NULL)
            return keel__conf_nomem(c->err, c->errlen);
    } else {
        if (!json_is_string(pem_file) || json_string_length(pem_file) == 0)
            return keel__conf_fail(c->err, c->errlen,
                                   "%s: auth.keys[%zu].pem_file: expected a file name", c->file, i);
        char *path = conf_path(c->conf, json_string_value(pem_file));
        if (path == NULL)
            return keel__conf_nomem(c->err, c->errlen);
        int rc = read_small_file(path, SMALL_FILE_MAX, &k->pem, why, sizeof why);
        free(path);
        if (rc < 0)
            return keel__conf_fail(c->err, c->errlen, "%s: auth.keys[%zu].pem_file: %s", c->file, i,
                                   why);
    }
    /* The auth module parses the key; this only catches a wrong file early. */
    if (strstr(k->pem, "-----BEGIN ") == NULL)
        return keel__conf_fail(c->err, c->errlen,
                               "%s: auth.keys[%zu].%s: not a PEM text (no -----BEGIN line)",
                               c->file, i, pem ? "pem" : "pem_file");
    return 0;
}

int keel__conf_parse_keys(struct parse_ctx *c, const char *section, const char *key, json_t *v)
{
    struct keel__conf *conf = c->conf;

    if (!json_is_array(v) || json_array_size(v) > MAX_KEYS)
        return keel__conf_fail(c->err, c->errlen,
                               "%s: %s.%s: expected an array of at most %d key objects", c->file,
                               section, key, MAX_KEYS);
    keel__conf_free_keys(conf);
    size_t n = json_array_size(v);
    if (n == 0)
        return 0;
    conf->auth.keys = calloc(n, sizeof *conf->auth.keys);
    if (conf->auth.keys == NULL)
        return keel__conf_nomem(c->err, c->errlen);
    for (size_t i = 0; i < n; i++) {
        /* Count the entry first so free_keys() releases a half-filled one. */
        conf->auth.nkeys = i + 1;
        int rc = parse_one_key(c, i, json_array_get(v, i), &conf->auth.keys[i]);
        if (rc < 0)
            return rc;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(conf->auth.keys[j].kid, conf->auth.keys[i].kid) == 0)
                return keel__conf_fail(c->err, c->errlen,
                                       "%s: auth.keys[%zu].kid: \"%s\" is also the kid of "
                                       "auth.keys[%zu]",
                                       c->file, i, conf->auth.keys[i].kid, j);
        }
    }
    return 0;
}
