#include "config.h"

#include "util/cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include <keel/error.h>

int keel__cidr_parse(const char *text, struct keel__cidr *out)
{
    memset(out, 0, sizeof *out);
    if (text == NULL)
        return KEEL_EINVAL;
    char buf[INET6_ADDRSTRLEN + 8];
    size_t len = strlen(text);
    if (len == 0 || len >= sizeof buf)
        return KEEL_EINVAL;
    memcpy(buf, text, len + 1);
    char *slash = strchr(buf, '/');
    int bits = -1;
    if (slash != NULL) {
        *slash = '\0';
        const char *b = slash + 1;
        if (*b == '\0' || strlen(b) > 3)
            return KEEL_EINVAL;
        bits = 0;
        for (; *b; b++) {
            if (*b < '0' || *b > '9')
                return KEEL_EINVAL;
            bits = bits * 10 + (*b - '0');
        }
    }
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        if (bits > 32)
            return KEEL_EINVAL;
        out->bits = bits < 0 ? 32 : bits;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        if (bits > 128)
            return KEEL_EINVAL;
        out->bits = bits < 0 ? 128 : bits;
    } else {
        return KEEL_EINVAL;
    }
    return 0;
}

static bool prefix_equal(const unsigned char *a, const unsigned char *b, int bits)
{
    int whole = bits / 8, rest = bits % 8;
    if (memcmp(a, b, (size_t)whole) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

static bool match_bytes(const struct keel__cidr *r, int family, const unsigned char *addr)
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (family == AF_INET6 && r->family == AF_INET && memcmp(addr, mapped, 12) == 0)
        return prefix_equal(r->addr, addr + 12, r->bits);
    if (family != r->family)
        return false;
    return prefix_equal(r->addr, addr, r->bits);
}

bool keel__cidr_match_text(const struct keel__cidr *ranges, size_t n, const char *addr)
{
    unsigned char bytes[16];
    int family;
    if (inet_pton(AF_INET, addr, bytes) == 1)
        family = AF_INET;
    else if (inet_pton(AF_INET6, addr, bytes) == 1)
        family = AF_INET6;
    else
        return false;
    for (size_t i = 0; i < n; i++)
        if (match_bytes(&ranges[i], family, bytes))
            return true;
    return false;
}
