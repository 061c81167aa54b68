/*
 * Static checks of a plugin's ELF file for keel-plugin-check: what it
 * exports, and what would keep it from being unloaded cleanly.
 *
 * The file is read with <elf.h> only (no libelf), so the checks are exactly
 * the ones below:
 *  - exports: defined GLOBAL/WEAK symbols of .dynsym that are functions or
 *    data (FUNC, OBJECT, IFUNC, TLS, COMMON) with default or protected
 *    visibility, other than keel_plugin_entry, the linker's _init/_fini and
 *    ASan's ODR indicators (__odr_asan.*, which shadow exported globals);
 *  - STB_GNU_UNIQUE symbols (the dynamic linker never unloads an object that
 *    defines one);
 *  - DF_1_NODELETE in DT_FLAGS_1 (linked with -z nodelete);
 *  - a PT_TLS segment or DF_STATIC_TLS (thread-local storage);
 *  - constructors and destructors: the entries of .init_array/.fini_array.
 *    Each entry is resolved (through its relocation) to a function of
 *    .symtab; the compiler's own (frame_dummy, __do_global_dtors_aux) and,
 *    in an object built with a sanitizer, the sanitizer's module
 *    constructors are allowed, any other is reported by name.  Without a
 *    symbol table the rule falls back to the count: DT_INIT_ARRAYSZ / 8
 *    (or DT_FINI_ARRAYSZ / 8) above 1 means constructors (destructors).
 * Only 64-bit objects of the host's byte order are read, which is what
 * dlopen() on this host could load anyway.
 */
#ifndef KEEL_TOOLS_ELFCHECK_H
#define KEEL_TOOLS_ELFCHECK_H

#include <stdbool.h>
#include <stddef.h>

#include <keel/common.h>

/* How many offending names are kept for the report; the count is exact. */
#define ELFCHECK_MAX_NAMES 8
#define ELFCHECK_NAME_LEN 128

struct elfcheck_result {
    bool entry_exported; /* keel_plugin_entry is a defined, visible function */
    size_t nextra;       /* other exported symbols */
    char extra[ELFCHECK_MAX_NAMES][ELFCHECK_NAME_LEN];
    size_t nunique; /* STB_GNU_UNIQUE symbols */
    char unique[ELFCHECK_MAX_NAMES][ELFCHECK_NAME_LEN];
    bool nodelete;     /* DF_1_NODELETE */
    bool tls;          /* PT_TLS or DF_STATIC_TLS */
    size_t init_array; /* entries of .init_array (DT_INIT_ARRAYSZ / 8) */
    size_t fini_array; /* entries of .fini_array */
    bool bind_now;     /* DT_BIND_NOW, DF_BIND_NOW or DF_1_NOW */
    bool has_dynsym;   /* a .dynsym section was found */
    bool sanitized;    /* it calls a sanitizer runtime (__asan_*, __tsan_*, ...) */
    bool names_known;  /* every array entry was resolved to a function name */
    size_t nctors;     /* constructors other than the allowed ones */
    char ctors[ELFCHECK_MAX_NAMES][ELFCHECK_NAME_LEN];
    size_t ndtors; /* destructors other than the allowed ones */
    char dtors[ELFCHECK_MAX_NAMES][ELFCHECK_NAME_LEN];
};

/*
 * Reads the shared object at path and fills *out.  Returns 0, or a negative
 * KEEL_E* code with a message in err (unreadable file, not a 64-bit ELF
 * shared object of this byte order, offsets outside the file).  Nothing to
 * free.
 */
int elfcheck_file(const char *path, struct elfcheck_result *out, char *err,
                  size_t errlen) KEEL_WARN_UNUSED;

#endif
