/*
 * Unit tests for core/identity/auth.c.  Tokens are built here from JSON text (so that
 * malformed and duplicate-key variants are possible) and signed with OpenSSL:
 * HMAC for HS256/HS512, keys generated at run time for RS256/ES256.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <keel/error.h>

#include "identity/auth.h"

#define NOW ((time_t)1700000000)
#define SECRET "super-secret-jwt-token-with-at-least-32-characters-long"
#define SUB "0b9f6a5e-3c41-4f0e-9d7a-2a6f1c8e4b21"
#define TOKEN_CAP 16384

struct fixture {
    keel__auth *auth;
    EVP_PKEY *rsa;       /* registered as kid "rsa-1" */
    EVP_PKEY *rsa_other; /* never registered */
    EVP_PKEY *ec;        /* registered as kid "ec-1" */
    char *rsa_pem;
};

static struct fixture fx;

/* ------------------------------------------------------------ token building */

static size_t b64url(const unsigned char *in, size_t len, char *out)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alphabet[(v >> 18) & 63];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = alphabet[(v >> 18) & 63];
        out[o++] = alphabet[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = alphabet[(v >> 18) & 63];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

/* Writes "b64(header).b64(payload)" into out and returns its length. */
static size_t signing_input(const char *header, const char *payload, char *out)
{
    size_t n = b64url((const unsigned char *)header, strlen(header), out);
    out[n++] = '.';
    n += b64url((const unsigned char *)payload, strlen(payload), out + n);
    return n;
}

static void append_sig(char *tok, size_t n, const unsigned char *sig, size_t siglen)
{
    tok[n++] = '.';
    b64url(sig, siglen, tok + n);
}

static char *hmac_token(const char *header, const char *payload, const EVP_MD *md, const void *key,
                        size_t keylen)
{
    char *tok = malloc(TOKEN_CAP);
    assert_non_null(tok);
    size_t n = signing_input(header, payload, tok);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    assert_non_null(HMAC(md, key, (int)keylen, (const unsigned char *)tok, n, mac, &maclen));
    append_sig(tok, n, mac, maclen);
    return tok;
}

static char *hs256(const char *header, const char *payload)
{
    return hmac_token(header, payload, EVP_sha256(), SECRET, strlen(SECRET));
}

/* RS256 or ES256 (JOSE raw r||s, converted from OpenSSL's DER). */
static char *pkey_token(const char *header, const char *payload, EVP_PKEY *pkey)
{
    char *tok = malloc(TOKEN_CAP);
    assert_non_null(tok);
    size_t n = signing_input(header, payload, tok);

    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_non_null(ctx);
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, pkey), 1);
    size_t siglen = 0;
    assert_int_equal(EVP_DigestSign(ctx, NULL, &siglen, (unsigned char *)tok, n), 1);
    unsigned char *sig = malloc(siglen);
    assert_non_null(sig);
    assert_int_equal(EVP_DigestSign(ctx, sig, &siglen, (unsigned char *)tok, n), 1);
    EVP_MD_CTX_free(ctx);

    if (EVP_PKEY_get_base_id(pkey) == EVP_PKEY_EC) {
        const unsigned char *p = sig;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)siglen);
        assert_non_null(es);
        unsigned char raw[64];
        assert_int_equal(BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, 32), 32);
        assert_int_equal(BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + 32, 32), 32);
        ECDSA_SIG_free(es);
        append_sig(tok, n, raw, sizeof raw);
    } else {
        append_sig(tok, n, sig, siglen);
    }
    free(sig);
    return tok;
}

static char *public_pem(EVP_PKEY *pkey)
{
    BIO *bio = BIO_new(BIO_s_mem());
    assert_non_null(bio);
    assert_int_equal(PEM_write_bio_PUBKEY(bio, pkey), 1);
    char *data = NULL;
    long len = BIO_get_mem_data(bio, &data);
    assert_true(len > 0);
    char *pem = malloc((size_t)len + 1);
    assert_non_null(pem);
    memcpy(pem, data, (size_t)len);
    pem[len] = '\0';
    BIO_free(bio);
    return pem;
}

/* A user payload with the given exp offset from NOW and extra members. */
static void user_payload(char *out, size_t cap, long exp_offset, const char *extra)
{
    int n = snprintf(out, cap,
                     "{\"sub\":\"" SUB "\",\"email\":\"ana@example.com\",\"aud\":\"authenticated\","
                     "\"role\":\"authenticated\",\"iat\":%lld,\"exp\":%lld%s%s}",
                     (long long)NOW - 60, (long long)NOW + exp_offset, extra ? "," : "",
                     extra ? extra : "");
    assert_true(n > 0 && (size_t)n < cap);
}

static const char *const HS_HEADER = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

static int verify(const char *tok, struct keel__claims *c, const char **why)
{
    return keel__auth_verify(fx.auth, tok, strlen(tok), NOW, c, why);
}

/* Verifies a token expecting a failure with the given status and message. */
static void expect_status(char *tok, int status, const char *why_expected)
{
    struct keel__claims c;
    const char *why = NULL;
    int rc = verify(tok, &c, &why);
    if (rc != status)
        fail_msg("token %.80s...: status %d (%s), expected %d", tok, rc, why ? why : "-", status);
    assert_non_null(why);
    if (why_expected != NULL)
        assert_string_equal(why, why_expected);
    /* A refused token leaves nothing to free. */
    assert_null(c.email);
    assert_null(c.role);
    assert_null(c.user_metadata);
    free(tok);
}

