/*
 * keelctl's text output: values of the server's JSON made printable and
 * aligned text tables.
 *
 * Whatever a server sends is shown sanitized (control characters become
 * '?'), so a hostile or confused server cannot move the cursor or retitle
 * the terminal.  keelctl is a short-lived command, so running out of memory
 * is not recovered from: every function here that allocates prints
 * "keelctl: out of memory" and exits with EXIT_UNREACHABLE instead of
 * returning NULL.  Strings returned are malloc'd and owned by the caller.
 */
#ifndef KEEL_CTL_OUTPUT_H
#define KEEL_CTL_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

#include <keel/common.h>

/* Exit codes, part of keelctl's interface (scripts test them).  They live
 * here because the allocators below exit with EXIT_UNREACHABLE. */
enum {
    EXIT_OK = 0,
    EXIT_SERVER_FAILED = 1, /* the server answered and reported a failure */
    EXIT_USAGE = 2,         /* bad command line or unusable local input */
    EXIT_UNREACHABLE = 3,   /* no usable HTTP answer from the admin listener */
};

/* malloc, strdup and a formatting asprintf that exit when memory runs out. */
void *xmalloc(size_t size);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) KEEL_PRINTF(1, 2);

/* Replaces control characters of s with '?' in place. */
void sanitize(char *s);
/* A sanitized copy of s. */
char *sanitized_copy(const char *s);
/* Columns a UTF-8 string occupies, counting one per code point. */
size_t display_width(const char *s);

/* A printable copy of a JSON value: "-" for missing (NULL), null and empty
 * strings; yes/no for booleans; compact JSON for arrays and objects. */
char *value_text(const json_t *v);
/* value_text() of obj[key]; "-" when obj is not an object. */
char *field_text(const json_t *obj, const char *key);
/* field_text() of an ISO 8601 time without its fractional seconds. */
char *time_text(const json_t *obj, const char *key);
/* Prints value_text(v) to out. */
void put_value(FILE *out, const json_t *v);

/* An aligned text table.  headers and right (true for right-aligned,
 * numeric columns) have ncols entries each and are not owned; cells are. */
struct table {
    size_t ncols;
    const char *const *headers;
    const bool *right;
    char **cells; /* nrows * ncols */
    size_t nrows;
};

/* Appends a row of ncols cells; the table takes ownership of the strings. */
void table_add(struct table *t, char **row);
/* Prints the header line and every row, columns two blanks apart. */
void table_print(FILE *out, const struct table *t);
/* Frees the cells; the table can be filled again. */
void table_free(struct table *t);
/* Prints s padded to width columns (right-aligned when right); the last
 * column of a line gets no trailing blanks. */
void print_cell(FILE *out, const char *s, size_t width, bool right, bool last);

#endif
