"""GET /openapi.json and GET /docs (docs/api.md).

- The document validates with a real OpenAPI validator from npm
  (@apidevtools/swagger-parser) and describes every main-listener route of
  the creator and credits manifests, with the bearer JWT scheme.
- Real answers of every creator and credits route, in every state the
  tests can produce (normal, preview, job, errors, degraded, fallback
  stubs), validate against the document's response schemas (Ajv, JSON
  Schema 2020-12): the document cannot drift from the code.
- The document follows the serving route table: a reload that adds a
  plugin adds its paths; a plugin that is down is marked as served by its
  stubs.
- /docs renders in headless Chromium from files keeld serves itself.
"""

import json
import os
import secrets
import tempfile
import uuid

import apidoc
import keeltest
from keeltest import Keeld, user_token

TIMEOUT = 240

BASE = "/api/v1/simple/creator"
PLUGINS = ("creator", "credits")


def name(prefix="oa"):
    return prefix + secrets.token_hex(5)


def manifest_routes(plugin_file):
    with open(os.path.join(keeltest.CONFDIR, plugin_file)) as f:
        m = json.load(f)["plugin"]
    return [(r["method"], r["path"]) for r in m["routes"] if r.get("listener", "main") == "main"]


MAIN_ROUTES = manifest_routes("60-creator.json") + manifest_routes("70-credits.json")


def validate(doc):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(doc, f)
        path = f.name
    try:
        return apidoc.node("validate", path)
    finally:
        os.unlink(path)


def test_document_validates_and_lists_every_route():
    with Keeld() as k:
        r = k.get("/openapi.json")
        assert r.status == 200 and r.header("Content-Type") == "application/json", r
        doc = r.json()
        rc, out, err = validate(doc)
        assert rc == 0, (out, err)
        assert out["ok"] is True and out["paths"] == len(doc["paths"]), out

        assert doc["openapi"] == "3.1.0", doc["openapi"]
        assert doc["components"]["securitySchemes"]["bearerAuth"] == {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "A Supabase access token (HS256, RS256 or ES256)"}
        for method, path in MAIN_ROUTES:
            op = doc["paths"][path][method.lower()]
            assert op["x-keel-served-by"] == "plugin" and op["x-keel-plugin"] in PLUGINS, op
            assert op["security"] == [{"bearerAuth": []}], (path, op)
            assert op["summary"] and not op["summary"].startswith(method), (path, op)
            assert "401" in op["responses"] and "403" in op["responses"], (path, op)
            schema = op["responses"]["200"]["content"]["application/json"]["schema"]
            assert schema, (path, op)
            # Every {param} of the template is a required path parameter.
            for seg in path.split("/"):
                if seg.startswith("{"):
                    assert {"name": seg[1:-1], "in": "path"}.items() <= \
                        next(p for p in op["parameters"] if p["name"] == seg[1:-1]).items()
        # Core routes are there, public ones without security; admin routes are not.
        assert "security" not in doc["paths"]["/health"]["get"]
        assert doc["paths"]["/api/v1/auth/me"]["get"]["x-keel-served-by"] == "core"
        assert not any(p.startswith("/admin/") for p in doc["paths"]), list(doc["paths"])
        # A plugin's named schemas live under its own prefix.
        assert "creator.Profile" in doc["components"]["schemas"]
        assert "credits.Balance" in doc["components"]["schemas"]
        ops = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
        assert len(ops) == len(set(ops)), ops

        # The validator is not a rubber stamp: a broken document is refused.
        bad = json.loads(json.dumps(doc))
        del bad["paths"]["/api/v1/credits/balance"]["get"]["responses"]["200"]["description"]
        rc, out, err = validate(bad)
        assert rc != 0 and "description" in err, (rc, out, err)


class User:
    def __init__(self, k, rec):
        self.k, self.rec = k, rec
        self.sub = str(uuid.uuid4())
        self.email = "oa-%s@test.keel" % self.sub[:12]
        self.token = user_token(self.sub, self.email)

    def call(self, method, path, body=None):
        r = self.k.request(method, path, body=body, token=self.token)
        self.rec.add(method, path, r)
        return r


def import_line(k, username, posts=3):
    line = {"username": username, "full_name": "F", "posts": [
        {"shortcode": "%s_%d" % (username, i), "likes_count": i, "taken_at": "2024-02-0%dT00:00:00Z"
         % (i + 1)} for i in range(posts)]}
    r = k.admin_post("/admin/import", body=json.dumps(line) + "\n",
                     headers={"Content-Type": "application/x-ndjson"})
    assert r.status == 200 and r.json()["failed"] == 0, r