static void expect_ok(char *tok)
{
    struct keel__claims c;
    const char *why = NULL;
    int rc = verify(tok, &c, &why);
    if (rc != KEEL__TOKEN_OK)
        fail_msg("token refused: %s", why ? why : "-");
    assert_string_equal(c.sub, SUB);
    keel__claims_clear(&c);
    free(tok);
}

/* ------------------------------------------------------------ fixture */

static int group_setup(void **state)
{
    struct keel__auth_conf conf = {
        .audience = "authenticated", .issuer = NULL, .leeway_s = 30, .max_token_bytes = 8192};
    if (keel__auth_new(&conf, &fx.auth) != 0)
        return -1;
    if (keel__auth_add_hs256(fx.auth, NULL, (const unsigned char *)SECRET, strlen(SECRET)) != 0)
        return -1;

    fx.rsa = EVP_RSA_gen(2048);
    fx.rsa_other = EVP_RSA_gen(2048);
    fx.ec = EVP_EC_gen("P-256");
    if (fx.rsa == NULL || fx.rsa_other == NULL || fx.ec == NULL)
        return -1;

    char err[256];
    fx.rsa_pem = public_pem(fx.rsa);
    if (keel__auth_add_pem(fx.auth, "rsa-1", "RS256", fx.rsa_pem, err, sizeof err) != 0)
        return -1;
    char *ec_pem = public_pem(fx.ec);
    int rc = keel__auth_add_pem(fx.auth, "ec-1", "ES256", ec_pem, err, sizeof err);
    free(ec_pem);
    return rc == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    keel__auth_free(fx.auth);
    EVP_PKEY_free(fx.rsa);
    EVP_PKEY_free(fx.rsa_other);
    EVP_PKEY_free(fx.ec);
    free(fx.rsa_pem);
    return 0;
}

/* ------------------------------------------------------------ HS256 claims */

static void test_valid_hs256(void **state)
{
    char p[512];
    user_payload(p, sizeof p, 3600, "\"user_metadata\":{\"full_name\":\"Ana\"}");
    char *tok = hs256(HS_HEADER, p);

    struct keel__claims c;
    const char *why = NULL;
    assert_int_equal(verify(tok, &c, &why), KEEL__TOKEN_OK);
    assert_string_equal(c.sub, SUB);
    assert_string_equal(c.email, "ana@example.com");
    assert_string_equal(c.role, "authenticated");
    assert_int_equal(c.exp, (int64_t)NOW + 3600);
    assert_non_null(c.user_metadata);
    assert_string_equal(json_string_value(json_object_get(c.user_metadata, "full_name")), "Ana");
    keel__claims_clear(&c);
    assert_null(c.email);
    assert_null(c.user_metadata);
    free(tok);
}

static void test_optional_claims_absent(void **state)
{
    /* No email, iat, nbf or user_metadata; sub in upper case. */
    char *tok = hs256(HS_HEADER, "{\"sub\":\"0B9F6A5E-3C41-4F0E-9D7A-2A6F1C8E4B21\","
                                 "\"aud\":\"authenticated\",\"role\":\"authenticated\","
                                 "\"exp\":1700003600}");
    struct keel__claims c;
    const char *why = NULL;
    assert_int_equal(verify(tok, &c, &why), KEEL__TOKEN_OK);
    assert_string_equal(c.sub, SUB);
    assert_string_equal(c.email, "");
    assert_null(c.user_metadata);
    keel__claims_clear(&c);
    free(tok);
}

static void test_expired(void **state)
{
    char p[512];
    user_payload(p, sizeof p, -31, NULL);
    expect_status(hs256(HS_HEADER, p), KEEL__TOKEN_EXPIRED, "Token has expired");
    user_payload(p, sizeof p, -3600, NULL);
    expect_status(hs256(HS_HEADER, p), KEEL__TOKEN_EXPIRED, "Token has expired");
}

/* A token that verified is remembered; the cached answer must be the one a
 * full verification gives: same claims, still refused once exp passes, never
 * returned for an earlier clock, and a tampered token is not a hit. */
