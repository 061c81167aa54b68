/* Unit tests for core/util/jsonout.c: every text is compared with what the
 * installed jansson's json_dumpb writes with the flags keel answers with. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <keel/error.h>

#include "util/jsonout.h"

#define FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))

/* A fixed-seed generator, so a failure repeats. */
static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* jansson's text for v (malloc'd, *len set), or NULL when it refuses v. */
static char *reference(const json_t *v, size_t *len)
{
    size_t n = json_dumpb(v, NULL, 0, FLAGS);
    if (n == 0)
        return NULL;
    char *text = malloc(n);
    assert_non_null(text);
    assert_int_equal(json_dumpb(v, text, n, FLAGS), n);
    *len = n;
    return text;
}

/* Whether an object in v has a key jansson itself would refuse as a string. */
static bool has_invalid_key(const json_t *v)
{
    size_t i;
    const char *key;
    size_t key_len;
    json_t *child;
    if (json_is_array(v)) {
        json_array_foreach(v, i, child)
        {
            if (has_invalid_key(child))
                return true;
        }
    } else if (json_is_object(v)) {
        json_object_keylen_foreach((json_t *)v, key, key_len, child)
        {
            json_t *s = json_stringn(key, key_len);
            if (s == NULL || has_invalid_key(child)) {
                json_decref(s);
                return true;
            }
            json_decref(s);
        }
    }
    return false;
}

/* Both entry points agree with jansson on v, at a few buffer sizes; returns
 * whether jansson (and so keel) accepted v. */
static bool check_same(const json_t *v)
{
    size_t len = 0;
    char *want = reference(v, &len);
    char *buf = malloc(len + 16);
    assert_non_null(buf);
    ssize_t n = keel__json_write(v, buf, len + 16);
    if (want != NULL && n < 0) {
        /* jansson ignores the failure of an object key that is not UTF-8 and
         * writes on: a broken key, then the rest, which is not JSON or not
         * the tree.  keel refuses the tree as it does an invalid string. */
        assert_int_equal(n, KEEL_EINVAL);
        assert_true(has_invalid_key(v));
        free(want);
        want = NULL;
    }
    if (want == NULL) {
        assert_true(n < 0);
        assert_int_equal(keel__json_write(v, NULL, 0), n);
    } else {
        assert_int_equal(n, (ssize_t)len);
        assert_memory_equal(buf, want, len);
        assert_int_equal(keel__json_write(v, NULL, 0), (ssize_t)len);
    }
    static const size_t caps[] = {0, 1, 7, 64, 1024};
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
        char small[1024];
        char *out = NULL;
        size_t outlen = 0;
        int rc = keel__json_dump(v, caps[i] ? small : NULL, caps[i], &out, &outlen);
        if (want == NULL) {
            assert_true(rc < 0);
            continue;
        }
        assert_int_equal(rc, 0);
        assert_int_equal(outlen, len);
        assert_memory_equal(out, want, len);
        if (len <= caps[i])
            assert_ptr_equal(out, small);
        else
            free(out);
    }
    bool accepted = want != NULL;
    free(buf);
    free(want);
    return accepted;
}

/* Checks a one-string array [s] and a one-key object {s: 1}; returns whether
 * jansson accepted the string. */
static bool check_string(const char *s, size_t len)
{
    json_t *a = json_array();
    json_array_append_new(a, json_stringn_nocheck(s, len));
    bool ok = check_same(a);
    json_decref(a);
    json_t *o = json_object();
    assert_int_equal(json_object_setn_new_nocheck(o, s, len, json_integer(1)), 0);
    assert_int_equal(check_same(o), ok);
    if (!ok) {
        /* What jansson writes for such a key is not JSON. */
        size_t n = 0;
        char *text = reference(o, &n);
        assert_non_null(text);
        assert_null(json_loadb(text, n, 0, NULL));
        free(text);
    }
    json_decref(o);
    return ok;
}

/* v (released here) is written as exactly want. */
static void assert_writes(json_t *v, const char *want)
{
    char buf[256];
    size_t len = strlen(want);
    ssize_t n = keel__json_write(v, buf, sizeof buf);
    assert_int_equal(n, (ssize_t)len);
    assert_memory_equal(buf, want, len);
    json_decref(v);
}

