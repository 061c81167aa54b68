#include "config.h"

#include "output.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static void no_memory(void)
{
    fputs("keelctl: out of memory\n", stderr);
    exit(EXIT_UNREACHABLE);
}

void *xmalloc(size_t size)
{
    void *p = malloc(size);
    if (p == NULL)
        no_memory();
    return p;
}

char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (p == NULL)
        no_memory();
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        no_memory();
    char *s = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* --------------------------------------------------------------- text */

void sanitize(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

char *sanitized_copy(const char *s)
{
    char *copy = xstrdup(s);
    sanitize(copy);
    return copy;
}

size_t display_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    return w;
}

char *value_text(const json_t *v)
{
    char *s;
    if (v == NULL || json_is_null(v))
        s = xstrdup("-");
    else if (json_is_string(v))
        s = xstrdup(json_string_length(v) ? json_string_value(v) : "-");
    else if (json_is_integer(v))
        s = xasprintf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_real(v))
        s = xasprintf("%.15g", json_real_value(v));
    else if (json_is_boolean(v))
        s = xstrdup(json_is_true(v) ? "yes" : "no");
    else {
        s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (s == NULL)
            s = xstrdup("?");
    }
    sanitize(s);
    return s;
}

char *field_text(const json_t *obj, const char *key)
{
    return value_text(json_is_object(obj) ? json_object_get(obj, key) : NULL);
}

/* The table has no room for fractional seconds and nobody reads them there
 * ("...T17:58:01.123456Z" becomes "...T17:58:01Z").  Anything that is not
 * such a time is shown as it is. */
char *time_text(const json_t *obj, const char *key)
{
    char *s = field_text(obj, key);
    char *t = strchr(s, 'T');
    if (t != NULL && strlen(t) > 9 && t[3] == ':' && t[6] == ':' && t[9] == '.') {
        char *frac = t + 9;
        size_t digits = strspn(frac + 1, "0123456789");
        memmove(frac, frac + 1 + digits, strlen(frac + 1 + digits) + 1);
    }
    return s;
}

void put_value(FILE *out, const json_t *v)
{
    char *s = value_text(v);
    fputs(s, out);
    free(s);
}

/* --------------------------------------------------------------- tables */

void table_add(struct table *t, char **row)
{
    char **cells = realloc(t->cells, (t->nrows + 1) * t->ncols * sizeof *cells);
    if (cells == NULL)
        no_memory();
    t->cells = cells;
    memcpy(cells + t->nrows * t->ncols, row, t->ncols * sizeof *row);
    t->nrows++;
}

void print_cell(FILE *out, const char *s, size_t width, bool right, bool last)
{
    size_t w = display_width(s);
    size_t pad = width > w ? width - w : 0;
    if (right)
        fprintf(out, "%*s", (int)pad, "");
    fputs(s, out);
    /* No trailing blanks on the last column. */
    if (!right && !last)
        fprintf(out, "%*s", (int)pad, "");
}

void table_print(FILE *out, const struct table *t)
{
    size_t *width = calloc(t->ncols, sizeof *width);
    if (width == NULL)
        no_memory();
    for (size_t c = 0; c < t->ncols; c++) {
        width[c] = display_width(t->headers[c]);
        for (size_t r = 0; r < t->nrows; r++) {
            size_t w = display_width(t->cells[r * t->ncols + c]);
            if (w > width[c])
                width[c] = w;
        }
    }
    for (size_t r = 0; r <= t->nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            const char *s = r == 0 ? t->headers[c] : t->cells[(r - 1) * t->ncols + c];
            if (c > 0)
                fputs("  ", out);
            print_cell(out, s, width[c], t->right[c], c + 1 == t->ncols);
        }
        fputc('\n', out);
    }
    free(width);
}

void table_free(struct table *t)
{
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    t->cells = NULL;
    t->nrows = 0;
}
