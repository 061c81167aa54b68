/*
 * Reading a whole file: conf.d files, key and secret files, migrations.
 */
#ifndef KEEL_CORE_UTIL_FILE_H
#define KEEL_CORE_UTIL_FILE_H

#include <stddef.h>

/*
 * Reads the regular file at path into *out (NUL-terminated, owned by the
 * caller; *len bytes before the NUL, which may contain NULs of its own).
 * Fails with KEEL_EIO (cannot open or read it, or not a regular file),
 * KEEL_ETOOBIG (more than cap bytes, also when it grew while being read) or
 * KEEL_ENOMEM, and why says which, naming the path.
 */
int keel__file_read(const char *path, size_t cap, char **out, size_t *len, char *why,
                    size_t whylen);

#endif