static void test_verified_token_cache(void **state)
{
    char p[512];
    user_payload(p, sizeof p, 40, "\"user_metadata\":{\"full_name\":\"Ana\"}");
    char *tok = hs256(HS_HEADER, p);
    struct keel__claims c;
    const char *why = NULL;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(keel__auth_verify(fx.auth, tok, strlen(tok), NOW, &c, &why),
                         KEEL__TOKEN_OK);
        assert_string_equal(c.sub, SUB);
        assert_string_equal(c.email, "ana@example.com");
        assert_string_equal(json_string_value(json_object_get(c.user_metadata, "full_name")),
                            "Ana");
        /* The first verifies and owns its copies; the others are lent
         * the cached entry's. */
        if (i == 0)
            assert_null(c.pin);
        else
            assert_non_null(c.pin);
        keel__claims_clear(&c);
    }
    /* exp is NOW+40, leeway 30: at NOW+71 the cached entry must not answer. */
    assert_int_equal(keel__auth_verify(fx.auth, tok, strlen(tok), NOW + 71, &c, &why),
                     KEEL__TOKEN_EXPIRED);
    keel__claims_clear(&c);
    size_t n = strlen(tok);
    tok[n - 2] = tok[n - 2] == 'A' ? 'B' : 'A';
    assert_int_equal(keel__auth_verify(fx.auth, tok, n, NOW, &c, &why), KEEL__TOKEN_INVALID);
    keel__claims_clear(&c);
    free(tok);

    /* A token not yet valid at NOW verifies later and must not be served
     * from the cache for the earlier clock. */
    user_payload(p, sizeof p, 3600, "\"nbf\":1700000100");
    tok = hs256(HS_HEADER, p);
    assert_int_equal(keel__auth_verify(fx.auth, tok, strlen(tok), NOW + 200, &c, &why),
                     KEEL__TOKEN_OK);
    keel__claims_clear(&c);
    assert_int_equal(keel__auth_verify(fx.auth, tok, strlen(tok), NOW, &c, &why),
                     KEEL__TOKEN_INVALID);
    keel__claims_clear(&c);
    free(tok);
}

static void test_expired_within_leeway(void **state)
{
    char p[512];
    user_payload(p, sizeof p, -30, NULL);
    expect_ok(hs256(HS_HEADER, p));
    user_payload(p, sizeof p, -1, NULL);
    expect_ok(hs256(HS_HEADER, p));
}

static void test_nbf(void **state)
{
    char p[512];
    user_payload(p, sizeof p, 3600, "\"nbf\":1700000031");
    expect_status(hs256(HS_HEADER, p), KEEL__TOKEN_INVALID, "Token is not yet valid");
    user_payload(p, sizeof p, 3600, "\"nbf\":1700000030");
    expect_ok(hs256(HS_HEADER, p));
    user_payload(p, sizeof p, 3600, "\"nbf\":\"1700000000\"");
    expect_status(hs256(HS_HEADER, p), KEEL__TOKEN_INVALID, NULL);
}

static void test_iat_future(void **state)
{
    char *tok = hs256(HS_HEADER, "{\"sub\":\"" SUB "\",\"aud\":\"authenticated\","
                                 "\"role\":\"authenticated\",\"iat\":1700000031,"
                                 "\"exp\":1700003600}");
    expect_status(tok, KEEL__TOKEN_INVALID, "Token was issued in the future");
}

static void test_wrong_aud(void **state)
{
    expect_status(hs256(HS_HEADER, "{\"sub\":\"" SUB "\",\"aud\":\"other\","
                                   "\"role\":\"authenticated\",\"exp\":1700003600}"),
                  KEEL__TOKEN_INVALID, "Audience not allowed");
    expect_status(hs256(HS_HEADER, "{\"sub\":\"" SUB "\",\"aud\":[\"a\",\"b\"],"
                                   "\"role\":\"authenticated\",\"exp\":1700003600}"),
                  KEEL__TOKEN_INVALID, "Audience not allowed");
    expect_status(hs256(HS_HEADER, "{\"sub\":\"" SUB "\","
                                   "\"role\":\"authenticated\",\"exp\":1700003600}"),
                  KEEL__TOKEN_INVALID, "Audience not allowed");
}

static void test_aud_array(void **state)
{
    expect_ok(hs256(HS_HEADER, "{\"sub\":\"" SUB "\",\"aud\":[\"other\",\"authenticated\"],"
                               "\"role\":\"authenticated\",\"exp\":1700003600}"));
}

static void test_missing_exp(void **state)
{
    expect_status(hs256(HS_HEADER, "{\"sub\":\"" SUB "\",\"aud\":\"authenticated\","
                                   "\"role\":\"authenticated\"}"),
                  KEEL__TOKEN_INVALID, "Token has no expiry");
}

static void test_non_integer_exp(void **state)
{
    expect_status(hs256(HS_HEADER, "{\"sub\":\"" SUB "\",\"aud\":\"authenticated\","
                                   "\"role\":\"authenticated\",\"exp\":\"1700003600\"}"),
                  KEEL__TOKEN_INVALID, "Expiry must be an integer");
    expect_status(hs256(HS_HEADER, "{\"sub\":\"" SUB "\",\"aud\":\"authenticated\","
                                   "\"role\":\"authenticated\",\"exp\":1700003600.5}"),
                  KEEL__TOKEN_INVALID, "Expiry must be an integer");
}

static void test_role_not_user(void **state)
{
    expect_status(hs256(HS_HEADER, "{\"sub\":\"" SUB "\",\"aud\":\"authenticated\","
                                   "\"role\":\"anon\",\"exp\":1700003600}"),
                  KEEL__TOKEN_INVALID, "Token is not a user token");
    expect_status(hs256(HS_HEADER, "{\"sub\":\"" SUB "\",\"aud\":\"authenticated\","
                                   "\"role\":\"service_role\",\"exp\":1700003600}"),
                  KEEL__TOKEN_INVALID, "Token is not a user token");
    /* The real anon key has no sub and no user audience at all. */
    expect_status(hs256(HS_HEADER, "{\"iss\":\"supabase\",\"role\":\"anon\",\"exp\":1700003600}"),
                  KEEL__TOKEN_INVALID, NULL);
}

