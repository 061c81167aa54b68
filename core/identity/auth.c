#include "config.h"

#include "identity/auth.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <keel/error.h>

#include "util/log.h"
#include "identity/tokencache.h"

#define AUTH_DEFAULT_MAX_TOKEN 8192
#define AUTH_DEFAULT_AUDIENCE "authenticated"
#define AUTH_USER_ROLE "authenticated"
#define AUTH_MAX_KID 128
/* A 4096-bit RSA public key in PEM is under 1 KiB; anything far larger is a mistake. */
#define AUTH_MAX_PEM 16384
#define AUTH_MAX_SECRET 4096

/* One verification key.  The algorithm is pinned: a token may only be
 * verified with a key under the algorithm the key was registered for. */
struct auth_key {
    char kid[AUTH_MAX_KID + 1];
    bool has_kid;
    jwt_alg_t alg;
    const char *alg_name;
    /* HS256: the secret bytes; RS256/ES256: the PEM text.  Always followed
     * by a NUL that len does not count. */
    unsigned char *material;
    size_t len;
};

struct keel__auth {
    char *audience;
    char *issuer;
    int leeway_s;
    size_t max_token_bytes;
    struct auth_key *keys;
    size_t nkeys;
    keel__tokencache *verified; /* tokens that passed; see tokencache.h */
};

/* The three segments of a compact JWS, pointing into the caller's token. */
struct jws_parts {
    const char *seg[3];
    size_t seglen[3];
};

int keel__auth_new(const struct keel__auth_conf *conf, keel__auth **out)
{
    *out = NULL;
    if (conf != NULL && conf->leeway_s < 0)
        return KEEL_EINVAL;

    keel__auth *a = calloc(1, sizeof *a);
    if (a == NULL)
        return KEEL_ENOMEM;

    const char *aud = conf && conf->audience ? conf->audience : AUTH_DEFAULT_AUDIENCE;
    a->audience = strdup(aud);
    if (conf != NULL && conf->issuer != NULL)
        a->issuer = strdup(conf->issuer);
    /* Without a conf the contract's defaults apply: 30 s leeway, 8 KiB tokens. */
    a->leeway_s = conf ? conf->leeway_s : 30;
    a->max_token_bytes = conf && conf->max_token_bytes ? conf->max_token_bytes
                                                       : AUTH_DEFAULT_MAX_TOKEN;
    a->verified = keel__tokencache_new();
    if (a->audience == NULL || a->verified == NULL || (conf && conf->issuer && a->issuer == NULL)) {
        keel__auth_free(a);
        return KEEL_ENOMEM;
    }
    *out = a;
    return 0;
}

void keel__auth_free(keel__auth *a)
{
    if (a == NULL)
        return;
    for (size_t i = 0; i < a->nkeys; i++) {
        /* Secrets should not linger in freed heap memory. */
        OPENSSL_cleanse(a->keys[i].material, a->keys[i].len);
        free(a->keys[i].material);
    }
    free(a->keys);
    keel__tokencache_free(a->verified);
    free(a->audience);
    free(a->issuer);
    free(a);
}

