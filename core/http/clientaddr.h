/*
 * Who a request is from, and its id, when keel runs behind load balancers.
 *
 * The client address is the TCP peer, except when the peer is one of
 * server.trusted_proxies: then it is the right-most address of
 * X-Forwarded-For that is not itself a trusted proxy (each proxy appends
 * the address it saw, so everything left of an untrusted hop may be forged
 * by the client).  It is what the access log records and what max_per_ip
 * counts for requests that came through a proxy.
 *
 * The request id is the client's X-Request-Id when it is 1-128 characters
 * of [A-Za-z0-9._:+/=-], else one made here; it is sent back in
 * X-Request-Id and written in the access log and in every plugin log line
 * of the request.
 */
#ifndef KEEL_CORE_HTTP_CLIENTADDR_H
#define KEEL_CORE_HTTP_CLIENTADDR_H

#include <stdbool.h>
#include <stddef.h>

#include <keel/common.h>

#include "util/cidr.h"

#define KEEL__REQUEST_ID_MAX 128
#define KEEL__CLIENT_ADDR_MAX 46 /* INET6_ADDRSTRLEN */

/* True when id may be used as a request id as it is. */
bool keel__request_id_valid(const char *id);

/* Writes a fresh id for request number seq into out (at least 32 bytes):
 * a random per-process prefix and seq, so ids from a fleet do not collide. */
void keel__request_id_make(unsigned long long seq, char *out, size_t outlen);

/*
 * The client address for a request whose TCP peer is peer (text form):
 * xff is every X-Forwarded-For value joined with ", " in arrival order (or
 * NULL).  out receives peer itself unless peer is trusted and xff names an
 * address.  Entries that are not addresses end the walk.
 */
void keel__client_addr(const char *peer, const char *xff, const struct keel__cidr *trusted,
                       size_t ntrusted, char *out, size_t outlen);

/*
 * Concurrent requests per client address, for max_per_ip behind proxies.
 * keel__addr_limit_enter returns false (and counts nothing) when addr
 * already has max requests in flight; every true is paired with one
 * keel__addr_limit_leave.
 */
bool keel__addr_limit_enter(const char *addr, int max);
/* sa's address as text (IPv4 dotted, IPv6 as inet_ntop writes it), "-"
 * when there is none; out holds at least INET6_ADDRSTRLEN bytes. */
struct sockaddr;
void keel__addr_text(const struct sockaddr *sa, char *out, size_t outlen);
/* The same for a libmicrohttpd connection's peer. */
struct MHD_Connection;
void keel__conn_addr_text(struct MHD_Connection *conn, char *out, size_t outlen);
void keel__addr_limit_leave(const char *addr);

/*
 * Sets req's request id (and the X-Request-Id response header) and client
 * address, and counts it against max_per_ip when trusted proxies are
 * configured.  peer_text is the connection's peer as keel__conn_addr_text()
 * gives it when the caller has it already, else NULL.  The client's
 * X-Request-Id is read with keel__req_header(), so from the fields the edge
 * check collected when it has run.  KEEL_EBUSY: the client already has
 * max_per_ip requests in flight (the caller answers 429); else 0.
 */
struct keel_request;
int keel__request_identify(struct keel_request *req, const char *peer_text) KEEL_WARN_UNUSED;

#endif
