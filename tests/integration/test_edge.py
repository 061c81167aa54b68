"""The HTTP edge, byte by byte: request smuggling through malformed header
names, NUL and control bytes in the request target, libmicrohttpd's own
error pages, one client holding every connection, cross-site use of the
admin listener, admin body memory, and the low-severity framing cases
(docs/reliability.md, "Request framing" and "Admin listener").

Every case is sent as raw bytes over a socket and its answer checked:
status, keel's JSON body, and whether the connection was closed.
"""

import json
import os
import re
import socket
import subprocess
import threading
import time

import keeltest
from keeltest import Keeld, user_token

TIMEOUT = 240


# ---------------------------------------------------------------- raw HTTP

class Answer:
    """What came back on one connection: the first response, anything after
    it, and whether the server closed the connection."""

    def __init__(self, data, closed):
        self.data = data
        self.closed = closed
        self.status = None
        self.headers = {}
        self.body = b""
        self.rest = b""
        if not data.startswith(b"HTTP/1."):
            return
        head, _, tail = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            self.headers[k.strip().lower().decode()] = v.strip().decode("latin-1")
        n = int(self.headers.get("content-length", len(tail)))
        self.body, self.rest = tail[:n], tail[n:]

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<Answer %s closed=%s %r>" % (self.status, self.closed, self.data[:300])


def _complete(data):
    head, sep, tail = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            return len(tail) >= int(line.split(b":")[1])
    return False


def send(port, data, wait=1.0):
    """Sends data, reads the first response, then waits up to `wait` seconds
    for more bytes or for the server to close the connection."""
    s = socket.create_connection(("127.0.0.1", port), timeout=keeltest.scaled(10))
    try:
        s.sendall(data)
        out = b""
        while True:
            if _complete(out):
                s.settimeout(keeltest.scaled(wait))
            try:
                b = s.recv(65536)
            except socket.timeout:
                return Answer(out, False)
            except ConnectionResetError:
                return Answer(out, True)
            if not b:
                return Answer(out, True)
            out += b
    finally:
        s.close()


def assert_refused(a, status, detail_re, closed=True):
    assert a.status == status, a
    assert a.headers.get("content-type", "").startswith("application/json"), a
    detail = a.json()["detail"]
    assert re.search(detail_re, detail), (detail, a)
    if closed:
        assert a.closed, "connection left open after %r" % a
        assert a.rest == b"", "a second response followed: %r" % a


def assert_each_refused(k, cases, also=None):
    """Sends each (name, request bytes, status, detail regex) on a connection
    of its own and checks keel's refusal (assert_refused, then also(answer)
    if given); a failure names the case."""
    for name, data, status, detail in cases:
        a = send(k.port, data)
        try:
            assert_refused(a, status, detail)
            if also is not None:
                also(a)
        except (AssertionError, ValueError) as e:
            raise AssertionError("%s: %s" % (name, e))


def settled(k):
    """The server log's size once the access log has caught up: its lines
    are written in batches, at most about 100 ms after their requests
    (docs/operations.md), so this waits until the log has not grown for half
    a second."""
    last, quiet_since = -1, time.monotonic()
    deadline = quiet_since + keeltest.scaled(10)
    while time.monotonic() < deadline:
        size = os.path.getsize(k.log_path)
        if size != last:
            last, quiet_since = size, time.monotonic()
        elif time.monotonic() - quiet_since >= 0.5:
            break
        time.sleep(0.05)
    return last


def access_lines(k, since):
    """The server log after offset since (a settled() mark), caught up."""
    settled(k)
    with open(k.log_path, "rb") as f:
        f.seek(since)
        return f.read().decode("utf-8", "replace")


H = b"Host: 127.0.0.1\r\n"


# ---------------------------------------------------------------- smuggling

