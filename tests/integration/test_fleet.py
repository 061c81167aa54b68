"""A fleet of keelds on one PostgreSQL and behind HAProxy: rolling reload,
restart and upgrade with no proxy retries lose no request, kill -9 of one
fails only briefly; a user's status or role change, or `keelctl evict` on
one instance, reaches every instance's user cache within 2 s
(LISTEN/NOTIFY), and an instance whose LISTEN connection was lost flushes
its cache once it listens again.
"""

import json
import os
import signal
import time
import uuid

import keeltest
import tokens
from keeltest import Keeld

TIMEOUT = 180


def new_user():
    sub = str(uuid.uuid4())
    return sub, tokens.make_token(tokens.user_claims(sub, "fleet-%s@test.keel" % sub[:8]),
                                  secret=keeltest.SECRET)


def quiet_update(db, sql, *params):
    """Runs sql with triggers off, as a change the users trigger cannot see."""
    db.query("SET session_replication_role = replica; " + sql, *params)


def until_refused(keelds, token, within):
    """Seconds until every keeld answers 403 for token; fails past within."""
    t0 = time.monotonic()
    pending = list(keelds)
    while pending:
        pending = [k for k in pending if k.get("/api/v1/auth/me", token=token).status != 403]
        if not pending:
            break
        assert time.monotonic() - t0 < within, "still served after %.1f s by %s" % (
            time.monotonic() - t0, pending)
        time.sleep(0.05)
    return time.monotonic() - t0


def one_worker(k):
    """One worker process per keeld, so that each instance has one user
    cache and a request shows what that cache holds."""
    s = k.read_conf("10-server.json")
    s["server"]["workers"] = 1
    k.write_conf("10-server.json", s)


def wait_listening(*keelds):
    for k in keelds:
        k.wait_log(r"\[notify\] listening for user changes", timeout=10)


def test_status_change_reaches_every_instance_within_2s():
    with Keeld(one_worker) as a, Keeld(one_worker) as b:
        wait_listening(a, b)
        sub, token = new_user()
        for k in (a, b, a, b):  # synced, then served from each cache
            assert k.get("/api/v1/auth/me", token=token).status == 200
        a.db.query("UPDATE users SET status = 'suspended' WHERE supabase_user_id = %s", sub)
        until_refused([a, b], token, within=2.0)
        # A role change is announced the same way.
        sub2, token2 = new_user()
        for k in (a, b):
            assert k.get("/api/v1/auth/me", token=token2).json()["role"] == "free"
        a.db.query("UPDATE users SET role = 'admin' WHERE supabase_user_id = %s", sub2)
        t0 = time.monotonic()
        for k in (a, b):
            while k.get("/api/v1/auth/me", token=token2).json()["role"] != "admin":
                assert time.monotonic() - t0 < 2.0, "role change not seen by %s" % k
                time.sleep(0.05)


def test_evict_on_one_instance_reaches_the_other_within_2s():
    with Keeld(one_worker) as a, Keeld(one_worker) as b:
        wait_listening(a, b)
        sub, token = new_user()
        for k in (a, b, a, b):
            assert k.get("/api/v1/auth/me", token=token).status == 200
        quiet_update(a.db, "UPDATE users SET status = 'suspended' WHERE supabase_user_id = %s",
                     sub)
        time.sleep(0.3)
        assert b.get("/api/v1/auth/me", token=token).status == 200  # nothing told b yet
        r = a.keelctl("evict", sub)
        assert r.returncode == 0, r.stdout
        until_refused([a, b], token, within=2.0)


def test_lost_listen_connection_flushes_the_cache_when_back():
    with Keeld(one_worker) as k:
        wait_listening(k)
        sub, token = new_user()
        assert k.get("/api/v1/auth/me", token=token).status == 200
        mark = k.log_mark()
        ended = k.db.scalar("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                            " WHERE application_name = 'keeld-listen'"
                            " AND datname = current_database()")
        assert int(ended) == 1, ended  # one worker, one LISTEN connection
        k.wait_log(r"listening again after an outage: flushed 1 user-cache entry", timeout=10,
                   since=mark)
        # Made while the cache was flushed and with no notification: the next
        # request syncs again and sees it.
        quiet_update(k.db, "UPDATE users SET status = 'suspended' WHERE supabase_user_id = %s",
                     sub)
        assert k.get("/api/v1/auth/me", token=token).status == 403


