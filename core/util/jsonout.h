/*
 * keel's JSON writer for jansson trees: the bytes of
 * json_dumpb(v, ..., JSON_COMPACT | JSON_REAL_PRECISION(15)), without
 * jansson's per-byte callback, per-character UTF-8 decoding, snprintf per
 * integer and per-dump hash table of open containers.
 *
 * What is written is byte for byte what jansson 2.14 writes with those
 * flags: keys in the object's iteration (insertion) order, no whitespace,
 * strings with '"', '\\' and the control characters escaped (\b \f \n \r \t,
 * the others as \u00XX in upper-case hex), everything else, '/', DEL and
 * non-ASCII included, copied as it is; integers in decimal; reals as "%.15g"
 * with ".0" added when that reads as an integer, and the exponent without
 * '+' or leading zeros.  The same trees are refused: a top level that is not
 * an array or object, a string (or key) that is not valid UTF-8, a container
 * that contains itself.  tests/unit/util/test_jsonout.c holds this against
 * the installed jansson.
 *
 * The one difference: nesting deeper than KEEL_JSON_MAX_DEPTH is refused
 * (jansson recurses until the stack ends; its own parser stops at the same
 * depth).
 */
#ifndef KEEL_CORE_UTIL_JSONOUT_H
#define KEEL_CORE_UTIL_JSONOUT_H

#include <stdarg.h>
#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>
#include <keel/common.h>

/* Containers nested deeper than this are refused with KEEL_ETOOBIG. */
#define KEEL_JSON_MAX_DEPTH 2048

/*
 * Writes v into buf (cap bytes, no terminating NUL) and returns the length of
 * the whole text, like snprintf: a result greater than cap means it did not
 * fit and buf holds an unspecified part of it.  Returns KEEL_EINVAL for a tree
 * jansson refuses to dump, KEEL_ETOOBIG for one nested too deep.  buf may be
 * NULL when cap is 0.
 */
ssize_t keel__json_write(const json_t *v, char *buf, size_t cap) KEEL_WARN_UNUSED;

/*
 * Writes v into buf (cap bytes) and, when it does not fit, continues in a
 * buffer allocated with malloc, so the text is produced in one pass.  On
 * success returns 0 with *out pointing at the text (buf itself, or the
 * malloc'd buffer the caller then owns and frees) and *len its length; no
 * NUL is written.  On failure returns KEEL_EINVAL or KEEL_ETOOBIG as
 * keel__json_write, or KEEL_ENOMEM, and allocates nothing.
 */
int keel__json_dump(const json_t *v, char *buf, size_t cap, char **out,
                    size_t *len) KEEL_WARN_UNUSED;

/*
 * Writes the JSON a json_pack() format describes straight into buf (growing
 * into malloc'd memory as keel__json_dump does), without building a tree.
 * The format is a subset of json_pack's: '{' '}' '[' ']', object keys 's',
 * and the values 's' (const char *), 's?' (NULL writes null), 'i' (int),
 * 'I' (json_int_t), 'b' (int, true when non-zero), 'f' (double, finite),
 * 'n' (null), 'O' (a borrowed json_t *, written as keel__json_write would;
 * 'O?' writes null for NULL).  Whitespace, ':' and ',' are skipped.  The
 * top level is an object or an array.  Keys are written as given, in order:
 * a repeated key is not detected.  Returns 0 with *out and *len as
 * keel__json_dump, or KEEL_EINVAL (a bad format, a NULL where none may be,
 * a string that is not UTF-8, a non-finite real) or KEEL_ENOMEM, with *why
 * saying which.
 */
int keel__json_vpack(char *buf, size_t cap, char **out, size_t *len, const char **why,
                     const char *fmt, va_list ap) KEEL_WARN_UNUSED;

#endif
