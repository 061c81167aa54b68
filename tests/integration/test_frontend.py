"""The web frontend's calls, replayed as its browser sends them.

Every call carries the frontend's Origin and is preceded by the CORS
preflight the browser sends for a request with an Authorization header.
The answers are checked field by field, with the types and enum values the
frontend's TypeScript reads, and every body is also validated against the
published /openapi.json (apidoc.Recorder).

The creator flow: search (GET /api/v1/search/creator/{u}) -> 202 job ->
poll /jobs/{id}/status until "completed" (the job is completed by
POST /admin/import here; the job runner is tested elsewhere) -> /result ->
preview -> 402 with the top-up text -> unlock by profile_id -> portfolio
(/auth/unlocked, /auth/unlocked-profiles) -> posts with limit/offset ->
credits header and billing pages.
"""

import json
import re
import secrets
import uuid

import apidoc
from keeltest import Keeld, user_token

TIMEOUT = 240

ORIGIN = "http://localhost:3000"
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ROLES = {"free", "standard", "premium", "enterprise", "admin", "super_admin"}
JOB_STATUSES = {"queued", "processing", "completed", "failed"}


def name(prefix="fe"):
    return prefix + secrets.token_hex(5)


class Browser:
    """The frontend's HTTP client: Origin on every call, a preflight first."""

    def __init__(self, k, recorder, sub=None, email=None, metadata=None):
        self.k = k
        self.rec = recorder
        self.sub = sub or str(uuid.uuid4())
        self.email = email or "fe-%s@test.keel" % self.sub[:12]
        self.token = user_token(self.sub, self.email, user_metadata=metadata or {})

    def preflight(self, method, path, headers="authorization,content-type"):
        r = self.k.request("OPTIONS", path, headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers})
        assert r.status == 204, (path, r)
        assert r.header("Access-Control-Allow-Origin") == ORIGIN, (path, r.headers)
        allowed = [m.strip() for m in r.header("Access-Control-Allow-Methods", "").split(",")]
        assert method in allowed, (path, r.headers)
        allowed_headers = r.header("Access-Control-Allow-Headers", "").lower()
        assert "authorization" in allowed_headers and "content-type" in allowed_headers, r.headers
        return r

    def call(self, method, path, body=None, record=True):
        self.preflight(method, path)
        r = self.k.request(method, path, body=body, token=self.token, headers={"Origin": ORIGIN})
        assert r.header("Access-Control-Allow-Origin") == ORIGIN, (path, r.headers)
        if record:
            self.rec.add(method, path, r)
        return r

    def get(self, path):
        return self.call("GET", path)

    def post(self, path, body=None):
        return self.call("POST", path, body)


def import_profile(k, username, posts=0, ai=True):
    line = {"username": username, "full_name": "Full " + username, "biography": "bio of " + username,
            "followers_count": 1000, "following_count": 10, "posts_count": posts,
            "is_verified": True, "is_private": False,
            "profile_pic_url": "https://cdn.test/%s.jpg" % username,
            "posts": [{"shortcode": "%s_%02d" % (username, i), "caption": "post %d" % i,
                       "likes_count": 10 * i, "comments_count": i,
                       "display_url": "https://cdn.test/%s/%d.jpg" % (username, i),
                       "taken_at": "2024-01-01T%02d:00:00Z" % i,
                       "ai": {"content_category": "travel", "sentiment": "positive",
                              "sentiment_score": 0.5, "language_code": "en"}}
                      for i in range(posts)]}
    if ai:
        line["ai"] = {"primary_content_type": "travel", "avg_sentiment_score": 0.5,
                      "content_distribution": {"travel": 1.0}, "language_distribution": {"en": 1.0},
                      "content_quality_score": 8.0}
    r = k.admin_post("/admin/import", body=json.dumps(line) + "\n",
                     headers={"Content-Type": "application/x-ndjson"})
    assert r.status == 200 and r.json()["failed"] == 0, r
    return r.json()


# ---------------------------------------------------------------- field checks

def check_types(obj, spec, where):
    """spec: key -> type, tuple of types, or a set of allowed values."""
    for key, want in spec.items():
        assert key in obj, "%s: %s missing in %s" % (where, key, sorted(obj))
        v = obj[key]
        if isinstance(want, set):
            assert v in want, "%s.%s = %r not in %s" % (where, key, v, want)
        else:
            ok = isinstance(v, want) and not (want in (int, (int, type(None))) and
                                              isinstance(v, bool))
            assert ok, "%s.%s = %r is not %s" % (where, key, v, want)


