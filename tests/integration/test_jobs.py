"""Plugins that do real work: the creator plugin's search-job runner against a
fake provider (both formats), its failure modes, crash and reload safety,
and a test plugin with its own migration, a periodic task, an upstream and
metrics.

The fake provider is a stdlib HTTP server on 127.0.0.1 inside this process;
each test bounds its waits, and every provider answer is small except the
one deliberately oversized answer.
"""

import json
import os
import pathlib
import secrets
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import keeltest
from keeltest import Database, Keeld, user_token
from test_creator import creator_config
from test_reload import parse_prometheus, fams_samples, plugins_of, reload

TIMEOUT = 240

BASE = "/api/v1/simple/creator"
DONE = ("complete", "completed")  # the jobs API may map the database's word


# ---------------------------------------------------------------- provider

def import_line(username, nposts=3):
    return {
        "username": username, "full_name": "Fake " + username, "biography": "from the fake",
        "followers_count": 1000, "following_count": 10, "posts_count": nposts,
        "is_verified": True, "is_private": False,
        "profile_pic_url": "https://cdn.test/%s.jpg" % username,
        "posts": [{"shortcode": "%s_p%d" % (username, i), "caption": "post %d" % i,
                   "likes_count": 100 + i, "comments_count": 5,
                   "display_url": "https://cdn.test/%s/%d.jpg" % (username, i),
                   "taken_at": 1700000000 + 3600 * i,
                   "ai": {"content_category": "travel" if i else "food",
                          "sentiment": "positive", "sentiment_score": 0.5,
                          "language_code": "en"}} for i in range(nposts)],
    }


def apify_item(username, nposts=2):
    return {
        "username": username, "fullName": "Apify " + username, "biography": "bio",
        "followersCount": 2000, "followsCount": 20, "postsCount": nposts, "verified": False,
        "private": False, "profilePicUrl": "https://cdn.test/a/%s.jpg" % username,
        "latestPosts": [{"shortCode": "%s_a%d" % (username, i), "caption": "apify %d" % i,
                         "likesCount": 40 + i, "commentsCount": -1 if i else 3,
                         "displayUrl": "https://cdn.test/a/%s/%d.jpg" % (username, i),
                         "timestamp": "2024-05-0%dT10:00:00.000Z" % (i + 1)}
                        for i in range(nposts)],
    }