/* A kid is compared byte for byte and may end up in logs, so keep it tame. */
static bool kid_is_valid(const char *kid, size_t len)
{
    if (len == 0 || len > AUTH_MAX_KID)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)kid[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

static const struct auth_key *find_key(const keel__auth *a, const char *kid)
{
    for (size_t i = 0; i < a->nkeys; i++) {
        const struct auth_key *k = &a->keys[i];
        if (kid == NULL ? !k->has_kid : (k->has_kid && strcmp(k->kid, kid) == 0))
            return k;
    }
    return NULL;
}

/* Takes ownership of material (freed here on failure). */
static int add_key(keel__auth *a, const char *kid, jwt_alg_t alg, const char *alg_name,
                   unsigned char *material, size_t len)
{
    int rc;
    if (kid != NULL && !kid_is_valid(kid, strlen(kid))) {
        rc = KEEL_EINVAL;
        goto fail;
    }
    if (find_key(a, kid) != NULL) {
        rc = KEEL_EEXISTS;
        goto fail;
    }
    struct auth_key *keys = realloc(a->keys, (a->nkeys + 1) * sizeof *keys);
    if (keys == NULL) {
        rc = KEEL_ENOMEM;
        goto fail;
    }
    a->keys = keys;
    struct auth_key *k = &keys[a->nkeys];
    memset(k, 0, sizeof *k);
    if (kid != NULL) {
        memcpy(k->kid, kid, strlen(kid) + 1);
        k->has_kid = true;
    }
    k->alg = alg;
    k->alg_name = alg_name;
    k->material = material;
    k->len = len;
    a->nkeys++;
    keel__log(KEEL_LOG_DEBUG, "auth", "registered %s key%s%s", alg_name, kid ? " kid=" : "",
              kid ? kid : " (no kid)");
    return 0;

fail:
    OPENSSL_cleanse(material, len);
    free(material);
    return rc;
}

int keel__auth_add_hs256(keel__auth *a, const char *kid, const unsigned char *secret, size_t len)
{
    if (a == NULL || secret == NULL || len == 0 || len > AUTH_MAX_SECRET)
        return KEEL_EINVAL;
    unsigned char *copy = malloc(len + 1);
    if (copy == NULL)
        return KEEL_ENOMEM;
    memcpy(copy, secret, len);
    copy[len] = '\0';
    return add_key(a, kid, JWT_ALG_HS256, "HS256", copy, len);
}

/* Appends OpenSSL's most recent error, if any, so start-up failures say why. */
static void pem_error(char *err, size_t errlen, const char *what)
{
    if (err == NULL || errlen == 0)
        return;
    unsigned long e = ERR_peek_last_error();
    if (e != 0) {
        char ossl[256];
        ERR_error_string_n(e, ossl, sizeof ossl);
        snprintf(err, errlen, "%s (%s)", what, ossl);
    } else {
        snprintf(err, errlen, "%s", what);
    }
    ERR_clear_error();
}

/* Checks that pem holds exactly the kind of public key alg needs. */
static int check_pem(const char *pem, size_t len, jwt_alg_t alg, char *err, size_t errlen)
{
    ERR_clear_error();
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL) {
        pem_error(err, errlen, "out of memory");
        return KEEL_ENOMEM;
    }
    EVP_PKEY *pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (pkey == NULL) {
        pem_error(err, errlen, "not a PEM public key");
        return KEEL_ECONFIG;
    }

    int rc = 0;
    if (alg == JWT_ALG_RS256) {
        if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
            pem_error(err, errlen, "RS256 needs an RSA public key");
            rc = KEEL_ECONFIG;
        } else if (EVP_PKEY_get_bits(pkey) < 2048) {
            pem_error(err, errlen, "RS256 needs an RSA key of at least 2048 bits");
            rc = KEEL_ECONFIG;
        }
    } else {
        char group[64] = "";
        size_t glen = 0;
        if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_EC) {
            pem_error(err, errlen, "ES256 needs an EC public key");
            rc = KEEL_ECONFIG;
        } else if (EVP_PKEY_get_group_name(pkey, group, sizeof group, &glen) != 1 ||
                   strcmp(group, "prime256v1") != 0) {
            pem_error(err, errlen, "ES256 needs an EC key on curve P-256");
            rc = KEEL_ECONFIG;
        }
    }
    EVP_PKEY_free(pkey);
    return rc;
}

