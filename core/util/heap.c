#include "config.h"

#include "util/heap.h"

#include <errno.h>
#include <stdlib.h> /* defines __GLIBC__ on glibc */
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
/* glibc's own calloc, under the name it exports for allocators that
 * replace calloc and still need it. */
extern void *__libc_calloc(size_t n, size_t size);
#endif

void keel__heap_trim(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

void *keel__calloc(size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
#ifdef __GLIBC__
    /* Large blocks keep glibc's calloc, which knows when fresh pages are
     * already zero and need not be touched. */
    if (total > KEEL__CALLOC_SMALL)
        return __libc_calloc(n, size);
#endif
    void *p = malloc(total);
    /* explicit_bzero, not memset: the compiler turns a malloc followed by
     * memset(p, 0, same size) back into a call to calloc, which in keeld
     * is this function. */
    if (p != NULL)
        explicit_bzero(p, total);
    return p;
}