static void test_sub_not_uuid(void **state)
{
    expect_status(hs256(HS_HEADER, "{\"sub\":\"user-42\",\"aud\":\"authenticated\","
                                   "\"role\":\"authenticated\",\"exp\":1700003600}"),
                  KEEL__TOKEN_INVALID, "Subject is not a UUID");
    expect_status(hs256(HS_HEADER, "{\"sub\":\"0b9f6a5e3c414f0e9d7a2a6f1c8e4b21abcd\","
                                   "\"aud\":\"authenticated\",\"role\":\"authenticated\","
                                   "\"exp\":1700003600}"),
                  KEEL__TOKEN_INVALID, "Subject is not a UUID");
    expect_status(hs256(HS_HEADER, "{\"sub\":\"0b9f6a5e-3c41-4f0e-9d7a-2a6f1c8e4b2g\","
                                   "\"aud\":\"authenticated\",\"role\":\"authenticated\","
                                   "\"exp\":1700003600}"),
                  KEEL__TOKEN_INVALID, "Subject is not a UUID");
    expect_status(hs256(HS_HEADER, "{\"aud\":\"authenticated\",\"role\":\"authenticated\","
                                   "\"exp\":1700003600}"),
                  KEEL__TOKEN_INVALID, "Subject is not a UUID");
}

static void test_bad_optional_types(void **state)
{
    char p[512];
    user_payload(p, sizeof p, 3600, "\"user_metadata\":\"x\"");
    expect_status(hs256(HS_HEADER, p), KEEL__TOKEN_INVALID, NULL);
    expect_status(hs256(HS_HEADER, "{\"sub\":\"" SUB "\",\"aud\":\"authenticated\","
                                   "\"role\":\"authenticated\",\"exp\":1700003600,\"email\":7}"),
                  KEEL__TOKEN_INVALID, NULL);
}

/* A verifier of its own (not the fixture's) for SECRET, with issuer (or
 * none) required. */
static keel__auth *hs256_verifier(const char *issuer)
{
    struct keel__auth_conf conf = {
        .audience = "authenticated", .issuer = issuer, .leeway_s = 30, .max_token_bytes = 8192};
    keel__auth *a = NULL;
    assert_int_equal(keel__auth_new(&conf, &a), 0);
    assert_int_equal(keel__auth_add_hs256(a, NULL, (const unsigned char *)SECRET, strlen(SECRET)),
                     0);
    return a;
}

static void test_issuer(void **state)
{
    keel__auth *a = hs256_verifier("https://x.supabase.co/auth/v1");

    struct keel__claims c;
    const char *why = NULL;
    char p[512];
    user_payload(p, sizeof p, 3600, "\"iss\":\"https://x.supabase.co/auth/v1\"");
    char *tok = hs256(HS_HEADER, p);
    assert_int_equal(keel__auth_verify(a, tok, strlen(tok), NOW, &c, &why), KEEL__TOKEN_OK);
    keel__claims_clear(&c);
    free(tok);

    user_payload(p, sizeof p, 3600, "\"iss\":\"https://evil.example/auth/v1\"");
    tok = hs256(HS_HEADER, p);
    assert_int_equal(keel__auth_verify(a, tok, strlen(tok), NOW, &c, &why), KEEL__TOKEN_INVALID);
    assert_string_equal(why, "Issuer not allowed");
    free(tok);

    user_payload(p, sizeof p, 3600, NULL);
    tok = hs256(HS_HEADER, p);
    assert_int_equal(keel__auth_verify(a, tok, strlen(tok), NOW, &c, &why), KEEL__TOKEN_INVALID);
    free(tok);
    keel__auth_free(a);
}

/* Claims the cache lent stay whole after the cache lets go of them (the
 * cache freed here; an eviction is the same release): the request holding
 * them frees them last (ASan and valgrind check the order). */
static void test_cache_lends_past_its_life(void **state)
{
    (void)state;
    keel__auth *a = hs256_verifier(NULL);
    char p[512];
    user_payload(p, sizeof p, 3600, "\"user_metadata\":{\"full_name\":\"Ana\"}");
    char *tok = hs256(HS_HEADER, p);
    struct keel__claims first, lent;
    const char *why = NULL;
    assert_int_equal(keel__auth_verify(a, tok, strlen(tok), NOW, &first, &why), KEEL__TOKEN_OK);
    assert_int_equal(keel__auth_verify(a, tok, strlen(tok), NOW, &lent, &why), KEEL__TOKEN_OK);
    assert_non_null(lent.pin);
    keel__auth_free(a);
    assert_string_equal(lent.sub, SUB);
    assert_string_equal(lent.email, "ana@example.com");
    assert_string_equal(json_string_value(json_object_get(lent.user_metadata, "full_name")), "Ana");
    keel__claims_clear(&lent);
    assert_null(lent.email);
    /* The verifier's own copy was never the cache's. */
    assert_string_equal(first.email, "ana@example.com");
    keel__claims_clear(&first);
    free(tok);
}

/* ------------------------------------------------------------ algorithms, signatures */

