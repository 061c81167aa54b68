/*
 * The state a running keeld shares between its HTTP threads (keel__rt):
 * the listener, limits and CORS settings and the long-lived handles.  Its
 * own header, below server.h, so that the request helpers (edge, body,
 * clientaddr) read their settings without including the server.  Defined
 * in server.c.
 */
#ifndef KEEL_CORE_HTTP_RUNTIME_H
#define KEEL_CORE_HTTP_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <keel/plugin.h>

#include "data/db.h"
#include "http/cors.h"
#include "http/request.h"
#include "identity/auth.h"
#include "identity/usersync.h"
#include "util/cidr.h"

/* The listeners and the access log (conf.d "server", "admin", "log"). */
struct keel__server_conf {
    const char *host; /* main listener */
    int port;
    int threads; /* worker threads of the main listener, resolved (> 0) */
    /* Bounds silence on a connection (libmicrohttpd) and the time a request
     * may take to arrive in full (core/http/deadline.h). */
    int connection_timeout_s;
    const char *admin_host;
    int admin_port;
    const char *admin_token; /* required when the admin host is not loopback */
    /* Host names the admin listener answers to besides its address. */
    const char *const *admin_allowed_hosts;
    size_t admin_nallowed_hosts;
    const char *access_log; /* "-", a path, or NULL for none */
    bool access_json;
    /* Peers whose X-Forwarded-For names the client (core/http/clientaddr.h). */
    const struct keel__cidr *trusted_proxies;
    size_t ntrusted_proxies;
};

/* Request limits (conf.d "limits"; docs/operations.md gives the defaults). */
struct keel__limits_conf {
    long max_body_bytes;
    long max_admin_body_bytes;
    long max_admin_stream_bytes; /* routes with "body": "stream" (core/http/body.h) */
    int max_admin_bodies;        /* admin requests with a body at once */
    long max_body_line_bytes;    /* one line of a streamed body */
    int max_json_depth;
    long max_header_bytes; /* 431 past it */
    int max_uri_bytes;     /* 414 past it */
    /* An oversized chunked body is read and thrown away for up to this many
     * more bytes so the client still gets its 413. */
    long max_drain_bytes;
    int max_connections;
    int max_per_ip;    /* 0 = unlimited */
    int rate_per_user; /* requests per second, 0 = off */
    int rate_burst;    /* 0 = rate_per_user */
};

/* Everything a running keeld shares between threads.  Set up by main before
 * the daemons start and torn down after they stop.  The conf structs'
 * strings are borrowed from the configuration model main keeps. */
struct keel__runtime {
    struct keel__server_conf server;
    struct keel__limits_conf limits;
    struct keel__cors_conf cors;
    keel__auth *auth;
    keel__db *db; /* NULL when no database is configured */
    keel__usersync *usersync;
    const keel_host *host;
    int64_t started_at; /* unix seconds */
    /* In a worker: the listening sockets bound by the supervisor, by
     * enum keel__listener, served instead of binding. */
    bool listen_inherited;
    int listen_fds[2];
};

extern struct keel__runtime keel__rt;

#endif
