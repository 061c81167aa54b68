/*
 * Local verification of Supabase-issued JWTs (docs/architecture.md,
 * Authentication).
 *
 * libjwt 1.10 checks no claim, lets the token header choose the algorithm,
 * accepts HS256 signed with a public key's bytes, skips verification when it
 * is given no key and misbehaves on huge segments.  So keel pre-parses the
 * token itself: it caps the size, splits and base64url-decodes the three
 * segments, parses header and payload strictly (duplicate keys refused),
 * chooses the key by kid, requires the header's alg to be the key's pinned
 * algorithm, only then lets libjwt verify the signature with that key, and
 * finally checks every claim itself.
 */
#ifndef KEEL_CORE_IDENTITY_AUTH_H
#define KEEL_CORE_IDENTITY_AUTH_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <jansson.h>

#include <keel/common.h>

#include "identity/claims.h"

typedef struct keel__auth keel__auth;

enum keel__token_status {
    KEEL__TOKEN_OK = 0,
    KEEL__TOKEN_MALFORMED = 1, /* "malformed_token" */
    KEEL__TOKEN_INVALID = 2,   /* "invalid_token" */
    KEEL__TOKEN_EXPIRED = 3    /* "token_expired" */
};

struct keel__auth_conf {
    const char *audience; /* required aud member, usually "authenticated" */
    const char *issuer;   /* NULL = not checked */
    int leeway_s;         /* applied to exp, nbf, iat */
    size_t max_token_bytes;
};

int keel__auth_new(const struct keel__auth_conf *conf, keel__auth **out) KEEL_WARN_UNUSED;
void keel__auth_free(keel__auth *a);

/* Adds the HS256 shared secret (kid may be NULL: used for tokens without kid). */
int keel__auth_add_hs256(keel__auth *a, const char *kid, const unsigned char *secret,
                         size_t len) KEEL_WARN_UNUSED;
/*
 * Adds a public key pinned to alg ("RS256" or "ES256") under kid (required).
 * The PEM is checked with OpenSSL now, so a bad key fails at start-up with a
 * message in err.
 */
int keel__auth_add_pem(keel__auth *a, const char *kid, const char *alg, const char *pem, char *err,
                       size_t errlen) KEEL_WARN_UNUSED;

/*
 * Splits an Authorization header value.  Returns 0 and points *token and *len
 * at the token for "Bearer <token>" (scheme case-insensitive, surrounding blanks
 * ignored); KEEL_EAUTH for a missing header, another scheme or an empty token.
 */
int keel__auth_bearer(const char *header, const char **token, size_t *len);

/*
 * Verifies token (not NUL-terminated necessarily: len bytes) at time now.
 * On KEEL__TOKEN_OK, *claims is filled and must be released with
 * keel__claims_clear().  Otherwise *why points at a static message that is
 * safe to show the client, and *claims is left cleared.  Returns a
 * keel__token_status, or KEEL_ENOMEM when memory ran out (status name
 * "invalid_token").  Safe to call from many threads on one const keel__auth.
 */
int keel__auth_verify(const keel__auth *a, const char *token, size_t len, time_t now,
                      struct keel__claims *claims, const char **why);

/* "malformed_token", "invalid_token" or "token_expired". */
const char *keel__token_status_name(int status);

#endif
