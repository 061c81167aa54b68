"""Data layer: runs the C pool/breaker/migration test program
(tests/integration/db_pool_test.c) against a private PostgreSQL that it may
stop and start, and checks keeld's own view of an outage."""

import os
import subprocess
import time

import keeltest
from keeltest import Keeld, PrivatePostgres


@keeltest.timeout(300)
def test_pool_breaker_and_migrations_program():
    pg = PrivatePostgres()
    url = pg.url_for("postgres")
    pg.query("CREATE DATABASE pooltest")
    prog = os.path.join(keeltest.builddir, "tests", "integration", "db_pool_test")
    assert os.path.exists(prog), "build the check programs first (make check)"
    env = dict(os.environ, KEEL_TEST_DATABASE_URL=pg.url_for("pooltest"),
               KEEL_TEST_PGDATA=pg.dir, KEEL_TEST_PGBIN=keeltest.PGBIN)
    p = subprocess.run([prog], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=keeltest.scaled(280))
    tail = "\n".join(p.stdout.splitlines()[-30:])
    assert p.returncode == 0, tail


@keeltest.timeout(120)
def test_health_follows_the_database_without_restart():
    pg = PrivatePostgres()
    url = pg.create_keel_db()
    pg.stop()
    # Started while the database is down: /health says so from the start.
    with Keeld(env={"KEEL_DATABASE_URL": url}) as k:
        h = k.get("/health").json()
        assert h["database"] == "down" and h["status"] == "degraded", h
        for _ in range(50):
            assert k.get("/health").json()["database"] == "down"
        pg.start()
        deadline = time.monotonic() + keeltest.scaled(20)
        while k.get("/health").json()["database"] != "up":
            assert time.monotonic() < deadline, "breaker never closed after the database came back"
            time.sleep(0.2)
        pg.stop()
        # Requests that need the database open the breaker again.
        tok = keeltest.user_token()
        for _ in range(5):
            r = k.get("/api/v1/simple/creator/system/stats", token=tok)
            assert r.status == 200
        deadline = time.monotonic() + keeltest.scaled(20)
        while k.get("/health").json()["database"] != "down":
            assert time.monotonic() < deadline
            k.get("/api/v1/simple/creator/system/stats", token=tok)
            time.sleep(0.1)
        m = k.admin_get("/metrics").text
        assert 'keel_db_breaker_state{state="open"} 1' in m, m
        assert 'keel_db_breaker_transitions_total{to="open"}' in m
        pg.start()
        deadline = time.monotonic() + keeltest.scaled(20)
        while k.get("/health").json()["database"] != "up":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # Each worker has its own pool and breaker, closed by its own probe
        # within breaker_open_ms: the next request may reach one that has
        # not probed yet.
        while True:
            r = k.get("/api/v1/simple/creator/system/stats", token=tok)
            if r.json()["success"] is True or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.json()["success"] is True, r


def test_migrate_is_idempotent():
    pg = PrivatePostgres()
    pg.query("CREATE DATABASE mig")
    url = pg.url_for("mig")
    k = Keeld(start=False, env={"KEEL_DATABASE_URL": url})
    r1 = k.run("--migrate")
    assert r1.returncode == 0 and "migration(s) applied" in r1.stdout, r1.stdout
    assert not r1.stdout.startswith("keeld: 0 "), r1.stdout
    r2 = k.run("--migrate")
    assert r2.returncode == 0 and "0 migration(s) applied" in r2.stdout, r2.stdout
    n = pg.query("SELECT count(*) FROM schema_migrations", dbname="mig")[0][0]
    shipped = [f for f in os.listdir(os.path.join(keeltest.srcdir, "db", "migrations"))
               if f.endswith(".sql")]
    assert int(n) == len(shipped) > 0, (n, shipped)


def test_refuses_to_serve_a_schema_that_is_behind():
    pg = PrivatePostgres()
    pg.query("CREATE DATABASE behind")
    url = pg.url_for("behind")
    k = Keeld(start=False, env={"KEEL_DATABASE_URL": url})
    k.start(wait=False)
    code = k.wait(timeout=20)
    assert code != 0
    assert "behind" in k.log_text() and "--migrate" in k.log_text(), k.log_text()
