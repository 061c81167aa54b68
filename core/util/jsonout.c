#include "config.h"

#include "util/jsonout.h"
#include "util/text.h"

#include <limits.h>
#include <stdarg.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <keel/error.h>

/*
 * Where the text goes.  The fast path of every write is one comparison and
 * a memcpy; a write that does not fit either grows the buffer (grow) or, as
 * json_dumpb does, is only counted (dropped) and the buffer closed to
 * further writes, so the caller learns the size it needs.
 */
struct out {
    char *start;    /* the buffer */
    char *p;        /* next byte to write */
    char *end;      /* one past the buffer's last byte */
    size_t dropped; /* bytes counted but not stored */
    char *heap;     /* start, once it is memory allocated here */
    bool grow;
    int err; /* KEEL_ENOMEM once a growth failed */
};

/* The open containers, innermost first: a container found among them would
 * be written forever, and jansson refuses it. */
struct open {
    const json_t *v;
    const struct open *up;
};

static void put_slow(struct out *o, const char *s, size_t n)
{
    if (!o->grow || o->err != 0) {
        o->dropped += n;
        o->end = o->p;
        return;
    }
    size_t used = (size_t)(o->p - o->start);
    size_t size = (size_t)(o->end - o->start);
    size_t want = size < 128 ? 256 : size;
    while (want - used < n) {
        if (want > SIZE_MAX / 2) {
            o->err = KEEL_ENOMEM;
            o->end = o->p;
            return;
        }
        want *= 2;
    }
    char *mem = o->heap != NULL ? realloc(o->heap, want) : malloc(want);
    if (mem == NULL) {
        o->err = KEEL_ENOMEM;
        o->end = o->p;
        return;
    }
    if (o->heap == NULL && used > 0)
        memcpy(mem, o->start, used);
    o->heap = o->start = mem;
    o->p = mem + used;
    o->end = mem + want;
    memcpy(o->p, s, n);
    o->p += n;
}

static inline void put(struct out *o, const void *s, size_t n)
{
    if ((size_t)(o->end - o->p) >= n) {
        memcpy(o->p, s, n);
        o->p += n;
    } else {
        put_slow(o, s, n);
    }
}

static inline void put1(struct out *o, char c)
{
    if (o->p < o->end)
        *o->p++ = c;
    else
        put_slow(o, &c, 1);
}

/* A byte copied as it is: printable ASCII other than '"' and '\\' (a table:
 * keys and short values are mostly shorter than the eight bytes
 * word_plain() takes at once). */
static inline bool byte_plain(unsigned char c)
{
    return (keel__byte_class[c] & KEEL__BYTE_JSON_PLAIN) != 0;
}

/* Whether all 8 bytes of w are plain (util/text.h: the word tests). */
static inline bool word_plain(uint64_t w)
{
    return ((w & 0x8080808080808080ULL) | keel__word_below(w, 0x20) | keel__word_equal(w, '"') |
            keel__word_equal(w, '\\')) == 0;
}

static inline bool continuation(unsigned char c)
{
    return c >= 0x80 && c <= 0xBF;
}

/* The length of the UTF-8 sequence that starts with the non-ASCII byte at p,
 * or 0 when jansson refuses it: a stray continuation byte, an overlong form,
 * a UTF-16 surrogate, a code point past U+10FFFF, or a truncated sequence. */
static size_t utf8_length(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    size_t avail = (size_t)(end - p);
    if (c >= 0xC2 && c <= 0xDF)
        return avail >= 2 && continuation(p[1]) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (avail < 3 || !continuation(p[1]) || !continuation(p[2]))
            return 0;
        if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0))
            return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (avail < 4 || !continuation(p[1]) || !continuation(p[2]) || !continuation(p[3]))
            return 0;
        if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90))
            return 0;
        return 4;
    }
    return 0;
}