static void test_escapes(void **state)
{
    (void)state;
    /* Every single byte, alone and between plain text. */
    for (int c = 0; c < 256; c++) {
        char one[1] = {(char)c};
        bool ok = check_string(one, 1);
        assert_int_equal(ok, c < 0x80);
        char mid[20] = "abcdefghi?jklmnopqr";
        mid[9] = (char)c;
        assert_int_equal(check_string(mid, 19), ok);
    }
    /* The texts keel answers with most: compare the exact bytes, too. */
    assert_writes(json_pack("[s]", "\"\\/\b\f\n\r\t\x01\x1f\x7f"),
                  "[\"\\\"\\\\/\\b\\f\\n\\r\\t\\u0001\\u001F\x7f\"]");
    assert_true(check_string("", 0));
    assert_true(check_string("a\0b", 3));
    /* Long runs cross the 8-byte steps at every alignment. */
    char longer[80];
    for (size_t at = 0; at < sizeof longer; at++) {
        memset(longer, 'x', sizeof longer);
        longer[at] = '"';
        assert_true(check_string(longer, sizeof longer));
        longer[at] = '\n';
        assert_true(check_string(longer, at + 1));
    }
    /* Short strings (keys, most values) go through the plain-text path,
     * four bytes at a time with two pieces that overlap: a byte that needs
     * escaping or decoding at every position of every short length. */
    static const char needs[] = {'"', '\\', '\n', '\x7f', '\x01', (char)0xc3};
    for (size_t len = 1; len <= 17; len++) {
        for (size_t at = 0; at < len; at++) {
            for (size_t k = 0; k < sizeof needs; k++) {
                char s[17];
                memset(s, 'k', sizeof s);
                s[at] = needs[k];
                /* An 0xc3 not followed by a continuation byte is refused. */
                assert_int_equal(check_string(s, len), needs[k] != (char)0xc3);
            }
        }
    }
}

static void test_utf8(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        bool ok;
    } cases[] = {
        {"\xc2\x80", true},          /* U+0080 */
        {"\xc3\xa9t\xc3\xa9", true}, /* été */
        {"\xdf\xbf", true},          /* U+07FF */
        {"\xe0\xa0\x80", true},      /* U+0800 */
        {"\xe2\x80\xa8", true},      /* U+2028, not escaped without ENSURE_ASCII */
        {"\xe2\x80\xa9", true},      /* U+2029 */
        {"\xed\x9f\xbf", true},      /* U+D7FF */
        {"\xee\x80\x80", true},      /* U+E000 */
        {"\xef\xbf\xbf", true},      /* U+FFFF */
        {"\xf0\x90\x80\x80", true},  /* U+10000 */
        {"\xf0\x9f\x98\x80", true},  /* an emoji */
        {"\xf4\x8f\xbf\xbf", true},  /* U+10FFFF */
        {"\x80", false},             /* continuation byte alone */
        {"\xbf", false},
        {"\xc0\x80", false},         /* overlong NUL */
        {"\xc1\xbf", false},         /* overlong */
        {"\xc2", false},             /* truncated */
        {"\xc2x", false},            /* not a continuation */
        {"\xe0\x80\x80", false},     /* overlong */
        {"\xe0\x9f\xbf", false},     /* overlong */
        {"\xe2\x80", false},         /* truncated */
        {"\xed\xa0\x80", false},     /* surrogate U+D800 */
        {"\xed\xbf\xbf", false},     /* surrogate U+DFFF */
        {"\xf0\x80\x80\x80", false}, /* overlong */
        {"\xf0\x8f\xbf\xbf", false}, /* overlong */
        {"\xf4\x90\x80\x80", false}, /* past U+10FFFF */
        {"\xf5\x80\x80\x80", false},
        {"\xf8\x88\x80\x80\x80", false},
        {"\xfe", false},
        {"\xff", false},
        {"\xf0\x9f\x98", false}, /* truncated emoji */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = strlen(cases[i].s);
        assert_int_equal(check_string(cases[i].s, len), cases[i].ok);
        /* The same inside longer text and at the end of it. */
        char text[64];
        memcpy(text, "0123456789", 10);
        memcpy(text + 10, cases[i].s, len);
        memcpy(text + 10 + len, "0123456789", 10);
        assert_int_equal(check_string(text, len + 20), cases[i].ok);
        assert_int_equal(check_string(text, len + 10), cases[i].ok);
    }
}

