#!/usr/bin/python3
"""Measures which libmicrohttpd per-connection memory sizes keep keeld's own
JSON answers (docs/performance.md, "Connection memory").

libmicrohttpd keeps a request's line and headers in its per-connection
memory and answers 431/414 itself, with an HTML body, when they do not fit;
keeld refuses requests past its own limits (limits.max_header_bytes,
limits.max_uri_bytes) with JSON, but only if libmicrohttpd let the request
through.  libmicrohttpd also clears that memory between the requests of a
kept-alive connection, so every byte of it costs time on every request.

For each size given, this starts the installed keeld (installed conf.d, no
database) with the size forced through a small LD_PRELOAD shim around
MHD_start_daemon, sends the hostile requests of
tests/integration/test_adversarial.py plus requests right at keel's limits,
and prints which get keel's answer (JSON) and which libmicrohttpd's.

    bench/connmem_probe.py [--prefix .dev/prefix] SIZE...   (0: keeld's own size)
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SHIM = r"""
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdlib.h>
#include <microhttpd.h>

/* keeld calls MHD_start_daemon(..., MHD_OPTION_ARRAY, opts, MHD_OPTION_END):
 * rewrite the memory limit in that array, then start the daemon with the
 * caller's arguments unchanged. */
struct MHD_Daemon *MHD_start_daemon(unsigned int flags, uint16_t port,
                                    MHD_AcceptPolicyCallback apc, void *apc_cls,
                                    MHD_AccessHandlerCallback dh, void *dh_cls, ...)
{
    const char *want = getenv("CONNMEM_PROBE_BYTES");
    va_list ap;
    va_start(ap, dh_cls);
    if (want != NULL && va_arg(ap, int) == MHD_OPTION_ARRAY) {
        struct MHD_OptionItem *o = va_arg(ap, struct MHD_OptionItem *);
        for (; o->option != MHD_OPTION_END; o++)
            if (o->option == MHD_OPTION_CONNECTION_MEMORY_LIMIT)
                o->value = atol(want);
    }
    va_end(ap);
    va_start(ap, dh_cls);
    struct MHD_Daemon *d = MHD_start_daemon_va(flags, port, apc, apc_cls, dh, dh_cls, ap);
    va_end(ap);
    return d;
}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def head(path, headers=(), method="GET"):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1"]
    lines += ["%s: %s" % h for h in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def exchange(port, data):
    """Sends one request; returns (status, body is JSON) or (None, False)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(data)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            hdr, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in hdr.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                if len(body) >= length:
                    break
    finally:
        s.close()
    if not buf.startswith(b"HTTP/1."):
        return None, False
    status = int(buf.split(b" ", 2)[1])
    body = buf.partition(b"\r\n\r\n")[2]
    try:
        json.loads(body)
        return status, True
    except ValueError:
        return status, False


def counted_headers(total, size):
    """Headers X-Pad-N of about size bytes each whose sum as keel counts
    them (name + value + 4) is exactly total."""
    out, left, i = [], total, 0
    while left > 0:
        name = "X-Pad-%d" % i
        room = left - len(name) - 4
        value = "v" * max(1, min(size - len(name) - 4, room))
        out.append((name, value))
        left -= len(name) + len(value) + 4
        i += 1
    return out


def cases(limits):
    hmax, umax = limits["max_header_bytes"], limits["max_uri_bytes"]
    host = len("Host") + len("127.0.0.1") + 4
    path = "/probe"

    def uri(n):
        # keel counts the path plus "k=v&" per query argument.
        return path + "?q=" + "a" * (n - len(path) - 3)

    full_h = counted_headers(hmax - host, 4096)
    return [
        # Within keel's limits: keel must answer (here its JSON 404).
        ("both limits, 4 KiB headers", head(uri(umax), full_h), 404),
    ] + [
        # The same with the header bytes spread over many headers:
        # libmicrohttpd spends memory per header on top of its bytes.
        ("both limits, %d-byte headers" % n, head(uri(umax), counted_headers(hmax - host, n)),
         404) for n in (256, 128, 64, 32)
    ] + [
        # At one limit, the other part of an ordinary size.
        ("header limit, short URI, %d-byte headers" % n, head(path, counted_headers(hmax - host, n)),
         404) for n in (4096, 256, 128, 64)
    ] + [
        ("URI limit, 20 headers of 60 bytes", head(uri(umax), [("X-H%d" % i, "v" * 60)
                                                               for i in range(20)]), 404),
        # Just past one limit, at the other: keel's JSON 431/414.
        ("header limit + 1, URI at limit", head(uri(umax), full_h + [("X-1", "")]), 431),
        ("URI limit + 1, headers at limit", head(uri(umax + 1), full_h), 414),
        # tests/integration/test_adversarial.py's JSON cases.
        ("20 KiB header", head("/health", [("X-Big", "a" * 20000)]), 431),
        ("300 headers of 60 bytes", head("/health", [("X-H%d" % i, "v" * 60)
                                                     for i in range(300)]), 431),
        ("20 KiB token", head("/api/v1/auth/me", [("Authorization", "Bearer " + "x" * 20100)]),
         431),
        ("9 KiB URI", head("/health?q=" + "a" * 9000), 414),
        ("20 KiB path", head("/" + "a" * 20000), 414),
    ]


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prefix", default=os.path.join(ROOT, ".dev", "prefix"))
    p.add_argument("sizes", nargs="+", type=int)
    a = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="keel-connmem-")
    shim = os.path.join(work, "shim.so")
    src = os.path.join(work, "shim.c")
    with open(src, "w") as f:
        f.write(SHIM)
    flags = subprocess.run(["pkg-config", "--cflags", "libmicrohttpd"], check=True, text=True,
                           stdout=subprocess.PIPE).stdout.split()
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", shim, src] + flags, check=True)
    conf = os.path.join(a.prefix, "etc", "keel", "conf.d")
    with open(os.path.join(conf, "10-server.json")) as f:
        limits = json.load(f)["limits"]
    table = cases(limits)
    results = {}
    for size in a.sizes:
        port, admin = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        # 0: keeld's own size, not overridden.
        if size > 0:
            env.update(LD_PRELOAD=shim, CONNMEM_PROBE_BYTES=str(size))
        env.update(KEEL_JWT_SECRET="x" * 40,
                   KEEL_LISTEN="127.0.0.1:%d" % port, KEEL_ADMIN_LISTEN="127.0.0.1:%d" % admin)
        log = open(os.path.join(work, "keeld-%d.log" % size), "wb")
        proc = subprocess.Popen([os.path.join(a.prefix, "bin", "keeld"), "--config-dir", conf],
                                env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    exchange(port, head("/health"))
                    break
                except OSError:
                    time.sleep(0.1)
            results[size] = [exchange(port, data) for _, data, _ in table]
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()
    width = max(len("%s (%d)" % (name, want)) for name, _, want in table)
    print("%-*s  %s" % (width, "request (keel's answer)", "  ".join(
        "%9s" % ("%d B" % s if s else "keeld's") for s in a.sizes)))
    ok_sizes = set(a.sizes)
    for i, (name, _, want) in enumerate(table):
        cells = []
        for size in a.sizes:
            status, is_json = results[size][i]
            good = status == want and is_json
            if not good:
                ok_sizes.discard(size)
            cells.append("%9s" % ("%s%s" % (status, " json" if is_json else " html")
                                  if status else "closed"))
        print("%-*s  %s" % (width, "%s (%d)" % (name, want), "  ".join(cells)))
    print("sizes where keel makes every answer: %s" % (
        ", ".join(str(s) for s in sorted(ok_sizes)) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