static void put_escape(struct out *o, unsigned char c)
{
    /* The characters with a two-character escape; the others \u00XX. */
    static const char two[] = {['"'] = '"',  ['\\'] = '\\', ['\b'] = 'b', ['\f'] = 'f',
                               ['\n'] = 'n', ['\r'] = 'r',  ['\t'] = 't'};
    static const char hex[] = "0123456789ABCDEF";
    char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
    if (c < sizeof two && two[c] != '\0') {
        e[1] = two[c];
        put(o, e, 2);
    } else {
        put(o, e, 6);
    }
}

/* A string of plain bytes only (nearly every key and short value) when the
 * buffer has room for it: copied as it is checked, a word at a time, with no
 * second pass and no memcpy call.  False, with nothing written, otherwise. */
static bool put_plain_string(struct out *o, const unsigned char *p, size_t len)
{
    if ((size_t)(o->end - o->p) < len + 2)
        return false;
    char *d = o->p;
    *d++ = '"';
    if (len >= 4 && len <= 8) {
        /* Two four-byte pieces that overlap when len < 8, checked as one
         * word: most keys and short values. */
        uint32_t head, tail;
        memcpy(&head, p, sizeof head);
        memcpy(&tail, p + len - 4, sizeof tail);
        if (!word_plain(head | (uint64_t)tail << 32))
            return false;
        memcpy(d, &head, sizeof head);
        memcpy(d + len - 4, &tail, sizeof tail);
        d[len] = '"';
        o->p = d + len + 1;
        return true;
    }
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, sizeof w);
        if (!word_plain(w))
            return false;
        memcpy(d, &w, sizeof w);
        d += 8;
    }
    for (; i < len; i++) {
        if (!byte_plain(p[i]))
            return false;
        *d++ = (char)p[i];
    }
    *d++ = '"';
    o->p = d;
    return true;
}

/* Runs of bytes that need nothing are found 8 at a time and copied with one
 * memcpy; only non-ASCII bytes are decoded, and only to be validated. */
static int put_string(struct out *o, const char *str, size_t len)
{
    if (put_plain_string(o, (const unsigned char *)str, len))
        return 0;
    const unsigned char *p = (const unsigned char *)str;
    const unsigned char *end = p + len;
    const unsigned char *run = p;
    put1(o, '"');
    for (;;) {
        while (end - p >= 8) {
            uint64_t w;
            memcpy(&w, p, sizeof w);
            if (!word_plain(w))
                break;
            p += 8;
        }
        while (p < end && byte_plain(*p))
            p++;
        if (p == end)
            break;
        if (*p >= 0x80) {
            size_t n = utf8_length(p, end);
            if (n == 0)
                return KEEL_EINVAL;
            p += n;
            continue;
        }
        put(o, run, (size_t)(p - run));
        put_escape(o, *p);
        run = ++p;
    }
    put(o, run, (size_t)(p - run));
    put1(o, '"');
    return 0;
}

static void put_integer(struct out *o, json_int_t v)
{
    char digits[KEEL__UINT_TEXT_MAX + 1];
    size_t n = 0;
    if (v < 0)
        digits[n++] = '-';
    /* Negated in unsigned arithmetic, which INT64_MIN survives. */
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    n += keel__uint_text(u, 0, digits + n);
    put(o, digits, n);
}

/* "%.15g", then as jansson: ".0" when the text would read back as an integer,
 * the exponent without '+' and leading zeros, and '.' whatever the locale's
 * decimal point (only digits, signs and 'e' are not the point). */
static int put_real_printf(struct out *o, double d)
{
    char text[48];
    int n = snprintf(text, sizeof text, "%.15g", d);
    if (n < 0 || (size_t)n >= sizeof text)
        return KEEL_EINVAL;
    char res[56];
    size_t m = 0;
    bool point = false;
    for (int i = 0; i < n; i++) {
        char c = text[i];
        if (c == 'e') {
            point = true;
            res[m++] = 'e';
            i++;
            if (i < n && text[i] == '-')
                res[m++] = '-';
            if (i < n && (text[i] == '-' || text[i] == '+'))
                i++;
            while (i < n - 1 && text[i] == '0')
                i++;
            while (i < n)
                res[m++] = text[i++];
            break;
        }
        if ((c >= '0' && c <= '9') || c == '-') {
            res[m++] = c;
        } else {
            point = true;
            res[m++] = '.';
        }
    }
    if (!point) {
        res[m++] = '.';
        res[m++] = '0';
    }
    put(o, res, m);
    return 0;
}

