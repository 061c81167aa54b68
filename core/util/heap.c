#include "config.h"

#include "util/heap.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h> /* defines __GLIBC__ on glibc */
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

typedef void *calloc_fn(size_t n, size_t size);

/* The calloc after keeld's own in the lookup order: the C library's, or
 * the one a sanitizer or valgrind puts in its place, which must see every
 * block that its free will get. */
static _Atomic(calloc_fn *) next_calloc;

void keel__heap_trim(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

void keel__heap_init(void)
{
    atomic_store(&next_calloc, (calloc_fn *)dlsym(RTLD_NEXT, "calloc"));
}

void *keel__calloc(size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    /* Large blocks keep the library's calloc, which knows when fresh
     * pages are already zero and need not be touched. */
    calloc_fn *next = total > KEEL__CALLOC_SMALL
                          ? atomic_load_explicit(&next_calloc, memory_order_relaxed)
                          : NULL;
    if (next != NULL)
        return next(n, size);
    void *p = malloc(total);
    /* explicit_bzero, not memset: the compiler turns a malloc followed by
     * memset(p, 0, same size) back into a call to calloc, which in keeld
     * is this function. */
    if (p != NULL)
        explicit_bzero(p, total);
    return p;
}
