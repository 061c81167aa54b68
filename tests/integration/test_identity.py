"""Identity: cached user sync, account state, asymmetric keys,
/api/v1/auth/me — against the real server and a real PostgreSQL."""

import os
import re
import threading
import time
import uuid

import keeltest
from keeltest import Keeld, PrivatePostgres
import tokens


def new_user():
    sub = str(uuid.uuid4())
    return sub, "id-%s@test.keel" % sub[:8]


def tok(sub, email, **over):
    claims = tokens.user_claims(sub, email)
    claims.update(over)
    return tokens.make_token(claims, secret=keeltest.SECRET)


def with_ttl(ttl):
    return lambda k: k.update_conf("30-auth.json", "usersync", ttl_s=ttl)


def one_worker(k):
    c = k.read_conf("10-server.json")
    c["server"]["workers"] = 1
    k.write_conf("10-server.json", c)


def count(log, kind, email):
    return len(re.findall(r"SYNC-CACHE: Cache %s for %s$" % (kind, re.escape(email)), log, re.M))


def test_first_request_creates_one_row_then_hits_write_nothing():
    sub, email = new_user()
    t = tok(sub, email, user_metadata={"full_name": "Ada Sync"})
    # Each worker has its own cache: one worker makes "one miss, then hits"
    # exact (docs/operations.md, "Process model").
    with Keeld(one_worker) as k:
        r = k.get("/api/v1/auth/me", token=t)
        assert r.status == 200, r
        me = r.json()
        assert me["email"] == email and me["full_name"] == "Ada Sync"
        assert me["status"] == "active" and me["role"] == "free"
        assert me["subscription_tier"] == "free" and me["credits"] == {"balance": 0}
        rows = k.db.query("SELECT id, update_count FROM users WHERE supabase_user_id = %s", sub)
        assert len(rows) == 1, rows
        assert me["id"] == rows[0][0]
        assert k.db.scalar("SELECT count(*) FROM credit_wallets WHERE user_id = %s", rows[0][0]) == "1"
        before = rows[0][1]
        for _ in range(5):
            assert k.get("/api/v1/auth/me", token=t).status == 200
        after = k.db.scalar("SELECT update_count FROM users WHERE supabase_user_id = %s", sub)
        assert after == before, (before, after)
        log = k.log_text()
        assert count(log, "MISS", email) == 1, log
        assert count(log, "HIT", email) == 5
        m = k.admin_get("/metrics").text
        hits = re.search(r"^keel_usersync_cache_hits_total (\d+)", m, re.M)
        assert hits and int(hits.group(1)) >= 5


def test_miss_again_after_ttl():
    sub, email = new_user()
    t = tok(sub, email)
    with Keeld(with_ttl(1)) as k:
        assert k.get("/api/v1/auth/me", token=t).status == 200
        time.sleep(2.2)
        assert k.get("/api/v1/auth/me", token=t).status == 200
        assert count(k.log_text(), "MISS", email) == 2
        assert k.db.scalar("SELECT count(*) FROM users WHERE supabase_user_id = %s", sub) == "1"


def test_existing_email_row_is_linked_not_duplicated():
    sub, email = new_user()
    with Keeld() as k:
        k.db.query("INSERT INTO users (email, full_name, role, subscription_tier) "
                   "VALUES (%s, 'Pre Existing', 'admin', 'pro')", email)
        r = k.get("/api/v1/auth/me", token=tok(sub, email))
        assert r.status == 200, r
        rows = k.db.query("SELECT supabase_user_id, full_name FROM users WHERE email = %s", email)
        assert [tuple(r) for r in rows] == [(sub, "Pre Existing")], rows
        me = r.json()
        assert me["role"] == "admin" and me["subscription_tier"] == "pro"


def test_suspended_and_inactive_refused_pending_passes():
    with Keeld(with_ttl(1)) as k:
        for status, code in [("suspended", 403), ("inactive", 403), ("pending", 200)]:
            sub, email = new_user()
            k.db.query("INSERT INTO users (email, supabase_user_id, status) VALUES (%s, %s, %s)",
                       email, sub, status)
            r = k.get("/api/v1/auth/me", token=tok(sub, email))
            assert r.status == code, (status, r)
            if code == 403:
                assert r.json() == {"detail": "Account is not active"}


def test_admin_evict_applies_suspension_at_once():
    sub, email = new_user()
    t = tok(sub, email)
    # With one worker "cached" is certain for the second request (evict
    # itself reaches every worker).
    with Keeld(one_worker) as k:  # default TTL 300 s
        assert k.get("/api/v1/auth/me", token=t).status == 200
        # A change the users trigger does not see (its notification would
        # evict the user by itself, see test_fleet.py).
        k.db.query("SET session_replication_role = replica;"
                   " UPDATE users SET status = 'suspended' WHERE supabase_user_id = %s", sub)
        assert k.get("/api/v1/auth/me", token=t).status == 200  # cached until evicted
        r = k.admin_post("/admin/usersync/evict", body='{"user": "%s"}' % email,
                         headers={"Content-Type": "application/json"})
        assert r.status == 200 and r.json()["evicted"] == 1, r
        r = k.get("/api/v1/auth/me", token=t)
        assert r.status == 403 and r.json() == {"detail": "Account is not active"}
        r = k.keelctl("evict", sub)
        assert r.returncode == 0, r.stdout