int keel__auth_add_pem(keel__auth *a, const char *kid, const char *alg, const char *pem, char *err,
                       size_t errlen)
{
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (a == NULL || alg == NULL || pem == NULL) {
        pem_error(err, errlen, "missing key, algorithm or PEM");
        return KEEL_EINVAL;
    }
    if (kid == NULL || !kid_is_valid(kid, strlen(kid))) {
        pem_error(err, errlen, "a public key needs a kid of 1-128 characters [A-Za-z0-9._-]");
        return KEEL_EINVAL;
    }

    jwt_alg_t jalg;
    const char *alg_name;
    if (strcmp(alg, "RS256") == 0) {
        jalg = JWT_ALG_RS256;
        alg_name = "RS256";
    } else if (strcmp(alg, "ES256") == 0) {
        jalg = JWT_ALG_ES256;
        alg_name = "ES256";
    } else {
        pem_error(err, errlen, "algorithm must be RS256 or ES256");
        return KEEL_EINVAL;
    }

    size_t len = strnlen(pem, AUTH_MAX_PEM + 1);
    if (len == 0 || len > AUTH_MAX_PEM) {
        pem_error(err, errlen, "PEM is empty or larger than 16 KiB");
        return KEEL_EINVAL;
    }
    int rc = check_pem(pem, len, jalg, err, errlen);
    if (rc != 0)
        return rc;
    if (find_key(a, kid) != NULL) {
        pem_error(err, errlen, "duplicate kid");
        return KEEL_EEXISTS;
    }

    unsigned char *copy = malloc(len + 1);
    if (copy == NULL) {
        pem_error(err, errlen, "out of memory");
        return KEEL_ENOMEM;
    }
    memcpy(copy, pem, len + 1);
    rc = add_key(a, kid, jalg, alg_name, copy, len);
    if (rc != 0)
        pem_error(err, errlen, keel_strerror(rc));
    return rc;
}

int keel__auth_bearer(const char *header, const char **token, size_t *len)
{
    *token = NULL;
    *len = 0;
    if (header == NULL)
        return KEEL_EAUTH;

    const char *p = header;
    while (*p == ' ' || *p == '\t')
        p++;
    if (strncasecmp(p, "Bearer", 6) != 0)
        return KEEL_EAUTH;
    p += 6;
    /* "Bearerxyz" is another scheme, not a bearer token. */
    if (*p != ' ' && *p != '\t')
        return KEEL_EAUTH;
    while (*p == ' ' || *p == '\t')
        p++;

    size_t n = strlen(p);
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    if (n == 0)
        return KEEL_EAUTH;
    *token = p;
    *len = n;
    return 0;
}

/* Maps a base64url character to its value, or -1. */
static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/*
 * Strict unpadded base64url (RFC 7515 section 2): only the URL-safe alphabet,
 * no '=', no impossible lengths and no stray bits in the last character, so
 * that each byte string has exactly one accepted encoding.  out must hold
 * len * 3 / 4 bytes.  Returns the decoded length or -1.
 */
static long b64url_decode(const char *in, size_t len, unsigned char *out)
{
    if (len % 4 == 1)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0)
        return -1;
    return (long)o;
}

static bool split_token(const char *token, size_t len, struct jws_parts *parts)
{
    size_t start = 0;
    int n = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || token[i] == '.') {
            if (n == 3)
                return false;
            parts->seg[n] = token + start;
            parts->seglen[n] = i - start;
            n++;
            start = i + 1;
        }
    }
    return n == 3;
}

/* Decodes one segment as a JSON object with unique keys, or returns NULL. */
static json_t *decode_json_segment(const char *seg, size_t len, unsigned char *buf)
{
    long n = b64url_decode(seg, len, buf);
    if (n <= 0)
        return NULL;
    json_error_t jerr;
    json_t *j = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static bool uuid_canonical(const char *s, size_t len, char out[37])
{
    if (len != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return false;
            out[i] = '-';
        } else if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) {
            out[i] = (char)c;
        } else if (c >= 'A' && c <= 'F') {
            out[i] = (char)(c - 'A' + 'a');
        } else {
            return false;
        }
    }
    out[36] = '\0';
    return true;
}