static const double pow10_table[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};

/*
 * The reals keel answers with are mostly short decimals (rates, scores:
 * 7.86), for which snprintf costs more than the rest of the body.  When a is
 * the double nearest to the decimal D = k / 10^j with k < 10^15 (so at most
 * 15 significant digits), "%.15g" prints D: a is within half a unit in the
 * last place of D (2^-53 of a), while 15-digit decimals near a are at least
 * 10^-15 of a apart, so D is the one printf rounds a to.  "Nearest" is
 * checked by dividing back: k and 10^j are exact doubles and IEEE division
 * rounds correctly.  From 1e-4 to below 1e15 printf uses fixed notation.
 * Returns false to leave the value to snprintf.
 */
static bool put_real_short(struct out *o, double d)
{
    double a = fabs(d);
    if (a < 1e-4 || a >= 1e15)
        return false;
    for (size_t j = 0; j < sizeof pow10_table / sizeof pow10_table[0]; j++) {
        double s = a * pow10_table[j];
        if (s >= 1e15)
            return false;
        uint64_t k = (uint64_t)s;
        if ((double)k != s || (double)k / pow10_table[j] != a)
            continue;
        /* Trailing zeros of the fraction are not printed. */
        size_t frac_digits = j;
        while (frac_digits > 0 && k % 10 == 0) {
            k /= 10;
            frac_digits--;
        }
        char digits[40];
        char *q = digits + sizeof digits;
        if (frac_digits == 0)
            *--q = '0';
        for (size_t i = 0; i < frac_digits; i++) {
            *--q = (char)('0' + k % 10);
            k /= 10;
        }
        *--q = '.';
        do {
            *--q = (char)('0' + k % 10);
            k /= 10;
        } while (k != 0);
        if (d < 0)
            *--q = '-';
        put(o, q, (size_t)(digits + sizeof digits - q));
        return true;
    }
    return false;
}

static int put_real(struct out *o, double d)
{
    /* jansson cannot hold a NaN or infinity; refused should one appear. */
    if (!isfinite(d))
        return KEEL_EINVAL;
    if (d == 0) {
        if (signbit(d))
            put(o, "-0.0", 4);
        else
            put(o, "0.0", 3);
        return 0;
    }
    if (put_real_short(o, d))
        return 0;
    return put_real_printf(o, d);
}

static int put_value(struct out *o, const json_t *v, const struct open *up, int depth);

/* Refuses a container nested too deep or already open above itself. */
static int enter(const json_t *v, const struct open *up, int depth)
{
    if (depth > KEEL_JSON_MAX_DEPTH)
        return KEEL_ETOOBIG;
    for (; up != NULL; up = up->up)
        if (up->v == v)
            return KEEL_EINVAL;
    return 0;
}

static int put_object(struct out *o, const json_t *v, const struct open *up, int depth)
{
    int rc = enter(v, up, depth);
    if (rc < 0)
        return rc;
    const struct open self = {v, up};
    put1(o, '{');
    bool first = true;
    for (void *it = json_object_iter((json_t *)v); it != NULL;
         it = json_object_iter_next((json_t *)v, it)) {
        if (!first)
            put1(o, ',');
        first = false;
        rc = put_string(o, json_object_iter_key(it), json_object_iter_key_len(it));
        if (rc < 0)
            return rc;
        put1(o, ':');
        rc = put_value(o, json_object_iter_value(it), &self, depth + 1);
        if (rc < 0)
            return rc;
    }
    put1(o, '}');
    return 0;
}

static int put_array(struct out *o, const json_t *v, const struct open *up, int depth)
{
    int rc = enter(v, up, depth);
    if (rc < 0)
        return rc;
    const struct open self = {v, up};
    put1(o, '[');
    size_t n = json_array_size(v);
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            put1(o, ',');
        rc = put_value(o, json_array_get(v, i), &self, depth + 1);
        if (rc < 0)
            return rc;
    }
    put1(o, ']');
    return 0;
}

