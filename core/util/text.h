/* Small text helpers several subsystems need. */
#ifndef KEEL_CORE_UTIL_TEXT_H
#define KEEL_CORE_UTIL_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Byte classes, one load a byte where a string is checked a byte at a
 * time: bits of keel__byte_class[c]; bytes from 0x80 on are in none.
 * KEEL__BYTE_TCHAR: RFC 9110 tchar (letters, digits, "!#$%&'*+-.^_`|~").
 * KEEL__BYTE_JSON_PLAIN: written as is in a JSON string (printable ASCII
 * other than '"' and '\\').
 * KEEL__BYTE_PACK_SEP: skipped between the characters of a pack format, as
 * json_pack() does (space, tab, newline, ',' and ':'). */
#define KEEL__BYTE_TCHAR 1u
#define KEEL__BYTE_JSON_PLAIN 2u
#define KEEL__BYTE_PACK_SEP 4u
extern const unsigned char keel__byte_class[256];

/* Eight bytes of a string at once, where it is checked for bytes it must
 * not hold: (w - ONES * n) & ~w & HIGHS is non-zero exactly when a byte of
 * w is below n (n <= 0x80); a byte equal to b is a zero byte of w ^ ONES * b,
 * so below 1 there.  Masks, so that several tests are or-ed without a branch
 * each. */
static inline uint64_t keel__word_below(uint64_t w, unsigned char n)
{
    return (w - n * 0x0101010101010101ULL) & ~w & 0x8080808080808080ULL;
}

static inline uint64_t keel__word_equal(uint64_t w, unsigned char b)
{
    return keel__word_below(w ^ (b * 0x0101010101010101ULL), 1);
}

/* The value of hex digit c (either case), or -1. */
int keel__hex_value(int c);

/* Removes trailing CR, LF (and, with spaces, blanks) from s in place, as
 * messages from libpq and files written by editors end; returns the new
 * length. */
size_t keel__trim_newlines(char *s, int spaces);

/* The longest text keel__uint_text writes without padding. */
#define KEEL__UINT_TEXT_MAX 20

/* v in decimal, zero-padded to at least width digits (width at most
 * KEEL__UINT_TEXT_MAX), into out, not terminated; returns its length.  Two
 * digits a step, without sprintf. */
size_t keel__uint_text(unsigned long long v, int width, char *out);

/* snprintf(out, outlen, "%s", s) without the format parsing (out is
 * always terminated when outlen > 0). */
void keel__copy_text(char *out, size_t outlen, const char *s);

/* Writes the IPv4 address at addr (4 bytes, network order) as a dotted
 * quad with its NUL into out (at least 16 bytes), as inet_ntop() would,
 * without going through sprintf; returns its length. */
size_t keel__ipv4_text(const void *addr, char *out);

#endif