def _keys_conf(k, keys):
    """Writes PEM files and an auth conf listing them."""
    a = k.read_conf("30-auth.json")
    entries = []
    for kid, alg, pem in keys:
        path = os.path.join(k.confdir, "..", "%s.pem" % kid)
        with open(path, "w") as f:
            f.write(pem)
        entries.append({"kid": kid, "alg": alg, "pem_file": os.path.abspath(path)})
    a["auth"]["keys"] = entries
    k.write_conf("30-auth.json", a)


def test_rs256_and_es256_by_kid():
    keys = tokens.generate_keys()
    other = tokens.generate_keys()
    (rs_priv, rs_pub), (es_priv, es_pub) = keys["RS256"], keys["ES256"]

    def mut(k):
        _keys_conf(k, [("rsa-1", "RS256", rs_pub), ("ec-1", "ES256", es_pub)])

    sub, email = new_user()
    claims = tokens.user_claims(sub, email)
    with Keeld(mut) as k:
        def status(t):
            return k.get("/api/v1/auth/me", token=t).status
        assert status(tokens.make_token(claims, alg="RS256", key_pem=rs_priv, kid="rsa-1")) == 200
        assert status(tokens.make_token(claims, alg="ES256", key_pem=es_priv, kid="ec-1")) == 200
        # Unknown kid, wrong key, kid of the other algorithm, no kid.
        assert status(tokens.make_token(claims, alg="RS256", key_pem=rs_priv, kid="rsa-2")) == 401
        assert status(tokens.make_token(claims, alg="RS256", key_pem=other["RS256"][0],
                                        kid="rsa-1")) == 401
        assert status(tokens.make_token(claims, alg="ES256", key_pem=es_priv, kid="rsa-1")) == 401
        assert status(tokens.make_token(claims, alg="RS256", key_pem=rs_priv)) == 401
        # HS256 "signed" with the RSA public key's PEM bytes, under the RSA kid
        # and without a kid: both refused.
        assert status(tokens.make_token(claims, secret=rs_pub, kid="rsa-1")) == 401
        assert status(tokens.make_token(claims, secret=rs_pub)) == 401
        # kid is never a path or a query.
        assert status(tokens.make_token(claims, alg="RS256", key_pem=rs_priv,
                                        kid="../../etc/passwd")) == 401
        assert status(tokens.make_token(claims, alg="RS256", key_pem=rs_priv,
                                        kid="x' OR '1'='1")) == 401
        # The shared HS256 secret still works for tokens without kid.
        assert status(tok(sub, email)) == 200


@keeltest.timeout(120)
def test_database_down_cached_and_new_users_still_authenticated():
    pg = PrivatePostgres()
    url = pg.create_keel_db()
    cached_sub, cached_email = new_user()
    new_sub, new_email = new_user()
    with Keeld(env={"KEEL_DATABASE_URL": url}) as k:
        me = k.get("/api/v1/auth/me", token=tok(cached_sub, cached_email))
        assert me.status == 200 and me.json()["credits"] == {"balance": 0}, me
        assert me.header("X-Keel-Degraded") is None, me.headers
        pg.stop()
        r = k.get("/api/v1/auth/me", token=tok(cached_sub, cached_email))
        assert r.status == 200 and r.json()["email"] == cached_email, r
        r = k.get("/api/v1/auth/me", token=tok(new_sub, new_email))
        assert r.status == 200, r
        assert r.json()["email"] == new_email and r.json()["id"] == new_sub
        assert r.header("X-Keel-Degraded") == "database"
        # The miss was not cached: once the database is back the user is synced.
        pg.start()
        deadline = time.monotonic() + keeltest.scaled(20)
        while True:
            r = k.get("/api/v1/auth/me", token=tok(new_sub, new_email))
            if r.status == 200 and r.json()["id"] != new_sub:
                break
            assert time.monotonic() < deadline, "user never synced after the database came back"
            time.sleep(0.3)
        rows = pg.query("SELECT count(*) FROM users WHERE supabase_user_id = %s", new_sub,
                        dbname="keel")
        assert rows[0][0] == "1", rows


def test_concurrent_first_requests_make_one_row():
    sub, email = new_user()
    t = tok(sub, email)
    results = []
    with Keeld() as k:
        def hit():
            results.append(k.get("/api/v1/auth/me", token=t).status)
        threads = [threading.Thread(target=hit) for _ in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        assert results == [200] * 16, results
        assert k.db.scalar("SELECT count(*) FROM users WHERE supabase_user_id = %s", sub) == "1"
        assert k.db.scalar("SELECT count(*) FROM credit_wallets w JOIN users u ON u.id = w.user_id "
                           "WHERE u.supabase_user_id = %s", sub) == "1"
