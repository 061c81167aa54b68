/* Unit tests for the ABI checks the loader applies to a plugin descriptor. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "plugin/loader.h"

static int noop(keel_request *req, void *s)
{
    (void)req;
    (void)s;
    return 0;
}

static const keel_route routes[] = {{"GET", "/x", noop}, {NULL, NULL, NULL}};

static keel_plugin good(void)
{
    keel_plugin d = {KEEL_PLUGIN_HEADER, .name = "p", .version = "1", .routes = routes};
    return d;
}

static void test_accepts_current_abi(void **s)
{
    (void)s;
    keel_plugin d = good();
    char err[256] = "";
    assert_int_equal(keel__abi_check(&d, "p", err, sizeof err), 0);
}

static void test_refuses_null_and_bad_magic(void **s)
{
    (void)s;
    char err[256];
    assert_int_equal(keel__abi_check(NULL, "p", err, sizeof err), KEEL_EABI);
    assert_non_null(strstr(err, "NULL"));
    keel_plugin d = good();
    d.magic = 0xdeadbeef;
    assert_int_equal(keel__abi_check(&d, "p", err, sizeof err), KEEL_EABI);
    assert_non_null(strstr(err, "magic"));
}

static void test_major_mismatch_says_what_to_rebuild_against(void **s)
{
    (void)s;
    keel_plugin d = good();
    d.abi_major = KEEL_ABI_MAJOR + 1;
    d.abi_minor = 3;
    char err[256], want[64];
    assert_int_equal(keel__abi_check(&d, "p", err, sizeof err), KEEL_EABI);
    snprintf(want, sizeof want, "built for ABI %d.3, host has %d.%d", KEEL_ABI_MAJOR + 1,
             KEEL_ABI_MAJOR, KEEL_ABI_MINOR);
    assert_non_null(strstr(err, want));
    assert_non_null(strstr(err, "rebuild"));
}

static void test_missing_capability_is_named(void **s)
{
    (void)s;
    static const char *const req[] = {"log", "teleport", NULL};
    keel_plugin d = good();
    d.abi_minor = KEEL_ABI_MINOR + 1;
    d.requires = req;
    char err[256];
    assert_int_equal(keel__abi_check(&d, "p", err, sizeof err), KEEL_EABI);
    assert_non_null(strstr(err, "\"teleport\""));
}

static void test_newer_minor_with_known_capabilities_loads(void **s)
{
    (void)s;
    static const char *const req[] = {"log", "db", NULL};
    keel_plugin d = good();
    d.abi_minor = KEEL_ABI_MINOR + 1;
    d.requires = req;
    char err[256];
    assert_int_equal(keel__abi_check(&d, "p", err, sizeof err), 0);
}

static void test_small_descriptor_and_name_and_routes(void **s)
{
    (void)s;
    char err[256];
    keel_plugin d = good();
    d.struct_size = 8;
    assert_int_equal(keel__abi_check(&d, "p", err, sizeof err), KEEL_EABI);
    d = good();
    assert_int_equal(keel__abi_check(&d, "q", err, sizeof err), KEEL_EABI);
    assert_non_null(strstr(err, "does not match"));
    d = good();
    d.routes = NULL;
    assert_int_equal(keel__abi_check(&d, "p", err, sizeof err), KEEL_EABI);
}

static void test_names(void **s)
{
    (void)s;
    assert_string_equal(keel__stage_name(KEEL__STAGE_ABI), "abi");
    assert_string_equal(keel__stage_name(KEEL__STAGE_COMMIT), "commit");
    assert_string_equal(keel__reason_name(KEEL__REASON_NOT_INSTALLED), "not_installed");
    assert_string_equal(keel__reason_name(KEEL__REASON_DISABLED), "disabled");
    assert_string_equal(keel_strerror(KEEL_EABI), "ABI mismatch");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepts_current_abi),
        cmocka_unit_test(test_refuses_null_and_bad_magic),
        cmocka_unit_test(test_major_mismatch_says_what_to_rebuild_against),
        cmocka_unit_test(test_missing_capability_is_named),
        cmocka_unit_test(test_newer_minor_with_known_capabilities_loads),
        cmocka_unit_test(test_small_descriptor_and_name_and_routes),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests_name("abi", tests, NULL, NULL);
}