def test_whitespace_before_colon_and_non_token_names_are_refused_and_closed():
    """RFC 9112 5.1: a header name followed by whitespace before the colon
    is answered 400 and the connection closed; so is any name that is not a
    token.  Each case is a keep-alive POST followed by a GET on the same
    connection: the GET must never be answered."""
    follow = b"GET /api/v1/example/hello HTTP/1.1\r\n" + H + b"\r\n"
    cases = {
        "space before colon": b"Content-Length : 2\r\n\r\n{}",
        "tab before colon": b"Content-Length\t: 2\r\n\r\n{}",
        "two lengths, one spaced": b"Content-Length: 2\r\nContent-Length : 40\r\n\r\n{}",
        "spaced transfer-encoding": b"Transfer-Encoding : chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        "spaced transfer-encoding with a length":
            b"Content-Length: 2\r\nTransfer-Encoding : chunked\r\n\r\n{}",
        "length with a spaced transfer-encoding first":
            b"Transfer-Encoding : chunked\r\nContent-Length: 2\r\n\r\n{}",
        "name with parentheses": b"X(A): b\r\nContent-Length: 2\r\n\r\n{}",
        "name with a space inside": b"X A: b\r\nContent-Length: 2\r\n\r\n{}",
        "name with a slash": b"X/A: b\r\nContent-Length: 2\r\n\r\n{}",
    }
    with Keeld() as k:
        mark = settled(k)
        for name, rest in cases.items():
            a = send(k.port, b"POST /api/v1/example/hello HTTP/1.1\r\n" + H + rest + follow)
            try:
                assert_refused(a, 400, r"Invalid header name")
            except AssertionError as e:
                raise AssertionError("%s: %s" % (name, e))
        log = access_lines(k, mark)
        assert "{}GET" not in log, log
        assert len(re.findall(r" main POST /api/v1/example/hello 400 ", log)) == len(cases), log
        assert "GET /api/v1/example/hello" not in log, log
        assert k.get("/health").status == 200


# ---------------------------------------------------------------- targets

def test_nul_and_control_bytes_in_the_target_are_refused_before_routing():
    name = "edgecase_%d" % os.getpid()
    cases = [
        b"/health\x00anything",
        b"/health\x00",
        b"/api/v1/simple/creator/" + name.encode() + b"\x00/../../admin/status",
        b"/api/v1/example/echo/abc\x00def",
        b"/health?a=b\x00c",
        b"/hea\x01lth",
        b"/health\x7f",
        b"/hea\tlth",
        b"/hea\x1blth",
    ]
    with Keeld() as k:
        # The readiness probe's access-log line is written after its answer,
        # by whichever worker served it: let it land first.
        mark = settled(k)
        for target in cases:
            a = send(k.port, b"GET " + target + b" HTTP/1.1\r\n" + H + b"\r\n")
            try:
                assert_refused(a, 400, r"Request target contains")
            except AssertionError as e:
                raise AssertionError("%r: %s" % (target, e))
        log = access_lines(k, mark)
        # The whole target is logged, its control bytes escaped.
        assert r"GET /health\x00anything 400 " in log, log
        assert r"GET /api/v1/example/echo/abc\x00def 400 " in log, log
        assert r"\x00/../../admin/status 400 " in log, log
        assert r"GET /hea\x01lth 400 " in log, log
        assert " 200 " not in log, log
        # The well-formed ones still work.
        assert k.get("/health").status == 200
        r = k.get("/api/v1/example/echo/abcdef")
        assert r.status == 200 and "abcdef" in r.text, r


# ---------------------------------------------------------------- libmicrohttpd's own pages

def test_oversized_chunk_extension_is_refused_in_json():
    """A chunk-size line longer than libmicrohttpd's read buffer: it gives
    up on the body with its own 500 page; keel answers the client's 413 in
    its JSON instead, and the access log and metrics record the 413."""
    ext = b";" + b"x" * 60000
    with Keeld() as k:
        mark = settled(k)
        a = send(k.port, b"POST /health HTTP/1.1\r\n" + H +
                 b"Transfer-Encoding: chunked\r\n\r\n2" + ext + b"\r\n{}\r\n0\r\n\r\n")
        assert_refused(a, 413, r"Chunk size line \(size and extensions\) too long")
        assert a.headers.get("content-type") == "application/json", a
        k.wait_log(r" main POST /health 413 ", since=mark)
        log = [l for l in access_lines(k, mark).splitlines() if " main " in l]
        assert not [l for l in log if " 499 " in l or " 500 " in l], log
        metrics = k.admin_get("/metrics").text
        assert re.search(r'keel_http_requests_total\{[^}]*status="413"[^}]*\} 1', metrics), \
            [l for l in metrics.splitlines() if "requests_total" in l]
        assert not re.search(r'keel_http_requests_total\{[^}]*status="500"', metrics)
        # The same on a plugin route, with a token-free POST.
        a = send(k.port, b"POST /api/v1/example/hello HTTP/1.1\r\n" + H +
                 b"Transfer-Encoding: chunked\r\n\r\n2" + ext + b"\r\n{}\r\n0\r\n\r\n")
        assert_refused(a, 413, r"Chunk size line")
        assert k.get("/health").status == 200