OPT_STR = (str, type(None))
OPT_NUM = (int, float, type(None))
BASE_PROFILE = {"id": str, "username": str, "full_name": OPT_STR, "biography": OPT_STR,
                "followers_count": int, "following_count": int, "posts_count": int,
                "is_verified": bool, "is_private": bool, "profile_pic_url": OPT_STR}
POST = {"id": str, "shortcode": str, "caption": OPT_STR, "likes_count": int,
        "comments_count": int, "engagement_rate": OPT_NUM, "display_url": OPT_STR,
        "taken_at": OPT_STR, "ai_analysis": dict}


def check_full(body, username):
    check_types(body, {"success": {True}, "unlocked": {True}, "unlock_required": {False},
                       "preview_mode": {False}, "profile": dict}, "full")
    p = body["profile"]
    check_types(p, dict(BASE_PROFILE, engagement_rate=OPT_NUM, avg_likes=OPT_NUM,
                        avg_comments=OPT_NUM, ai_analysis=dict, posts=list), "full.profile")
    assert p["username"] == username and UUID.match(p["id"]), p
    assert "posts" not in body, "posts must be inside profile: %s" % sorted(body)
    ai = p["ai_analysis"]
    check_types(ai, {"available": bool, "primary_content_type": OPT_STR,
                     "content_distribution": (dict, type(None)),
                     "language_distribution": (dict, type(None)),
                     "avg_sentiment_score": OPT_NUM, "content_quality_score": OPT_NUM,
                     "profile_analyzed_at": OPT_STR}, "full.profile.ai_analysis")
    for post in p["posts"]:
        check_types(post, POST, "full.profile.posts[]")
    return p


# ---------------------------------------------------------------- the flow