static void test_alg_none(void **state)
{
    char p[512];
    user_payload(p, sizeof p, 3600, NULL);
    char *tok = malloc(TOKEN_CAP);
    assert_non_null(tok);
    size_t n = signing_input("{\"alg\":\"none\",\"typ\":\"JWT\"}", p, tok);
    memcpy(tok + n, ".", 2);
    expect_status(tok, KEEL__TOKEN_INVALID, "Algorithm not allowed");

    /* Same with a signature attached, and with the case changed. */
    expect_status(hs256("{\"alg\":\"none\"}", p), KEEL__TOKEN_INVALID, "Algorithm not allowed");
    expect_status(hs256("{\"alg\":\"hs256\"}", p), KEEL__TOKEN_INVALID, "Algorithm not allowed");

    /* A real algorithm with the signature left off. */
    tok = malloc(TOKEN_CAP);
    assert_non_null(tok);
    n = signing_input(HS_HEADER, p, tok);
    memcpy(tok + n, ".", 2);
    expect_status(tok, KEEL__TOKEN_INVALID, "Signature verification failed");
}

static void test_hs512_with_hs256_secret(void **state)
{
    char p[512];
    user_payload(p, sizeof p, 3600, NULL);
    expect_status(hmac_token("{\"alg\":\"HS512\",\"typ\":\"JWT\"}", p, EVP_sha512(), SECRET,
                             strlen(SECRET)),
                  KEEL__TOKEN_INVALID, "Algorithm not allowed");
}

static void test_tampered_signature(void **state)
{
    char p[512];
    user_payload(p, sizeof p, 3600, NULL);
    char *tok = hs256(HS_HEADER, p);
    char *sig = strrchr(tok, '.') + 1;
    sig[3] = sig[3] == 'A' ? 'B' : 'A';
    expect_status(tok, KEEL__TOKEN_INVALID, "Signature verification failed");

    /* Payload changed after signing. */
    tok = hs256(HS_HEADER, p);
    char other[512];
    user_payload(other, sizeof other, 7200, NULL);
    char *forged = malloc(TOKEN_CAP);
    assert_non_null(forged);
    size_t n = signing_input(HS_HEADER, other, forged);
    snprintf(forged + n, TOKEN_CAP - n, "%s", strrchr(tok, '.'));
    free(tok);
    expect_status(forged, KEEL__TOKEN_INVALID, "Signature verification failed");

    /* Signed with another secret. */
    expect_status(hmac_token(HS_HEADER, p, EVP_sha256(), "wrong", 5), KEEL__TOKEN_INVALID,
                  "Signature verification failed");
}

static void test_rs256_es256_accepted(void **state)
{
    char p[512];
    user_payload(p, sizeof p, 3600, NULL);
    expect_ok(pkey_token("{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"rsa-1\"}", p, fx.rsa));
    expect_ok(pkey_token("{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"ec-1\"}", p, fx.ec));
}

static void test_rs256_wrong_key(void **state)
{
    char p[512];
    user_payload(p, sizeof p, 3600, NULL);
    expect_status(pkey_token("{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}", p, fx.rsa_other),
                  KEEL__TOKEN_INVALID, "Signature verification failed");
    /* Without kid only the HS256 key is a candidate. */
    expect_status(pkey_token("{\"alg\":\"RS256\"}", p, fx.rsa), KEEL__TOKEN_INVALID,
                  "Algorithm not allowed");
}

static void test_hs256_with_public_key_as_secret(void **state)
{
    char p[512];
    user_payload(p, sizeof p, 3600, NULL);
    /* The classic confusion: HMAC keyed with the RSA public key's PEM. */
    expect_status(hmac_token("{\"alg\":\"HS256\",\"kid\":\"rsa-1\"}", p, EVP_sha256(), fx.rsa_pem,
                             strlen(fx.rsa_pem)),
                  KEEL__TOKEN_INVALID, "Algorithm not allowed");
    expect_status(hmac_token(HS_HEADER, p, EVP_sha256(), fx.rsa_pem, strlen(fx.rsa_pem)),
                  KEEL__TOKEN_INVALID, "Signature verification failed");
}

static void test_kid_alg_mismatch(void **state)
{
    char p[512];
    user_payload(p, sizeof p, 3600, NULL);
    expect_status(pkey_token("{\"alg\":\"ES256\",\"kid\":\"rsa-1\"}", p, fx.ec),
                  KEEL__TOKEN_INVALID, "Algorithm not allowed");
    expect_status(pkey_token("{\"alg\":\"RS256\",\"kid\":\"ec-1\"}", p, fx.rsa),
                  KEEL__TOKEN_INVALID, "Algorithm not allowed");
}

static void test_kid(void **state)
{
    char p[512];
    user_payload(p, sizeof p, 3600, NULL);
    expect_status(pkey_token("{\"alg\":\"RS256\",\"kid\":\"rsa-2\"}", p, fx.rsa),
                  KEEL__TOKEN_INVALID, "Unknown key id");
    expect_status(hs256("{\"alg\":\"HS256\",\"kid\":\"../../etc/passwd\"}", p), KEEL__TOKEN_INVALID,
                  "Invalid key id");
    expect_status(hs256("{\"alg\":\"HS256\",\"kid\":7}", p), KEEL__TOKEN_INVALID, "Invalid key id");
    expect_status(hs256("{\"alg\":\"HS256\",\"crit\":[\"exp\"],\"exp\":1}", p), KEEL__TOKEN_INVALID,
                  NULL);
}