def test_libmicrohttpd_own_refusals_answer_keel_json():
    """Every page libmicrohttpd would answer with its own HTML comes out as
    keel's JSON with the status it chose (docs/reliability.md)."""
    cases = [
        ("head past the connection memory", b"GET /health HTTP/1.1\r\n" + H +
         b"X-Big: " + b"a" * 70000 + b"\r\n\r\n", 431, r"Request headers too large \(limit"),
        ("URI past the connection memory",
         b"GET /health?q=" + b"a" * 70000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414,
         r"URI too long \(limit"),
        ("request line without a version", b"GET /health\r\n\r\n", 400,
         r"Malformed request line or header line"),
        ("header line without a colon", b"GET /health HTTP/1.1\r\n" + H + b"Bad\r\n\r\n", 400,
         r"Malformed request line or header line"),
        ("HTTP/2.0", b"GET /health HTTP/2.0\r\n" + H + b"\r\n", 505,
         r"HTTP version not supported"),
        ("HTTP/0.9 version", b"GET /health HTTP/0.9\r\n" + H + b"\r\n", 505,
         r"HTTP version not supported"),
    ]
    def json_not_html(a):
        assert a.headers.get("content-type") == "application/json", a.headers
        assert b"<html" not in a.data.lower(), a
        assert k.get("/health").status == 200

    with Keeld() as k:
        assert_each_refused(k, cases, json_not_html)
        mark = settled(k)
        send(k.port, cases[0][1])
        k.wait_log(r" main - /health 431 ", since=mark)
        # An unusable Content-Length: libmicrohttpd 0.9.75 writes the head of
        # its answer twice (docs/reliability.md); the status and the body
        # are still keel's, and the connection is closed.
        for value, status, detail in [(b"-1", 400, "Content-Length is not a decimal number"),
                                      (b"abc", 400, "Content-Length is not a decimal number"),
                                      (b"9" * 23, 413, "Content-Length too large")]:
            a = send(k.port, b"POST /health HTTP/1.1\r\n" + H + b"Content-Length: " + value +
                     b"\r\n\r\n")
            assert a.status == status and a.closed, a
            assert a.headers.get("content-type") == "application/json", a
            body = json.loads(a.data.rpartition(b"\r\n\r\n")[2])
            assert detail in body["detail"], a
            assert b"<html" not in a.data.lower(), a


# ---------------------------------------------------------------- low severity

def test_host_version_folding_cr_nul_and_absolute_form():
    with Keeld() as k:
        cases = [
            ("no Host", b"GET /health HTTP/1.1\r\n\r\n", 400, r"no Host header"),
            ("two Hosts", b"GET /health HTTP/1.1\r\n" + H + H + b"\r\n", 400,
             r"more than one Host"),
            ("HTTP/1.2", b"GET /health HTTP/1.2\r\n" + H + b"\r\n", 505,
             r"HTTP version not supported"),
            ("folded line", b"GET /health HTTP/1.1\r\n" + H + b"X-A: b\r\n  c\r\n\r\n", 400,
             r"Malformed header line"),
            ("folded with a tab", b"GET /health HTTP/1.1\r\nX-A: b\r\n\tc\r\n" + H + b"\r\n", 400,
             r"Malformed header line"),
            ("bare CR in a value", b"GET /health HTTP/1.1\r\n" + H + b"X-A: b\rc\r\n\r\n", 400,
             r"control character"),
            ("NUL in a value", b"GET /health HTTP/1.1\r\n" + H + b"X-A: b\x00c\r\n\r\n", 400,
             r"Malformed header line"),
            ("NUL in the Host value", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\x00evil\r\n\r\n",
             400, r"Malformed header line"),
            ("control byte in a value", b"GET /health HTTP/1.1\r\n" + H + b"X-A: b\x01\r\n\r\n",
             400, r"control character"),
        ]
        assert_each_refused(k, cases)
        # HTTP/1.0 needs no Host; absolute-form targets are routed by their path.
        a = send(k.port, b"GET /health HTTP/1.0\r\n\r\n")
        assert a.status == 200, a
        a = send(k.port, b"GET http://127.0.0.1/health HTTP/1.1\r\n" + H + b"\r\n")
        assert a.status == 200 and a.json()["status"] in ("ok", "degraded"), a
        a = send(k.port, b"GET http://127.0.0.1/api/v1/example/echo/x1?y=2 HTTP/1.1\r\n" + H +
                 b"\r\n")
        assert a.status == 200 and "x1" in a.body.decode(), a
        # Optional whitespace and LF-only line ends stay accepted.
        a = send(k.port, b"GET /health HTTP/1.1\nHost:   127.0.0.1  \nX-B:\tv\t\n\n")
        assert a.status == 200, a


