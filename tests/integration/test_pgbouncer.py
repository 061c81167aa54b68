"""keel behind PgBouncer: the creator plugin's integration tests run again
with every keeld reaching PostgreSQL through Debian's pgbouncer, once in
session pooling and once in transaction pooling (database.pooler set to
match), plus the checks that only make sense behind a pooler: no startup
"options", every timeout still applied, statements never prepared by name in
transaction pooling, and /health following real query failures.
"""

import threading
import time
import traceback

import keeltest
import test_creator
from keeltest import Keeld, PgBouncer

TIMEOUT = 600

# These start their own PostgreSQL or need no database at all.
SKIP = {"test_database_down_degrades_reads_and_refuses_writes",
        "test_manifest_lists_every_route", "test_missing_plugin_serves_fallbacks"}


def creator_tests():
    return [(n, f) for n, f in sorted(vars(test_creator).items(),
                                      key=lambda kv: getattr(kv[1], "__code__", None)
                                      and kv[1].__code__.co_firstlineno or 0)
            if n.startswith("test_") and callable(f) and n not in SKIP]


def run_creator_through(mode):
    failures = []
    with PgBouncer(mode) as bouncer:
        keeltest.through_pgbouncer = bouncer
        try:
            tests = creator_tests()
            assert len(tests) >= 10, tests
            for name, fn in tests:
                try:
                    fn()
                except Exception:  # noqa: BLE001 - collect every failure
                    failures.append("%s:\n%s" % (name, traceback.format_exc()))
                finally:
                    keeltest._end_test()
        finally:
            keeltest.through_pgbouncer = None
        assert not failures, "%d of %d creator tests failed through pgbouncer (%s):\n%s\n%s" % (
            len(failures), len(tests), mode, "\n".join(failures), bouncer.log_tail())


def test_creator_through_pgbouncer_session():
    run_creator_through("session")


def test_creator_through_pgbouncer_transaction():
    run_creator_through("transaction")


def test_statement_timeout_applies_in_both_modes():
    """A statement slower than database.statement_timeout_ms is cancelled by
    the server in both pooling modes (the timeouts are SET per session or SET
    LOCAL per transaction instead of startup options)."""
    db = keeltest.module_db()
    db.query("CREATE OR REPLACE FUNCTION keel_slow_users() RETURNS trigger AS $$"
             " BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$ LANGUAGE plpgsql")
    db.query("DROP TRIGGER IF EXISTS keel_slow ON users")
    db.query("CREATE TRIGGER keel_slow BEFORE INSERT ON users FOR EACH ROW"
             " EXECUTE FUNCTION keel_slow_users()")
    try:
        for mode in ("session", "transaction"):
            with PgBouncer(mode) as bouncer:
                def conf(k):
                    d = k.read_conf("20-database.json")
                    d["database"]["statement_timeout_ms"] = 300
                    k.write_conf("20-database.json", d)
                with Keeld(conf, env={"KEEL_DATABASE_URL": bouncer.url_for(db.name),
                                      "KEEL_DATABASE_POOLER": "pgbouncer-" + mode}) as k:
                    # The first request of a new user inserts it (user sync),
                    # which the trigger makes slow: the server must cancel it
                    # after 300 ms, and the request goes on with the token's
                    # claims.
                    t0 = time.monotonic()
                    r = k.get("/api/v1/auth/me", token=keeltest.user_token())
                    took = time.monotonic() - t0
                    assert r.status == 200, (mode, r)
                    assert took < 2.5, (mode, took)
                    assert "SQLSTATE 57014" in k.log_text(), (mode, k.log_text()[-2000:])
    finally:
        db.query("DROP TRIGGER IF EXISTS keel_slow ON users")


def test_lock_timeout_applies_in_transaction_mode():
    """A write waiting on a row lock gives up after database.lock_timeout_ms
    behind a transaction pooler (SET LOCAL inside the plugin's transaction)."""
    db = keeltest.module_db()
    with PgBouncer("transaction") as bouncer:
        def conf(k):
            d = k.read_conf("20-database.json")
            d["database"]["lock_timeout_ms"] = 200
            d["database"]["statement_timeout_ms"] = 5000
            k.write_conf("20-database.json", d)
        with Keeld(conf, env={"KEEL_DATABASE_URL": bouncer.url_for(db.name),
                              "KEEL_DATABASE_POOLER": "pgbouncer-transaction"}) as k:
            # Another session holds the users table for 3 s while a new
            # user's first request has to insert it.
            holder = threading.Thread(target=db.query, args=(
                "BEGIN; LOCK TABLE users IN EXCLUSIVE MODE; SELECT pg_sleep(3); COMMIT",))
            holder.start()
            time.sleep(0.5)
            t0 = time.monotonic()
            r = k.get("/api/v1/auth/me", token=keeltest.user_token())
            took = time.monotonic() - t0
            holder.join()
            assert r.status == 200, r
            assert took < 2.5, took
            assert "SQLSTATE 55P03" in k.log_text(), k.log_text()[-2000:]


def metric(k, name, **labels):
    text = k.admin_get("/metrics").text
    total = 0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all('%s="%s"' % (lk, lv) in line for lk, lv in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_failing_queries_turn_health_down_and_are_counted():
    """Reads that fail while the server answers pings (here a table the read
    needs is missing) give 200 degraded bodies: they are counted in
    keel_degraded_responses_total and /health says database "down" until
    queries work again."""
    stats = "/api/v1/simple/creator/system/stats"
    with keeltest.Database() as db, PgBouncer("transaction") as bouncer:
        def one_worker(k):
            # /health and the failure count are per worker process.
            s = k.read_conf("10-server.json")
            s["server"]["workers"] = 1
            k.write_conf("10-server.json", s)
            # Every read must reach the database, not the stats cache.
            test_creator.no_stats_cache(k)
        with Keeld(one_worker, db=db, env={"KEEL_DATABASE_URL": bouncer.url_for(db.name),
                                           "KEEL_DATABASE_POOLER": "pgbouncer-transaction"}) as k:
            token = keeltest.user_token()
            r = k.get(stats, token=token)
            assert r.status == 200 and r.header("X-Keel-Degraded") is None, r
            assert k.get("/health").json()["database"] == "up"
            db.query("ALTER TABLE stats_counters RENAME TO stats_counters_gone")
            try:
                for _ in range(5):
                    r = k.get(stats, token=token)
                    assert r.status == 200 and r.header("X-Keel-Degraded") == "database", r
                h = k.get("/health").json()
                assert h["database"] == "down" and h["status"] == "degraded", h
                # Counted when each request completes, which may be a moment
                # after its answer arrived.
                deadline = time.monotonic() + 3
                while True:
                    n = metric(k, "keel_degraded_responses_total", route=stats,
                               reason="database")
                    if n >= 5 or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                assert n == 5, n
            finally:
                db.query("ALTER TABLE stats_counters_gone RENAME TO stats_counters")
            r = k.get(stats, token=token)
            assert r.header("X-Keel-Degraded") is None, r
            assert k.get("/health").json()["database"] == "up"
            build = metric(k, "keel_build_info")
            assert build == 1, build
            assert metric(k, "keel_start_time_seconds") > 1.7e9
