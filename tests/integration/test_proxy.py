"""keeld behind a load balancer: the client address comes from
X-Forwarded-For only when the peer is in server.trusted_proxies, max_per_ip
then counts that client's requests (not the proxy's), and X-Request-Id is
accepted (or made), returned, and written in the access log and in the
plugin's log lines of the request.
"""

import json
import threading
import time

import keeltest
from keeltest import Keeld
from test_edge import send
from test_reload import SLOW, with_testplug

TIMEOUT = 120


def proxied(trusted, max_per_ip=0):
    plug = with_testplug()

    def mut(k):
        plug(k)
        s = k.read_conf("10-server.json")
        s["server"]["trusted_proxies"] = trusted
        s["log"]["access_log"] = k.dir + "/access.log"
        s["log"]["access_format"] = "json"
        s["limits"]["max_per_ip"] = max_per_ip
        # One worker: max_per_ip, like the server's other limits, is shared
        # out between the worker processes.
        s["server"]["workers"] = 1
        k.write_conf("10-server.json", s)
    return mut


def access_lines(k):
    with open(k.dir + "/access.log") as f:
        return [json.loads(line) for line in f if line.strip()]


def wait_access(k, pred, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in access_lines(k) if pred(e)]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError("no access log line matched: %s" % access_lines(k)[-5:])


def test_request_id_is_kept_or_made_and_logged():
    with Keeld(proxied(["127.0.0.1/32"])) as k:
        r = k.get(SLOW + "?ms=1", headers={"X-Request-Id": "trace-abc.123"})
        assert r.status == 200 and r.header("X-Request-Id") == "trace-abc.123", r
        e = wait_access(k, lambda e: e["path"] == SLOW)
        assert e["request_id"] == "trace-abc.123", e
        k.wait_log(r"\[testplug\] req=\d+ rid=trace-abc\.123 slow request", timeout=5)
        # Unsafe or oversized ids are replaced, never echoed.
        for bad in ("has space", "x" * 200, "a\"b"):
            r = k.get("/health", headers={"X-Request-Id": bad})
            rid = r.header("X-Request-Id")
            assert rid and rid != bad and len(rid) <= 128, (bad, rid)
        a = k.get("/health").header("X-Request-Id")
        b = k.get("/health").header("X-Request-Id")
        assert a and b and a != b, (a, b)
        # 404s and refusals carry one too.
        assert k.get("/nowhere").header("X-Request-Id")


def test_forwarded_for_only_from_trusted_peers():
    with Keeld(proxied(["127.0.0.1/32"])) as k:
        k.get("/health", headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.7",
                                  "X-Request-Id": "from-proxy"})
        e = wait_access(k, lambda e: e["request_id"] == "from-proxy")
        assert e["client"] == "198.51.100.7", e
        # Repeated header lines are joined in the order they came: the
        # right-most address of the last line is the client.
        for rid, lines, client in (("two-lines-a", ("6.6.6.6", "198.51.100.9"), "198.51.100.9"),
                                   ("two-lines-b", ("198.51.100.9", "6.6.6.6"), "6.6.6.6")):
            head = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: %s\r\n" % rid
            head += "".join("X-Forwarded-For: %s\r\n" % a for a in lines)
            head += "Connection: close\r\n\r\n"
            answer = send(k.port, head.encode())
            assert answer.status == 200, answer.data[:200]
            e = wait_access(k, lambda e, rid=rid: e["request_id"] == rid)
            assert e["client"] == client, (lines, e)
    with Keeld(proxied(["10.0.0.0/8"])) as k:
        k.get("/health", headers={"X-Forwarded-For": "198.51.100.7",
                                  "X-Request-Id": "not-a-proxy"})
        e = wait_access(k, lambda e: e["request_id"] == "not-a-proxy")
        assert e["client"] == "127.0.0.1", e


def test_max_per_ip_counts_the_forwarded_client():
    # The slow request must be in flight before the probes; under valgrind
    # it takes longer to get there, so it starts earlier and lasts longer.
    lead, ms = (2.0, 6000) if keeltest.VALGRIND else (0.5, 1500)
    with Keeld(proxied(["127.0.0.1/32"], max_per_ip=1)) as k:
        results = {}

        def slow():
            results["slow"] = k.get(SLOW + "?ms=%d" % ms,
                                    headers={"X-Forwarded-For": "198.51.100.7"},
                                    timeout=keeltest.scaled(10))
        t = threading.Thread(target=slow)
        t.start()
        time.sleep(lead)
        same = k.get("/health", headers={"X-Forwarded-For": "198.51.100.7"})
        other = k.get("/health", headers={"X-Forwarded-For": "198.51.100.8"})
        t.join()
        assert results["slow"].status == 200, results
        assert same.status == 429, same
        assert other.status == 200, other
        # Its slot is free again once the slow request is done: as soon as
        # its answer has arrived, request after request.
        for _ in range(100):
            r = k.get("/health", headers={"X-Forwarded-For": "198.51.100.7"})
            assert r.status == 200, r