# ---------------------------------------------------------------- admin listener

def _admin_send(k, method, path, headers=b"", body=b"", host=None):
    host = host or ("127.0.0.1:%d" % k.admin_port).encode()
    data = (method.encode() + b" " + path.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\n" +
            headers + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return send(k.admin_port, data)


def test_admin_refuses_cross_site_writes_foreign_hosts_and_origins():
    line = json.dumps({"username": "edge_planted_%d" % os.getpid()}).encode() + b"\n"
    with Keeld() as k:
        # A CORS "simple" request: text/plain, no preflight.
        for path, body in (("/admin/import", line), ("/admin/reload", b""),
                           ("/admin/credits", b'{"email":"a@b.c","amount":1}'),
                           ("/admin/usersync/evict", b'{"user":"x"}')):
            for ct in (b"text/plain", b"application/x-www-form-urlencoded",
                       b"multipart/form-data; boundary=x", None):
                hdr = b"Content-Type: " + ct + b"\r\n" if ct else b""
                a = _admin_send(k, "POST", path, hdr, body)
                assert_refused(a, 415, r"Content-Type application/json")
        # Any Origin header, even with the right content type.
        a = _admin_send(k, "POST", "/admin/import",
                        b"Content-Type: application/x-ndjson\r\nOrigin: http://evil.example\r\n",
                        line)
        assert_refused(a, 403, r"Cross-origin")
        a = _admin_send(k, "GET", "/admin/plugins", b"Origin: null\r\n")
        assert_refused(a, 403, r"Cross-origin")
        # DNS rebinding: a foreign Host on every route, reads included.
        for method, path in (("GET", "/admin/plugins"), ("GET", "/metrics"),
                             ("GET", "/admin/status"), ("POST", "/admin/reload")):
            a = _admin_send(k, method, path, b"Content-Type: application/json\r\n",
                            host=b"attacker.example:%d" % k.admin_port)
            assert_refused(a, 421, r"Host not served")
        # Nothing was planted.
        r = k.get("/api/v1/simple/creator/edge_planted_%d" % os.getpid(),
                  token=user_token())
        assert r.status in (404, 503), r
        # What keelctl and scripts send is accepted.
        for host in (b"127.0.0.1:%d" % k.admin_port, b"localhost:%d" % k.admin_port,
                     b"127.0.0.1"):
            a = _admin_send(k, "GET", "/admin/plugins", host=host)
            assert a.status == 200, (host, a)
        a = _admin_send(k, "POST", "/admin/reload?plugin=example",
                        b"Content-Type: application/json\r\n")
        assert a.status == 200, a
        out = k.keelctl("reload", "example")
        assert out.returncode == 0, out.stdout
        out = k.keelctl("status")
        assert out.returncode == 0, out.stdout


def test_admin_allowed_hosts():
    def conf(k):
        c = k.read_conf("10-server.json")
        c["admin"]["allowed_hosts"] = ["keel-admin.internal"]
        k.write_conf("10-server.json", c)
    with Keeld(conf) as k:
        a = _admin_send(k, "GET", "/admin/plugins",
                        host=b"keel-admin.internal:%d" % k.admin_port)
        assert a.status == 200, a
        a = _admin_send(k, "GET", "/admin/plugins", host=b"other.internal:%d" % k.admin_port)
        assert_refused(a, 421, r"Host not served")


# ---------------------------------------------------------------- one client, every slot

class SlowHeaders:
    """n connections that send the start of a request and then one header
    byte every half second, reopening whatever the server closes, for as
    long as they run (the attack of docs/reliability.md, "Slow clients")."""

    HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "

    def __init__(self, port, n):
        self.port = port
        self.socks = []
        self.reopened = 0
        self.failed = 0
        for _ in range(n):
            self._open()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _open(self):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            s.sendall(self.HEAD)
            s.setblocking(False)
            self.socks.append(s)
        except OSError:
            self.failed += 1

    def _run(self):
        while not self.stop.wait(0.5):
            alive = []
            for s in self.socks:
                try:
                    s.send(b"a")
                    alive.append(s)
                except OSError:
                    s.close()
            lost = len(self.socks) - len(alive)
            self.socks = alive
            for _ in range(lost):
                if self.stop.is_set():
                    break
                self._open()
                self.reopened += 1

    def close(self):
        self.stop.set()
        self.thread.join(30)
        for s in self.socks:
            s.close()


def _probe_health(port):
    """GET /health from another address (127.0.0.2); returns (status,
    seconds) or (None, seconds) when nothing came within 5 s."""
    t0 = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while not _complete(data):
            b = s.recv(65536)
            if not b:
                break
            data += b
        return Answer(data, True).status, time.monotonic() - t0
    except OSError:
        return None, time.monotonic() - t0
    finally:
        s.close()


@keeltest.timeout(150)
def test_one_address_holding_1100_slow_connections_does_not_lock_out_others():
    """With the default configuration (max_connections 1024, no per-address
    limit, 30 s deadline), one address opens 1,100 connections that send
    their headers a byte at a time and reopens every one the server closes.
    /health from another client answers within 1 s every time."""
    with Keeld() as k:
        conf = k.read_conf("10-server.json")
        assert conf["limits"]["max_connections"] == 1024 and conf["limits"]["max_per_ip"] == 0
        slow = SlowHeaders(k.port, 1100)
        try:
            time.sleep(2)
            times = []
            for i in range(8):
                status, secs = _probe_health(k.port)
                assert status == 200, (i, status, secs)
                times.append(secs)
                time.sleep(0.5)
            print("slow-header lock-out: 1100 connections from one address, %d reopened; "
                  "/health from another address: %s s" %
                  (slow.reopened, ", ".join("%.3f" % t for t in times)))
            assert max(times) < keeltest.scaled(1.0), times
            # The attack was real: the attacker held most of the table.
            assert len(slow.socks) >= 1000, len(slow.socks)
            k.wait_log(r"closed \d+ connection\(s\) still sending their first request to make "
                       r"room")
        finally:
            slow.close()


# ---------------------------------------------------------------- admin memory

def _rss_peak_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM for %d" % pid)


def _admin_head(k, path, length, ctype=b"application/json"):
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % k.admin_port +
            b"Content-Type: " + ctype + b"\r\nContent-Length: %d\r\n\r\n" % length)


