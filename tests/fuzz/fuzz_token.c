/*
 * Fuzzes the token pre-parser and the claim checks (keel__auth_verify).
 *
 * The verifier has an HS256 secret (no kid), an ES256 key ("ec-1") and an
 * RS256 key ("rsa-1"), like a Supabase project with rotated keys.  The first
 * byte of an input chooses what the rest is:
 *   even: the token itself, verbatim (the pre-parser's battle: sizes,
 *         segments, base64url, JSON, duplicate keys, kid, alg);
 *   odd:  "HEADER-JSON\nPAYLOAD-JSON", encoded and signed here with the HS256
 *         secret, so that the claim checks behind the signature are reached
 *         with arbitrary claims (exp, nbf, iat, sub, aud, role, email...).
 * Properties checked besides memory safety: a token is accepted only with a
 * canonical UUID sub and the "authenticated" role, and the status is one of
 * the four the API knows.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <keel/error.h>

#include "identity/auth.h"
#include "fuzz_common.h"

#define NOW ((time_t)1700000000)
#define SECRET "fuzz-secret-with-at-least-thirty-two-characters"

static keel__auth *auth;

static char *public_pem(EVP_PKEY *k)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL || PEM_write_bio_PUBKEY(b, k) != 1)
        abort();
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *out = malloc((size_t)n + 1);
    if (out == NULL)
        abort();
    memcpy(out, data, (size_t)n);
    out[n] = '\0';
    BIO_free(b);
    return out;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    struct keel__auth_conf c = {
        .audience = "authenticated", .issuer = NULL, .leeway_s = 30, .max_token_bytes = 8192};
    char err[256];
    if (keel__auth_new(&c, &auth) != 0 ||
        keel__auth_add_hs256(auth, NULL, (const unsigned char *)SECRET, strlen(SECRET)) != 0)
        abort();
    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    if (ec == NULL || rsa == NULL)
        abort();
    char *ec_pem = public_pem(ec), *rsa_pem = public_pem(rsa);
    if (keel__auth_add_pem(auth, "ec-1", "ES256", ec_pem, err, sizeof err) != 0 ||
        keel__auth_add_pem(auth, "rsa-1", "RS256", rsa_pem, err, sizeof err) != 0)
        abort();
    free(ec_pem);
    free(rsa_pem);
    EVP_PKEY_free(ec);
    EVP_PKEY_free(rsa);
    return 0;
}

static size_t b64url(const uint8_t *in, size_t len, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = abc[(v >> 18) & 63];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = abc[(v >> 6) & 63];
        out[o++] = abc[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = abc[(v >> 18) & 63];
        out[o++] = abc[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = abc[(v >> 18) & 63];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = abc[(v >> 6) & 63];
    }
    return o;
}

/* "HEADER\nPAYLOAD" -> header.payload.HS256(secret); NULL when there is no
 * newline.  The caller frees. */
static char *sign_hs256(const uint8_t *d, size_t n, size_t *outlen)
{
    const uint8_t *nl = memchr(d, '\n', n);
    if (nl == NULL)
        return NULL;
    size_t hl = (size_t)(nl - d), pl = n - hl - 1;
    char *t = malloc((hl + pl) * 4 / 3 + 64);
    if (t == NULL)
        abort();
    size_t o = b64url(d, hl, t);
    t[o++] = '.';
    o += b64url(nl + 1, pl, t + o);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    if (HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)t, o, mac,
             &maclen) == NULL)
        abort();
    t[o++] = '.';
    o += b64url(mac, maclen, t + o);
    *outlen = o;
    return t;
}

static bool canonical_uuid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) {
            return false;
        }
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char *signed_tok = NULL;
    const char *tok = (const char *)data + 1;
    size_t len = size - 1;
    if (data[0] & 1) {
        signed_tok = sign_hs256(data + 1, size - 1, &len);
        if (signed_tok == NULL)
            return 0;
        tok = signed_tok;
    }
    /* The verifier must not read past len: give it an exact-size copy. */
    char *copy = malloc(len ? len : 1);
    if (copy == NULL)
        abort();
    memcpy(copy, tok, len);

    struct keel__claims claims;
    const char *why = NULL;
    int st = keel__auth_verify(auth, copy, len, NOW, &claims, &why);
    if (st == KEEL__TOKEN_OK) {
        if (!canonical_uuid(claims.sub) || claims.role == NULL ||
            strcmp(claims.role, "authenticated") != 0 || claims.email == NULL)
            abort();
        keel__claims_clear(&claims);
    } else if (st == KEEL__TOKEN_MALFORMED || st == KEEL__TOKEN_INVALID ||
               st == KEEL__TOKEN_EXPIRED) {
        if (why == NULL || *why == '\0')
            abort();
    } else if (st != KEEL_ENOMEM) {
        abort();
    }
    free(copy);
    free(signed_tok);
    return 0;
}
