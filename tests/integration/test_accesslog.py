"""The buffered access log: lines are queued per worker thread and written
in batches (core/http/accesslog.c), so these tests check that batching
loses and duplicates nothing: on a clean stop (SIGTERM right after the last
answer, while lines are still queued) every request has exactly one whole
line, in the text and in the JSON format."""

import http.client as httpclient
import json
import os
import re
import threading

from keeltest import Keeld, scaled

TIMEOUT = 120

CLIENTS = 6
PER_CLIENT = 200


def _access_to_file(fmt):
    def mut(k):
        server = k.read_conf("10-server.json")
        server["log"]["access_log"] = os.path.join(k.dir, "access.log")
        server["log"]["access_format"] = fmt
        k.write_conf("10-server.json", server)
    return mut


def _load(k):
    """CLIENTS keep-alive connections (spread over keeld's worker threads),
    PER_CLIENT requests each, every path unique; returns the paths sent."""
    sent = []
    errors = []
    lock = threading.Lock()

    def client(c):
        conn = httpclient.HTTPConnection("127.0.0.1", k.port, timeout=scaled(30))
        try:
            for i in range(PER_CLIENT):
                path = "/accesslog-probe/%d/%d" % (c, i)
                conn.request("GET", path)
                r = conn.getresponse()
                r.read()
                if r.status != 404:
                    errors.append("%s answered %d" % (path, r.status))
                    return
                with lock:
                    sent.append(path)
        except OSError as e:
            errors.append("client %d: %r" % (c, e))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert len(sent) == CLIENTS * PER_CLIENT
    return sent


def _stop_and_read(k):
    # At once: lines of the last requests are still in their buffers.
    assert k.stop() == 0, k.log_text()[-2000:]
    with open(os.path.join(k.dir, "access.log"), "rb") as f:
        data = f.read()
    assert data.endswith(b"\n"), data[-200:]
    return data.decode().splitlines()


def _check_once_each(sent, logged):
    probes = [p for p in logged if p.startswith("/accesslog-probe/")]
    assert len(probes) == len(sent), (len(probes), len(sent))
    assert sorted(probes) == sorted(sent)


def test_text_lines_all_written_on_sigterm():
    with Keeld(_access_to_file("text")) as k:
        sent = _load(k)
        lines = _stop_and_read(k)
    # The admin listener's lines (the harness reads /admin/plugins while
    # keeld starts under valgrind) are whole lines too; the probes are main's.
    pat = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (main|admin) GET (\S+) (\d{3}) "
                     r"\d+\.\d{3}ms plugin=(\S+) gen=\d+ user=\S+ client=\S+ rid=\S+")
    paths = []
    for line in lines:
        m = pat.fullmatch(line)
        assert m, "not a whole access log line: %r" % line[:300]
        if m.group(1) == "main":
            paths.append(m.group(2))
    _check_once_each(sent, paths)


def test_json_lines_all_written_on_sigterm():
    with Keeld(_access_to_file("json")) as k:
        sent = _load(k)
        lines = _stop_and_read(k)
    recs = [json.loads(line) for line in lines]
    _check_once_each(sent, [r["path"] for r in recs])
    assert all(r["status"] == 404 for r in recs if r["path"].startswith("/accesslog-probe/"))
