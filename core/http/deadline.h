/*
 * Request deadlines: a connection must deliver each request in full
 * (headers and body) within a time bound, or it is closed.
 *
 * libmicrohttpd's connection timeout is an inactivity timeout: every byte
 * that arrives restarts it, so a client that sends one header byte a second
 * ("slow drip", slowloris) holds its connection for ever, and enough of them
 * fill max_connections.  This module adds the missing bound.  It watches the
 * connections of one daemon through MHD's connection notifications; the
 * clock of a connection runs from the moment it opens, stops when the
 * request has fully arrived (the handler may then take as long as it needs),
 * and starts again when the response is done (waiting for the next request
 * on a kept-alive connection is bounded the same way).  A sweeper thread
 * shuts down the socket of every connection whose clock passed the bound;
 * libmicrohttpd then sees the connection end and cleans it up as usual.
 *
 * No HTTP answer is sent: before the request is complete libmicrohttpd
 * accepts no response, and a client that drips bytes is not waiting for one.
 *
 * The sweeper also closes receiving connections whose client has gone.
 * libmicrohttpd 0.9.75 in epoll mode misses the end of a connection when
 * the client's last bytes (headers and part of a body) and its FIN arrive
 * together: it reads the bytes, never sees the EOF, and the request stays
 * "in flight" until a timeout, holding its route-table snapshot and
 * delaying a graceful stop.  A peek at the socket (MSG_PEEK, nothing
 * consumed) finds those within two sweeps (half a second).
 *
 * Room keeping: when the table is nearly full (keel__deadlines_evict_at),
 * each new connection closes the one that has waited longest for its first
 * request.  A client that opens connections and sends nothing (or a byte at
 * a time) then only ever holds the oldest slots, which go first, and
 * another client's connection is accepted and, sending its request at
 * once, served.  Connections that have been served (kept alive) or whose
 * request is complete are never closed this way.
 *
 * Shutting down a socket libmicrohttpd owns is safe because the sweeper
 * holds the registry lock while it does so, and a connection leaves the
 * registry (in the CLOSED notification, under the same lock) before
 * libmicrohttpd closes its descriptor, so the descriptor cannot have been
 * reused for another connection.
 */
#ifndef KEEL_CORE_HTTP_DEADLINE_H
#define KEEL_CORE_HTTP_DEADLINE_H

#include <stdint.h>

#include <microhttpd.h>

#include <keel/common.h>

typedef struct keel__deadlines keel__deadlines;

/* Starts the sweeper for a bound of timeout_s seconds (>= 1).  Returns 0,
 * KEEL_EINVAL or KEEL_ENOMEM. */
int keel__deadlines_start(int timeout_s, keel__deadlines **out) KEEL_WARN_UNUSED;
/* Stops the sweeper and frees everything.  Call after the daemon stopped
 * (every connection has then been reported closed). */
void keel__deadlines_stop(keel__deadlines *d);

/* From `watched` connections on (0 = never), a new connection closes the
 * one that has waited longest for its first request. */
void keel__deadlines_evict_at(keel__deadlines *d, long watched);

/* The MHD_OPTION_NOTIFY_CONNECTION callback; cls is the keel__deadlines. */
void keel__deadlines_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                            enum MHD_ConnectionNotificationCode toe);

/* The peer address of a watched connection, as keel__conn_addr_text()
 * wrote it when the connection began, or NULL.  Valid until the
 * connection closes. */
const char *keel__deadlines_peer(struct MHD_Connection *conn);

/* The request on conn has fully arrived: its clock stops. */
void keel__deadlines_received(struct MHD_Connection *conn);
/* The response on conn is done (at now_ns, keel__monotonic_ns()'s clock,
 * which the caller read anyway): the clock for the next request starts. */
void keel__deadlines_rearm(struct MHD_Connection *conn, int64_t now_ns);

/* Connections closed for passing the bound since start. */
uint64_t keel__deadlines_closed(const keel__deadlines *d);
/* Connections watched right now. */
long keel__deadlines_watched(const keel__deadlines *d);

#endif
