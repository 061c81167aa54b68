"""The creator plugin: every route of the creator API, job
status, admin import and credits, money under
concurrency, isolation between users, a stopped database, and the manifest
fallbacks when the plugin is missing.

Each test starts its own keeld; most share the module's database and use
fresh usernames and users, so they do not see each other's rows.
"""

import json
import math
import os
import re
import secrets
import threading
import uuid

import keeltest
from keeltest import Database, Keeld, PrivatePostgres, user_token

TIMEOUT = 240

BASE = "/api/v1/simple/creator"
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
DB_ERROR = "Database connectivity issues"
WRITE_503 = {"detail": "Service temporarily unavailable - database connectivity issues"}
ZEROS = {"total": 0, "with_ai_analysis": 0, "ai_completion_rate": "0%"}

PROFILE_BASE_KEYS = {"id", "username", "full_name", "biography", "followers_count",
                     "following_count", "posts_count", "is_verified", "is_private",
                     "profile_pic_url"}
POST_KEYS = {"id", "shortcode", "caption", "likes_count", "comments_count", "engagement_rate",
             "display_url", "taken_at", "ai_analysis"}
POST_AI_KEYS = {"content_category", "sentiment", "sentiment_score", "language_code"}
UNLOCKED_KEYS = {"profile_id", "username", "full_name", "followers_count", "following_count",
                 "posts_count", "profile_pic_url", "is_verified", "engagement_rate",
                 "unlocked_at", "expires_at", "days_remaining", "ai_analysis"}
PAGINATION_KEYS = {"page", "page_size", "total", "total_pages", "has_next", "has_previous"}


# ---------------------------------------------------------------- helpers

def name(prefix="cr"):
    """A fresh valid username (lowercase, <= 30 characters)."""
    return prefix + secrets.token_hex(5)


class User:
    """A signed-in user; the first request syncs it into users."""

    def __init__(self, k, query=None):
        self.k = k
        self.sub = str(uuid.uuid4())
        self.email = "creator-%s@test.keel" % self.sub[:12]
        self.token = user_token(self.sub, self.email)
        self.query = query or k.db.query
        r = self.get(BASE + "/system/stats")
        assert r.status == 200, r
        rows = self.query("SELECT id FROM users WHERE supabase_user_id = %s", self.sub)
        assert rows, "user %s was not synced" % self.email
        self.id = rows[0][0]

    def get(self, path):
        return self.k.get(path, token=self.token)

    def post(self, path, body=None, headers=None):
        return self.k.post(path, body=body, token=self.token, headers=headers)

    def scalar(self, sql, *params):
        rows = self.query(sql, *params)
        return rows[0][0] if rows else None

    def set_balance(self, balance):
        self.query("INSERT INTO credit_wallets (user_id, balance) VALUES (%s, %s)"
                   " ON CONFLICT (user_id) DO UPDATE SET balance = EXCLUDED.balance",
                   self.id, balance)

    def balance(self):
        return int(self.scalar("SELECT balance FROM credit_wallets WHERE user_id = %s", self.id))

    def ledger(self):
        """The user's unlock entries (a sign-up grant, if configured, is not one)."""
        return self.query("SELECT amount, balance_after, kind, reference FROM credit_transactions"
                          " WHERE user_id = %s AND kind = 'unlock' ORDER BY id", self.id)

    def grants(self):
        return int(self.scalar("SELECT count(*) FROM user_profile_access WHERE user_id = %s",
                               self.id))


def import_ndjson(k, lines):
    """POSTs lines (dicts or raw strings) to /admin/import; returns the response."""
    body = "\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n"
    return k.admin_post("/admin/import", body=body,
                        headers={"Content-Type": "application/x-ndjson"})


def import_ok(k, lines):
    r = import_ndjson(k, lines)
    assert r.status == 200, r
    body = r.json()
    assert body["ok"] is True and body["failed"] == 0, body
    return body