static void test_typ(void **state)
{
    char p[512];
    user_payload(p, sizeof p, 3600, NULL);
    expect_ok(hs256("{\"alg\":\"HS256\"}", p));
    expect_ok(hs256("{\"alg\":\"HS256\",\"typ\":\"jwt\"}", p));
    expect_status(hs256("{\"alg\":\"HS256\",\"typ\":\"JWE\"}", p), KEEL__TOKEN_INVALID,
                  "Token type not allowed");
    expect_status(hs256("{\"alg\":\"HS256\",\"typ\":1}", p), KEEL__TOKEN_INVALID,
                  "Token type not allowed");
}

/* ------------------------------------------------------------ malformed */

static void test_segments(void **state)
{
    char p[512];
    user_payload(p, sizeof p, 3600, NULL);
    char *tok = hs256(HS_HEADER, p);
    *strrchr(tok, '.') = '\0';
    expect_status(tok, KEEL__TOKEN_MALFORMED, "Token must have three segments");

    tok = hs256(HS_HEADER, p);
    size_t n = strlen(tok);
    memcpy(tok + n, ".AAAA", 6);
    expect_status(tok, KEEL__TOKEN_MALFORMED, "Token must have three segments");

    expect_status(strdup("abc"), KEEL__TOKEN_MALFORMED, "Token must have three segments");
    expect_status(strdup("..."), KEEL__TOKEN_MALFORMED, NULL);
    expect_status(strdup(".e30.AAAA"), KEEL__TOKEN_MALFORMED, NULL);

    struct keel__claims c;
    const char *why = NULL;
    assert_int_equal(keel__auth_verify(fx.auth, "", 0, NOW, &c, &why), KEEL__TOKEN_MALFORMED);
}

static void test_size_cap(void **state)
{
    /* A correctly signed token just under the cap passes; 9 KiB does not. */
    char *pad = malloc(TOKEN_CAP);
    char *p = malloc(TOKEN_CAP);
    assert_non_null(pad);
    assert_non_null(p);
    char *best = NULL;
    for (size_t padlen = 5800; padlen < 6300; padlen++) {
        memset(pad, 'x', padlen);
        int m = snprintf(p, TOKEN_CAP, "\"pad\":\"%.*s\"", (int)padlen, pad);
        assert_true(m > 0);
        char payload[TOKEN_CAP];
        user_payload(payload, sizeof payload, 3600, p);
        char *tok = hs256(HS_HEADER, payload);
        if (strlen(tok) <= 8192) {
            free(best);
            best = tok;
        } else {
            free(tok);
            break;
        }
    }
    assert_non_null(best);
    assert_true(strlen(best) > 8180);
    expect_ok(best);

    memset(pad, 'x', 6900);
    snprintf(p, TOKEN_CAP, "\"pad\":\"%.*s\"", 6900, pad);
    char payload[TOKEN_CAP];
    user_payload(payload, sizeof payload, 3600, p);
    char *tok = hs256(HS_HEADER, payload);
    assert_true(strlen(tok) > 9 * 1024);
    expect_status(tok, KEEL__TOKEN_MALFORMED, "Token exceeds 8192 bytes");
    free(pad);
    free(p);
}

static void test_duplicate_claim(void **state)
{
    expect_status(hs256(HS_HEADER, "{\"sub\":\"" SUB "\",\"aud\":\"authenticated\","
                                   "\"role\":\"anon\",\"role\":\"authenticated\","
                                   "\"exp\":1700003600}"),
                  KEEL__TOKEN_MALFORMED, "Token payload is not valid base64url JSON");
    char p[512];
    user_payload(p, sizeof p, 3600, NULL);
    expect_status(hs256("{\"alg\":\"HS256\",\"alg\":\"none\"}", p), KEEL__TOKEN_MALFORMED,
                  "Token header is not valid base64url JSON");
}

