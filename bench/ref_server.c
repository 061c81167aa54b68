/*
 * The HTTP ceiling for ./dev bench: the smallest libmicrohttpd server that
 * answers every request with one fixed JSON body.  Its threading model,
 * pool size and per-connection memory are options, so that bench/run can
 * try them on this machine and measure keeld against the fastest one
 * (not against a server that copies keeld's own daemon flags, which would
 * carry keeld's configuration costs into the ceiling).
 *
 *   ref_server [--host 127.0.0.1] --port N [--model M] [--threads N]
 *              [--memory-limit BYTES]
 *
 * --model: epoll (default), epoll-turbo (MHD_USE_TURBO), poll, select, or
 * per-connection (a thread per connection, polling with poll()).
 * --threads: the internal thread pool (1 = one internal polling thread, no
 * pool); ignored by per-connection.  --memory-limit: libmicrohttpd's
 * per-connection memory (MHD_OPTION_CONNECTION_MEMORY_LIMIT; its default is
 * 32 KiB).  The server runs until SIGINT or SIGTERM.  Built by bench/run
 * with gcc and pkg-config; it is not part of keel and is never installed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

/* The same bytes as keeld's /health answers when everything is up, so the
 * two transfer the same amount per request. */
static const char body[] =
    "{\"status\":\"ok\",\"database\":\"up\",\"plugins\":{\"example\":\"loaded\",\"creator\":\"loaded\"}}";

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    (void)cls;
    (void)url;
    (void)method;
    (void)version;
    (void)upload_data;
    /* The first call only announces the headers.  Answering then would make
     * libmicrohttpd close the connection (the body is not read yet), so the
     * answer waits for the last call, exactly as keeld's does. */
    static int first_call_marker;
    if (*con_cls == NULL) {
        *con_cls = &first_call_marker;
        return MHD_YES;
    }
    /* A body, if any, is ignored. */
    if (*upload_data_size != 0) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(sizeof body - 1, (void *)body,
                                                                MHD_RESPMEM_PERSISTENT);
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "application/json");
    enum MHD_Result r = MHD_queue_response(conn, 200, resp);
    MHD_destroy_response(resp);
    return r;
}

static long parse_long(const char *s, const char *what, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "ref_server: bad %s: %s\n", what, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    const char *model = "epoll";
    long port = 0;
    long threads = 1;
    long memory = 32 * 1024;

    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--host") == 0)
            host = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--port") == 0)
            port = parse_long(argv[++i], "port", 1, 65535);
        else if (i + 1 < argc && strcmp(argv[i], "--model") == 0)
            model = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--threads") == 0)
            threads = parse_long(argv[++i], "threads", 1, 1024);
        else if (i + 1 < argc && strcmp(argv[i], "--memory-limit") == 0)
            memory = parse_long(argv[++i], "memory limit", 1024, 64L * 1024 * 1024);
        else {
            fprintf(stderr, "usage: ref_server [--host ADDR] --port N [--model "
                            "epoll|epoll-turbo|poll|select|per-connection] [--threads N] "
                            "[--memory-limit BYTES]\n");
            return 2;
        }
    }
    if (port == 0) {
        fprintf(stderr, "ref_server: --port is required\n");
        return 2;
    }

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    bool pool = threads > 1;
    if (strcmp(model, "epoll") == 0)
        flags |= MHD_USE_EPOLL;
    else if (strcmp(model, "epoll-turbo") == 0)
        flags |= MHD_USE_EPOLL | MHD_USE_TURBO;
    else if (strcmp(model, "poll") == 0)
        flags |= MHD_USE_POLL;
    else if (strcmp(model, "select") == 0)
        ; /* the internal polling thread's default */
    else if (strcmp(model, "per-connection") == 0) {
        flags |= MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL;
        pool = false;
        threads = 1;
    } else {
        fprintf(stderr, "ref_server: unknown --model %s\n", model);
        return 2;
    }

    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "ref_server: --host must be an IPv4 address: %s\n", host);
        return 2;
    }

    /* Block the stop signals before the daemon's threads start, so that they
     * inherit the mask and sigwait() below is the only taker. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_SOCK_ADDR, 0, &sa},
        {MHD_OPTION_CONNECTION_TIMEOUT, 30, NULL},
        {MHD_OPTION_CONNECTION_LIMIT, 1024, NULL},
        {MHD_OPTION_CONNECTION_MEMORY_LIMIT, (intptr_t)memory, NULL},
        /* Last, so that one thread (no pool) can end the list here. */
        {MHD_OPTION_THREAD_POOL_SIZE, (intptr_t)threads, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    if (!pool)
        opts[4].option = MHD_OPTION_END;
    struct MHD_Daemon *d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_access, NULL,
                                            MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "ref_server: cannot start %s with %ld thread(s) on %s:%ld\n", model,
                threads, host, port);
        return 1;
    }
    fprintf(stderr, "ref_server: listening on %s:%ld, %s, %ld thread%s, %ld bytes per connection\n",
            host, port, model, threads, threads == 1 ? "" : "s", memory);

    int sig = 0;
    sigwait(&stop, &sig);
    MHD_stop_daemon(d);
    return 0;
}
