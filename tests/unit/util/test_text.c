/* Unit tests for core/util/text.c: hex digits and trailing line ends. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "util/text.h"

/* Each class bit of every byte, against its definition (text.h). */
static void test_byte_classes(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        unsigned bits = keel__byte_class[c];
        bool tchar = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                     (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
        bool plain = c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
        bool sep = c == ' ' || c == '\t' || c == '\n' || c == ',' || c == ':';
        if (((bits & KEEL__BYTE_TCHAR) != 0) != tchar ||
            ((bits & KEEL__BYTE_JSON_PLAIN) != 0) != plain ||
            ((bits & KEEL__BYTE_PACK_SEP) != 0) != sep)
            fail_msg("byte 0x%02x: class bits %u", c, bits);
        assert_int_equal(bits & ~(KEEL__BYTE_TCHAR | KEEL__BYTE_JSON_PLAIN | KEEL__BYTE_PACK_SEP),
                         0);
    }
}

static void test_hex_value(void **state)
{
    (void)state;
    assert_int_equal(keel__hex_value('0'), 0);
    assert_int_equal(keel__hex_value('9'), 9);
    assert_int_equal(keel__hex_value('a'), 10);
    assert_int_equal(keel__hex_value('F'), 15);
    static const char bad[] = {'g', 'G', '/', ':', '@', '`', ' ', '\0', '\xff'};
    for (size_t i = 0; i < sizeof bad; i++)
        assert_int_equal(keel__hex_value((unsigned char)bad[i]), -1);
    assert_int_equal(keel__hex_value(-1), -1);
}

static void test_trim_newlines(void **state)
{
    (void)state;
    char a[] = "server closed the connection\r\n\n";
    assert_int_equal(keel__trim_newlines(a, 0), strlen("server closed the connection"));
    assert_string_equal(a, "server closed the connection");
    /* Blanks stay unless asked for; inner line ends always stay. */
    char b[] = "two\nlines \t\n";
    assert_int_equal(keel__trim_newlines(b, 0), 11);
    assert_string_equal(b, "two\nlines \t");
    assert_int_equal(keel__trim_newlines(b, 1), 9);
    assert_string_equal(b, "two\nlines");
    char c[] = "\r\n \n";
    assert_int_equal(keel__trim_newlines(c, 1), 0);
    assert_string_equal(c, "");
    char d[] = "";
    assert_int_equal(keel__trim_newlines(d, 1), 0);
}

/* keel__uint_text against snprintf, at every length and at the edges. */
static void test_uint_text(void **state)
{
    (void)state;
    char out[KEEL__UINT_TEXT_MAX + 1], want[32];
    unsigned long long vals[] = {0,
                                 1,
                                 9,
                                 10,
                                 11,
                                 99,
                                 100,
                                 101,
                                 999,
                                 1000,
                                 65535,
                                 4294967295ULL,
                                 1000000000000ULL,
                                 18446744073709551615ULL};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        for (int width = 0; width <= 5; width++) {
            size_t n = keel__uint_text(vals[i], width, out);
            out[n] = '\0';
            snprintf(want, sizeof want, "%0*llu", width, vals[i]);
            assert_string_equal(out, want);
        }
    }
    for (unsigned long long v = 1; v < 10000000000000000000ULL; v *= 10) {
        size_t n = keel__uint_text(v - 1, 0, out);
        out[n] = '\0';
        snprintf(want, sizeof want, "%llu", v - 1);
        assert_string_equal(out, want);
    }
    /* Padding stops at the longest number. */
    assert_int_equal(keel__uint_text(7, 40, out), KEEL__UINT_TEXT_MAX);
    assert_int_equal(out[0], '0');
    assert_int_equal(out[KEEL__UINT_TEXT_MAX - 1], '7');
}

static void test_copy_text(void **state)
{
    (void)state;
    char out[6];
    keel__copy_text(out, sizeof out, "abc");
    assert_string_equal(out, "abc");
    keel__copy_text(out, sizeof out, "abcdef");
    assert_string_equal(out, "abcde");
    keel__copy_text(out, 1, "xyz");
    assert_string_equal(out, "");
    out[0] = 'q';
    keel__copy_text(out, 0, "xyz");
    assert_int_equal(out[0], 'q');
}

static void test_ipv4_text(void **state)
{
    (void)state;
    char out[16];
    const unsigned char a[][4] = {
        {127, 0, 0, 1}, {0, 0, 0, 0}, {255, 255, 255, 255}, {10, 99, 100, 9}};
    const char *want[] = {"127.0.0.1", "0.0.0.0", "255.255.255.255", "10.99.100.9"};
    for (size_t i = 0; i < sizeof a / sizeof a[0]; i++) {
        assert_int_equal(keel__ipv4_text(a[i], out), strlen(want[i]));
        assert_string_equal(out, want[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_byte_classes),  cmocka_unit_test(test_hex_value),
        cmocka_unit_test(test_trim_newlines), cmocka_unit_test(test_uint_text),
        cmocka_unit_test(test_copy_text),     cmocka_unit_test(test_ipv4_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