static void test_invalid_base64_and_json(void **state)
{
    char p[512];
    user_payload(p, sizeof p, 3600, NULL);

    /* A character outside the URL-safe alphabet in the header. */
    char *tok = hs256(HS_HEADER, p);
    tok[2] = '+';
    expect_status(tok, KEEL__TOKEN_MALFORMED, NULL);

    /* Padding is not part of JWS base64url. */
    tok = malloc(TOKEN_CAP);
    assert_non_null(tok);
    snprintf(tok, TOKEN_CAP, "eyJhbGciOiJIUzI1NiJ9.e30=.AAAA");
    expect_status(tok, KEEL__TOKEN_MALFORMED, NULL);

    /* Impossible length (4n+1) and stray low bits ("e31" is not canonical for "{}"). */
    expect_status(strdup("eyJhbGciOiJIUzI1NiJ9.e30xx.AAAA"), KEEL__TOKEN_MALFORMED, NULL);
    expect_status(strdup("eyJhbGciOiJIUzI1NiJ9.e31.AAAA"), KEEL__TOKEN_MALFORMED, NULL);

    /* Bad signature encoding. */
    tok = hs256(HS_HEADER, p);
    strrchr(tok, '.')[1] = '/';
    expect_status(tok, KEEL__TOKEN_MALFORMED, "Token signature is not valid base64url");

    /* Valid base64url, not a JSON object. */
    expect_status(hs256(HS_HEADER, "[1,2]"), KEEL__TOKEN_MALFORMED, NULL);
    expect_status(hs256(HS_HEADER, "{\"exp\":"), KEEL__TOKEN_MALFORMED, NULL);
    expect_status(hs256("\"HS256\"", p), KEEL__TOKEN_MALFORMED, NULL);
    expect_status(hs256("{\"typ\":\"JWT\"}", p), KEEL__TOKEN_MALFORMED, NULL);

    /* Bytes that are not even text, and an embedded NUL. */
    struct keel__claims c;
    const char *why = NULL;
    static const char nul[] = "eyJhbGciOiJIUzI1NiJ9\0.e30.AAAA";
    assert_int_equal(keel__auth_verify(fx.auth, nul, sizeof nul - 1, NOW, &c, &why),
                     KEEL__TOKEN_MALFORMED);
    expect_status(strdup("eyJhbGciOiJIUzI1NiJ9.\xff\xfe.AAAA"), KEEL__TOKEN_MALFORMED, NULL);
}

static void test_not_nul_terminated(void **state)
{
    /* verify reads exactly len bytes of a larger buffer. */
    char p[512];
    user_payload(p, sizeof p, 3600, NULL);
    char *tok = hs256(HS_HEADER, p);
    size_t n = strlen(tok);
    char *buf = malloc(n + 8);
    assert_non_null(buf);
    memcpy(buf, tok, n);
    memcpy(buf + n, "garbage", 7);
    struct keel__claims c;
    const char *why = NULL;
    assert_int_equal(keel__auth_verify(fx.auth, buf, n, NOW, &c, &why), KEEL__TOKEN_OK);
    keel__claims_clear(&c);
    free(buf);
    free(tok);
}

/* ------------------------------------------------------------ key registration */

static void test_add_keys(void **state)
{
    keel__auth *a = NULL;
    assert_int_equal(keel__auth_new(NULL, &a), 0);
    char err[256];

    assert_int_equal(keel__auth_add_hs256(a, NULL, (const unsigned char *)"", 0), KEEL_EINVAL);
    assert_int_equal(keel__auth_add_hs256(a, NULL, (const unsigned char *)"s", 1), 0);
    assert_int_equal(keel__auth_add_hs256(a, NULL, (const unsigned char *)"t", 1), KEEL_EEXISTS);
    assert_int_equal(keel__auth_add_hs256(a, "bad kid", (const unsigned char *)"t", 1),
                     KEEL_EINVAL);

    err[0] = '\0';
    assert_true(keel__auth_add_pem(a, "k1", "RS256", "not a pem", err, sizeof err) < 0);
    assert_true(strlen(err) > 0);

    char *ec_pem = public_pem(fx.ec);
    err[0] = '\0';
    assert_true(keel__auth_add_pem(a, "k1", "RS256", ec_pem, err, sizeof err) < 0);
    assert_non_null(strstr(err, "RSA"));
    err[0] = '\0';
    assert_true(keel__auth_add_pem(a, "k1", "ES256", fx.rsa_pem, err, sizeof err) < 0);
    assert_non_null(strstr(err, "EC"));
    assert_int_equal(keel__auth_add_pem(a, "k1", "HS256", fx.rsa_pem, err, sizeof err),
                     KEEL_EINVAL);
    assert_int_equal(keel__auth_add_pem(a, NULL, "RS256", fx.rsa_pem, err, sizeof err),
                     KEEL_EINVAL);

    EVP_PKEY *small = EVP_RSA_gen(1024);
    assert_non_null(small);
    char *small_pem = public_pem(small);
    err[0] = '\0';
    assert_true(keel__auth_add_pem(a, "k1", "RS256", small_pem, err, sizeof err) < 0);
    assert_non_null(strstr(err, "2048"));

    EVP_PKEY *p384 = EVP_EC_gen("P-384");
    assert_non_null(p384);
    char *p384_pem = public_pem(p384);
    err[0] = '\0';
    assert_true(keel__auth_add_pem(a, "k1", "ES256", p384_pem, err, sizeof err) < 0);
    assert_non_null(strstr(err, "P-256"));

    assert_int_equal(keel__auth_add_pem(a, "k1", "ES256", ec_pem, err, sizeof err), 0);
    assert_int_equal(keel__auth_add_pem(a, "k1", "RS256", fx.rsa_pem, err, sizeof err),
                     KEEL_EEXISTS);

    EVP_PKEY_free(small);
    EVP_PKEY_free(p384);
    free(small_pem);
    free(p384_pem);
    free(ec_pem);
    keel__auth_free(a);
}

static void test_no_hs256_key(void **state)
{
    keel__auth *a = NULL;
    assert_int_equal(keel__auth_new(NULL, &a), 0);
    char p[512];
    user_payload(p, sizeof p, 3600, NULL);
    char *tok = hs256(HS_HEADER, p);
    struct keel__claims c;
    const char *why = NULL;
    assert_int_equal(keel__auth_verify(a, tok, strlen(tok), NOW, &c, &why), KEEL__TOKEN_INVALID);
    free(tok);
    keel__auth_free(a);
}

