/*
 * Unit tests for core/http/edge.c.  The head checks take pointers into a
 * buffer laid out the way libmicrohttpd 0.9.75 leaves its read buffer after
 * parsing in place (CR, LF and each header's colon turned into NULs), so
 * these tests build such buffers by hand; tests/integration/test_edge.py
 * sends the same cases as raw bytes to a real keeld.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "http/edge.h"

/* A parsed head: the buffer and the pieces libmicrohttpd would hand out. */
struct head {
    char buf[512];
    size_t len;
    const char *method, *target, *version;
    size_t target_len;
    struct keel__edge_field f[16];
    size_t n;
};

/*
 * Parses raw bytes the way libmicrohttpd does, enough for these tests: the
 * request line is split at its first and last space, the target's length is
 * what strlen() sees (so a NUL cuts it), each header line is split at its
 * first colon and leading whitespace of the value is skipped.  Line ends
 * (CRLF or LF) become NULs.
 */
static void parse(struct head *h, const char *raw, size_t len)
{
    memset(h, 0, sizeof *h);
    assert_true(len < sizeof h->buf);
    memcpy(h->buf, raw, len);
    h->len = len;
    char *p = h->buf, *end = h->buf + len;
    char *eol = memchr(p, '\n', (size_t)(end - p));
    assert_non_null(eol);
    *eol = '\0';
    if (eol > p && eol[-1] == '\r')
        eol[-1] = '\0';
    char *sp1 = memchr(p, ' ', (size_t)(eol - p));
    char *sp2 = NULL;
    for (char *q = eol - 1; q > sp1; q--)
        if (*q == ' ') {
            sp2 = q;
            break;
        }
    assert_non_null(sp1);
    assert_non_null(sp2);
    *sp1 = *sp2 = '\0';
    h->method = p;
    h->target = sp1 + 1;
    h->target_len = strlen(h->target);
    h->version = sp2 + 1;
    p = eol + 1;
    while (p < end && *p != '\r' && *p != '\n') {
        eol = memchr(p, '\n', (size_t)(end - p));
        assert_non_null(eol);
        *eol = '\0';
        if (eol[-1] == '\r')
            eol[-1] = '\0';
        char *colon = memchr(p, ':', (size_t)(eol - p));
        assert_non_null(colon);
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        h->f[h->n++] = (struct keel__edge_field){.name = p, .value = v};
        p = eol + 1;
    }
    /* The empty line. */
    while (p < end && (*p == '\r' || *p == '\n'))
        *p++ = '\0';
}

static unsigned line_status(const char *raw, size_t len)
{
    struct head h;
    parse(&h, raw, len);
    unsigned st = keel__edge_check_target(h.target, h.target_len).status;
    return st != 0 ? st : keel__edge_check_line(h.method, h.target, h.target_len, h.version).status;
}

static unsigned fields_status(const char *raw, size_t len)
{
    struct head h;
    parse(&h, raw, len);
    return keel__edge_check_fields(h.version, h.buf + h.len, h.f, h.n).status;
}

#define RAW(s) s, sizeof(s) - 1

static void test_request_line(void **state)
{
    (void)state;
    assert_int_equal(line_status(RAW("GET /health HTTP/1.1\r\nHost: a\r\n\r\n")), 0);
    assert_int_equal(line_status(RAW("GET /a?b=c&d HTTP/1.0\r\n\r\n")), 0);
    assert_int_equal(line_status(RAW("GET http://x/health HTTP/1.1\r\n\r\n")), 0);
    assert_int_equal(line_status(RAW("OPTIONS * HTTP/1.1\r\n\r\n")), 0);
    /* A NUL anywhere in the target: the strlen() length stops short. */
    assert_int_equal(line_status(RAW("GET /health\0anything HTTP/1.1\r\n\r\n")), 400);
    assert_int_equal(line_status(RAW("GET /health\0 HTTP/1.1\r\n\r\n")), 400);
    assert_int_equal(line_status(RAW("GET /a?b=c\0d HTTP/1.1\r\n\r\n")), 400);
    /* Other control bytes, space, DEL. */
    assert_int_equal(line_status(RAW("GET /he\x01lth HTTP/1.1\r\n\r\n")), 400);
    assert_int_equal(line_status(RAW("GET /he\tlth HTTP/1.1\r\n\r\n")), 400);
    assert_int_equal(line_status(RAW("GET /he lth HTTP/1.1\r\n\r\n")), 400);
    assert_int_equal(line_status(RAW("GET /health\x7f HTTP/1.1\r\n\r\n")), 400);
    assert_int_equal(line_status(RAW("GET health HTTP/1.1\r\n\r\n")), 400);
    /* Versions. */
    assert_int_equal(line_status(RAW("GET / HTTP/1.2\r\n\r\n")), 505);
    assert_int_equal(line_status(RAW("GET / HTTP/2.0\r\n\r\n")), 505);
}

