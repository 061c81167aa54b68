/*
 * Opening a listening TCP socket: the supervisor's listeners, and a
 * keeld serving in-process that binds its own.
 */
#ifndef KEEL_CORE_UTIL_LISTEN_H
#define KEEL_CORE_UTIL_LISTEN_H

/* A non-blocking, close-on-exec socket listening on host:port (the first
 * address host resolves to), or -1 with the reason logged under name
 * ("main listener: ..."). */
int keel__listen_tcp(const char *name, const char *host, int port);

#endif