static bool audience_matches(const json_t *aud, const char *want)
{
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), want) == 0;
    if (json_is_array(aud)) {
        size_t i;
        const json_t *v;
        json_array_foreach(aud, i, v)
        {
            if (json_is_string(v) && strcmp(json_string_value(v), want) == 0)
                return true;
        }
    }
    return false;
}

/*
 * Chooses the key from the header and checks the header's algorithm against
 * the key's pinned one.  Returns a token status.
 */
static int select_key(const keel__auth *a, const json_t *header, const struct auth_key **key,
                      const char **why)
{
    const json_t *alg = json_object_get(header, "alg");
    if (!json_is_string(alg)) {
        *why = "Token header has no algorithm";
        return KEEL__TOKEN_MALFORMED;
    }
    /* keel implements no JWS extension, so any critical one must be refused
     * (RFC 7515 section 4.1.11). */
    if (json_object_get(header, "crit") != NULL) {
        *why = "Unsupported critical header";
        return KEEL__TOKEN_INVALID;
    }

    /* libjwt refuses any other typ after keel has already chosen a key;
     * saying so here gives the client the real reason. */
    const json_t *typ = json_object_get(header, "typ");
    if (typ != NULL && (!json_is_string(typ) || strcasecmp(json_string_value(typ), "JWT") != 0)) {
        *why = "Token type not allowed";
        return KEEL__TOKEN_INVALID;
    }

    const json_t *kid = json_object_get(header, "kid");
    const char *kid_str = NULL;
    if (kid != NULL) {
        if (!json_is_string(kid) ||
            !kid_is_valid(json_string_value(kid), json_string_length(kid))) {
            *why = "Invalid key id";
            return KEEL__TOKEN_INVALID;
        }
        kid_str = json_string_value(kid);
    }

    const struct auth_key *k = find_key(a, kid_str);
    if (k == NULL) {
        *why = kid_str ? "Unknown key id" : "Algorithm not allowed";
        return KEEL__TOKEN_INVALID;
    }
    /* Compared with the string's full length so that an embedded NUL cannot
     * make "HS256\u0000x" pass. */
    if (json_string_length(alg) != strlen(k->alg_name) ||
        strcmp(json_string_value(alg), k->alg_name) != 0) {
        *why = "Algorithm not allowed";
        return KEEL__TOKEN_INVALID;
    }
    *key = k;
    return KEEL__TOKEN_OK;
}

/* Lets libjwt check the signature with the pinned key.  Returns a token
 * status, or KEEL_ENOMEM. */
static int verify_signature(const struct auth_key *k, const char *token, size_t len,
                            const char **why)
{
    /* libjwt wants a C string; len is already bounded by max_token_bytes. */
    char *copy = malloc(len + 1);
    if (copy == NULL) {
        *why = "Out of memory";
        return KEEL_ENOMEM;
    }
    memcpy(copy, token, len);
    copy[len] = '\0';

    /* Never NULL: libjwt 1.10 skips the check without a key.  len is capped
     * at AUTH_MAX_PEM / AUTH_MAX_SECRET, so it fits an int. */
    jwt_t *jwt = NULL;
    int rc = jwt_decode(&jwt, copy, k->material, (int)k->len);
    free(copy);

    int status = KEEL__TOKEN_OK;
    if (rc == ENOMEM) {
        *why = "Out of memory";
        status = KEEL_ENOMEM;
    } else if (rc != 0 || jwt == NULL) {
        *why = "Signature verification failed";
        status = KEEL__TOKEN_INVALID;
    } else if (jwt_get_alg(jwt) != k->alg) {
        *why = "Algorithm not allowed";
        status = KEEL__TOKEN_INVALID;
    }
    jwt_free(jwt);
    return status;
}