static void test_numbers(void **state)
{
    (void)state;
    static const json_int_t ints[] = {0,
                                      1,
                                      -1,
                                      9,
                                      10,
                                      -10,
                                      99,
                                      100,
                                      123456789,
                                      -987654321,
                                      INT32_MAX,
                                      INT32_MIN,
                                      (json_int_t)INT32_MAX + 1,
                                      999999999999999999LL,
                                      1000000000000000000LL,
                                      INT64_MAX,
                                      INT64_MIN,
                                      INT64_MIN + 1};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        json_t *a = json_pack("[I]", ints[i]);
        assert_true(check_same(a));
        json_decref(a);
    }
    static const double reals[] = {0.0,
                                   -0.0,
                                   1.0,
                                   -1.0,
                                   100.0,
                                   7.86,
                                   0.1,
                                   0.1 + 0.2,
                                   1.5e-7,
                                   1e-5,
                                   1e-4,
                                   0.0001234,
                                   1e15,
                                   1e14,
                                   123456789012345.0,
                                   1234567890123456.0,
                                   1e16,
                                   1e17,
                                   1e21,
                                   1e22,
                                   1e100,
                                   1e300,
                                   -1e300,
                                   1.7976931348623157e308,
                                   2.2250738585072014e-308,
                                   5e-324,
                                   3.141592653589793,
                                   2.5,
                                   1.0 / 3.0,
                                   -2.0 / 3.0,
                                   4.35,
                                   1e-10,
                                   123.456e-100};
    for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++) {
        json_t *a = json_pack("[f]", reals[i]);
        assert_true(check_same(a));
        json_decref(a);
    }
    /* The jansson in use refuses to hold a NaN or an infinity at all. */
    assert_null(json_real(NAN));
    assert_null(json_real(INFINITY));
    assert_null(json_real(-INFINITY));
    json_t *r = json_real(1.0);
    assert_int_equal(json_real_set(r, NAN), -1);
    json_decref(r);
    /* The exact spelling of the cases the service relies on. */
    assert_writes(json_pack("[fffffff]", 7.86, 100.0, -0.0, 1e300, 1.5e-7, 0.0, 1e15),
                  "[7.86,100.0,-0.0,1e300,1.5e-7,0.0,1e15]");
}

/* Checks the reals collected in *a against jansson, then empties it. */
static void flush_reals(json_t *a)
{
    assert_true(check_same(a));
    json_array_clear(a);
}

static void test_short_reals(void **state)
{
    (void)state;
    /* Decimals k / 10^j, their neighbours one binary unit away (which may
     * print the same at 15 digits, or not), and the edges of fixed notation;
     * the writer prints some without snprintf, and all as jansson. */
    rng_state = 0x7265616c73ULL;
    json_t *a = json_array();
    static const uint64_t mods[] = {
        10, 1000, 1000000, 1000000000, 1000000000000000ULL, 10000000000000000ULL};
    for (int j = 0; j <= 12; j++) {
        for (int i = 0; i < 600; i++) {
            uint64_t k = rnd() % mods[i % 6];
            double d = (double)k / pow(10, j);
            double v[] = {d, -d, nextafter(d, 0), nextafter(d, INFINITY)};
            for (size_t x = 0; x < sizeof v / sizeof v[0]; x++)
                json_array_append_new(a, json_real(v[x]));
        }
        flush_reals(a);
    }
    static const double edges[] = {1e-4,
                                   1.5e-4,
                                   0.0001234,
                                   0.00099,
                                   999999999999999.0,
                                   999999999999999.9,
                                   99999999999999.99,
                                   1e15 - 1,
                                   1e14,
                                   123456789012345.0,
                                   12345678901234.5,
                                   0.5,
                                   1.25,
                                   1e-3,
                                   2.675,
                                   1.005,
                                   0.015,
                                   8.5e-5,
                                   9.99999999999999e-5};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        double v[] = {edges[i], -edges[i], nextafter(edges[i], 0), nextafter(edges[i], 1e300)};
        for (size_t x = 0; x < sizeof v / sizeof v[0]; x++)
            json_array_append_new(a, json_real(v[x]));
    }
    flush_reals(a);
    json_decref(a);
}

