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