/* ------------------------------------------------------------ bearer */

static void test_bearer(void **state)
{
    const char *t;
    size_t n;
    assert_int_equal(keel__auth_bearer("Bearer abc.def.ghi", &t, &n), 0);
    assert_int_equal(n, 11);
    assert_memory_equal(t, "abc.def.ghi", 11);
    assert_int_equal(keel__auth_bearer("bearer abc", &t, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(keel__auth_bearer("BEARER   abc  ", &t, &n), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(t, "abc", 3);
    assert_int_equal(keel__auth_bearer("  Bearer\tabc", &t, &n), 0);
    assert_int_equal(n, 3);

    assert_int_equal(keel__auth_bearer("Basic dXNlcjpwYXNz", &t, &n), KEEL_EAUTH);
    assert_int_equal(keel__auth_bearer("Bearerabc", &t, &n), KEEL_EAUTH);
    assert_int_equal(keel__auth_bearer("Bearer", &t, &n), KEEL_EAUTH);
    assert_int_equal(keel__auth_bearer("Bearer    ", &t, &n), KEEL_EAUTH);
    assert_int_equal(keel__auth_bearer("", &t, &n), KEEL_EAUTH);
    assert_int_equal(keel__auth_bearer(NULL, &t, &n), KEEL_EAUTH);
    assert_null(t);
}

static void test_status_names(void **state)
{
    assert_string_equal(keel__token_status_name(KEEL__TOKEN_MALFORMED), "malformed_token");
    assert_string_equal(keel__token_status_name(KEEL__TOKEN_INVALID), "invalid_token");
    assert_string_equal(keel__token_status_name(KEEL__TOKEN_EXPIRED), "token_expired");
    assert_string_equal(keel__token_status_name(KEEL_ENOMEM), "invalid_token");
}

/* ------------------------------------------------------------ concurrency */

struct worker {
    char *good[3];
    char *bad;
    int failures;
};

static void *verify_worker(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < 50; i++) {
        for (int k = 0; k < 3; k++) {
            struct keel__claims c;
            const char *why;
            if (keel__auth_verify(fx.auth, w->good[k], strlen(w->good[k]), NOW, &c, &why) !=
                    KEEL__TOKEN_OK ||
                strcmp(c.sub, SUB) != 0)
                w->failures++;
            keel__claims_clear(&c);
        }
        struct keel__claims c;
        const char *why;
        if (keel__auth_verify(fx.auth, w->bad, strlen(w->bad), NOW, &c, &why) !=
            KEEL__TOKEN_EXPIRED)
            w->failures++;
    }
    return NULL;
}

static void test_concurrent_verify(void **state)
{
    char p[512], old[512];
    user_payload(p, sizeof p, 3600, "\"user_metadata\":{\"a\":1}");
    user_payload(old, sizeof old, -3600, NULL);
    struct worker w[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        w[i].good[0] = hs256(HS_HEADER, p);
        w[i].good[1] = pkey_token("{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}", p, fx.rsa);
        w[i].good[2] = pkey_token("{\"alg\":\"ES256\",\"kid\":\"ec-1\"}", p, fx.ec);
        w[i].bad = hs256(HS_HEADER, old);
        w[i].failures = 0;
        assert_int_equal(pthread_create(&th[i], NULL, verify_worker, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(w[i].failures, 0);
        for (int k = 0; k < 3; k++)
            free(w[i].good[k]);
        free(w[i].bad);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_hs256),
        cmocka_unit_test(test_optional_claims_absent),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_expired_within_leeway),
        cmocka_unit_test(test_verified_token_cache),
        cmocka_unit_test(test_cache_lends_past_its_life),
        cmocka_unit_test(test_nbf),
        cmocka_unit_test(test_iat_future),
        cmocka_unit_test(test_wrong_aud),
        cmocka_unit_test(test_aud_array),
        cmocka_unit_test(test_missing_exp),
        cmocka_unit_test(test_non_integer_exp),
        cmocka_unit_test(test_role_not_user),
        cmocka_unit_test(test_sub_not_uuid),
        cmocka_unit_test(test_bad_optional_types),
        cmocka_unit_test(test_issuer),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_hs512_with_hs256_secret),
        cmocka_unit_test(test_tampered_signature),
        cmocka_unit_test(test_rs256_es256_accepted),
        cmocka_unit_test(test_rs256_wrong_key),
        cmocka_unit_test(test_hs256_with_public_key_as_secret),
        cmocka_unit_test(test_kid_alg_mismatch),
        cmocka_unit_test(test_kid),
        cmocka_unit_test(test_typ),
        cmocka_unit_test(test_segments),
        cmocka_unit_test(test_size_cap),
        cmocka_unit_test(test_duplicate_claim),
        cmocka_unit_test(test_invalid_base64_and_json),
        cmocka_unit_test(test_not_nul_terminated),
        cmocka_unit_test(test_add_keys),
        cmocka_unit_test(test_no_hs256_key),
        cmocka_unit_test(test_bearer),
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_concurrent_verify),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