def rate(ai, total):
    """ai_completion_rate as the contract spells it (half up, one decimal)."""
    if total == 0:
        return "0%"
    tenths = (ai * 1000 + total // 2) // total
    return "%d.%d%%" % (tenths // 10, tenths % 10)


def assert_422(r, loc):
    assert r.status == 422, r
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    assert any(e["loc"] == loc for e in detail), (loc, detail)
    for e in detail:
        assert isinstance(e["msg"], str) and e["msg"], e
        assert isinstance(e["type"], str) and e["type"], e


def assert_degraded(r, expected):
    assert r.status == 200, r
    assert r.header("X-Keel-Degraded") == "database", r.headers
    assert r.json() == expected, r.json()


def run_threads(n, fn):
    """Runs fn(i) on n threads started together; returns the results in order."""
    results = [None] * n
    errors = []
    barrier = threading.Barrier(n)

    def body(i):
        try:
            barrier.wait()
            results[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def profile_line(username, followers=1000, posts=(), ai=True, **extra):
    line = {"username": username, "full_name": "Name " + username, "biography": "bio",
            "followers_count": followers, "following_count": 12, "posts_count": len(posts),
            "is_verified": True, "is_private": False,
            "profile_pic_url": "https://cdn.test/%s.jpg" % username}
    if ai:
        line["ai"] = {"primary_content_type": "travel", "avg_sentiment_score": 0.5,
                      "content_distribution": {"travel": 0.75, "food": 0.25},
                      "language_distribution": {"en": 1.0},
                      "content_quality_score": 7.5}
    if posts:
        line["posts"] = list(posts)
    line.update(extra)
    return line


# ---------------------------------------------------------------- validation and auth

def test_routes_need_a_user():
    with Keeld() as k:
        for method, path in [("GET", BASE + "/system/stats"), ("GET", BASE + "/unlocked"),
                             ("GET", BASE + "/someone"), ("GET", BASE + "/someone/status"),
                             ("GET", BASE + "/someone/posts"),
                             ("POST", BASE + "/search/someone"),
                             ("POST", BASE + "/unlock/someone"),
                             ("POST", "/api/v1/discovery/unlock-profile"),
                             ("GET", "/api/v1/jobs/%s/status" % uuid.uuid4())]:
            r = k.request(method, path)
            assert r.status == 403, (path, r)
            assert r.json() == {"detail": "Not authenticated"}, (path, r)


def test_validation_errors_are_422():
    with Keeld() as k:
        u = User(k)
        for bad in ["bad-name", "a" * 31, "sp%20ace", "caf%C3%A9", "x%27y", "semi%3Bcolon"]:
            for method, path in [("GET", BASE + "/%s"), ("GET", BASE + "/%s/status"),
                                 ("GET", BASE + "/%s/posts"), ("POST", BASE + "/search/%s"),
                                 ("POST", BASE + "/unlock/%s")]:
                r = k.request(method, path % bad, token=u.token)
                assert_422(r, ["path", "username"])
                assert r.json()["detail"][0]["type"] == "value_error", r.json()
        # 30 characters of every allowed class is valid (404: not stored).
        ok = "Ab0._" + "z" * 25
        assert u.get(BASE + "/" + ok).status == 404

        for path in [BASE + "/unlocked", BASE + "/someone/posts"]:
            for bad in ["abc", "0", "-1", "1.5", "", "%201"]:
                assert_422(u.get(path + "?page=" + bad), ["query", "page"])
            for bad in ["abc", "0", "101", "-1", "1e2", ""]:
                assert_422(u.get(path + "?page_size=" + bad), ["query", "page_size"])
            r = u.get(path + "?page=0&page_size=101")
            assert_422(r, ["query", "page"])
            assert_422(r, ["query", "page_size"])
            assert u.get(BASE + "/unlocked?page=1&page_size=100").status == 200
            assert u.get(BASE + "/unlocked?page=999999&page_size=1").status == 200

        for bad in ["not-a-uuid", "1234", str(uuid.uuid4())[:-1] + "g"]:
            assert_422(u.get("/api/v1/jobs/%s/status" % bad), ["path", "job_id"])

        d = "/api/v1/discovery/unlock-profile"
        assert_422(u.post(d, body={}), ["body", "username"])
        assert_422(u.post(d, body={"username": 5}), ["body", "username"])
        assert_422(u.post(d, body={"username": None}), ["body", "username"])
        assert_422(u.post(d, body={"username": "bad name"}), ["body", "username"])
        assert_422(u.post(d, body={"username": ""}), ["body", "username"])
        assert_422(u.post(d, body={"username": "a" * 31}), ["body", "username"])
        # The host checks the media type and the JSON itself.
        r = u.post(d, body='{"username":"x"}', headers={"Content-Type": "text/plain"})
        assert r.status == 415, r
        r = u.post(d, body='{"username":', headers={"Content-Type": "application/json"})
        assert r.status == 400, r


# ---------------------------------------------------------------- stats

def creator_config(**settings):
    """A conf.d mutator that sets keys of the creator plugin's config."""
    def mut(k):
        doc = k.read_conf("60-creator.json")
        doc["plugin"]["config"].update(settings)
        k.write_conf("60-creator.json", doc)
    return mut


# Counts read right after a change: without the cache's up to 1 s
# (test_stats_cache.py tests the cache).
no_stats_cache = creator_config(stats_cache_ms=0)


def test_system_stats_counts_and_rates():
    db = Database()
    try:
        with Keeld(no_stats_cache, db=db) as k:
            u = User(k)
            r = u.get(BASE + "/system/stats")
            assert r.status == 200, r
            assert r.json() == {
                "success": True,
                "stats": {"profiles": ZEROS, "posts": ZEROS,
                          "system": {"status": "operational", "ai_system": "active"}},
                "message": "System statistics retrieved successfully"}, r.json()

            posts = [{"shortcode": name("sc"), "ai": {"content_category": "x"}},
                     {"shortcode": name("sc")}, {"shortcode": name("sc")},
                     {"shortcode": name("sc")}, {"shortcode": name("sc")},
                     {"shortcode": name("sc")}, {"shortcode": name("sc")},
                     {"shortcode": name("sc")}]
            import_ok(k, [profile_line(name(), posts=posts), profile_line(name()),
                          profile_line(name(), ai=False)])
            body = u.get(BASE + "/system/stats").json()
            assert body["success"] is True, body
            assert body["stats"]["profiles"] == {"total": 3, "with_ai_analysis": 2,
                                                 "ai_completion_rate": "66.7%"}, body
            # 1 of 8 is 12.5%.
            assert body["stats"]["posts"] == {"total": 8, "with_ai_analysis": 1,
                                              "ai_completion_rate": "12.5%"}, body
            assert body["stats"]["system"] == {"status": "operational", "ai_system": "active"}
    finally:
        db.drop()


# ---------------------------------------------------------------- unlocked list

def test_unlocked_list_pages_newest_first_and_only_own():
    with Keeld() as k:
        u, other = User(k), User(k)
        names = [name("ul") for _ in range(12)]
        import_ok(k, [profile_line(n) for n in names])
        # Grant i: granted i hours ago, expires in 24*i+5 hours (days_remaining
        # i+1); the last two are expired and must not count.
        for i, n in enumerate(names):
            expires = "now() + interval '%d hours'" % (24 * i + 5) if i < 10 else \
                "now() - interval '1 hour'"
            k.db.query("INSERT INTO user_profile_access (user_id, profile_id, granted_at,"
                       " expires_at, credits_spent) SELECT %s, id, now() - interval '"
                       + str(i) + " hours', " + expires + ", 25 FROM profiles"
                       " WHERE username = %s", u.id, n)
        k.db.query("INSERT INTO user_profile_access (user_id, profile_id, expires_at)"
                   " SELECT %s, id, now() + interval '3 days' FROM profiles WHERE username = %s",
                   other.id, names[0])

        r = u.get(BASE + "/unlocked?page=1&page_size=4")
        assert r.status == 200, r
        body = r.json()
        assert set(body) == {"success", "profiles", "pagination", "message"}, body
        assert body["success"] is True
        assert body["message"] == "Found 10 unlocked profiles", body
        assert body["pagination"] == {"page": 1, "page_size": 4, "total": 10, "total_pages": 3,
                                      "has_next": True, "has_previous": False}, body
        assert [p["username"] for p in body["profiles"]] == names[0:4], body
        for i, p in enumerate(body["profiles"]):
            assert set(p) == UNLOCKED_KEYS, p
            assert UUID.match(p["profile_id"]), p
            assert ISO.match(p["unlocked_at"]) and ISO.match(p["expires_at"]), p
            assert p["days_remaining"] == i + 1, p
            assert p["followers_count"] == 1000 and p["following_count"] == 12, p
            assert p["is_verified"] is True, p
            assert p["ai_analysis"] == {"primary_content_type": "travel",
                                        "avg_sentiment_score": 0.5}, p

        body = u.get(BASE + "/unlocked?page=3&page_size=4").json()
        assert [p["username"] for p in body["profiles"]] == names[8:10], body
        assert body["pagination"] == {"page": 3, "page_size": 4, "total": 10, "total_pages": 3,
                                      "has_next": False, "has_previous": True}, body
        body = u.get(BASE + "/unlocked?page=4&page_size=4").json()
        assert body["profiles"] == [] and body["pagination"]["total"] == 10, body
        body = u.get(BASE + "/unlocked").json()
        assert body["pagination"]["page_size"] == 10 and len(body["profiles"]) == 10, body

        body = other.get(BASE + "/unlocked").json()
        assert [p["username"] for p in body["profiles"]] == [names[0]], body
        assert body["pagination"]["total"] == 1 and body["message"] == "Found 1 unlocked profiles"
        assert body["profiles"][0]["days_remaining"] == 3, body

        fresh = User(k)
        body = fresh.get(BASE + "/unlocked").json()
        assert body == {"success": True, "profiles": [],
                        "pagination": {"page": 1, "page_size": 10, "total": 0, "total_pages": 0,
                                       "has_next": False, "has_previous": False},
                        "message": "Found 0 unlocked profiles"}, body


# ---------------------------------------------------------------- profile and status

def test_profile_and_status():
    with Keeld() as k:
        u, other = User(k), User(k)
        analysed, plain, missing = name("pa"), name("pb"), name("pc")
        import_ok(k, [profile_line(analysed), profile_line(plain, ai=False, followers=7)])

        r = u.get(BASE + "/" + analysed.upper())
        assert r.status == 200, r
        body = r.json()
        assert set(body) == {"success", "profile", "message"}, body
        assert body["success"] is True and body["message"] == "Profile data loaded"
        p = body["profile"]
        assert set(p) == PROFILE_BASE_KEYS, p
        assert p["username"] == analysed and p["full_name"] == "Name " + analysed
        assert p["biography"] == "bio" and p["followers_count"] == 1000
        assert p["following_count"] == 12 and p["posts_count"] == 0
        assert p["is_verified"] is True and p["is_private"] is False
        assert p["profile_pic_url"] == "https://cdn.test/%s.jpg" % analysed
        assert UUID.match(p["id"]), p

        r = u.get(BASE + "/" + missing)
        assert r.status == 404 and r.json() == {"detail": "Profile not found"}, r

        def status(user, n):
            r = user.get(BASE + "/%s/status" % n)
            assert r.status == 200, r
            return r.json()

        assert status(u, analysed) == {"success": True, "username": analysed,
                                       "status": "complete", "profile_ready": True,
                                       "analysis_complete": True, "data_source": "database"}
        assert status(u, plain) == {"success": True, "username": plain, "status": "complete",
                                    "profile_ready": True, "analysis_complete": False,
                                    "data_source": "database"}
        nf = {"success": True, "username": missing, "status": "not_found",
              "profile_ready": False, "analysis_complete": False, "data_source": "none"}
        assert status(u, missing) == nf

        assert u.post(BASE + "/search/" + missing).status == 202
        assert status(u, missing) == dict(nf, status="queued")
        k.db.query("UPDATE search_jobs SET status = 'processing' WHERE user_id = %s"
                   " AND username = %s", u.id, missing)
        assert status(u, missing.upper()) == dict(nf, status="processing")
        # Another user's job is invisible.
        assert status(other, missing) == nf

        import_ok(k, [profile_line(missing, ai=False)])
        assert status(u, missing)["status"] == "complete"


# ---------------------------------------------------------------- search and jobs

def test_search_queues_one_job_per_user_and_name():
    with Keeld() as k:
        u, other = User(k), User(k)
        n = name("sj")
        r = u.post(BASE + "/search/" + n)
        assert r.status == 202, r
        body = r.json()
        assert set(body) >= {"success", "job_id", "status", "message", "polling_url"}, body
        assert body["success"] is True and body["status"] == "queued", body
        assert UUID.match(body["job_id"]), body
        assert isinstance(body["message"], str) and body["message"]
        job = body["job_id"]
        assert body["polling_url"] == "/api/v1/jobs/%s/status" % job, body

        assert u.post(BASE + "/search/" + n).json()["job_id"] == job
        assert u.post(BASE + "/search/" + n.upper()).json()["job_id"] == job
        theirs = other.post(BASE + "/search/" + n).json()["job_id"]
        assert theirs != job
        assert k.db.scalar("SELECT count(*) FROM search_jobs WHERE username = %s", n) == "2"

        # Concurrent searches by one user still share one job.
        n2 = name("sk")
        ids = run_threads(10, lambda i: u.post(BASE + "/search/" + n2).json()["job_id"])
        assert len(set(ids)) == 1, ids
        assert k.db.scalar("SELECT count(*) FROM search_jobs WHERE username = %s", n2) == "1"

        r = u.get(body["polling_url"])
        assert r.status == 200, r
        jb = r.json()
        assert set(jb) == {"success", "job_id", "job_type", "status", "progress_percent",
                           "progress_message", "username", "created_at", "updated_at",
                           "error"}, jb
        assert jb["job_id"] == job and jb["status"] == "queued" and jb["username"] == n, jb
        assert jb["job_type"] == "creator_search" and jb["progress_percent"] == 0, jb
        assert jb["error"] is None and isinstance(jb["progress_message"], str), jb
        assert ISO.match(jb["created_at"]) and ISO.match(jb["updated_at"]), jb

        # Another user's job and an unknown id look the same.
        for path in ["/api/v1/jobs/%s/status" % job, "/api/v1/jobs/%s/status" % uuid.uuid4()]:
            r = other.get(path)
            assert r.status == 404 and r.json() == {"detail": "Job not found"}, r
        assert u.get("/api/v1/jobs/%s/status" % job.upper()).status == 200

        # The import completes both users' open jobs; the search then previews.
        body = import_ok(k, [profile_line(n, ai=False)])
        assert body["jobs_completed"] == 2, body
        # The jobs API says "completed" (the table stores 'complete').
        assert u.get("/api/v1/jobs/%s/status" % job).json()["status"] == "completed"
        assert other.get("/api/v1/jobs/%s/status" % theirs).json()["status"] == "completed"
        r = u.post(BASE + "/search/" + n)
        assert r.status == 200 and r.json()["preview_mode"] is True, r
        # A completed job does not block a new one for a name not stored.
        n3 = name("sl")
        first = u.post(BASE + "/search/" + n3).json()["job_id"]
        k.db.query("UPDATE search_jobs SET status = 'failed' WHERE id = %s", first)
        second = u.post(BASE + "/search/" + n3).json()["job_id"]
        assert second != first


def test_search_preview_then_full_analytics_and_posts():
    with Keeld() as k:
        u, other = User(k), User(k)
        n = name("sf")
        posts = []
        for i in range(60):
            post = {"shortcode": "%s_%02d" % (n, i), "caption": "caption %d" % i,
                    "likes_count": 10 * i, "comments_count": i,
                    "display_url": "https://cdn.test/%s/%d.jpg" % (n, i),
                    "taken_at": "2024-01-01T00:00:00Z" if i == 0 else 1700000000 + 3600 * i}
            if i % 2 == 0:
                post["ai"] = {"content_category": "travel", "sentiment": "positive",
                              "sentiment_score": 0.25, "language_code": "en"}
            posts.append(post)
        import_ok(k, [profile_line(n, followers=2000, posts=posts)])

        r = u.post(BASE + "/search/" + n)
        assert r.status == 200, r
        body = r.json()
        assert body["success"] is True and body["unlock_required"] is True, body
        assert body["unlock_cost"] == 25 and body["preview_mode"] is True, body
        assert body["unlock_endpoint"] == "/api/v1/simple/creator/unlock/" + n, body
        assert set(body["profile"]) == PROFILE_BASE_KEYS, body
        assert "posts" not in body and "ai_analysis" not in body["profile"], body

        r = u.get(BASE + "/%s/posts" % n)
        assert r.status == 403, r
        assert r.json() == {"success": False, "unlock_required": True, "unlock_cost": 25}
        r = u.get(BASE + "/%s/posts" % name("zz"))
        assert r.status == 404 and r.json() == {"detail": "Profile not found"}, r

        u.set_balance(25)
        assert u.post(BASE + "/unlock/" + n).status == 200

        r = u.post(BASE + "/search/" + n)
        assert r.status == 200, r
        body = r.json()
        assert body["success"] is True and body["unlocked"] is True, body
        assert body["unlock_required"] is False and body["preview_mode"] is False, body
        p = body["profile"]
        assert set(p) == PROFILE_BASE_KEYS | {"engagement_rate", "avg_likes", "avg_comments",
                                              "ai_analysis", "posts"}, p
        assert "posts" not in body, sorted(body)
        assert ISO.match(p["ai_analysis"].pop("profile_analyzed_at")), p
        assert p["ai_analysis"].pop("available") is True, p
        assert p["ai_analysis"] == {"primary_content_type": "travel",
                                    "content_distribution": {"travel": 0.75, "food": 0.25},
                                    "language_distribution": {"en": 1.0},
                                    "avg_sentiment_score": 0.5,
                                    "content_quality_score": 7.5}, p
        avg_likes = sum(10 * i for i in range(60)) / 60
        avg_comments = sum(range(60)) / 60
        assert math.isclose(p["avg_likes"], avg_likes), p
        assert math.isclose(p["avg_comments"], avg_comments), p
        assert math.isclose(p["engagement_rate"], (avg_likes + avg_comments) / 2000 * 100), p

        got = p["posts"]
        assert len(got) == 50, len(got)
        # Newest first: post 59 is the newest, post 0 (2024) is newer than all.
        expected = [0] + list(range(59, 10, -1))
        assert [q["shortcode"] for q in got] == ["%s_%02d" % (n, i) for i in expected], got
        for q in got:
            assert set(q) == POST_KEYS and set(q["ai_analysis"]) == POST_AI_KEYS, q
            i = int(q["shortcode"].rsplit("_", 1)[1])
            assert q["likes_count"] == 10 * i and q["comments_count"] == i, q
            assert math.isclose(q["engagement_rate"], (11 * i) / 2000 * 100), q
            assert ISO.match(q["taken_at"]), q
            if i % 2 == 0:
                assert q["ai_analysis"] == {"content_category": "travel", "sentiment": "positive",
                                            "sentiment_score": 0.25, "language_code": "en"}, q
            else:
                assert q["ai_analysis"] == dict.fromkeys(POST_AI_KEYS), q
        assert got[0]["taken_at"] == "2024-01-01T00:00:00Z"
        assert got[1]["taken_at"] == "2023-11-17T09:13:20Z"  # 1700000000 + 59 h

        r = u.get(BASE + "/%s/posts?page=3&page_size=25" % n.upper())
        assert r.status == 200, r
        body = r.json()
        assert body["success"] is True and body["username"] == n, body
        assert body["pagination"] == {"page": 3, "page_size": 25, "total": 60, "total_pages": 3,
                                      "has_next": False, "has_previous": True, "limit": 25,
                                      "offset": 50, "total_count": 60, "has_more": False}, body
        assert [q["shortcode"] for q in body["posts"]] == \
            ["%s_%02d" % (n, i) for i in range(10, 0, -1)], body
        body = u.get(BASE + "/%s/posts" % n).json()
        assert len(body["posts"]) == 20 and body["pagination"]["page_size"] == 20, body

        # The other user has not unlocked it.
        assert other.post(BASE + "/search/" + n).json()["preview_mode"] is True
        assert other.get(BASE + "/%s/posts" % n).status == 403


# ---------------------------------------------------------------- unlock

def test_unlock_charges_once_and_refuses_without_credits():
    with Keeld() as k:
        u = User(k)
        a, b = name("ua"), name("ub")
        import_ok(k, [profile_line(a), profile_line(b)])
        u.set_balance(30)

        r = u.post(BASE + "/unlock/" + a.upper())
        assert r.status == 200, r
        body = r.json()
        assert body["success"] is True and body["unlocked"] is True, body
        assert body["credits_spent"] == 25 and body["balance"] == 5, body
        assert ISO.match(body["expires_at"]), body
        expires = body["expires_at"]
        days = u.scalar("SELECT round(extract(epoch FROM expires_at - granted_at) / 86400)"
                        " FROM user_profile_access WHERE user_id = %s", u.id)
        assert days == "30", days

        for again in [u.post(BASE + "/unlock/" + a),
                      u.post("/api/v1/discovery/unlock-profile", body={"username": a.upper()})]:
            assert again.status == 200, again
            body = again.json()
            assert body["credits_spent"] == 0 and body["balance"] == 5, body
            assert body["unlocked"] is True and body["expires_at"] == expires, body

        r = u.post(BASE + "/unlock/" + b)
        assert r.status == 402, r
        assert r.json() == {"detail": "Insufficient credits: 25 required, 5 available",
                            "error": "insufficient_credits", "required": 25,
                            "balance": 5}, r.json()
        r = u.post("/api/v1/discovery/unlock-profile", body={"username": b})
        assert r.status == 402 and r.json()["balance"] == 5, r

        assert u.ledger() == [("-25", "5", "unlock", a)], u.ledger()
        assert u.balance() == 5 and u.grants() == 1

        for path, body in [(BASE + "/unlock/" + name("nx"), None),
                           ("/api/v1/discovery/unlock-profile", {"username": name("nx")})]:
            r = u.post(path, body=body)
            assert r.status == 404 and r.json() == {"detail": "Profile not found"}, r

        # No wallet row at all: balance 0.
        poor = User(k)
        k.db.query("DELETE FROM credit_wallets WHERE user_id = %s", poor.id)
        r = poor.post(BASE + "/unlock/" + a)
        assert r.status == 402, r
        assert r.json() == {"detail": "Insufficient credits: 25 required, 0 available",
                            "error": "insufficient_credits", "required": 25, "balance": 0}
        assert poor.grants() == 0

        # An expired grant is renewed in place and charged again.
        k.db.query("UPDATE user_profile_access SET expires_at = now() - interval '1 minute',"
                   " granted_at = now() - interval '31 days' WHERE user_id = %s", u.id)
        assert u.get(BASE + "/%s/posts" % a).status == 403
        u.set_balance(40)
        r = u.post(BASE + "/unlock/" + a)
        assert r.status == 200, r
        assert r.json()["credits_spent"] == 25 and r.json()["balance"] == 15, r.json()
        assert u.grants() == 1
        assert u.scalar("SELECT expires_at > now() + interval '29 days' FROM user_profile_access"
                        " WHERE user_id = %s", u.id) == "t"
        assert u.get(BASE + "/%s/posts" % a).status == 200


def test_fifty_concurrent_unlocks_of_one_profile_charge_once():
    with Keeld() as k:
        u = User(k)
        n = name("cc")
        import_ok(k, [profile_line(n)])
        u.set_balance(100)

        results = run_threads(50, lambda i: u.post(BASE + "/unlock/" + n))
        statuses = [r.status for r in results]
        assert statuses == [200] * 50, statuses
        spent = sorted(r.json()["credits_spent"] for r in results)
        assert spent == [0] * 49 + [25], spent
        assert all(r.json()["balance"] == 75 for r in results), [r.json() for r in results]

        assert u.ledger() == [("-25", "75", "unlock", n)], u.ledger()
        assert u.balance() == 75
        assert u.grants() == 1


def test_concurrent_unlocks_of_different_profiles_stop_at_the_balance():
    with Keeld() as k:
        u = User(k)
        names = [name("cd") for _ in range(10)]
        import_ok(k, [profile_line(n) for n in names])
        u.set_balance(110)  # enough for four

        results = run_threads(10, lambda i: u.post(BASE + "/unlock/" + names[i]))
        ok = [names[i] for i, r in enumerate(results) if r.status == 200]
        refused = [r for r in results if r.status == 402]
        assert len(ok) == 4 and len(refused) == 6, [(r.status, r.text) for r in results]
        for r in refused:
            assert r.json() == {"detail": "Insufficient credits: 25 required, 10 available",
                                "error": "insufficient_credits", "required": 25,
                                "balance": 10}, r.json()
        assert all(results[names.index(n)].json()["credits_spent"] == 25 for n in ok)

        ledger = u.ledger()
        assert len(ledger) == 4, ledger
        assert sum(int(row[0]) for row in ledger) == u.balance() - 110 == -100
        assert sorted(row[3] for row in ledger) == sorted(ok)
        granted = [row[0] for row in u.query(
            "SELECT p.username FROM user_profile_access a JOIN profiles p ON p.id = a.profile_id"
            " WHERE a.user_id = %s", u.id)]
        assert sorted(granted) == sorted(ok)
        body = u.get(BASE + "/unlocked").json()
        assert sorted(p["username"] for p in body["profiles"]) == sorted(ok), body


def test_other_users_unlocks_are_invisible():
    with Keeld() as k:
        a, b = User(k), User(k)
        n = name("iv")
        import_ok(k, [profile_line(n)])
        a.set_balance(25)
        b.set_balance(25)
        assert a.post(BASE + "/unlock/" + n).json()["credits_spent"] == 25
        assert b.get(BASE + "/unlocked").json()["pagination"]["total"] == 0
        assert b.get(BASE + "/%s/posts" % n).status == 403
        assert b.post(BASE + "/search/" + n).json()["preview_mode"] is True
        # b pays for its own unlock; a's grant does not count for b.
        r = b.post(BASE + "/unlock/" + n)
        assert r.json()["credits_spent"] == 25 and r.json()["balance"] == 0, r.json()


# ---------------------------------------------------------------- admin

def test_admin_import_reports_each_line_and_completes_jobs():
    with Keeld() as k:
        u = User(k)
        good, other_good, pending = name("ig"), name("ih"), name("ij")
        job = u.post(BASE + "/search/" + pending).json()["job_id"]
        lines = [
            json.dumps(profile_line(good.upper(), followers=500, posts=[
                {"shortcode": good + "_a", "likes_count": 40, "comments_count": 10,
                 "caption": "hi", "taken_at": "2024-05-06T07:08:09+02:00",
                 "ai": {"content_category": "food", "sentiment": "neutral",
                        "sentiment_score": 0.1, "language_code": "de"}},
                {"shortcode": good + "_b", "taken_at": "2024-05-07"}]) | {"unknown": [1, 2]}),
            "",
            "not json",
            json.dumps({"username": "bad name!"}),
            json.dumps({"username": name(), "followers_count": -1}),
            json.dumps({"username": name(), "posts": [{"shortcode": "dup"}, {"shortcode": "dup"}]}),
            json.dumps({"username": name(), "posts": [{"shortcode": name("d"),
                                                       "taken_at": "2024-13-01T00:00:00Z"}]}),
            '{"username":"%s","username":"%s"}' % (name(), name()),
            "[1, 2]",
            json.dumps({"full_name": "no username"}),
            "   ",
            json.dumps({"username": pending, "followers_count": 3}),
            json.dumps({"username": other_good, "is_verified": "yes"}),
            json.dumps({"username": other_good}),
        ]
        r = import_ndjson(k, lines)
        assert r.status == 200, r
        body = r.json()
        assert set(body) == {"ok", "lines", "imported", "failed", "jobs_completed", "results"}
        assert body["ok"] is False and body["lines"] == 14, body
        assert body["imported"] == 3 and body["failed"] == 9, body
        assert body["jobs_completed"] == 1, body
        by_line = {res["line"]: res for res in body["results"]}
        assert sorted(by_line) == [1, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14], body
        assert by_line[1] == {"line": 1, "ok": True, "username": good}
        assert by_line[12] == {"line": 12, "ok": True, "username": pending}
        assert by_line[14] == {"line": 14, "ok": True, "username": other_good}
        for n in [3, 4, 5, 6, 7, 8, 9, 10, 13]:
            assert by_line[n]["ok"] is False and isinstance(by_line[n]["error"], str), by_line[n]
            assert set(by_line[n]) == {"line", "ok", "error"}, by_line[n]
        assert "followers_count" in by_line[5]["error"]
        assert "dup" in by_line[6]["error"]
        assert "is_verified" in by_line[13]["error"]

        row = k.db.query("SELECT followers_count, ai_analyzed, ai_primary_content_type,"
                         " avg_likes, avg_comments FROM profiles WHERE username = %s", good)
        assert row == [("500", "t", "travel", "20", "5")], row
        posts = k.db.query("SELECT po.shortcode, po.likes_count, po.engagement_rate,"
                           " po.ai_analyzed, po.ai_language_code, to_char(po.taken_at AT TIME"
                           " ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM posts po JOIN profiles p"
                           " ON p.id = po.profile_id WHERE p.username = %s ORDER BY 1", good)
        assert posts == [(good + "_a", "40", "10", "t", "de", "2024-05-06 05:08:09"),
                         (good + "_b", "0", "0", "f", None, "2024-05-07 00:00:00")], posts
        # Nothing of the failed lines was written.
        assert k.db.scalar("SELECT count(*) FROM posts WHERE shortcode = 'dup'") == "0"

        assert u.get("/api/v1/jobs/%s/status" % job).json()["status"] == "completed"

        # Re-importing is an update: a missing field keeps its stored value.
        body = import_ok(k, [{"username": good, "followers_count": 1000}])
        assert body["jobs_completed"] == 0
        row = k.db.query("SELECT followers_count, full_name, ai_analyzed FROM profiles"
                         " WHERE username = %s", good)
        assert row == [("1000", "Name " + good.upper(), "t")], row
        assert k.db.scalar("SELECT count(*) FROM profiles WHERE username = %s", good) == "1"

        r = k.admin_post("/admin/import", body=b"", headers={"Content-Type": "application/x-ndjson"})
        assert r.status == 200 and r.json()["lines"] == 0 and r.json()["ok"] is True, r


def test_admin_credits():
    with Keeld() as k:
        u = User(k)
        # Whatever sign-up credits are configured, start without a wallet row
        # so the first call creates it.
        k.db.query("DELETE FROM credit_wallets WHERE user_id = %s", u.id)
        r = k.admin_post("/admin/credits", body={"email": u.email, "amount": 40,
                                                 "reason": "welcome"})
        assert r.status == 200, r
        assert r.json() == {"success": True, "email": u.email, "amount": 40, "balance": 40}
        r = k.admin_post("/admin/credits", body={"email": u.email.upper(), "amount": 2})
        assert r.status == 200 and r.json()["balance"] == 42, r
        rows = u.query("SELECT amount, balance_after, kind, reason FROM credit_transactions"
                       " WHERE user_id = %s ORDER BY id", u.id)
        assert rows[-2:] == [("40", "40", "admin", "welcome"),
                             ("2", "42", "admin", "Admin credit")], rows
        assert u.balance() == 42

        r = k.admin_post("/admin/credits", body={"email": "nobody-%s@test.keel" % name(),
                                                 "amount": 5})
        assert r.status == 404 and r.json() == {"detail": "User not found"}, r
        for bad in [0, -5, 1000001, "5", 1.5, True, None]:
            r = k.admin_post("/admin/credits", body={"email": u.email, "amount": bad})
            assert_422(r, ["body", "amount"])
        assert_422(k.admin_post("/admin/credits", body={"amount": 5}), ["body", "email"])
        assert_422(k.admin_post("/admin/credits", body={"email": 3, "amount": 5}),
                   ["body", "email"])
        assert u.balance() == 42
        # The main listener does not serve admin routes.
        assert k.post("/admin/credits", body={"email": u.email, "amount": 5},
                      token=u.token).status == 404


# ---------------------------------------------------------------- degradation

def test_database_down_degrades_reads_and_refuses_writes():
    pg = PrivatePostgres()
    try:
        url = pg.create_keel_db("keel")

        def query(sql, *params):
            return pg.query(sql, *params, dbname="keel")

        # Reads must reach the database, not the stats cache (which may
        # answer for up to its bound after the database went away).
        with Keeld(no_stats_cache, env={"KEEL_DATABASE_URL": url}) as k:
            u = User(k, query=query)
            n, unknown = name("dn"), name("du")
            import_ok(k, [profile_line(n)])
            u.set_balance(100)
            job = u.post(BASE + "/search/" + unknown).json()["job_id"]
            before = query("SELECT (SELECT count(*) FROM credit_transactions),"
                           " (SELECT count(*) FROM user_profile_access),"
                           " (SELECT count(*) FROM search_jobs),"
                           " (SELECT sum(balance) FROM credit_wallets),"
                           " (SELECT count(*) FROM profiles)")

            pg.stop()
            # A user synced before (cached) and one never seen (no local id).
            never = user_token(str(uuid.uuid4()), "never-%s@test.keel" % name())
            for token in [u.token, never]:
                def get(path):
                    return k.get(path, token=token)

                def post(path, body=None):
                    return k.post(path, body=body, token=token)

                assert_degraded(get(BASE + "/system/stats"), {
                    "success": False,
                    "stats": {"profiles": ZEROS, "posts": ZEROS,
                              "system": {"status": "degraded", "ai_system": "unavailable"}},
                    "error": DB_ERROR,
                    "message": "System statistics partially unavailable - system will retry "
                               "automatically"})
                assert_degraded(get(BASE + "/unlocked?page=1&page_size=10"), {
                    "success": False, "profiles": [], "error": DB_ERROR,
                    "message": "Unable to retrieve unlocked profiles - database connection issues"})
                assert_degraded(get(BASE + "/" + n), {
                    "success": False, "profile": None, "error": DB_ERROR,
                    "message": "Profile data temporarily unavailable - database connection "
                               "issues"})
                assert_degraded(get(BASE + "/%s/status" % n), {
                    "success": False, "username": n, "status": "unknown",
                    "profile_ready": False, "analysis_complete": False, "data_source": "none",
                    "error": DB_ERROR,
                    "message": "Profile status temporarily unavailable - database connection "
                               "issues"})
                assert_degraded(get(BASE + "/%s/posts" % n), {
                    "success": False, "username": n, "posts": [], "error": DB_ERROR,
                    "message": "Posts temporarily unavailable - database connection issues"})
                assert_degraded(post(BASE + "/search/" + unknown), {
                    "success": False, "username": unknown, "profile": None, "error": DB_ERROR,
                    "message": "Creator search temporarily unavailable - database connection "
                               "issues"})
                assert_degraded(get("/api/v1/jobs/%s/status" % job), {
                    "success": False, "job_id": job, "job_type": "creator_search",
                    "status": "unknown", "error": DB_ERROR,
                    "message": "Job status temporarily unavailable - database connection issues"})

                for r in [post(BASE + "/unlock/" + n),
                          post("/api/v1/discovery/unlock-profile", body={"username": n})]:
                    assert r.status == 503, r
                    assert r.header("Retry-After") == "5", r.headers
                    assert r.json() == WRITE_503, r.json()
                # Validation still answers 422 without the database.
                assert_422(get(BASE + "/unlocked?page=0"), ["query", "page"])

            r = import_ndjson(k, [profile_line(name("dx"))])
            assert r.status == 503 and r.json() == WRITE_503, r
            r = k.admin_post("/admin/credits", body={"email": u.email, "amount": 5})
            assert r.status == 503 and r.json() == WRITE_503, r

            pg.start()
            after = query("SELECT (SELECT count(*) FROM credit_transactions),"
                          " (SELECT count(*) FROM user_profile_access),"
                          " (SELECT count(*) FROM search_jobs),"
                          " (SELECT sum(balance) FROM credit_wallets),"
                          " (SELECT count(*) FROM profiles)")
            assert after == before, (before, after)
    finally:
        pg.cleanup()


# ---------------------------------------------------------------- plugin missing

ROUTES = [
    ("GET", BASE + "/system/stats"),
    ("GET", BASE + "/unlocked"),
    ("GET", BASE + "/{username}"),
    ("GET", BASE + "/{username}/status"),
    ("POST", BASE + "/search/{username}"),
    ("GET", BASE + "/{username}/posts"),
    ("POST", BASE + "/unlock/{username}"),
    ("POST", "/api/v1/discovery/unlock-profile"),
    ("GET", "/api/v1/jobs/{job_id}/status"),
    ("GET", "/api/v1/search/creator/{username}"),
    ("GET", "/api/v1/jobs/{job_id}/result"),
    ("GET", "/api/v1/auth/unlocked"),
    ("GET", "/api/v1/auth/unlocked-profiles"),
    ("POST", "/admin/import"),
    ("POST", "/admin/credits"),
]


def _replace_reason(v, reason):
    if isinstance(v, str):
        return v.replace("${reason}", reason)
    if isinstance(v, list):
        return [_replace_reason(x, reason) for x in v]
    if isinstance(v, dict):
        return {key: _replace_reason(x, reason) for key, x in v.items()}
    return v


def test_manifest_lists_every_route():
    with open(os.path.join(keeltest.CONFDIR, "60-creator.json")) as f:
        m = json.load(f)["plugin"]
    assert m["name"] == "creator" and m["file"] == "creator.so", m
    assert m["config"]["unlock_cost"] == 25 and m["config"]["unlock_days"] == 30, m
    assert sorted((r["method"], r["path"]) for r in m["routes"]) == sorted(ROUTES)
    for r in m["routes"]:
        admin = r["path"].startswith("/admin/")
        assert r["auth"] == ("admin" if admin else "user"), r
        assert r.get("listener", "main") == ("admin" if admin else "main"), r
        fb = r["fallback"]
        # Routes that answer with a job or a search: retry later, not an empty 200.
        if r["method"] == "POST" or r["path"] in ("/api/v1/jobs/{job_id}/result",
                                                  "/api/v1/search/creator/{username}"):
            assert fb["status"] == 503 and "detail" in fb["body"], r
            if not admin:
                assert "Retry-After" in fb["headers"], r
        else:
            # Only the stats fallback claims success (with zeroed counts); every
            # other read's fallback says it failed.
            stats = r["path"] == BASE + "/system/stats"
            assert fb.get("status", 200) == 200 and fb["body"]["success"] is stats, r


def test_missing_plugin_serves_fallbacks():
    def break_plugin(k):
        m = k.read_conf("60-creator.json")
        m["plugin"]["file"] = "/nonexistent/keel-test/creator-missing.so"
        k.write_conf("60-creator.json", m)

    with Keeld(confdir_mutator=break_plugin) as k:
        manifest = k.read_conf("60-creator.json")["plugin"]
        token = user_token()
        fallback_header = "creator; reason=not_installed"
        for route in manifest["routes"]:
            path = route["path"].replace("{username}", "someone") \
                .replace("{job_id}", str(uuid.uuid4()))
            fb = route["fallback"]
            if route.get("listener") == "admin":
                r = k.admin(route["method"], path, body={"email": "x@y.z", "amount": 1})
            else:
                body = {"username": "someone"} if route["method"] == "POST" else None
                r = k.request(route["method"], path, body=body, token=token)
                anon = k.request(route["method"], path, body=body)
                assert anon.status == 403, (path, anon)
                assert anon.json() == {"detail": "Not authenticated"}, (path, anon)
            assert r.status == fb.get("status", 200), (path, r)
            assert r.header("X-Keel-Fallback") == fallback_header, (path, r.headers)
            assert r.json() == _replace_reason(fb["body"], "not_installed"), (path, r.json())
            for hname, value in fb.get("headers", {}).items():
                assert r.header(hname) == value, (path, r.headers)

        # The two bodies the contract spells out, checked literally.
        r = k.get(BASE + "/system/stats", token=token)
        assert r.json() == {
            "success": True,
            "stats": {"profiles": ZEROS, "posts": ZEROS,
                      "system": {"status": "fallback", "ai_system": "unavailable"}},
            "message": "System statistics (fallback mode)",
            "error": "Primary endpoint failed: not_installed"}, r.json()
        r = k.get(BASE + "/unlocked", token=token)
        assert r.json() == {
            "success": False, "profiles": [], "error": "Creator service unavailable",
            "message": "Unable to retrieve unlocked profiles - database connection issues"}
