#include "config.h"

#include "util/heap.h"

#include <stdlib.h> /* defines __GLIBC__ on glibc */
#ifdef __GLIBC__
#include <malloc.h>
#endif

void keel__heap_trim(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}