def test_creator_flow_as_the_frontend_calls_it():
    rec = apidoc.Recorder()
    with Keeld() as k:
        fe = Browser(k, rec)
        u = name()

        # The main search: not stored yet -> a job.
        r = fe.get("/api/v1/search/creator/" + u)
        assert r.status == 202, r
        job = r.json()
        check_types(job, {"success": {True}, "job_id": str, "status": {"queued"},
                          "polling_url": str, "message": str}, "search 202")
        assert UUID.match(job["job_id"]), job
        assert job["polling_url"] == "/api/v1/jobs/%s/status" % job["job_id"], job
        # The old POST spelling gives the same job (one open job per user and name).
        r = fe.post("/api/v1/simple/creator/search/" + u)
        assert r.status == 202 and r.json()["job_id"] == job["job_id"], r

        # Polling: queued, and the result is not there yet.
        st = fe.get(job["polling_url"]).json()
        check_types(st, {"job_id": str, "job_type": {"creator_search"}, "status": JOB_STATUSES,
                         "progress_percent": int, "progress_message": str, "username": str,
                         "created_at": str, "updated_at": str, "error": OPT_STR}, "job status")
        assert st["status"] == "queued" and st["username"] == u, st
        assert ISO.match(st["created_at"]) and ISO.match(st["updated_at"]), st
        result_url = "/api/v1/jobs/%s/result" % job["job_id"]
        r = fe.get(result_url)
        assert r.status == 409 and r.json() == {"detail": "Job not finished", "status": "queued"}, r

        # The profile arrives (what the job runner stores is what import stores).
        assert import_profile(k, u, posts=12)["jobs_completed"] == 1
        st = fe.get(job["polling_url"]).json()
        assert st["status"] == "completed" and st["progress_percent"] == 100, st
        assert st["error"] is None, st

        # The result: a preview, since nothing is unlocked.
        r = fe.get(result_url)
        assert r.status == 200, r
        preview = r.json()
        check_types(preview, {"success": {True}, "preview_mode": {True},
                              "unlock_required": {True}, "unlocked": {False},
                              "unlock_cost": int, "unlock_endpoint": str, "profile": dict},
                    "preview")
        check_types(preview["profile"], BASE_PROFILE, "preview.profile")
        assert preview["unlock_cost"] == 25, preview
        assert preview["unlock_endpoint"] == "/api/v1/simple/creator/unlock/" + u, preview
        assert "posts" not in preview["profile"], preview
        profile_id = preview["profile"]["id"]
        # The search itself now previews too.
        r = fe.get("/api/v1/search/creator/" + u.upper())
        assert r.status == 200 and r.json() == preview, r

        # Posts are locked before the unlock.
        r = fe.get("/api/v1/simple/creator/%s/posts?limit=5&offset=0" % u)
        assert r.status == 403, r
        assert r.json() == {"success": False, "unlock_required": True, "unlock_cost": 25}

        # Unlock by profile_id without credits: 402 with a readable detail.
        k.db.query("UPDATE credit_wallets SET balance = 7 WHERE user_id ="
                   " (SELECT id FROM users WHERE supabase_user_id = %s)", fe.sub)
        r = fe.post("/api/v1/discovery/unlock-profile", {"profile_id": profile_id})
        assert r.status == 402, r
        body = r.json()
        assert isinstance(body["detail"], str) and "Insufficient credits" in body["detail"], body
        assert body == {"detail": "Insufficient credits: 25 required, 7 available",
                        "error": "insufficient_credits", "required": 25, "balance": 7}, body

        # Top-up, then the unlock by profile_id.
        r = k.admin_post("/admin/credits", body={"email": fe.email, "amount": 93,
                                                 "reason": "top-up"})
        assert r.status == 200, r
        r = fe.post("/api/v1/discovery/unlock-profile", {"profile_id": profile_id})
        assert r.status == 200, r
        un = r.json()
        check_types(un, {"success": {True}, "unlocked": {True}, "profile_id": str,
                         "username": str, "credits_spent": int, "credits_charged": int,
                         "balance": int, "expires_at": str, "access_expires_at": str,
                         "days_remaining": int}, "unlock")
        assert un["profile_id"] == profile_id and un["username"] == u, un
        assert un["credits_spent"] == un["credits_charged"] == 25 and un["balance"] == 75, un
        assert un["expires_at"] == un["access_expires_at"] and ISO.match(un["expires_at"]), un
        assert un["days_remaining"] == 30, un
        # Never charged twice.
        again = fe.post("/api/v1/discovery/unlock-profile", {"profile_id": profile_id}).json()
        assert again["credits_spent"] == 0 and again["balance"] == 75, again

        # Full analytics, posts inside the profile.
        r = fe.get("/api/v1/search/creator/" + u)
        assert r.status == 200, r
        p = check_full(r.json(), u)
        assert len(p["posts"]) == 12 and p["ai_analysis"]["available"] is True, p
        assert ISO.match(p["ai_analysis"]["profile_analyzed_at"]), p
        # The finished job's result follows what the search answers now.
        r = fe.get(result_url)
        assert r.status == 200 and r.json()["preview_mode"] is False, r
        check_full(r.json(), u)

        # The portfolio page.
        r = fe.get("/api/v1/auth/unlocked?page=1&page_size=10")
        assert r.status == 200, r
        port = r.json()
        assert port["success"] is True and len(port["profiles"]) == 1, port
        entry = port["profiles"][0]
        check_types(entry, dict(BASE_PROFILE, profile_id=str, engagement_rate=OPT_NUM,
                                unlocked_at=str, access_granted_at=str, access_expires_at=str,
                                days_remaining=int, credits_spent=int, ai_analysis=dict),
                    "portfolio entry")
        assert entry["id"] == entry["profile_id"] == profile_id, entry
        assert entry["credits_spent"] == 25 and entry["days_remaining"] == 30, entry
        assert entry["access_expires_at"] == un["expires_at"], entry
        assert entry["ai_analysis"]["available"] is True, entry
        pg = port["pagination"]
        assert pg == {"page": 1, "current_page": 1, "page_size": 10, "total": 1,
                      "total_count": 1, "total_items": 1, "total_pages": 1, "has_next": False,
                      "has_previous": False}, pg

        # The list every page polls.
        r = fe.get("/api/v1/auth/unlocked-profiles")
        assert r.status == 200, r
        names = r.json()
        assert names["success"] is True, names
        assert [(e["username"], e["profile_id"]) for e in names["profiles"]] == \
            [(u, profile_id)], names
        assert ISO.match(names["profiles"][0]["unlocked_at"]), names

        # Posts with the frontend's limit/offset (newest first: 11, 10, ...).
        r = fe.get("/api/v1/simple/creator/%s/posts?limit=5&offset=5" % u)
        assert r.status == 200, r
        posts = r.json()
        assert [q["shortcode"] for q in posts["posts"]] == \
            ["%s_%02d" % (u, i) for i in (6, 5, 4, 3, 2)], posts
        for q in posts["posts"]:
            check_types(q, POST, "posts[]")
        pgn = posts["pagination"]
        assert (pgn["limit"], pgn["offset"], pgn["total_count"], pgn["total_pages"],
                pgn["has_more"]) == (5, 5, 12, 3, True), pgn
        last = fe.get("/api/v1/simple/creator/%s/posts?limit=5&offset=10" % u).json()
        assert len(last["posts"]) == 2 and last["pagination"]["has_more"] is False, last
        # page/page_size still work.
        old = fe.get("/api/v1/simple/creator/%s/posts?page=2&page_size=5" % u).json()
        assert [q["shortcode"] for q in old["posts"]] == \
            [q["shortcode"] for q in posts["posts"]], old

        # The header's balance and the billing pages.
        r = fe.get("/api/v1/credits/balance")
        assert r.status == 200, r
        bal = r.json()
        check_types(bal, {"current_balance": int, "balance": int, "monthly_allowance": int,
                          "package_name": str, "billing_cycle_start": OPT_STR,
                          "wallet_status": {"active", "locked"}}, "balance")
        assert bal["balance"] == bal["current_balance"] == 75, bal
        assert ISO.match(bal["billing_cycle_start"]), bal
        tx = fe.get("/api/v1/credits/transactions?page=1&page_size=10").json()
        for t in tx["transactions"]:
            check_types(t, {"id": int, "amount": int, "type": str, "description": OPT_STR,
                            "created_at": str, "balance_after": int}, "transactions[]")
        assert [(t["amount"], t["type"], t["balance_after"]) for t in tx["transactions"]] == \
            [(-25, "unlock", 75), (93, "admin", 100)], tx
        pricing = fe.get("/api/v1/credits/pricing").json()
        assert {"action": "profile_unlock", "cost": 25, "duration_days": 30}.items() <= \
            pricing["actions"][0].items(), pricing

        me = fe.get("/api/v1/auth/me").json()
        check_types(me, {"id": str, "email": str, "full_name": OPT_STR, "role": ROLES,
                         "status": {"active", "pending"}, "subscription_tier": str,
                         "created_at": str, "credits": dict}, "auth/me")
        assert me["role"] == "free" and me["credits"] == {"balance": 75}, me
        assert ISO.match(me["created_at"]) and me["email"] == fe.email, me

        doc = k.get("/openapi.json").json()
        assert rec.check(doc) == len(rec.cases) >= 20


