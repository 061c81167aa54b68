/* The process's heap. */
#ifndef KEEL_CORE_UTIL_HEAP_H
#define KEEL_CORE_UTIL_HEAP_H

#include <stddef.h>

/* Gives the pages of freed heap memory back to the system.  glibc keeps
 * freed pages resident for the next allocation, even when the blocks that
 * stay (a reload's new tables, the supervisor's new conf.d model) sit
 * between them; after a burst of transient allocations that the process
 * will not repeat soon, this releases them (malloc_trim).  Does nothing
 * with other C libraries. */
void keel__heap_trim(void);

/* Blocks up to this size are zeroed by keel__calloc itself. */
#define KEEL__CALLOC_SMALL 1024

/* calloc for keeld's small blocks: malloc plus zeroing up to
 * KEEL__CALLOC_SMALL bytes; larger ones go to the calloc keeld's own
 * replaces (the C library's, or a sanitizer's or valgrind's), found by
 * keel__heap_init.  glibc 2.36's calloc never takes a block from the
 * per-thread cache that malloc and free use, so the blocks libmicrohttpd
 * callocs for every response (the response, one per header) take the
 * arena's locked path and their frees overflow the cache into it too:
 * about 600 instructions a request (docs/performance.md, round 12).
 * keeld's own `calloc` (core/process/main.c) is this function.  NULL with
 * errno ENOMEM when n * size overflows. */
void *keel__calloc(size_t n, size_t size);

/* Finds the calloc that keel__calloc hands large blocks to.  Called once,
 * early in main(); until then large blocks are zeroed here as well. */
void keel__heap_init(void);

#endif