def test_no_listen_behind_a_transaction_pooler_without_listen_url():
    with keeltest.PgBouncer("transaction") as bouncer:
        db = keeltest.module_db()
        env = {"KEEL_DATABASE_URL": bouncer.url_for(db.name),
               "KEEL_DATABASE_POOLER": "pgbouncer-transaction"}
        with Keeld(one_worker, env=env) as k:
            k.wait_log(r"no listen_url and a transaction pooler", timeout=10)

        def direct(k):
            one_worker(k)
            d = k.read_conf("20-database.json")
            d["database"]["listen_url"] = db.url
            k.write_conf("20-database.json", d)
        with Keeld(direct, env=env) as k, Keeld(one_worker) as other:
            wait_listening(k, other)
            sub, token = new_user()
            for x in (k, other, k):
                assert x.get("/api/v1/auth/me", token=token).status == 200
            other.db.query("UPDATE users SET status = 'inactive' WHERE supabase_user_id = %s",
                           sub)
            until_refused([k, other], token, within=2.0)


# ---------------------------------------------------------------- behind HAProxy

HELLO = "/api/v1/example/hello"


def test_rolling_reload_behind_haproxy_loses_no_request():
    with Keeld() as a, Keeld() as b, keeltest.HAProxy([a, b]) as proxy:
        time.sleep(0.5)
        load = keeltest.Load(proxy.url(HELLO), threads=4)
        time.sleep(0.5)
        for k in (a, b):
            r = k.keelctl("reload")
            assert r.returncode == 0, r.stdout
            time.sleep(0.5)
        load.stop()
        assert not load.failed, "%d failed: %s" % (len(load.failed), load.failed[:5])
        assert load.ok > 50, load.ok


def test_kill_9_of_one_instance_fails_a_bounded_number_and_is_routed_around():
    with Keeld() as a, Keeld() as b, keeltest.HAProxy([a, b]) as proxy:
        time.sleep(0.5)
        load = keeltest.Load(proxy.url(HELLO), threads=4)
        time.sleep(0.5)
        killed_at = time.monotonic()
        a.kill()
        time.sleep(3.0)
        ok_before_tail = load.ok
        time.sleep(1.0)
        load.stop()
        # Only requests in flight on a, or sent to it before two failed
        # health checks (2 x 200 ms) took it out, may fail: all within the
        # first 1.5 s, and at most what a 1.5 s window of this load holds.
        late = [f for f in load.failed if f[0] > killed_at + 1.5]
        assert not late, "still failing 1.5 s after the kill: %s" % late[:5]
        rate = (load.ok + len(load.failed)) / 4.0
        assert len(load.failed) <= 1.5 * rate, (len(load.failed), rate)
        assert load.ok > ok_before_tail, "nothing served after the kill"
        assert b.alive()


def drain_supported():
    """Whether this keeld has the lame-duck drain (server.drain_s)."""
    with open(os.path.join(keeltest.prefix, "bin", "keeld"), "rb") as f:
        return b"drain_s" in f.read()


def test_rolling_restart_without_proxy_retries_loses_no_request():
    if not drain_supported():
        # The drain (/health 503 while still serving, then close) is what
        # lets the proxy take an instance out before it stops listening;
        # without it a SIGTERM'd instance refuses connections the proxy
        # still sends to it.
        print("PENDING: keeld has no server.drain_s yet; rolling restart not run")
        return

    def drain(k):
        s = k.read_conf("10-server.json")
        s["server"]["drain_s"] = 1
        k.write_conf("10-server.json", s)
    with Keeld(drain) as a, Keeld(drain) as b, keeltest.HAProxy([a, b]) as proxy:
        time.sleep(0.5)
        load = keeltest.Load(proxy.url(HELLO), threads=4)
        time.sleep(0.5)
        for k in (a, b):
            assert k.stop() == 0
            k.start()
            time.sleep(1.0)  # two good health checks bring it back
        load.stop()
        assert not load.failed, "%d failed: %s" % (len(load.failed), load.failed[:5])
        assert load.ok > 50, load.ok


def test_rolling_upgrade_behind_haproxy_loses_no_request():
    new_pids = []

    def drain(k):
        # Above the proxy's two failed checks (2 x 200 ms), and short.
        s = k.read_conf("10-server.json")
        s["server"]["drain_s"] = 1
        k.write_conf("10-server.json", s)
    with Keeld(drain) as a, Keeld(drain) as b, keeltest.HAProxy([a, b]) as proxy:
        try:
            time.sleep(0.5)
            load = keeltest.Load(proxy.url(HELLO), threads=4)
            time.sleep(0.5)
            for k in (a, b):
                c = k.keelctl("--json", "upgrade", timeout=60)
                assert c.returncode == 0, c.stdout
                body = json.loads(c.stdout)
                assert body["ok"] is True and body["previous_pid"] == k.pid, body
                new_pids.append(body["pid"])
                assert k.wait(timeout=20) == 0  # the old supervisor drained
                time.sleep(0.5)
            load.stop()
            assert not load.failed, "%d failed: %s" % (len(load.failed), load.failed[:5])
            assert load.ok > 50, load.ok
        finally:
            for pid in new_pids:
                if keeltest._alive(pid):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while any(keeltest._alive(p) for p in new_pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in new_pids:
                if keeltest._alive(pid):
                    os.kill(pid, signal.SIGKILL)