/* Every byte value at every position of a target long enough for the
 * eight-bytes-a-step check and its byte-by-byte tail: refused exactly for
 * control characters, space and DEL, wherever they are. */
static void test_target_bytes(void **state)
{
    (void)state;
    char target[27];
    for (size_t pos = 1; pos < sizeof target - 1; pos++) {
        for (unsigned c = 1; c < 256; c++) {
            memcpy(target, "/api/v1/example/hello?a=bc", sizeof target - 1);
            target[sizeof target - 1] = '\0';
            target[pos] = (char)c;
            bool bad = c <= 0x20 || c == 0x7f;
            unsigned st = keel__edge_check_target(target, sizeof target - 1).status;
            if (st != (bad ? 400u : 0u))
                fail_msg("byte 0x%02x at %zu: status %u", c, pos, st);
        }
    }
    /* A byte past the given length is not looked at. */
    assert_int_equal(keel__edge_check_target("/abcdefgh ", 9).status, 0);
}

static void test_header_names(void **state)
{
    (void)state;
    assert_true(keel__edge_is_token("Content-Length"));
    assert_true(keel__edge_is_token("x!#$%&'*+-.^_`|~9"));
    assert_false(keel__edge_is_token("Content-Length "));
    assert_false(keel__edge_is_token(" Content-Length"));
    assert_false(keel__edge_is_token("X(A)"));
    assert_false(keel__edge_is_token("X\tA"));
    assert_false(keel__edge_is_token(""));
    assert_false(keel__edge_is_token("X\x80"));
    /* Every byte against RFC 9110's list, spelled out independently. */
    for (unsigned c = 1; c < 256; c++) {
        char name[3] = {'X', (char)c, '\0'};
        bool want = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                    strchr("!#$%&'*+-.^_`|~", (int)c) != NULL;
        if (keel__edge_is_token(name) != want)
            fail_msg("byte 0x%02x: token %d, want %d", c, !want, want);
    }
    assert_int_equal(
        fields_status(RAW("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length : 2\r\n\r\n")), 400);
    assert_int_equal(
        fields_status(RAW("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n")),
        400);
    assert_int_equal(fields_status(RAW("GET /x HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n")), 400);
}

static void test_header_values(void **state)
{
    (void)state;
    assert_true(keel__edge_value_ok("text/plain; q=1\tx \x80\xff"));
    assert_false(keel__edge_value_ok("a\rb"));
    assert_false(keel__edge_value_ok("a\x01"));
    assert_false(keel__edge_value_ok("a\x7f"));
    /* Long values are read sixteen or eight bytes at a time: every byte
     * value at every position of a 56-byte value (and its tail) is judged
     * alike. */
    for (unsigned c = 1; c < 256; c++) {
        bool ok = c >= 0x20 ? c != 0x7f : c == '\t';
        for (size_t at = 0; at < 56; at++) {
            char v[57];
            memset(v, 'v', 56);
            v[56] = '\0';
            v[at] = (char)c;
            assert_int_equal(keel__edge_value_ok(v), ok);
            v[at + 1] = '\0';
            assert_int_equal(keel__edge_value_ok(v), ok);
        }
    }
    assert_int_equal(fields_status(RAW("GET /x HTTP/1.1\r\nHost:   a  \r\nX-B:\tv\t\r\n\r\n")), 0);
    assert_int_equal(fields_status(RAW("GET /x HTTP/1.1\nHost: a\nX-E:\n\n")), 0);
    /* A NUL inside a value: the rest of the value is left in the block. */
    assert_int_equal(fields_status(RAW("GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n")), 400);
    assert_int_equal(fields_status(RAW("GET /x HTTP/1.1\r\nX-A: b\0c\r\nHost: a\r\n\r\n")), 400);
    /* A bare CR stays in the value. */
    assert_int_equal(fields_status(RAW("GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n")), 400);
}