def exercise(k, rec):
    """Calls every creator and credits route in the states one server can show."""
    u, other = User(k, rec), User(k, rec)
    stored, missing = name(), name()
    import_line(k, stored)
    u.call("GET", BASE + "/system/stats")
    u.call("GET", BASE + "/unlocked?page=1&page_size=5")
    u.call("GET", BASE + "/unlocked?page=0")
    u.call("GET", BASE + "/" + stored)
    u.call("GET", BASE + "/" + missing)
    u.call("GET", BASE + "/bad-name")
    u.call("GET", BASE + "/%s/status" % stored)
    u.call("GET", BASE + "/%s/status" % missing)
    u.call("GET", BASE + "/%s/posts" % stored)
    u.call("GET", BASE + "/%s/posts" % missing)
    job = u.call("POST", BASE + "/search/" + missing).json()["job_id"]
    u.call("GET", "/api/v1/search/creator/" + missing)
    u.call("GET", "/api/v1/search/creator/" + stored)
    u.call("GET", "/api/v1/search/creator/bad-name")
    u.call("GET", "/api/v1/jobs/%s/status" % job)
    u.call("GET", "/api/v1/jobs/%s/result" % job)
    other.call("GET", "/api/v1/jobs/%s/status" % job)
    u.call("GET", "/api/v1/jobs/nope/status")
    u.call("POST", BASE + "/unlock/" + stored)  # 402: no credits
    u.call("POST", "/api/v1/discovery/unlock-profile", {"username": missing})  # 404
    u.call("POST", "/api/v1/discovery/unlock-profile", {})  # 422
    k.admin_post("/admin/credits", body={"email": u.email, "amount": 60})
    u.call("POST", BASE + "/unlock/" + stored)
    pid = u.call("GET", "/api/v1/search/creator/" + stored).json()["profile"]["id"]
    u.call("POST", "/api/v1/discovery/unlock-profile", {"profile_id": pid})
    u.call("GET", BASE + "/%s/posts?limit=2&offset=1" % stored)
    import_line(k, missing, posts=1)
    u.call("GET", "/api/v1/jobs/%s/status" % job)
    u.call("GET", "/api/v1/jobs/%s/result" % job)
    u.call("GET", "/api/v1/auth/unlocked?page=1&page_size=20")
    u.call("GET", "/api/v1/auth/unlocked?page_size=500")
    u.call("GET", "/api/v1/auth/unlocked-profiles")
    u.call("GET", "/api/v1/credits/balance")
    u.call("GET", "/api/v1/credits/transactions?page=1&page_size=2")
    u.call("GET", "/api/v1/credits/transactions?page=-1")
    u.call("GET", "/api/v1/credits/pricing")
    # Without credentials every route answers the documented 403.
    for method, path in [("GET", "/api/v1/credits/balance"),
                         ("GET", "/api/v1/search/creator/" + stored)]:
        rec.add(method, path, k.request(method, path))
    rec.add("GET", "/api/v1/auth/unlocked",
            k.request("GET", "/api/v1/auth/unlocked", token="not.a.token"))


def test_real_answers_match_the_documented_schemas():
    rec = apidoc.Recorder()
    with Keeld() as k:
        exercise(k, rec)
        doc = k.get("/openapi.json").json()
        covered = {(c["method"], apidoc.template_of(doc, c["path"])) for c in rec.cases}
        assert set(MAIN_ROUTES) <= covered, set(MAIN_ROUTES) - covered
        statuses = {c["status"] for c in rec.cases}
        assert {200, 202, 401, 402, 403, 404, 409, 422} <= statuses, statuses
        assert rec.check(doc) == len(rec.cases) >= 35

        # A body the contract no longer allows is caught: the old 402 detail
        # object and full analytics with the posts beside the profile.
        wrong = apidoc.Recorder()
        for c in rec.cases:
            if c["status"] == 402:
                wrong.cases.append(dict(c, body={"detail": {"error": "insufficient_credits",
                                                            "required": 25, "balance": 0}}))
            if c["status"] == 200 and isinstance(c["body"].get("profile"), dict) and \
                    "posts" in c["body"]["profile"]:
                body = json.loads(json.dumps(c["body"]))
                body["posts"] = body["profile"].pop("posts")
                wrong.cases.append(dict(c, body=body))
        out = wrong.run(doc)
        assert len(out["failures"]) == len(wrong.cases) >= 2, out

    # The same routes with the database unreachable: the degraded bodies.
    rec = apidoc.Recorder()
    with Keeld(env={"KEEL_DATABASE_URL": "postgresql://keel@127.0.0.1:1/keel"}) as k:
        u = User(k, rec)
        for method, path in MAIN_ROUTES:
            path = path.replace("{username}", name()).replace("{job_id}", str(uuid.uuid4()))
            body = {"username": name()} if method == "POST" else None
            r = u.call(method, path, body)
            assert r.status in (200, 503), (path, r)
        rec.check(k.get("/openapi.json").json())