static int put_value(struct out *o, const json_t *v, const struct open *up, int depth)
{
    if (v == NULL)
        return KEEL_EINVAL;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return put_object(o, v, up, depth);
    case JSON_ARRAY:
        return put_array(o, v, up, depth);
    case JSON_STRING:
        return put_string(o, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        put_integer(o, json_integer_value(v));
        return 0;
    case JSON_REAL:
        return put_real(o, json_real_value(v));
    case JSON_TRUE:
        put(o, "true", 4);
        return 0;
    case JSON_FALSE:
        put(o, "false", 5);
        return 0;
    case JSON_NULL:
        put(o, "null", 4);
        return 0;
    }
    return KEEL_EINVAL;
}

/* Without JSON_ENCODE_ANY jansson dumps only an array or an object. */
static int put_top(struct out *o, const json_t *v)
{
    if (v == NULL || (!json_is_object(v) && !json_is_array(v)))
        return KEEL_EINVAL;
    return put_value(o, v, NULL, 1);
}

/* A write into buf (buf may be NULL: then none, one byte, stands in) that
 * grows into malloc'd memory when buf is full, or (grow false) counts what
 * does not fit. */
static struct out out_into(char *buf, size_t cap, char *none, bool grow)
{
    if (buf == NULL) {
        buf = none;
        cap = 0;
    }
    return (struct out){.start = buf, .p = buf, .end = buf + cap, .grow = grow};
}

ssize_t keel__json_write(const json_t *v, char *buf, size_t cap)
{
    char none[1];
    struct out o = out_into(buf, cap, none, false);
    int rc = put_top(&o, v);
    if (rc < 0)
        return rc;
    size_t n = (size_t)(o.p - o.start) + o.dropped;
    return n > (size_t)SSIZE_MAX ? KEEL_ETOOBIG : (ssize_t)n;
}

/* Ends a growing write: the text and its length, or on failure (rc, or a
 * growth that failed) nothing, what was grown freed. */
static int out_done(struct out *o, int rc, char **out, size_t *len)
{
    if (rc == 0)
        rc = o->err;
    if (rc < 0) {
        free(o->heap);
        return rc;
    }
    *out = o->start;
    *len = (size_t)(o->p - o->start);
    return 0;
}

int keel__json_dump(const json_t *v, char *buf, size_t cap, char **out, size_t *len)
{
    char none[1];
    struct out o = out_into(buf, cap, none, true);
    return out_done(&o, put_top(&o, v), out, len);
}

/* ------------------------------------------------------------ packing */

/* Containers a format may open inside each other. */
#define PACK_MAX_DEPTH 32

struct pack {
    const char *f; /* next format character */
    va_list ap;
    const char *why; /* what was wrong, for the log */
};

/* The next format character, past the separators json_pack also skips. */
static char pack_next(struct pack *k)
{
    while (keel__byte_class[(unsigned char)*k->f] & KEEL__BYTE_PACK_SEP)
        k->f++;
    return *k->f;
}

static bool pack_optional(struct pack *k)
{
    if (*k->f != '?')
        return false;
    k->f++;
    return true;
}

static int pack_fail(struct pack *k, const char *why)
{
    k->why = why;
    return KEEL_EINVAL;
}

/* A NULL argument: null where the format allows it ('?' follows), else a
 * refusal. */
static int pack_null(struct out *o, struct pack *k, const char *why)
{
    if (!pack_optional(k))
        return pack_fail(k, why);
    put(o, "null", 4);
    return 0;
}

/* A string argument, as a value or an object key. */
static int pack_string(struct out *o, struct pack *k, const char *s, const char *what)
{
    return put_string(o, s, strlen(s)) == 0 ? 0 : pack_fail(k, what);
}