static void test_containers(void **state)
{
    (void)state;
    json_t *v = json_array();
    assert_true(check_same(v));
    json_decref(v);
    v = json_object();
    assert_true(check_same(v));
    json_decref(v);
    v = json_pack("{s:[],s:{},s:[[],{}],s:n,s:b,s:b}", "a", "b", "c", "d", "t", 1, "f", 0);
    assert_true(check_same(v));
    json_decref(v);
    /* Insertion order, not key order; a value replaced keeps its place. */
    v = json_object();
    json_object_set_new(v, "zeta", json_integer(1));
    json_object_set_new(v, "alpha", json_integer(2));
    json_object_set_new(v, "mid", json_integer(3));
    json_object_set_new(v, "zeta", json_integer(4));
    json_object_del(v, "alpha");
    json_object_set_new(v, "alpha", json_integer(5));
    assert_true(check_same(v));
    json_decref(v);
    /* Top-level scalars are refused, as without JSON_ENCODE_ANY. */
    json_t *scalars[] = {json_string("x"), json_integer(1), json_real(1.5),
                         json_true(),      json_false(),    json_null()};
    for (size_t i = 0; i < sizeof scalars / sizeof scalars[0]; i++) {
        assert_false(check_same(scalars[i]));
        assert_int_equal(keel__json_write(scalars[i], NULL, 0), KEEL_EINVAL);
        json_decref(scalars[i]);
    }
    assert_int_equal(keel__json_write(NULL, NULL, 0), KEEL_EINVAL);
}

static void test_loops(void **state)
{
    (void)state;
    /* One value twice side by side is not a loop. */
    json_t *shared = json_pack("{s:i}", "x", 1);
    json_t *v = json_pack("[O,O,{s:O}]", shared, shared, "k", shared);
    assert_true(check_same(v));
    json_decref(v);
    json_decref(shared);
    /* A container inside itself, through another. */
    json_t *a = json_array();
    json_t *o = json_object();
    json_array_append(a, o);
    json_object_set(o, "back", a);
    assert_false(check_same(a));
    assert_false(check_same(o));
    assert_int_equal(keel__json_write(a, NULL, 0), KEEL_EINVAL);
    json_object_del(o, "back");
    assert_true(check_same(a));
    json_decref(o);
    json_decref(a);
}

static json_t *nested(int depth)
{
    json_t *top = json_array();
    json_t *cur = top;
    for (int i = 1; i < depth; i++) {
        json_t *next = i % 2 ? json_object() : json_array();
        if (json_is_array(cur))
            json_array_append_new(cur, next);
        else
            json_object_set_new(cur, "k", next);
        cur = next;
    }
    return top;
}

static void test_depth(void **state)
{
    (void)state;
    json_t *v = nested(KEEL_JSON_MAX_DEPTH);
    assert_true(check_same(v));
    json_decref(v);
    /* Deeper is refused here (jansson would recurse on). */
    v = nested(KEEL_JSON_MAX_DEPTH + 1);
    assert_int_equal(keel__json_write(v, NULL, 0), KEEL_ETOOBIG);
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(keel__json_dump(v, NULL, 0, &out, &len), KEEL_ETOOBIG);
    json_decref(v);
}

static size_t random_text(char *buf, size_t max, bool allow_invalid)
{
    static const char *const pieces[] = {"\"",
                                         "\\",
                                         "/",
                                         "\x7f",
                                         "\n",
                                         "\t",
                                         "\x01",
                                         "\x1f",
                                         " ",
                                         "\xc3\xa9",
                                         "\xe2\x80\xa8",
                                         "\xe2\x82\xac",
                                         "\xf0\x9f\x98\x80",
                                         "\xf4\x8f\xbf\xbf",
                                         "\xdf\xbf"};
    size_t n = 0;
    size_t want = rnd() % 4 == 0 ? rnd() % 60 : rnd() % 12;
    while (n < want && n + 4 < max) {
        uint64_t r = rnd() % 100;
        if (r < 60) {
            buf[n++] = (char)(0x20 + rnd() % 0x5f);
        } else if (r < 70) {
            buf[n++] = (char)(rnd() % 0x20);
        } else if (r < 98 || !allow_invalid) {
            const char *p = pieces[rnd() % (sizeof pieces / sizeof pieces[0])];
            size_t l = strlen(p);
            memcpy(buf + n, p, l);
            n += l;
        } else {
            buf[n++] = (char)(0x80 + rnd() % 0x80);
        }
    }
    return n;
}

