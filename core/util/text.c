#include "config.h"

#include "util/text.h"

#include <string.h>

/* Bytes from 0x80 on are in no class. */
const unsigned char keel__byte_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 0, 0, 0, 0, 0, /* 00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 10 */
    6, 3, 0, 3, 3, 3, 3, 3, 2, 2, 3, 3, 6, 3, 3, 2, /* 20 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 6, 2, 2, 2, 2, 2, /* 30 */
    2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, /* 40 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 0, 2, 3, 3, /* 50 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, /* 60 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 3, 2, 3, 2, /* 70 */
};

int keel__hex_value(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

size_t keel__trim_newlines(char *s, int spaces)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' ||
                     (spaces && (s[n - 1] == ' ' || s[n - 1] == '\t'))))
        s[--n] = '\0';
    return n;
}

static const char digit_pairs[] = "00010203040506070809"
                                  "10111213141516171819"
                                  "20212223242526272829"
                                  "30313233343536373839"
                                  "40414243444546474849"
                                  "50515253545556575859"
                                  "60616263646566676869"
                                  "70717273747576777879"
                                  "80818283848586878889"
                                  "90919293949596979899";

size_t keel__uint_text(unsigned long long v, int width, char *out)
{
    /* The digit count first, so the digits go straight to their places
     * from the right, two at a time: no reversed copy.  Most numbers keel
     * writes (statuses, milliseconds, generations) have one to four. */
    int digits = 1;
    for (unsigned long long t = v; t >= 10; t /= 10)
        digits++;
    if (width > KEEL__UINT_TEXT_MAX)
        width = KEEL__UINT_TEXT_MAX;
    int n = digits > width ? digits : width;
    for (int i = 0; i < n - digits; i++)
        out[i] = '0';
    char *p = out + n;
    while (v >= 100) {
        unsigned r = (unsigned)(v % 100);
        v /= 100;
        p -= 2;
        memcpy(p, &digit_pairs[2 * r], 2);
    }
    if (v >= 10) {
        p -= 2;
        memcpy(p, &digit_pairs[2 * v], 2);
    } else {
        *--p = (char)('0' + v);
    }
    return (size_t)n;
}

size_t keel__ipv4_text(const void *addr, char *out)
{
    const unsigned char *b = addr;
    char *o = out;
    for (int i = 0; i < 4; i++) {
        unsigned v = b[i];
        if (v >= 100)
            *o++ = (char)('0' + v / 100);
        if (v >= 10)
            *o++ = (char)('0' + v / 10 % 10);
        *o++ = (char)('0' + v % 10);
        *o++ = i < 3 ? '.' : '\0';
    }
    return (size_t)(o - out - 1);
}

void keel__copy_text(char *out, size_t outlen, const char *s)
{
    if (outlen == 0)
        return;
    size_t n = strlen(s);
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, s, n);
    out[n] = '\0';
}
