#include "config.h"

#include "identity/claims.h"

#include <stdlib.h>
#include <string.h>

void keel__claims_clear(struct keel__claims *c)
{
    if (c == NULL)
        return;
    if (c->pin != NULL) {
        keel__claims_pin_drop(c->pin);
        memset(c, 0, sizeof *c);
        return;
    }
    free(c->email);
    free(c->role);
    json_decref(c->user_metadata);
    memset(c, 0, sizeof *c);
}

bool keel__claims_copy(struct keel__claims *dst, const struct keel__claims *src)
{
    memset(dst, 0, sizeof *dst);
    memcpy(dst->sub, src->sub, sizeof dst->sub);
    dst->exp = src->exp;
    dst->email = strdup(src->email ? src->email : "");
    dst->role = strdup(src->role ? src->role : "");
    /* A copy of its own, not a shared reference: src's metadata belongs to
     * the verified token's payload, freed with it, while the copy lives in
     * the token cache and is read by other threads (jansson's json_decref
     * reads the count without an atomic load). */
    if (src->user_metadata != NULL)
        dst->user_metadata = json_deep_copy(src->user_metadata);
    if (dst->email == NULL || dst->role == NULL ||
        (src->user_metadata != NULL && dst->user_metadata == NULL)) {
        keel__claims_clear(dst);
        return false;
    }
    return true;
}

void keel__claims_pin_hold(struct keel__claims_pin *pin)
{
    atomic_fetch_add_explicit(&pin->refs, 1, memory_order_relaxed);
}

void keel__claims_pin_drop(struct keel__claims_pin *pin)
{
    /* Release, and acquire by the last: whatever a borrower read happens
     * before the holder is freed, on whichever thread that is. */
    if (atomic_fetch_sub_explicit(&pin->refs, 1, memory_order_acq_rel) == 1)
        pin->release(pin);
}