def test_unlock_body_validation_and_unknown_profile():
    rec = apidoc.Recorder()
    with Keeld() as k:
        fe = Browser(k, rec)
        path = "/api/v1/discovery/unlock-profile"
        for body, loc in [({}, ["body", "username"]),
                          ({"profile_id": "not-a-uuid"}, ["body", "profile_id"]),
                          ({"profile_id": 5}, ["body", "profile_id"]),
                          ({"username": "bad name"}, ["body", "username"])]:
            r = fe.post(path, body)
            assert r.status == 422, (body, r)
            assert any(e["loc"] == loc for e in r.json()["detail"]), (body, r.json())
        r = fe.post(path, {"profile_id": str(uuid.uuid4())})
        assert r.status == 404 and r.json() == {"detail": "Profile not found"}, r
        # Both given: profile_id names the row.
        u = name()
        import_profile(k, u)
        pid = fe.get("/api/v1/search/creator/" + u).json()["profile"]["id"]
        k.admin_post("/admin/credits", body={"email": fe.email, "amount": 25})
        r = fe.post(path, {"profile_id": pid, "username": name("other")})
        assert r.status == 200 and r.json()["username"] == u, r
        for bad in ["limit=0", "limit=101", "offset=-1", "limit=x"]:
            r = fe.get("/api/v1/simple/creator/%s/posts?%s" % (u, bad))
            assert r.status == 422, (bad, r)
            assert r.json()["detail"][0]["loc"][0] == "query", r.json()
        rec.check(k.get("/openapi.json").json())


