/*
 * Unit tests for tools/elfcheck.c, the static half of keel-plugin-check:
 * real plugins built in the tree (KEEL_BUILDDIR) and hand-made broken files,
 * since the checker reads files nobody vouched for.
 */
#include "config.h"

#include <elf.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "elfcheck.h"

/* Path of a plugin built in the tree, or NULL when KEEL_BUILDDIR is unset. */
static const char *built(const char *rel, char *buf, size_t len)
{
    const char *b = getenv("KEEL_BUILDDIR");
    if (b == NULL || *b == '\0')
        return NULL;
    snprintf(buf, len, "%s/%s", b, rel);
    return access(buf, R_OK) == 0 ? buf : NULL;
}

static void check_built(const char *rel, struct elfcheck_result *r)
{
    char path[4096], err[512] = "";
    const char *p = built(rel, path, sizeof path);
    if (p == NULL) {
        print_message("skipping %s: KEEL_BUILDDIR unset or file not built\n", rel);
        skip();
    }
    assert_int_equal(elfcheck_file(p, r, err, sizeof err), 0);
    assert_true(r->has_dynsym);
}

static void test_example_conforms(void **s)
{
    (void)s;
    struct elfcheck_result r;
    check_built(".libs/example.so", &r);
    assert_true(r.entry_exported);
    assert_int_equal(r.nextra, 0);
    assert_int_equal(r.nunique, 0);
    assert_false(r.nodelete);
    assert_false(r.tls);
    /* crtbegin's entries (and a sanitizer's, in such a build) only. */
    assert_true(r.names_known);
    assert_int_equal(r.nctors, 0);
    assert_int_equal(r.ndtors, 0);
    assert_int_equal(r.init_array, r.sanitized ? 2 : 1);
    assert_true(r.bind_now);
}

static void test_extra_export_is_named(void **s)
{
    (void)s;
    struct elfcheck_result r;
    check_built("tests/plugins/.libs/exports_extra.so", &r);
    assert_true(r.entry_exported);
    assert_int_equal(r.nextra, 1);
    assert_string_equal(r.extra[0], "exports_extra_calls");
}

static void test_constructor_tls_and_nodelete_are_seen(void **s)
{
    (void)s;
    struct elfcheck_result r;
    check_built("tests/plugins/.libs/has_ctor.so", &r);
    assert_true(r.names_known);
    assert_int_equal(r.nctors, 1);
    assert_string_equal(r.ctors[0], "has_ctor_setup");
    assert_int_equal(r.ndtors, 0);
    assert_false(r.tls);
    check_built("tests/plugins/.libs/uses_tls.so", &r);
    assert_true(r.tls);
    assert_int_equal(r.nctors, 0);
    check_built("tests/plugins/.libs/nodelete.so", &r);
    assert_true(r.nodelete);
    assert_false(r.tls);
}

/* Writes len bytes to a new temporary file; the caller unlinks it. */
static void write_temp(char *path, size_t pathlen, const void *data, size_t len)
{
    snprintf(path, pathlen, "%s/keel-elfcheck-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

static int check_bytes(const void *data, size_t len, char *err, size_t errlen)
{
    char path[4096];
    struct elfcheck_result r;
    write_temp(path, sizeof path, data, len);
    int rc = elfcheck_file(path, &r, err, errlen);
    unlink(path);
    return rc;
}

static Elf64_Ehdr header(void)
{
    Elf64_Ehdr eh;
    memset(&eh, 0, sizeof eh);
    memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_ident[EI_VERSION] = EV_CURRENT;
    eh.e_type = ET_DYN;
    eh.e_machine = EM_X86_64;
    eh.e_version = EV_CURRENT;
    eh.e_ehsize = sizeof eh;
    eh.e_phentsize = sizeof(Elf64_Phdr);
    eh.e_shentsize = sizeof(Elf64_Shdr);
    return eh;
}

static void test_malformed_files_are_refused(void **s)
{
    (void)s;
    char err[512];
    Elf64_Ehdr eh;

    assert_int_not_equal(check_bytes("not an elf file at all", 22, err, sizeof err), 0);
    assert_non_null(strstr(err, "not an ELF file"));

    eh = header();
    assert_int_not_equal(check_bytes(&eh, sizeof eh / 2, err, sizeof err), 0);
    assert_non_null(strstr(err, "truncated"));

    eh = header();
    eh.e_ident[EI_CLASS] = ELFCLASS32;
    assert_int_not_equal(check_bytes(&eh, sizeof eh, err, sizeof err), 0);
    assert_non_null(strstr(err, "64-bit"));

    eh = header();
    eh.e_type = ET_EXEC;
    assert_int_not_equal(check_bytes(&eh, sizeof eh, err, sizeof err), 0);
    assert_non_null(strstr(err, "not a shared object"));

    /* Tables that claim to lie past the end of the file. */
    eh = header();
    eh.e_phoff = 1u << 20;
    eh.e_phnum = 4;
    assert_int_not_equal(check_bytes(&eh, sizeof eh, err, sizeof err), 0);
    assert_non_null(strstr(err, "program headers"));

    eh = header();
    eh.e_shoff = UINT64_MAX - 8;
    eh.e_shnum = 2;
    assert_int_not_equal(check_bytes(&eh, sizeof eh, err, sizeof err), 0);
    assert_non_null(strstr(err, "section headers"));

    /* A dynamic segment that points outside the file. */
    struct {
        Elf64_Ehdr eh;
        Elf64_Phdr ph;
    } f;
    memset(&f, 0, sizeof f);
    f.eh = header();
    f.eh.e_phoff = sizeof f.eh;
    f.eh.e_phnum = 1;
    f.ph.p_type = PT_DYNAMIC;
    f.ph.p_offset = 4096;
    f.ph.p_filesz = 64;
    assert_int_not_equal(check_bytes(&f, sizeof f, err, sizeof err), 0);
    assert_non_null(strstr(err, "dynamic segment"));

    /* A well-formed minimal object: nothing to report, and no .dynsym. */
    struct elfcheck_result r;
    char path[4096];
    eh = header();
    write_temp(path, sizeof path, &eh, sizeof eh);
    assert_int_equal(elfcheck_file(path, &r, err, sizeof err), 0);
    unlink(path);
    assert_false(r.has_dynsym);
    assert_false(r.entry_exported);
}

static void test_missing_file(void **s)
{
    (void)s;
    struct elfcheck_result r;
    char err[512];
    assert_int_not_equal(elfcheck_file("/nonexistent/keel/plugin.so", &r, err, sizeof err), 0);
    assert_non_null(strstr(err, "/nonexistent/keel/plugin.so"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_conforms),
        cmocka_unit_test(test_extra_export_is_named),
        cmocka_unit_test(test_constructor_tls_and_nodelete_are_seen),
        cmocka_unit_test(test_malformed_files_are_refused),
        cmocka_unit_test(test_missing_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
