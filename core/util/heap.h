/* The process's freed heap. */
#ifndef KEEL_CORE_UTIL_HEAP_H
#define KEEL_CORE_UTIL_HEAP_H

/* Gives the pages of freed heap memory back to the system.  glibc keeps
 * freed pages resident for the next allocation, even when the blocks that
 * stay (a reload's new tables, the supervisor's new conf.d model) sit
 * between them; after a burst of transient allocations that the process
 * will not repeat soon, this releases them (malloc_trim).  Does nothing
 * with other C libraries. */
void keel__heap_trim(void);

#endif