static double random_real(void)
{
    switch (rnd() % 5) {
    case 0: {
        double d;
        do {
            uint64_t bits = rnd();
            memcpy(&d, &bits, sizeof d);
        } while (!isfinite(d));
        return d;
    }
    case 1:
        return (double)(int64_t)(rnd() % 2000001 - 1000000) / 100.0;
    case 2:
        return (double)(int64_t)rnd() * 1e-9;
    case 3:
        return ldexp((double)(rnd() % 1000000), (int)(rnd() % 200) - 100);
    default:
        return (double)(rnd() % 1000);
    }
}

static json_t *random_value(int depth, bool allow_invalid)
{
    char text[80];
    uint64_t kind = depth > 4 ? rnd() % 6 : rnd() % 8;
    switch (kind) {
    case 0:
        return json_null();
    case 1:
        return json_boolean(rnd() % 2);
    case 2: {
        uint64_t r = rnd();
        return json_integer(rnd() % 3 == 0 ? (json_int_t)r : (json_int_t)(r % 20001) - 10000);
    }
    case 3:
        return json_real(random_real());
    case 4:
    case 5: {
        size_t n = random_text(text, sizeof text, allow_invalid);
        return json_stringn_nocheck(text, n);
    }
    case 6: {
        json_t *a = json_array();
        for (uint64_t i = rnd() % 6; i > 0; i--)
            json_array_append_new(a, random_value(depth + 1, allow_invalid));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (uint64_t i = rnd() % 6; i > 0; i--) {
            size_t n = random_text(text, sizeof text, allow_invalid);
            json_object_setn_new_nocheck(o, text, n, random_value(depth + 1, allow_invalid));
        }
        return o;
    }
    }
}

static void test_random_trees(void **state)
{
    (void)state;
    rng_state = 0x6b65656c6a736f6eULL;
    int accepted = 0, refused = 0;
    for (int i = 0; i < 4000; i++) {
        json_t *top = rnd() % 2 ? json_array() : json_object();
        bool allow_invalid = i % 4 == 0;
        for (uint64_t k = 1 + rnd() % 6; k > 0; k--) {
            json_t *child = random_value(1, allow_invalid);
            if (json_is_array(top)) {
                json_array_append_new(top, child);
            } else {
                char key[80];
                size_t n = random_text(key, sizeof key, allow_invalid);
                json_object_setn_new_nocheck(top, key, n, child);
            }
        }
        if (check_same(top))
            accepted++;
        else
            refused++;
        json_decref(top);
    }
    /* Both outcomes were exercised. */
    assert_true(accepted > 2000);
    assert_true(refused > 100);
}

static void test_every_cut(void **state)
{
    (void)state;
    json_t *v = json_pack("{s:s,s:[i,f,b,n],s:{s:s},s:s}", "detail", "Not \"Found\"\n", "list", 42,
                          7.86, 1, "nested", "k\xc3\xa9y", "v\xf0\x9f\x98\x80", "tail",
                          "0123456789abcdef0123456789abcdef");
    size_t len = 0;
    char *want = reference(v, &len);
    assert_non_null(want);
    char *buf = malloc(len + 2);
    assert_non_null(buf);
    for (size_t cap = 0; cap <= len + 1; cap++) {
        memset(buf, '#', len + 2);
        assert_int_equal(keel__json_write(v, buf, cap), (ssize_t)len);
        if (cap >= len)
            assert_memory_equal(buf, want, len);
        /* Nothing is written past the buffer given. */
        for (size_t i = cap; i < len + 2; i++)
            assert_int_equal(buf[i], '#');
        char *out = NULL;
        size_t outlen = 0;
        assert_int_equal(keel__json_dump(v, buf, cap, &out, &outlen), 0);
        assert_int_equal(outlen, len);
        assert_memory_equal(out, want, len);
        if (cap >= len) {
            assert_ptr_equal(out, buf);
        } else {
            assert_true(out != buf);
            free(out);
        }
    }
    free(buf);
    free(want);
    json_decref(v);
}

static void test_big_body(void **state)
{
    (void)state;
    /* Grown past the caller's buffer many times over. */
    json_t *rows = json_array();
    for (int i = 0; i < 5000; i++)
        json_array_append_new(rows,
                              json_pack("{s:i,s:s,s:f}", "id", i, "title",
                                        "a post \xe2\x80\x94 with \"quotes\"", "score", i / 7.0));
    assert_true(check_same(rows));
    json_decref(rows);
}

/* ------------------------------------------------------------ packing */

/* keel__json_vpack(fmt, ...) against json_dumpb(json_pack(fmt, ...)),
 * written into a buffer of cap bytes (so the growth path runs too). */