static void test_folded_line(void **state)
{
    (void)state;
    /* The continuation line is not a header of its own (no colon), so
     * build the pieces by hand: the "  c" stays between two fields. */
    char buf[] = "GET /x HTTP/1.1\0\0Host\0 a\0\0X-A\0 b\0\0  c\0\0\0\0";
    const char *version = buf + 7;
    struct keel__edge_field f[] = {{.name = buf + 17, .value = buf + 23},
                                   {.name = buf + 26, .value = buf + 31}};
    const char *end = buf + sizeof buf - 1;
    assert_int_equal(keel__edge_check_fields(version, end, f, 2).status, 400);
    /* Without the continuation the same head is fine. */
    char ok[] = "GET /x HTTP/1.1\0\0Host\0 a\0\0X-A\0 b\0\0\0\0";
    struct keel__edge_field g[] = {{.name = ok + 17, .value = ok + 23},
                                   {.name = ok + 26, .value = ok + 31}};
    assert_int_equal(keel__edge_check_fields(ok + 7, ok + sizeof ok - 1, g, 2).status, 0);
    /* An accepted field carries its lengths (the header scan and lookups
     * read them instead of measuring again). */
    assert_int_equal(g[0].name_len, 4);
    assert_int_equal(g[0].value_len, 1);
    assert_int_equal(g[1].name_len, 3);
    assert_int_equal(g[1].value_len, 1);
    /* A field handed out from elsewhere (an unfolded copy) is refused. */
    static const char elsewhere[] = "X-Ac";
    struct keel__edge_field h[] = {{.name = ok + 17, .value = ok + 23},
                                   {.name = elsewhere, .value = ok + 31}};
    assert_int_equal(keel__edge_check_fields(ok + 7, ok + sizeof ok - 1, h, 2).status, 400);
}

static void test_host_count(void **state)
{
    (void)state;
    assert_int_equal(fields_status(RAW("GET /x HTTP/1.1\r\n\r\n")), 400);
    assert_int_equal(fields_status(RAW("GET /x HTTP/1.0\r\n\r\n")), 0);
    assert_int_equal(fields_status(RAW("GET /x HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n")), 400);
    assert_int_equal(fields_status(RAW("GET /x HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n")), 400);
}

/* Every accepted field's lengths are strlen()'s, long values (the SSE2
 * steps and the tail) and empty ones included. */
static void test_field_lengths(void **state)
{
    (void)state;
    struct head h;
    char raw[400];
    char longv[201];
    memset(longv, 'x', 200);
    longv[200] = '\0';
    int n = snprintf(raw, sizeof raw,
                     "GET /x HTTP/1.1\r\nHost: example.org\r\nX-Empty:\r\n"
                     "Authorization: Bearer %s\r\nA: \tb\r\n\r\n",
                     longv);
    parse(&h, raw, (size_t)n);
    assert_int_equal(h.n, 4);
    assert_int_equal(keel__edge_check_fields(h.version, h.buf + h.len, h.f, h.n).status, 0);
    for (size_t i = 0; i < h.n; i++) {
        assert_int_equal(h.f[i].name_len, strlen(h.f[i].name));
        assert_int_equal(h.f[i].value_len, strlen(h.f[i].value));
    }
    assert_int_equal(h.f[2].value_len, 207);
    assert_int_equal(h.f[1].value_len, 0);
}

