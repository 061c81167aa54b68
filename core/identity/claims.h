/* The verified claims of a token, shared by the verifier (auth.c) and the
 * cache of verified tokens (tokencache.c). */
#ifndef KEEL_CORE_IDENTITY_CLAIMS_H
#define KEEL_CORE_IDENTITY_CLAIMS_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

/* The verified claims a request's principal is built from. */
struct keel__claims {
    char sub[37]; /* canonical lower-case UUID */
    char *email;  /* may be "" when absent; owned */
    char *role;   /* the token's role claim ("authenticated"); owned */
    int64_t exp;
    /* A reference (or NULL), read-only: copies share it. */
    json_t *user_metadata;
};

/* Frees what c owns and zeroes it; NULL is ignored. */
void keel__claims_clear(struct keel__claims *c);
/* Fills dst with copies of src's members; false (dst cleared) when memory
 * runs out. */
bool keel__claims_copy(struct keel__claims *dst, const struct keel__claims *src);

#endif