/* Reads an optional integer claim.  Returns false if present but not an integer. */
static bool int_claim(const json_t *payload, const char *name, bool *present, int64_t *out)
{
    const json_t *v = json_object_get(payload, name);
    *present = v != NULL;
    if (v == NULL)
        return true;
    if (!json_is_integer(v))
        return false;
    *out = (int64_t)json_integer_value(v);
    return true;
}

/* Checks the claims and fills c.  Returns a token status, or KEEL_ENOMEM. */
static int check_claims(const keel__auth *a, const json_t *payload, time_t now,
                        struct keel__claims *c, const char **why)
{
    bool present;
    int64_t exp = 0, nbf = 0, iat = 0;
    /* now and leeway are both small, so now +/- leeway cannot overflow,
     * unlike exp + leeway with an attacker-chosen exp. */
    int64_t t = (int64_t)now, leeway = a->leeway_s;

    if (!int_claim(payload, "exp", &present, &exp)) {
        *why = "Expiry must be an integer";
        return KEEL__TOKEN_INVALID;
    }
    if (!present) {
        *why = "Token has no expiry";
        return KEEL__TOKEN_INVALID;
    }
    if (t - leeway > exp) {
        *why = "Token has expired";
        return KEEL__TOKEN_EXPIRED;
    }
    if (!int_claim(payload, "nbf", &present, &nbf)) {
        *why = "Not-before must be an integer";
        return KEEL__TOKEN_INVALID;
    }
    if (present && t + leeway < nbf) {
        *why = "Token is not yet valid";
        return KEEL__TOKEN_INVALID;
    }
    if (!int_claim(payload, "iat", &present, &iat)) {
        *why = "Issued-at must be an integer";
        return KEEL__TOKEN_INVALID;
    }
    if (present && iat > t + leeway) {
        *why = "Token was issued in the future";
        return KEEL__TOKEN_INVALID;
    }

    if (a->issuer != NULL) {
        const json_t *iss = json_object_get(payload, "iss");
        if (!json_is_string(iss) || json_string_length(iss) != strlen(a->issuer) ||
            strcmp(json_string_value(iss), a->issuer) != 0) {
            *why = "Issuer not allowed";
            return KEEL__TOKEN_INVALID;
        }
    }
    if (!audience_matches(json_object_get(payload, "aud"), a->audience)) {
        *why = "Audience not allowed";
        return KEEL__TOKEN_INVALID;
    }

    const json_t *role = json_object_get(payload, "role");
    if (!json_is_string(role) || strcmp(json_string_value(role), AUTH_USER_ROLE) != 0 ||
        json_string_length(role) != strlen(AUTH_USER_ROLE)) {
        *why = "Token is not a user token";
        return KEEL__TOKEN_INVALID;
    }

    const json_t *sub = json_object_get(payload, "sub");
    if (!json_is_string(sub) ||
        !uuid_canonical(json_string_value(sub), json_string_length(sub), c->sub)) {
        *why = "Subject is not a UUID";
        return KEEL__TOKEN_INVALID;
    }

    const json_t *email = json_object_get(payload, "email");
    if (email != NULL && !json_is_null(email) && !json_is_string(email)) {
        *why = "Email claim must be a string";
        return KEEL__TOKEN_INVALID;
    }
    const json_t *meta = json_object_get(payload, "user_metadata");
    if (meta != NULL && !json_is_null(meta) && !json_is_object(meta)) {
        *why = "User metadata must be an object";
        return KEEL__TOKEN_INVALID;
    }

    c->email = strdup(json_is_string(email) ? json_string_value(email) : "");
    c->role = strdup(AUTH_USER_ROLE);
    if (c->email == NULL || c->role == NULL) {
        *why = "Out of memory";
        return KEEL_ENOMEM;
    }
    c->exp = exp;
    /* json_incref takes a non-const pointer; the reference is shared, never
     * modified, by the principal built from these claims. */
    if (json_is_object(meta))
        c->user_metadata = json_incref((json_t *)meta);
    return KEEL__TOKEN_OK;
}