static void test_origin_path(void **state)
{
    (void)state;
    assert_string_equal(keel__edge_origin_path("/a/b?c"), "/a/b?c");
    assert_string_equal(keel__edge_origin_path("http://h:1/a/b"), "/a/b");
    assert_string_equal(keel__edge_origin_path("HTTPS://h"), "/");
    assert_string_equal(keel__edge_origin_path("*"), "*");
}

static void test_admin(void **state)
{
    (void)state;
    const char *names[] = {"keel-admin.internal"};
    struct keel__edge_admin a = {.host = "127.0.0.1",
                                 .local = "127.0.0.1",
                                 .port = 8081,
                                 .loopback = true,
                                 .names = names,
                                 .nnames = 1};
    assert_true(keel__edge_admin_host_ok(&a, "127.0.0.1:8081"));
    assert_true(keel__edge_admin_host_ok(&a, "127.0.0.1"));
    assert_true(keel__edge_admin_host_ok(&a, "localhost:8081"));
    assert_true(keel__edge_admin_host_ok(&a, "LOCALHOST"));
    assert_true(keel__edge_admin_host_ok(&a, "keel-admin.internal:8081"));
    assert_false(keel__edge_admin_host_ok(&a, "attacker.example:8081"));
    assert_false(keel__edge_admin_host_ok(&a, "127.0.0.1:8082"));
    assert_false(keel__edge_admin_host_ok(&a, "127.0.0.1.attacker.example"));
    assert_false(keel__edge_admin_host_ok(&a, "localhost.attacker.example"));
    assert_false(keel__edge_admin_host_ok(&a, ""));
    struct keel__edge_admin v6 = {.host = "::1", .local = "::1", .port = 8081, .loopback = true};
    assert_true(keel__edge_admin_host_ok(&v6, "[::1]:8081"));
    assert_false(keel__edge_admin_host_ok(&v6, "::1:8081"));
    /* Bound to every address: the connection's own address answers. */
    struct keel__edge_admin any = {.host = "0.0.0.0", .local = "10.1.2.3", .port = 9000};
    assert_true(keel__edge_admin_host_ok(&any, "10.1.2.3:9000"));
    assert_false(keel__edge_admin_host_ok(&any, "localhost:9000"));

    const char *h = "127.0.0.1:8081";
    assert_int_equal(keel__edge_check_admin(&a, "GET", h, NULL, NULL).status, 0);
    assert_int_equal(keel__edge_check_admin(&a, "GET", NULL, NULL, NULL).status, 0);
    assert_int_equal(keel__edge_check_admin(&a, "POST", h, NULL, "application/json").status, 0);
    assert_int_equal(
        keel__edge_check_admin(&a, "POST", h, NULL, "Application/JSON; charset=utf-8").status, 0);
    assert_int_equal(keel__edge_check_admin(&a, "POST", h, NULL, "application/x-ndjson").status, 0);
    assert_int_equal(keel__edge_check_admin(&a, "POST", h, NULL, "text/plain").status, 415);
    assert_int_equal(keel__edge_check_admin(&a, "POST", h, NULL, "application/jsonx").status, 415);
    assert_int_equal(keel__edge_check_admin(&a, "POST", h, NULL, NULL).status, 415);
    assert_int_equal(keel__edge_check_admin(&a, "DELETE", h, NULL, "multipart/form-data").status,
                     415);
    assert_int_equal(
        keel__edge_check_admin(&a, "POST", h, "http://evil.example", "application/json").status,
        403);
    assert_int_equal(keel__edge_check_admin(&a, "GET", h, "null", NULL).status, 403);
    assert_int_equal(keel__edge_check_admin(&a, "POST", "attacker.example:8081", NULL,
                                            "application/json")
                         .status,
                     421);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_line),  cmocka_unit_test(test_target_bytes),
        cmocka_unit_test(test_header_names),  cmocka_unit_test(test_header_values),
        cmocka_unit_test(test_folded_line),   cmocka_unit_test(test_host_count),
        cmocka_unit_test(test_field_lengths), cmocka_unit_test(test_origin_path),
        cmocka_unit_test(test_admin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