static void same_as_pack(size_t cap, const char *fmt, ...)
{
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    json_error_t jerr;
    json_t *tree = json_vpack_ex(&jerr, 0, fmt, ap);
    assert_non_null(tree);
    size_t want_len = 0;
    char *want = reference(tree, &want_len);
    json_decref(tree);
    char *buf = cap > 0 ? malloc(cap) : NULL;
    char *text = NULL;
    size_t len = 0;
    const char *why = NULL;
    int rc = keel__json_vpack(buf, cap, &text, &len, &why, fmt, ap2);
    va_end(ap2);
    va_end(ap);
    if (rc != 0)
        fail_msg("format \"%s\": %s", fmt, why ? why : "?");
    if (len != want_len || memcmp(text, want, len) != 0)
        fail_msg("format \"%s\": wrote %.*s, json_pack dumps %.*s", fmt, (int)len, text,
                 (int)want_len, want);
    if (text != buf)
        free(text);
    free(buf);
    free(want);
}

static void refused(const char *want_why, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[64], *text = NULL;
    size_t len = 0;
    const char *why = NULL;
    int rc = keel__json_vpack(buf, sizeof buf, &text, &len, &why, fmt, ap);
    va_end(ap);
    if (rc != KEEL_EINVAL)
        fail_msg("format \"%s\" was not refused (%d)", fmt, rc);
    assert_non_null(why);
    if (strstr(why, want_why) == NULL)
        fail_msg("format \"%s\": \"%s\", expected \"%s\"", fmt, why, want_why);
}

static void test_pack_matches_json_pack(void **state)
{
    (void)state;
    size_t caps[] = {0, 1, 7, 64, 1024};
    json_t *tree = json_pack("{s:[i,f,s],s:{s:n}}", "a", 1, 2.5, "x\n\"y\"", "o", "k");
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
        size_t c = caps[i];
        same_as_pack(c, "{}");
        same_as_pack(c, "[]");
        same_as_pack(c, "{s:s, s:s}", "plugin", "example", "message", "hello");
        same_as_pack(c, "{s:s, s:s?, s:s?, s:s?, s:b}", "plugin", "example", "email",
                     "ana@example.com", "supabase_id", NULL, "role", "free", "synced", 1);
        same_as_pack(c, "{s:i, s:I, s:b, s:n, s:f, s:f}", "i", -2147483647 - 1, "I",
                     (json_int_t)INT64_MIN, "b", 0, "n", "f", 7.86, "g", 1e300);
        same_as_pack(c, "[s, [], {}, [[[i]]], {s:{s:[b,b]}}]", "caf\xc3\xa9 \xe2\x80\x94 \x01", 42,
                     "k\tey", "in", 1, 0);
        same_as_pack(c, " { s : O , s : O? , s:[O] } ", "tree", tree, "none", NULL, "again", tree);
    }
    json_decref(tree);
}

static void test_pack_refuses_what_it_cannot_write(void **state)
{
    (void)state;
    refused("NULL string", "{s:s}", "k", NULL);
    refused("NULL object key", "{s:i}", NULL, 1);
    refused("not UTF-8", "[s]", "\xff");
    refused("not UTF-8", "{s:i}", "\xc3", 1);
    refused("not finite", "[f]", NAN);
    refused("not finite", "[f]", INFINITY);
    refused("NULL value", "[O]", NULL);
    refused("start with", "s", "top-level string");
    refused("start with", "");
    refused("ends inside", "{s:i", "k", 1);
    refused("mismatched", "[i}", 1);
    refused("key must be", "{i:i}", 1, 2);
    refused("without a value", "{s}", "k");
    refused("goes on after", "{}[]");
    refused("unknown format", "[x]");
    refused("nested too deep",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[i]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]", 1);
    json_t *loop = json_array(), *inner = json_array();
    json_array_append(loop, inner);
    json_array_append(inner, loop);
    refused("cannot be written", "{s:O}", "loop", loop);
    json_array_clear(inner);
    json_decref(inner);
    json_decref(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_short_reals),
        cmocka_unit_test(test_containers),
        cmocka_unit_test(test_loops),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_random_trees),
        cmocka_unit_test(test_every_cut),
        cmocka_unit_test(test_big_body),
        cmocka_unit_test(test_pack_matches_json_pack),
        cmocka_unit_test(test_pack_refuses_what_it_cannot_write),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
