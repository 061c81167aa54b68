/* Unit tests for core/util/text.c: hex digits and trailing line ends. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "util/text.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hex_value),
        cmocka_unit_test(test_trim_newlines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