def _one_worker(k):
    c = k.read_conf("10-server.json")
    c["server"]["workers"] = 1
    k.write_conf("10-server.json", c)


def test_admin_bodies_small_cap_and_bounded_concurrency():
    # The bound on bodies at once is a memory bound, so it holds per worker
    # process; one worker makes "the third body" land where the first two are.
    with Keeld(_one_worker) as k:
        # Every admin route but the streamed import has the small cap.
        a = send(k.admin_port, _admin_head(k, "/admin/usersync/evict", 200 * 1024 * 1024))
        assert_refused(a, 413, r"limit 1048576 bytes")
        a = send(k.admin_port, _admin_head(k, "/admin/credits", 2 * 1024 * 1024))
        assert_refused(a, 413, r"limit 1048576 bytes")
        # The import's cap is the stream cap (256 MiB).
        a = send(k.admin_port, _admin_head(k, "/admin/import", 300 * 1024 * 1024,
                                           b"application/x-ndjson"))
        assert_refused(a, 413, r"limit 268435456 bytes")
        # Two bodies arriving at once are the default bound; a third waits.
        holders = []
        try:
            for _ in range(2):
                s = socket.create_connection(("127.0.0.1", k.admin_port), timeout=10)
                s.sendall(_admin_head(k, "/admin/import", 100 * 1024 * 1024,
                                      b"application/x-ndjson") + b"x" * 65536)
                holders.append(s)
            time.sleep(0.5)
            a = send(k.admin_port, _admin_head(k, "/admin/usersync/evict", 12) + b'{"user":"x"}')
            assert_refused(a, 503, r"Too many admin request bodies")
            assert a.headers.get("retry-after") == "1", a
            # Reads are not bodies: still answered.
            assert k.admin_get("/admin/plugins").status == 200
        finally:
            for s in holders:
                s.close()

        def evict_answers():
            r = k.admin_post("/admin/usersync/evict", body={"user": "nobody@example.com"})
            return r.status != 503
        assert keeltest_wait(evict_answers), "admin bodies stayed counted after their clients left"