int keel__auth_verify(const keel__auth *a, const char *token, size_t len, time_t now,
                      struct keel__claims *claims, const char **why)
{
    memset(claims, 0, sizeof *claims);
    *why = "Invalid token";

    if (token == NULL || len == 0) {
        *why = "Token is empty";
        return KEEL__TOKEN_MALFORMED;
    }
    /* The size cap comes before anything else looks at the bytes. */
    if (len > a->max_token_bytes) {
        *why = a->max_token_bytes == AUTH_DEFAULT_MAX_TOKEN ? "Token exceeds 8192 bytes"
                                                            : "Token is too large";
        return KEEL__TOKEN_MALFORMED;
    }
    if (keel__tokencache_get(a->verified, token, len, now, a->leeway_s, claims))
        return KEEL__TOKEN_OK;

    struct jws_parts parts;
    if (!split_token(token, len, &parts) || parts.seglen[0] == 0 || parts.seglen[1] == 0) {
        *why = "Token must have three segments";
        return KEEL__TOKEN_MALFORMED;
    }

    /* One scratch buffer serves both JSON segments: each decodes to at most
     * three quarters of its length, and the token is already capped. */
    size_t cap = (parts.seglen[0] > parts.seglen[1] ? parts.seglen[0] : parts.seglen[1]);
    cap = cap / 4 * 3 + 3;
    if (parts.seglen[2] / 4 * 3 + 3 > cap)
        cap = parts.seglen[2] / 4 * 3 + 3;
    unsigned char *buf = malloc(cap);
    if (buf == NULL) {
        *why = "Out of memory";
        return KEEL_ENOMEM;
    }

    int status;
    json_t *header = NULL, *payload = NULL;
    const struct auth_key *key = NULL;

    header = decode_json_segment(parts.seg[0], parts.seglen[0], buf);
    if (header == NULL) {
        *why = "Token header is not valid base64url JSON";
        status = KEEL__TOKEN_MALFORMED;
        goto done;
    }
    payload = decode_json_segment(parts.seg[1], parts.seglen[1], buf);
    if (payload == NULL) {
        *why = "Token payload is not valid base64url JSON";
        status = KEEL__TOKEN_MALFORMED;
        goto done;
    }
    /* The signature only has to be well-formed here; libjwt checks it. */
    if (b64url_decode(parts.seg[2], parts.seglen[2], buf) < 0) {
        *why = "Token signature is not valid base64url";
        status = KEEL__TOKEN_MALFORMED;
        goto done;
    }

    status = select_key(a, header, &key, why);
    if (status != KEEL__TOKEN_OK)
        goto done;
    /* An unsecured JWT ("alg":"none") has an empty signature and is refused
     * above by the pinned algorithm; an empty one under a real algorithm is
     * just as unsigned. */
    if (parts.seglen[2] == 0) {
        *why = "Signature verification failed";
        status = KEEL__TOKEN_INVALID;
        goto done;
    }
    status = verify_signature(key, token, len, why);
    if (status != KEEL__TOKEN_OK)
        goto done;

    status = check_claims(a, payload, now, claims, why);
    if (status == KEEL__TOKEN_OK)
        keel__tokencache_put(a->verified, token, len, now, claims);

done:
    if (status != KEEL__TOKEN_OK)
        keel__claims_clear(claims);
    json_decref(header);
    json_decref(payload);
    free(buf);
    return status;
}

const char *keel__token_status_name(int status)
{
    switch (status) {
    case KEEL__TOKEN_MALFORMED:
        return "malformed_token";
    case KEEL__TOKEN_EXPIRED:
        return "token_expired";
    case KEEL__TOKEN_OK:
        return "ok";
    default:
        /* Also covers internal failures such as KEEL_ENOMEM: the client
         * just sees its token refused. */
        return "invalid_token";
    }
}
