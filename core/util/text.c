#include "config.h"

#include "util/text.h"

#include <string.h>

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