def test_failed_job_result_and_other_users_jobs():
    rec = apidoc.Recorder()
    with Keeld() as k:
        alice, bob = Browser(k, rec), Browser(k, rec)
        job = alice.get("/api/v1/search/creator/" + name()).json()["job_id"]
        for suffix in ["status", "result"]:
            r = bob.get("/api/v1/jobs/%s/%s" % (job, suffix))
            assert r.status == 404 and r.json() == {"detail": "Job not found"}, r
        r = alice.get("/api/v1/jobs/not-a-uuid/result")
        assert r.status == 422, r
        k.db.query("UPDATE search_jobs SET status = 'processing' WHERE id = %s", job)
        r = alice.get("/api/v1/jobs/%s/result" % job)
        assert r.status == 409 and r.json()["status"] == "processing", r
        st = alice.get("/api/v1/jobs/%s/status" % job).json()
        assert st["status"] == "processing" and 0 <= st["progress_percent"] < 100, st
        k.db.query("UPDATE search_jobs SET status = 'failed' WHERE id = %s", job)
        st = alice.get("/api/v1/jobs/%s/status" % job).json()
        assert st["status"] == "failed" and isinstance(st["error"], str) and st["error"], st
        r = alice.get("/api/v1/jobs/%s/result" % job)
        assert r.status == 200, r
        body = r.json()
        assert body["success"] is False and body["status"] == "failed", body
        assert isinstance(body["error"], str) and body["error"], body
        rec.check(k.get("/openapi.json").json())


def test_roles_follow_the_replaced_systems_mapping():
    rec = apidoc.Recorder()
    with Keeld() as k:
        for metadata, role in [({}, "free"), ({"role": "free"}, "free"),
                               ({"role": "premium"}, "premium"),
                               ({"role": "standard"}, "standard"),
                               ({"role": "super_admin"}, "super_admin"),
                               ({"role": "superadmin"}, "super_admin"),
                               ({"role": "admin"}, "free"), ({"role": "owner"}, "free"),
                               ({"role": 3}, "free")]:
            fe = Browser(k, rec, metadata=metadata)
            me = fe.get("/api/v1/auth/me").json()
            assert me["role"] == role, (metadata, me)
            stored = k.db.scalar("SELECT role FROM users WHERE supabase_user_id = %s", fe.sub)
            assert stored == role, (metadata, stored)
        # Rows from before the mapping and roles set by an operator.
        for stored, shown in [("user", "free"), ("admin", "admin"),
                              ("enterprise", "enterprise"), ("superadmin", "super_admin"),
                              ("weird", "free")]:
            email = "role-%s@test.keel" % secrets.token_hex(5)
            k.db.query("INSERT INTO users (email, role) VALUES (%s, %s)", email, stored)
            me = Browser(k, rec, email=email).get("/api/v1/auth/me").json()
            assert me["role"] == shown and me["role"] in ROLES, (stored, me)
        rec.check(k.get("/openapi.json").json())


def test_database_down_answers_keep_the_frontends_shapes():
    """Reads degrade to 200 bodies the frontend can still render; each one
    matches the document (where degraded bodies are described)."""
    rec = apidoc.Recorder()
    with Keeld(env={"KEEL_DATABASE_URL": "postgresql://keel@127.0.0.1:1/keel"}) as k:
        fe = Browser(k, rec)
        u = name()
        for path in ["/api/v1/search/creator/" + u, "/api/v1/auth/unlocked",
                     "/api/v1/auth/unlocked-profiles", "/api/v1/credits/balance",
                     "/api/v1/credits/transactions", "/api/v1/jobs/%s/status" % uuid.uuid4(),
                     "/api/v1/jobs/%s/result" % uuid.uuid4(),
                     "/api/v1/simple/creator/%s/posts?limit=3" % u]:
            r = fe.get(path)
            assert r.status == 200, (path, r)
            assert r.header("X-Keel-Degraded") == "database", (path, r.headers)
            assert r.json()["success"] is False, (path, r.json())
        port = fe.get("/api/v1/auth/unlocked").json()
        assert port["profiles"] == [] and port["pagination"]["current_page"] == 1, port
        bal = fe.get("/api/v1/credits/balance").json()
        assert bal["balance"] == 0 and bal["wallet_status"] == "active", bal
        r = fe.post("/api/v1/discovery/unlock-profile", {"profile_id": str(uuid.uuid4())})
        assert r.status == 503 and r.header("Retry-After"), r
        assert fe.get("/api/v1/auth/me").json()["role"] == "free"
        rec.check(k.get("/openapi.json").json())