def test_stubs_are_marked_and_their_bodies_match():
    def break_plugins(k):
        for f in ("60-creator.json", "70-credits.json"):
            m = k.read_conf(f)
            m["plugin"]["file"] = "/nonexistent/keel-test/%s-missing.so" % m["plugin"]["name"]
            k.write_conf(f, m)

    rec = apidoc.Recorder()
    with Keeld(confdir_mutator=break_plugins) as k:
        doc = k.get("/openapi.json").json()
        rc, out, err = validate(doc)
        assert rc == 0, (out, err)
        u = User(k, rec)
        for method, path in MAIN_ROUTES:
            op = doc["paths"][path][method.lower()]
            assert op["x-keel-served-by"] == "fallback", op
            fb = op["x-keel-fallback"]
            assert fb["reason"] == "not_installed", fb
            assert fb["header"] == "%s; reason=not_installed" % op["x-keel-plugin"], fb
            assert op["description"].startswith("**Served by a fallback stub**"), op
            concrete = path.replace("{username}", "someone").replace("{job_id}",
                                                                     str(uuid.uuid4()))
            r = u.call(method, concrete, {"username": "someone"} if method == "POST" else None)
            # The stub answers what the document says it answers.
            assert r.status == fb["status"] and r.json() == fb["body"], (path, r)
            assert r.header("X-Keel-Fallback") == fb["header"], r.headers
        rec.check(doc)


def test_reload_adds_a_plugins_paths():
    saved = {}

    def without_credits(k):
        saved["credits"] = k.read_conf("70-credits.json")
        k.remove_conf("70-credits.json")

    with Keeld(confdir_mutator=without_credits) as k:
        doc = k.get("/openapi.json").json()
        assert "/api/v1/credits/balance" not in doc["paths"], list(doc["paths"])
        assert "credits.Balance" not in doc["components"]["schemas"]
        k.write_conf("70-credits.json", saved["credits"])
        r = k.admin_post("/admin/reload", body={})
        assert r.status == 200, r
        doc = k.get("/openapi.json").json()
        op = doc["paths"]["/api/v1/credits/balance"]["get"]
        assert op["x-keel-plugin"] == "credits" and op["x-keel-served-by"] == "plugin", op
        assert "credits.Balance" in doc["components"]["schemas"]
        assert "credits" in [t["name"] for t in doc["tags"]], doc["tags"]
        rc, out, err = validate(doc)
        assert rc == 0, (out, err)


def test_reloads_serve_the_documentation_conf_d_says_changed_or_not():
    """A reload copies what it keeps of the conf.d it read: documentation that
    changed is served from then on, through later reloads that leave it as
    it is, and so is the documentation nobody touched."""
    with Keeld() as k:
        stats = "/api/v1/simple/creator/system/stats"
        before = k.get("/openapi.json").json()["paths"][stats]["get"]
        conf = k.read_conf("50-example.json")
        conf["plugin"]["routes"][0]["summary"] = "Says hello, first words"
        k.write_conf("50-example.json", conf)
        for words in ("first words", "first words", "second words", "second words"):
            if words == "second words":
                conf["plugin"]["routes"][0]["summary"] = "Says hello, second words"
                k.write_conf("50-example.json", conf)
            r = k.admin_post("/admin/reload", body={})
            assert r.status == 200 and r.json()["ok"] is True, r
            doc = k.get("/openapi.json").json()
            op = doc["paths"]["/api/v1/example/hello"]["get"]
            assert op["summary"] == "Says hello, " + words, op
            assert doc["paths"][stats]["get"] == before
        rc, out, err = validate(doc)
        assert rc == 0, (out, err)


def test_docs_page_renders_in_chromium():
    with Keeld() as k:
        r = k.get("/docs")
        assert r.status == 200 and r.header("Content-Type").startswith("text/html"), r
        assert k.get("/docs/swagger-ui-bundle.js").status == 200
        for bad in ["/docs/../../etc/passwd", "/docs/index.html", "/docs/%2e%2e"]:
            assert k.get(bad).status == 404, bad
        shot = os.environ.get("KEEL_TEST_SCREENSHOT") or os.path.join(
            keeltest.builddir, "tests", "integration", "logs", "api-docs.png")
        os.makedirs(os.path.dirname(shot), exist_ok=True)
        rc, out, err = apidoc.node("browse", k.url("/docs"), shot, timeout=120)
        assert rc == 0, (out, err)
        assert out["status"] == 200 and out["title"] == "keel API reference", out
        assert out["console_errors"] == [], out["console_errors"]
        base = k.url("/").rstrip("/")
        foreign = [u for u in out["requests"] if not u.startswith(base)]
        assert foreign == [], foreign
        assert k.url("/openapi.json") in out["requests"], out["requests"]
        for method, path in MAIN_ROUTES:
            assert "%s %s" % (method, path) in out["operations"], (method, path)
        assert {"creator", "credits", "core"} <= set(out["tags"]), out["tags"]
        assert os.path.getsize(shot) > 10000
