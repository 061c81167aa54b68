/* The verified claims of a token, shared by the verifier (auth.c) and the
 * cache of verified tokens (tokencache.c). */
#ifndef KEEL_CORE_IDENTITY_CLAIMS_H
#define KEEL_CORE_IDENTITY_CLAIMS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

/* A holder that lends claims it owns (the token cache): each borrower
 * holds a reference; the last one released frees the holder. */
struct keel__claims_pin {
    atomic_uint refs;
    void (*release)(struct keel__claims_pin *pin); /* at the last reference */
};

/* The verified claims a request's principal is built from. */
struct keel__claims {
    char sub[37]; /* canonical lower-case UUID */
    char *email;  /* may be "" when absent; owned */
    char *role;   /* the token's role claim ("authenticated"); owned */
    int64_t exp;
    json_t *user_metadata; /* owned reference, or NULL */
    /* Set: the members are borrowed from a holder, read-only, and clearing
     * drops this reference instead of freeing them. */
    struct keel__claims_pin *pin;
};

/* Takes a reference to pin (the caller already holds one, or the holder's
 * lock). */
void keel__claims_pin_hold(struct keel__claims_pin *pin);
/* Drops one; the last runs pin->release. */
void keel__claims_pin_drop(struct keel__claims_pin *pin);

/* Frees what c owns (or drops its pin) and zeroes it; NULL is ignored. */
void keel__claims_clear(struct keel__claims *c);
/* Fills dst with copies of src's members; false (dst cleared) when memory
 * runs out. */
bool keel__claims_copy(struct keel__claims *dst, const struct keel__claims *src);

#endif
