/*
 * Unit tests for core/util/heap.c's keel__calloc, keeld's calloc: every
 * byte of a block is zero even when the block is one malloc just reused
 * dirty, on both sides of the small-block size, for any split of the size
 * into count and element size; a count times size that overflows is
 * refused with ENOMEM.  Large blocks come from the calloc found by
 * keel__heap_init, so the sanitizer builds of this test check that they
 * reach the sanitizer's allocator (its free refuses blocks it never gave).
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/heap.h"

/* A block of total bytes from keel__calloc(n, total / n), right after a
 * block of the same size was filled with 0xa5 and freed (the allocator's
 * caches hand the same block back first): every byte must be zero. */
static void check_zeroed(size_t n, size_t total)
{
    unsigned char *dirty = malloc(total);
    assert_non_null(dirty);
    memset(dirty, 0xa5, total);
    free(dirty);
    unsigned char *p = keel__calloc(n, total / n);
    assert_non_null(p);
    for (size_t i = 0; i < total; i++)
        if (p[i] != 0)
            fail_msg("calloc(%zu, %zu): byte %zu is 0x%02x", n, total / n, i, p[i]);
    free(p);
}

static void test_blocks_are_zeroed(void **state)
{
    (void)state;
    for (size_t total = 1; total <= 2 * KEEL__CALLOC_SMALL + 64; total += total < 64 ? 1 : 24)
        check_zeroed(1, total);
    /* The same sizes split into elements. */
    check_zeroed(8, 8 * 40);
    check_zeroed(40, 8 * 40);
    check_zeroed(3, 3 * KEEL__CALLOC_SMALL);
    check_zeroed(KEEL__CALLOC_SMALL / 4, KEEL__CALLOC_SMALL);
    check_zeroed(1, KEEL__CALLOC_SMALL);
    check_zeroed(1, KEEL__CALLOC_SMALL + 1);
    check_zeroed(1, 1 << 20);
}

static void test_overflow_is_refused(void **state)
{
    (void)state;
    errno = 0;
    assert_null(keel__calloc(SIZE_MAX / 2, 3));
    assert_int_equal(errno, ENOMEM);
    errno = 0;
    assert_null(keel__calloc(3, SIZE_MAX / 2));
    assert_int_equal(errno, ENOMEM);
}

static void test_empty_blocks(void **state)
{
    (void)state;
    void *a = keel__calloc(0, 16), *b = keel__calloc(16, 0);
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blocks_are_zeroed),
        cmocka_unit_test(test_overflow_is_refused),
        cmocka_unit_test(test_empty_blocks),
    };
    keel__heap_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
