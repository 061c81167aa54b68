/* Unit tests for core/util/cidr.c and core/http/clientaddr.c: CIDR parsing
 * and matching, the client address behind trusted proxies, request ids and
 * the per-address in-flight counts. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "http/clientaddr.h"
#include "util/cidr.h"

static void cidr_parsing(void **state)
{
    (void)state;
    struct keel__cidr c;
    assert_int_equal(keel__cidr_parse("10.0.0.0/8", &c), 0);
    assert_int_equal(c.bits, 8);
    assert_int_equal(keel__cidr_parse("127.0.0.1", &c), 0);
    assert_int_equal(c.bits, 32);
    assert_int_equal(keel__cidr_parse("::1", &c), 0);
    assert_int_equal(c.bits, 128);
    assert_int_equal(keel__cidr_parse("fd00::/8", &c), 0);
    static const char *const bad[] = {"",        "10.0.0.0/33", "10.0.0.0/",    "10.0.0/8",
                                      "::1/129", "10.0.0.0/8x", "host.example", "10.0.0.0/-1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_not_equal(keel__cidr_parse(bad[i], &c), 0);
}

static void cidr_matching(void **state)
{
    (void)state;
    struct keel__cidr r[2];
    assert_int_equal(keel__cidr_parse("10.1.0.0/16", &r[0]), 0);
    assert_int_equal(keel__cidr_parse("fd00::/8", &r[1]), 0);
    assert_true(keel__cidr_match_text(r, 2, "10.1.255.3"));
    assert_false(keel__cidr_match_text(r, 2, "10.2.0.1"));
    assert_true(keel__cidr_match_text(r, 2, "::ffff:10.1.2.3")); /* IPv4-mapped */
    assert_true(keel__cidr_match_text(r, 2, "fd12::1"));
    assert_false(keel__cidr_match_text(r, 2, "fe80::1"));
    assert_false(keel__cidr_match_text(r, 2, "not an address"));
    struct keel__cidr odd;
    assert_int_equal(keel__cidr_parse("192.168.1.128/25", &odd), 0);
    assert_true(keel__cidr_match_text(&odd, 1, "192.168.1.200"));
    assert_false(keel__cidr_match_text(&odd, 1, "192.168.1.127"));
}

static void client_address(void **state)
{
    (void)state;
    struct keel__cidr t[1];
    assert_int_equal(keel__cidr_parse("127.0.0.0/8", &t[0]), 0);
    char out[64];
    /* Untrusted peer: its header is ignored. */
    keel__client_addr("203.0.113.9", "1.2.3.4", t, 1, out, sizeof out);
    assert_string_equal(out, "203.0.113.9");
    /* Trusted peer: the right-most untrusted hop. */
    keel__client_addr("127.0.0.1", "198.51.100.7", t, 1, out, sizeof out);
    assert_string_equal(out, "198.51.100.7");
    keel__client_addr("127.0.0.1", "6.6.6.6, 198.51.100.7, 127.0.0.2", t, 1, out, sizeof out);
    assert_string_equal(out, "198.51.100.7");
    /* A forged left part does not win; garbage stops the walk. */
    keel__client_addr("127.0.0.1", "evil, 198.51.100.7", t, 1, out, sizeof out);
    assert_string_equal(out, "198.51.100.7");
    keel__client_addr("127.0.0.1", "198.51.100.7, junk", t, 1, out, sizeof out);
    assert_string_equal(out, "127.0.0.1");
    /* Every hop trusted: the left-most. */
    keel__client_addr("127.0.0.1", "127.0.0.5, 127.0.0.6", t, 1, out, sizeof out);
    assert_string_equal(out, "127.0.0.5");
    /* No header, or no trusted proxies at all. */
    keel__client_addr("127.0.0.1", NULL, t, 1, out, sizeof out);
    assert_string_equal(out, "127.0.0.1");
    keel__client_addr("127.0.0.1", "198.51.100.7", NULL, 0, out, sizeof out);
    assert_string_equal(out, "127.0.0.1");
    keel__client_addr("127.0.0.1", " 2001:db8::1 ", t, 1, out, sizeof out);
    assert_string_equal(out, "2001:db8::1");
}

static void request_ids(void **state)
{
    (void)state;
    assert_true(keel__request_id_valid("abc-123_X.y:z+/="));
    assert_false(keel__request_id_valid(""));
    assert_false(keel__request_id_valid(NULL));
    assert_false(keel__request_id_valid("has space"));
    assert_false(keel__request_id_valid("new\nline"));
    assert_false(keel__request_id_valid("quote\""));
    char long_id[200];
    memset(long_id, 'a', sizeof long_id);
    long_id[128] = '\0';
    assert_true(keel__request_id_valid(long_id));
    long_id[128] = 'a';
    long_id[129] = '\0';
    assert_false(keel__request_id_valid(long_id));

    char a[40], b[40];
    keel__request_id_make(1, a, sizeof a);
    keel__request_id_make(2, b, sizeof b);
    assert_true(keel__request_id_valid(a));
    assert_string_not_equal(a, b);
    assert_int_equal(strncmp(a, b, 12), 0); /* the per-process prefix */
    assert_string_equal(a + 12, "-1");
    keel__request_id_make(0xabcdef0123ULL, b, sizeof b);
    assert_string_equal(b + 12, "-abcdef0123");
    keel__request_id_make(0, b, sizeof b);
    assert_string_equal(b + 12, "-0");
    keel__request_id_make(~0ULL, b, sizeof b);
    assert_string_equal(b + 12, "-ffffffffffffffff");
    keel__request_id_make(~0ULL, b, 20); /* too small: empty, never cut */
    assert_string_equal(b, "");
}

static void per_address_limit(void **state)
{
    (void)state;
    assert_true(keel__addr_limit_enter("198.51.100.1", 2));
    assert_true(keel__addr_limit_enter("198.51.100.1", 2));
    assert_false(keel__addr_limit_enter("198.51.100.1", 2));
    assert_true(keel__addr_limit_enter("198.51.100.2", 2)); /* another client */
    keel__addr_limit_leave("198.51.100.1");
    assert_true(keel__addr_limit_enter("198.51.100.1", 2));
    keel__addr_limit_leave("198.51.100.1");
    keel__addr_limit_leave("198.51.100.1");
    keel__addr_limit_leave("198.51.100.2");
    keel__addr_limit_leave("198.51.100.9"); /* never entered: harmless */
    assert_true(keel__addr_limit_enter("198.51.100.1", 1));
    keel__addr_limit_leave("198.51.100.1");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cidr_parsing),      cmocka_unit_test(cidr_matching),
        cmocka_unit_test(client_address),    cmocka_unit_test(request_ids),
        cmocka_unit_test(per_address_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