/* One scalar value of the format (its character already taken in c). */
static int pack_scalar(struct out *o, struct pack *k, char c)
{
    switch (c) {
    case 's': {
        const char *s = va_arg(k->ap, const char *);
        if (s == NULL)
            return pack_null(o, k, "NULL string for 's'");
        pack_optional(k);
        return pack_string(o, k, s, "string is not UTF-8");
    }
    case 'i':
        put_integer(o, va_arg(k->ap, int));
        return 0;
    case 'I':
        put_integer(o, va_arg(k->ap, json_int_t));
        return 0;
    case 'b':
        if (va_arg(k->ap, int))
            put(o, "true", 4);
        else
            put(o, "false", 5);
        return 0;
    case 'n':
        put(o, "null", 4);
        return 0;
    case 'f':
        return put_real(o, va_arg(k->ap, double)) == 0 ? 0 : pack_fail(k, "real is not finite");
    case 'O': {
        const json_t *v = va_arg(k->ap, const json_t *);
        if (v == NULL)
            return pack_null(o, k, "NULL value for 'O'");
        pack_optional(k);
        int rc = put_value(o, v, NULL, 1);
        if (rc < 0)
            k->why = "a value for 'O' cannot be written as JSON";
        return rc;
    }
    default:
        return pack_fail(k, "unknown format character");
    }
}

/*
 * The format is walked with an explicit stack of the open containers ('}'
 * or ']' expected), never recursively: a plugin's format is short, but a
 * mistake in one must not cost more than a refusal.
 */
/* An object member's key (c, its format character, must be 's'), written
 * with its ':'; *c becomes the format character of the member's value. */
static int pack_key(struct out *o, struct pack *k, char *c)
{
    if (*c != 's')
        return pack_fail(k, "an object key must be 's'");
    const char *key = va_arg(k->ap, const char *);
    if (key == NULL)
        return pack_fail(k, "NULL object key");
    if (pack_string(o, k, key, "object key is not UTF-8") != 0)
        return KEEL_EINVAL;
    put1(o, ':');
    *c = pack_next(k);
    k->f++;
    if (*c == '\0' || *c == '}' || *c == ']')
        return pack_fail(k, "an object key without a value");
    return 0;
}

static int pack_top(struct out *o, struct pack *k)
{
    char stack[PACK_MAX_DEPTH];
    int depth = 0;
    bool first[PACK_MAX_DEPTH];
    char c = pack_next(k);
    if (c != '{' && c != '[')
        return pack_fail(k, "the format must start with '{' or '['");
    do {
        c = pack_next(k);
        k->f++;
        if (c == '\0')
            return pack_fail(k, depth > 0 ? "the format ends inside a container" : "empty format");
        if (depth > 0 && (c == '}' || c == ']')) {
            if (c != stack[depth - 1])
                return pack_fail(k, "mismatched '}' or ']'");
            put1(o, c);
            depth--;
            continue;
        }
        if (depth > 0) {
            if (!first[depth - 1])
                put1(o, ',');
            first[depth - 1] = false;
            if (stack[depth - 1] == '}' && pack_key(o, k, &c) != 0)
                return KEEL_EINVAL;
        }
        if (c == '{' || c == '[') {
            if (depth == PACK_MAX_DEPTH)
                return pack_fail(k, "containers nested too deep");
            put1(o, c);
            stack[depth] = c == '{' ? '}' : ']';
            first[depth] = true;
            depth++;
            continue;
        }
        int rc = pack_scalar(o, k, c);
        if (rc < 0)
            return rc;
    } while (depth > 0);
    if (pack_next(k) != '\0')
        return pack_fail(k, "format goes on after the top-level container");
    return 0;
}

int keel__json_vpack(char *buf, size_t cap, char **out, size_t *len, const char **why,
                     const char *fmt, va_list ap)
{
    char none[1];
    struct out o = out_into(buf, cap, none, true);
    struct pack k = {.f = fmt != NULL ? fmt : "", .why = NULL};
    va_copy(k.ap, ap);
    int rc = out_done(&o, pack_top(&o, &k), out, len);
    va_end(k.ap);
    if (rc < 0 && why != NULL)
        *why = k.why != NULL ? k.why : rc == KEEL_ENOMEM ? "out of memory" : "invalid value";
    return rc;
}