class FakeProvider:
    """kind "keel" at /p/<name>, kind "apify" at POST /apify.

    behaviour[name] is one of: "ok" (default for names starting with "ok"),
    "404", "500", "slow" (sleeps `slow_s`), "big" (50 MB), "badjson";
    names not listed and not starting with "ok" are unknown (404 / []).
    delay[name] sleeps before any answer.  Requests are counted per name.
    """

    def __init__(self, port=None):
        self.behaviour = {}
        self.delay = {}
        self.slow_s = 5.0
        self.requests = {}
        self.auth = []
        self.lock = threading.Lock()
        provider = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def send(self, status, body, raw=None, length=None):
                data = raw if raw is not None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(length or len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:
                    pass

            def answer(self, name, found, kind):
                with provider.lock:
                    provider.requests[name] = provider.requests.get(name, 0) + 1
                    provider.auth.append(self.headers.get("Authorization"))
                time.sleep(provider.delay.get(name, 0))
                how = provider.behaviour.get(name, "ok" if name.startswith("ok") else "unknown")
                if how == "500":
                    return self.send(500, {"error": "boom"})
                if how == "slow":
                    time.sleep(provider.slow_s)
                    return self.send(200, found)
                if how == "badjson":
                    return self.send(200, None, raw=b"<html>not json</html>")
                if how == "big":
                    size = 50 * 1024 * 1024
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    chunk = b" " * 65536
                    try:
                        for _ in range(size // len(chunk)):
                            self.wfile.write(chunk)
                    except OSError:
                        pass
                    return None
                if how in ("404", "unknown"):
                    return self.send(404, {"detail": "not found"}) if kind == "keel" \
                        else self.send(200, [])
                return self.send(200, found)

            def do_GET(self):
                parts = self.path.strip("/").split("/")
                if len(parts) == 2 and parts[0] == "p":
                    return self.answer(parts[1], import_line(parts[1]), "keel")
                if parts == ["ping"]:
                    return self.send(200, {"ok": True})
                if parts == ["html"]:
                    return self.send(200, None, raw=b"<html></html>")
                if parts[0] in ("redirect-same", "redirect-other"):
                    host = "127.0.0.1" if parts[0] == "redirect-same" else "localhost"
                    self.send_response(302)
                    self.send_header("Location", "http://%s:%d/ping" % (host, provider.port))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return self.send(404, {"detail": "Not Found"})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                if self.path != "/apify" or not body.get("usernames"):
                    return self.send(400, {"error": "bad request"})
                name = body["usernames"][0]
                return self.answer(name, [apify_item("someoneelse"), apify_item(name)], "apify")

        self.server = ThreadingHTTPServer(("127.0.0.1", port or 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, name):
        with self.lock:
            return self.requests.get(name, 0)

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def with_provider(port, kind="keel", **extra):
    cfg = {"kind": kind,
           "url": "http://127.0.0.1:%d/%s" % (port, "p" if kind == "keel" else "apify"),
           # Scaled, so a slow run (valgrind) does not turn answers into timeouts.
           "timeout_ms": int(keeltest.scaled(1000)), "max_attempts": 2, "backoff_ms": 200,
           "lease_s": int(keeltest.scaled(4)),
           "max_bytes": 1024 * 1024}
    cfg.update(extra)
    return creator_config(provider=cfg)


def fresh(prefix="ok"):
    return prefix + secrets.token_hex(5)


class User:
    def __init__(self, k):
        self.k = k
        self.sub = str(uuid.uuid4())
        self.token = user_token(self.sub, "jobs-%s@test.keel" % self.sub[:12])
        assert self.get(BASE + "/system/stats").status == 200

    def get(self, path):
        return self.k.get(path, token=self.token)

    def post(self, path):
        return self.k.post(path, token=self.token)

    def search(self, username):
        r = self.post(BASE + "/search/" + username)
        assert r.status == 202, r
        body = r.json()
        assert body["status"] == "queued" and body["job_id"], body
        return body["job_id"]

    def job(self, job_id):
        r = self.get("/api/v1/jobs/%s/status" % job_id)
        assert r.status == 200, r
        return r.json()


def db_job(k, job_id):
    rows = k.db.query("SELECT status, attempts, coalesce(error, ''), progress_percent"
                      " FROM search_jobs WHERE id = %s", job_id)
    return rows[0]


def wait_job(k, job_id, states, timeout=20):
    deadline = time.monotonic() + keeltest.scaled(timeout)
    while True:
        row = db_job(k, job_id)
        if row[0] in states:
            return row
        assert time.monotonic() < deadline, "job %s still %r after %ss" % (job_id, row, timeout)
        time.sleep(0.1)


# ---------------------------------------------------------------- the runner

def test_keel_provider_completes_a_search_seen_processing_then_full_analytics():
    with FakeProvider() as fp, Keeld(with_provider(fp.port)) as k:
        u = User(k)
        n = fresh()
        fp.delay[n] = 0.8
        job = u.search(n)
        seen, deadline = set(), time.monotonic() + 20
        progress = []
        while True:
            body = u.job(job)
            seen.add(body["status"])
            if body["status"] == "processing":
                progress.append(body.get("progress_percent"))
            if body["status"] in DONE:
                break
            assert body["status"] in ("queued", "processing"), body
            assert time.monotonic() < deadline, body
            time.sleep(0.05)
        assert "processing" in seen, seen
        assert db_job(k, job)[:2] == ("complete", "1")
        assert fp.count(n) == 1

        r = u.post(BASE + "/search/" + n)
        assert r.status == 200 and r.json()["preview_mode"] is True, r
        k.db.query("INSERT INTO credit_wallets (user_id, balance) SELECT id, 25 FROM users"
                   " WHERE supabase_user_id = %s ON CONFLICT (user_id) DO UPDATE SET balance = 25",
                   u.sub)
        assert u.post(BASE + "/unlock/" + n).status == 200
        r = u.post(BASE + "/search/" + n)
        assert r.status == 200, r
        body = r.json()
        p = body["profile"]
        assert p["full_name"] == "Fake " + n and p["followers_count"] == 1000, p
        # Inside "profile" per the frontend (rev 2); older builds put them beside it.
        posts = p["posts"] if "posts" in p else body["posts"]
        codes = sorted(q["shortcode"] for q in posts)
        assert codes == ["%s_p%d" % (n, i) for i in range(3)], codes
        # No "ai" in the line: the summary comes from the posts (2 travel, 1 food).
        ai = p["ai_analysis"]
        assert ai["primary_content_type"] == "travel", ai
        assert ai["content_distribution"] == {"travel": 0.667, "food": 0.333}, ai
        assert ai["language_distribution"] == {"en": 1.0} and ai["avg_sentiment_score"] == 0.5, ai


def test_apify_provider_maps_items_and_sends_the_token_never_logged():
    token = "apify-secret-" + secrets.token_hex(8)
    with FakeProvider() as fp, Keeld(with_provider(fp.port, kind="apify",
                                                   token_env="KEEL_TEST_APIFY_TOKEN"),
                                     env={"KEEL_TEST_APIFY_TOKEN": token}) as k:
        u = User(k)
        n = fresh()
        job = u.search(n)
        wait_job(k, job, ("complete",))
        assert "Bearer " + token in fp.auth, fp.auth
        rows = k.db.query("SELECT p.full_name, p.followers_count, p.following_count,"
                          " count(po.id), min(po.comments_count), max(po.likes_count)"
                          " FROM profiles p JOIN posts po ON po.profile_id = p.id"
                          " WHERE p.username = %s GROUP BY 1, 2, 3", n)
        assert rows == [("Apify " + n, "2000", "20", "2", "0", "41")], rows
        assert token not in k.log_text()


def test_unknown_names_fail_with_not_found_in_both_formats():
    with FakeProvider() as fp:
        for kind in ("keel", "apify"):
            with Keeld(with_provider(fp.port, kind=kind)) as k:
                u = User(k)
                n = fresh("nf")
                job = u.search(n)
                row = wait_job(k, job, ("failed",))
                assert row[2] == "not_found", row
                body = u.job(job)
                assert body["status"] == "failed", body
                assert body.get("error", "not_found") == "not_found", body
                assert fp.count(n) == 1, kind


def test_provider_errors_retry_then_fail_and_keeld_is_unaffected():
    with FakeProvider() as fp, Keeld(with_provider(fp.port, timeout_ms=700, lease_s=3)) as k:
        fp.slow_s = 3.0
        u = User(k)
        cases = {"500": "500", "slow": "timed out", "big": "larger than",
                 "badjson": "not JSON"}
        jobs = {}
        for how in cases:
            n = fresh("e")
            fp.behaviour[n] = how
            jobs[how] = (n, u.search(n))
        for how, (n, job) in jobs.items():
            row = wait_job(k, job, ("failed",), timeout=30)
            assert row[1] == "2", (how, row)  # max_attempts
            assert cases[how] in row[2], (how, row)
            assert fp.count(n) == 2, (how, fp.count(n))
        r = k.get("/health")
        assert r.status == 200 and r.json()["plugins"]["creator"] == "loaded", r
        assert k.alive()


def test_provider_down_opens_the_breaker_and_jobs_wait_until_it_is_back():
    port = keeltest.free_port()
    with Keeld(with_provider(port, max_attempts=1)) as k:
        u = User(k)
        n = fresh()
        job = u.search(n)
        deadline = time.monotonic() + 20
        while True:
            fams = parse_prometheus(k.admin_get("/metrics").text)
            state = [s.value for s in fams_samples(fams, "keel_upstream_breaker_state")
                     if s.labels == {"plugin": "creator", "upstream": "provider"}]
            if state and state[0] == 1:
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        # max_attempts is 1, yet the job is still waiting: unreachable costs nothing.
        row = db_job(k, job)
        assert row[0] in ("queued", "processing") and row[1] in ("0", "1"), row
        with FakeProvider(port) as fp:
            wait_job(k, job, ("complete",), timeout=20)
            assert fp.count(n) == 1


def test_sigkill_while_processing_completes_once_after_restart():
    with Database() as db:
        with FakeProvider() as fp:
            n = fresh()
            fp.delay[n] = 30  # the first keeld never sees an answer
            k = Keeld(with_provider(fp.port, timeout_ms=2000, lease_s=5), db=db)
            u = User(k)
            job = u.search(n)
            wait_job(k, job, ("processing",))
            deadline = time.monotonic() + 10
            while fp.count(n) == 0:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            # Everything dies at once: the supervisor is frozen (so it
            # cannot start new workers), its workers are killed, then it is.
            workers = k.workers()
            os.kill(k.pid, signal.SIGSTOP)
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            k.kill()
            fp.delay[n] = 0
            k2 = Keeld(with_provider(fp.port, timeout_ms=2000, lease_s=5), db=db)
            row = wait_job(k2, job, ("complete",), timeout=30)
            assert row[1] == "2", row
            posts = db.query("SELECT count(*) FROM posts po JOIN profiles p"
                             " ON p.id = po.profile_id WHERE p.username = %s", n)
            assert posts == [("3",)], posts
            k2.stop()


def test_sigterm_during_a_slow_fetch_exits_promptly_and_requeues_the_job():
    with FakeProvider() as fp:
        k = Keeld(with_provider(fp.port, timeout_ms=20000, lease_s=60))
        u = User(k)
        n = fresh()
        fp.delay[n] = 25
        job = u.search(n)
        deadline = time.monotonic() + 10
        while fp.count(n) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        t0 = time.monotonic()
        assert k.stop() == 0
        assert time.monotonic() - t0 < keeltest.scaled(10), time.monotonic() - t0
        row = db_job(k, job)
        assert row[:2] == ("queued", "0"), row  # put back, no attempt spent


def test_two_keelds_on_one_database_never_run_one_job_twice():
    with Database() as db:
        with FakeProvider() as fp:
            names = [fresh() for _ in range(12)]
            for n in names:
                fp.delay[n] = 0.3
            ks = [Keeld(with_provider(fp.port, workers=3), db=db) for _ in range(2)]
            u = User(ks[0])
            jobs = [u.search(n) for n in names]
            for job in jobs:
                wait_job(ks[0], job, ("complete",), timeout=30)
            assert all(fp.count(n) == 1 for n in names), fp.requests
            assert all(db_job(ks[0], j)[1] == "1" for j in jobs)
            for k in ks:
                k.stop()


@keeltest.timeout(180)
def test_twenty_reloads_while_jobs_run_lose_none_and_run_none_twice():
    with FakeProvider() as fp, Keeld(with_provider(fp.port, workers=2)) as k:
        u = User(k)
        names = [fresh() for _ in range(20)]
        for n in names:
            fp.delay[n] = 0.15
        jobs = []
        for i, n in enumerate(names):
            jobs.append(u.search(n))
            r = k.admin_post("/admin/reload?plugin=creator", timeout=60)
            assert r.status == 200 and r.json()["ok"] is True, r
        for job in jobs:
            wait_job(k, job, ("complete",), timeout=30)
        assert all(fp.count(n) == 1 for n in names), fp.requests
        log = k.log_text()
        assert log.count("retired: finalising and unloading") >= 19, log[-2000:]
        assert "has not stopped after" not in log
        creator = plugins_of(k)["creator"]
        assert creator["generation"] >= 21, creator
        assert [t["name"] for t in creator["tasks"]] == [
            "job-runner-1", "job-runner-2", "unlock-count-sweep"]


def test_no_provider_keeps_jobs_queued_and_admin_plugins_says_so():
    with Keeld() as k:
        u = User(k)
        job = u.search(fresh())
        time.sleep(1.5)
        assert db_job(k, job)[0] == "queued"
        creator = plugins_of(k)["creator"]
        assert "no provider configured" in creator["note"], creator
        # The unlocked counts' sweep is the only task without a provider.
        assert [t["name"] for t in creator["tasks"]] == ["unlock-count-sweep"], creator


def test_plugin_and_upstream_metrics_parse_as_prometheus_text():
    with FakeProvider() as fp, Keeld(with_provider(fp.port)) as k:
        u = User(k)
        for how in ("ok", "nf"):
            wait_job(k, u.search(fresh(how)), ("complete", "failed"))
        fams = parse_prometheus(k.admin_get("/metrics").text)
        req = {s.labels["class"]: s.value
               for s in fams_samples(fams, "keel_upstream_requests_total")
               if s.labels["upstream"] == "provider"}
        assert req["2xx"] >= 1 and req["4xx"] >= 1, req
        assert fams["keel_upstream_request_duration_seconds"].type == "histogram"
        done = fams_samples(fams, "keel_plugin_creator_jobs_completed_total")
        assert done and done[0].labels == {"plugin": "creator"} and done[0].value >= 1, done
        assert fams["keel_plugin_creator_job_duration_seconds"].type == "histogram"


# ---------------------------------------------------------------- a plugin's own table

def notes_manifest(k, **config):
    return {"plugin": {
        "name": "notes", "file": keeltest.built_plugin("notes"),
        "migrations": os.path.join(keeltest.srcdir, "tests", "plugins", "notes_migrations"),
        "config": dict({"every_ms": 100}, **config),
        "routes": [{"method": "GET", "path": "/api/v1/notes/count", "auth": "user",
                    "fallback": {"status": 200, "body": {"ticks": 0}}},
                   {"method": "GET", "path": "/api/v1/notes/ping", "auth": "user"}]}}


def test_plugin_with_its_own_migration_task_upstream_and_metrics():
    with Database() as db:
        with FakeProvider() as fp:
            cfg = {"upstream": {"url": "http://127.0.0.1:%d" % fp.port, "timeout_ms": 1000},
                   "tls_upstream": {"url": "https://127.0.0.1:%d" % fp.port, "retries": 0}}
            k = Keeld(lambda k: k.write_conf("70-notes.json", notes_manifest(k, **cfg)), db=db)
            tok = user_token()
            # Behind: the plugin is refused with its stubs and the message.
            r = k.get("/api/v1/notes/count", token=tok)
            assert r.header("X-Keel-Fallback") == "notes; reason=init_failed", r
            assert "keeld --migrate" in k.log_text()
            k.stop()
            r = k.run("--migrate")
            assert r.returncode == 0 and "1 migration(s) of plugin notes" in r.stdout, r.stdout
            assert db.scalar("SELECT count(*) FROM plugin_migrations WHERE plugin = 'notes'") == "1"
            k.start()
            deadline = time.monotonic() + 15
            while True:
                r = k.get("/api/v1/notes/count", token=tok)
                assert r.status == 200 and r.header("X-Keel-Fallback") is None, r
                if r.json()["ticks"] >= 3 and r.json()["pinged"] >= 1:
                    break
                assert time.monotonic() < deadline, r.json()
                time.sleep(0.2)
            fams = parse_prometheus(k.admin_get("/metrics").text)
            ticks = fams_samples(fams, "keel_plugin_notes_ticks_total")
            assert ticks and ticks[0].value >= 3, ticks
            assert fams["keel_plugin_notes_ping_seconds"].type == "histogram"
            pings = [s for s in fams_samples(fams, "keel_upstream_requests_total")
                     if s.labels["plugin"] == "notes" and s.labels["class"] == "2xx"]
            assert pings and pings[0].value >= 1, pings

            # From a handler: only with an explicit short deadline, and every
            # bad answer is a clean error code.
            def ping(query):
                r = k.get("/api/v1/notes/ping?" + query, token=tok)
                assert r.status == 200, r
                return r.json()
            assert ping("deadline=0")["rc"] == -2  # KEEL_EINVAL
            assert ping("deadline=60000")["rc"] == -2
            ok = ping("deadline=2000")
            assert ok["rc"] == 0 and ok["status"] == 200 and ok["answer"] == {"ok": True}, ok
            same = ping("deadline=2000&path=/redirect-same")
            assert same["rc"] == 0 and same["answer"] == {"ok": True}, same
            other = ping("deadline=2000&path=/redirect-other")
            assert other["rc"] == -22 and "another host" in other["error"], other
            html = ping("deadline=2000&path=/html")
            assert html["rc"] == -22 and "not JSON" in html["error"], html
            tls = ping("deadline=2000&tls=1")
            assert tls["rc"] == -21 and "TLS" in tls["error"], tls
            assert k.get("/health").status == 200
            k.stop()


def test_reload_checks_a_plugin_schema_again_only_when_its_files_change():
    """Each load checks the plugin's migrations against the database; a
    reload with the same files reuses the answer instead of opening a new
    connection (a backend start-up each, on the serving CPUs), and a new file
    is checked, and refused until migrated."""
    with tempfile.TemporaryDirectory() as tmp:
        check_schema_again_on_new_files(pathlib.Path(tmp) / "notes_migrations")


def check_schema_again_on_new_files(mig):
    mig.mkdir()
    src = os.path.join(keeltest.srcdir, "tests", "plugins", "notes_migrations", "0001_notes.sql")
    (mig / "0001_notes.sql").write_text(open(src).read())

    def conf(k):
        m = notes_manifest(k)
        m["plugin"]["migrations"] = str(mig)
        k.write_conf("70-notes.json", m)
    with Database() as db:
        k = Keeld(conf, db=db, start=False)
        assert k.run("--migrate").returncode == 0
        k.start()
        tok = user_token()
        assert k.get("/api/v1/notes/count", token=tok).header("X-Keel-Fallback") is None

        def sessions():
            return int(db.scalar("SELECT sessions FROM pg_stat_database "
                                 "WHERE datname = current_database()"))
        before = sessions()
        for _ in range(8):
            _, res = reload(k)
            assert res["notes"]["ok"], res
        # Each worker would have connected once per reload (16); the server
        # counts a session when it ends, so give the last ones time.
        time.sleep(1)
        opened = sessions() - before
        assert opened <= 3, "%d sessions over 8 reloads" % opened

        (mig / "0002_more.sql").write_text("CREATE TABLE notes_more (x int);\n")
        _, res = reload(k)
        assert not res["notes"]["ok"], res
        assert "1 migration(s) behind" in k.log_text(), k.log_text()[-2000:]
        r = k.get("/api/v1/notes/count", token=tok)
        assert r.status == 200 and r.header("X-Keel-Fallback") is None, r
        assert k.run("--migrate").returncode == 0
        _, res = reload(k)
        assert res["notes"]["ok"], res
        k.stop()


def test_fresh_database_gets_the_creator_schema_from_the_plugin_migrations():
    with Database() as pg_db:
        # The template ran --migrate: the creator's tables come from its own files.
        rows = pg_db.query("SELECT plugin, version FROM plugin_migrations ORDER BY 1, 2")
        assert rows == [("creator", "1"), ("creator", "2"), ("creator", "3")], rows
        assert pg_db.scalar("SELECT count(*) FROM stats_counters") == "2"


def test_database_from_the_old_single_migration_still_works():
    """A database migrated when 0001_init.sql still created the creator tables:
    the plugin's files are no-ops there and get recorded."""
    with Database() as db:
        db.query("DELETE FROM plugin_migrations")
        db.query("ALTER TABLE search_jobs DROP COLUMN attempts, DROP COLUMN progress_percent,"
                 " DROP COLUMN progress_message, DROP COLUMN error, DROP COLUMN lease_owner,"
                 " DROP COLUMN lease_until, DROP COLUMN next_attempt_at")
        db.query("INSERT INTO profiles (username) VALUES ('oldschema')")
        k = Keeld(start=False, db=db)
        r = k.run("--migrate")
        assert r.returncode == 0 and "3 migration(s) of plugin creator" in r.stdout, r.stdout
        assert db.scalar("SELECT count(*) FROM profiles WHERE username = 'oldschema'") == "1"
        assert db.scalar("SELECT total FROM stats_counters WHERE name = 'profiles'") == "1"


# ---------------------------------------------------------------- keel-plugin-check

def test_plugin_check_runs_tasks_and_requires_them_to_stop_when_asked():
    from test_sdk import check_plugin
    p = check_plugin(keeltest.built_plugin("notes"), "--iterations", "3")
    assert p.returncode == 0 and "tasks:      1, stopped" in p.stdout, p.stdout
    p = check_plugin(keeltest.built_plugin("stuck_task"), "--iterations", "2")
    assert p.returncode == 1, p.stdout
    assert "still running 2000 ms after being asked to stop" in p.stdout, p.stdout


def test_keelctl_import_exits_non_zero_when_a_line_fails():
    with Keeld() as k:
        d = keeltest._mkdtemp("import")
        good, bad = os.path.join(d, "good.ndjson"), os.path.join(d, "bad.ndjson")
        with open(good, "w") as f:
            f.write(json.dumps({"username": fresh("imp")}) + "\n")
        with open(bad, "w") as f:
            f.write(json.dumps({"username": fresh("imp")}) + "\n{not json\n")
        r = k.keelctl("import", good)
        assert r.returncode == 0, r.stdout
        r = k.keelctl("import", bad)
        assert r.returncode != 0 and "line 2" in r.stdout, r.stdout


def test_keelctl_on_libcurl_names_the_url_in_its_errors():
    import socket
    port = keeltest.free_port()
    url = "http://127.0.0.1:%d" % port
    r = subprocess.run([keeltest.KEELCTL, "--admin", url, "plugins"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0
    assert "cannot connect to %s: Connection refused" % url in r.stderr + r.stdout, r
    # A listener that answers something that is not HTTP.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    url = "http://127.0.0.1:%d" % srv.getsockname()[1]

    def answer():
        c, _ = srv.accept()
        c.recv(65536)
        c.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")
        c.close()
    t = threading.Thread(target=answer, daemon=True)
    t.start()
    r = subprocess.run([keeltest.KEELCTL, "--admin", url, "plugins"], capture_output=True,
                       text=True, timeout=30)
    t.join(5)
    srv.close()
    assert r.returncode != 0
    assert "malformed response from %s" % url in r.stderr + r.stdout, r