def keeltest_wait(pred, attempts=40, delay=0.25):
    for _ in range(attempts):
        if pred():
            return True
        time.sleep(delay)
    return False


def test_import_is_streamed_not_held_in_memory():
    """A 48 MB NDJSON import (600 profiles, each line padded with an unknown
    key) is spooled to disk and read line by line: keeld's peak resident
    memory grows by far less than the body."""
    pad = "p" * (80 * 1024)
    tag = "edgestream%d" % (os.getpid() % 100000)
    # Under valgrind, where the memory figure is not checked, a tenth of the
    # body keeps the import within the 30 s handler limit.
    n = keeltest.scaled_count(600, 60)
    lines = [json.dumps({"username": "%s_%d" % (tag, i), "full_name": "N", "pad": pad})
             for i in range(n)]
    body = ("\n".join(lines) + "\n").encode()
    with Keeld() as k:
        k.admin_get("/admin/plugins")
        before = _rss_peak_kib(k.pid)
        s = socket.create_connection(("127.0.0.1", k.admin_port), timeout=keeltest.scaled(120))
        try:
            s.sendall(_admin_head(k, "/admin/import", len(body), b"application/x-ndjson"))
            for i in range(0, len(body), 1 << 20):
                s.sendall(body[i:i + (1 << 20)])
            data = b""
            while not _complete(data):
                b = s.recv(65536)
                if not b:
                    break
                data += b
        finally:
            s.close()
        a = Answer(data, True)
        assert a.status == 200, a
        got = a.json()
        assert got["imported"] == n and got["failed"] == 0, {k_: got[k_] for k_ in got
                                                               if k_ != "results"}
        grew = _rss_peak_kib(k.pid) - before
        print("streamed import: %d bytes, peak RSS %d KiB before, grew %d KiB" %
              (len(body), before, grew))
        if keeltest.figure_checked("peak resident memory of the import"):
            assert grew * 1024 < len(body) // 3, (grew, len(body))
        r = k.get("/api/v1/simple/creator/%s_%d" % (tag, n - 1), token=user_token())
        assert r.status == 200, r


def test_import_line_longer_than_the_line_limit_is_reported_and_skipped():
    def conf(k):
        c = k.read_conf("10-server.json")
        c["limits"]["max_body_line_bytes"] = 4096
        k.write_conf("10-server.json", c)
    tag = "edgeline%d" % (os.getpid() % 100000)
    lines = [json.dumps({"username": tag + "_a"}),
             json.dumps({"username": tag + "_b", "pad": "p" * 10000}),
             json.dumps({"username": tag + "_c"})]
    with Keeld(conf) as k:
        r = k.admin_post("/admin/import", body="\n".join(lines),
                         headers={"Content-Type": "application/x-ndjson"})
        assert r.status == 200, r
        got = r.json()
        assert got["imported"] == 2 and got["failed"] == 1, got
        assert {"line": 2, "ok": False, "error": "line too long"} in got["results"], got
        # keelctl sends the file as NDJSON and still works.
        path = os.path.join(k.dir, "import.ndjson")
        with open(path, "w") as f:
            f.write(json.dumps({"username": tag + "_d"}) + "\n")
        out = k.keelctl("import", path)
        assert out.returncode == 0, out.stdout


def test_clients_leaving_after_the_request_line_leave_nothing_in_flight():
    """The request object starts with the request line now; a client that
    leaves before its headers end, or is refused by libmicrohttpd, must not
    stay counted in flight (a graceful stop waits for that count)."""
    with Keeld() as k:
        for data in (b"GET /health HTTP/1.1\r\n",
                     b"GET /health HTTP/1.1\r\nHost: x\r\nX-Part",
                     b"GET /health HTTP/1.1\r\nHost: x\r\nBad\r\n\r\n",
                     b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"):
            for _ in range(5):
                s = socket.create_connection(("127.0.0.1", k.port), timeout=10)
                try:
                    s.sendall(data)
                    time.sleep(0.05)
                finally:
                    s.close()

        def settled():
            return k.admin_get("/admin/status").json()["in_flight"] == 1  # this request
        assert keeltest_wait(settled), k.admin_get("/admin/status").json()
        t0 = time.monotonic()
        k.stop()
        assert time.monotonic() - t0 < keeltest.scaled(5), "stop waited for phantom requests"
