/*
 * Address ranges written as CIDR ("10.0.0.0/8", "::1/128", or a bare
 * address for one host), used for server.trusted_proxies.  An IPv4 range
 * also matches IPv4-mapped IPv6 peers (::ffff:10.1.2.3), which is how a
 * dual-stack listener reports IPv4 clients.
 */
#ifndef KEEL_CORE_UTIL_CIDR_H
#define KEEL_CORE_UTIL_CIDR_H

#include <stdbool.h>

#include <sys/socket.h>

#include <keel/common.h>

struct keel__cidr {
    int family; /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    int bits;
};

/* Parses text into *out.  KEEL_EINVAL for anything but an address with an
 * optional "/bits" within the family's width. */
int keel__cidr_parse(const char *text, struct keel__cidr *out) KEEL_WARN_UNUSED;

/* True when the textual address lies inside one of the n ranges. */
bool keel__cidr_match_text(const struct keel__cidr *ranges, size_t n, const char *addr);

#endif
