"""Core host: plugin loading, fallback stubs, routing, CORS, --check
and the token battery, against the installed keeld on loopback."""

import base64
import json
import os
import re
import shutil
import time
import uuid

import keeltest
from keeltest import Keeld, built_plugin, installed_plugin, http
import tokens

NOT_AUTH = {"detail": "Not authenticated"}


def testplug_manifest(path, enabled=True):
    """A manifest for the test-only plugins (they all call themselves testplug)."""
    return {"plugin": {
        "name": "testplug", "enabled": enabled, "file": path,
        "routes": [
            {"method": "GET", "path": "/api/v1/testplug/hello", "auth": "user",
             "fallback": {"status": 200,
                          "body": {"success": False, "error": "testplug down: ${reason}"}}},
        ]}}


def versioned_manifest(path, enabled=True):
    m = testplug_manifest(path, enabled)
    m["plugin"]["routes"].append({"method": "GET", "path": "/api/v1/testplug/slow", "auth": "public"})
    return m


def token():
    return keeltest.user_token()


# ------------------------------------------------------------------ plugins

def test_loaded_plugin_answers():
    with Keeld() as k:
        r = k.get("/api/v1/example/hello")
        assert r.status == 200, r
        assert r.json() == {"plugin": "example", "message": "hello"}
        assert r.header("X-Keel-Fallback") is None
        r = k.get("/api/v1/example/whoami", token=token())
        assert r.status == 200, r
        assert r.json()["plugin"] == "example"
        r = k.get("/api/v1/example/echo/caf%C3%A9")
        assert r.json() == {"word": "café"}, r
        h = k.get("/health").json()
        assert h["plugins"] == {"example": "loaded", "creator": "loaded", "credits": "loaded"}, h


def test_missing_so_gives_not_installed_stubs():
    def mut(k):
        m = k.read_conf("50-example.json")
        m["plugin"]["file"] = os.path.join(k.dir, "nowhere", "example.so")
        k.write_conf("50-example.json", m)
    with Keeld(mut) as k:
        r = k.get("/api/v1/example/hello")  # public route: fallback for everyone
        assert r.status == 200
        assert r.json() == {"plugin": "example", "message": "fallback", "reason": "not_installed"}
        assert r.header("X-Keel-Fallback") == "example; reason=not_installed"
        r = k.get("/api/v1/example/whoami")
        assert r.status == 403 and r.json() == NOT_AUTH, r
        r = k.get("/api/v1/example/whoami", token="garbage")
        assert r.status == 401, r
        r = k.get("/api/v1/example/whoami", token=token())
        assert r.status == 200
        assert r.json() == {"plugin": "example", "email": None, "fallback": True}
        assert r.header("X-Keel-Fallback") == "example; reason=not_installed"
        log = k.log_text()
        assert "plugin example is down" in log and "stage=dlopen" in log
        assert "reason=not_installed" in log and "nowhere/example.so" in log
        assert k.get("/health").json()["plugins"]["example"] == "fallback"


def _testplug(so, **kw):
    def mut(k):
        k.write_conf("70-testplug.json", testplug_manifest(so, **kw))
    return mut


def test_abi_mismatch_gives_stubs_and_says_what_to_rebuild():
    with Keeld(_testplug(built_plugin("abi_future"))) as k:
        r = k.get("/api/v1/testplug/hello", token=token())
        assert r.status == 200
        assert r.json() == {"success": False, "error": "testplug down: abi_mismatch"}
        assert r.header("X-Keel-Fallback") == "testplug; reason=abi_mismatch"
        k.wait_log(r"stage=abi reason=abi_mismatch: built for ABI 2\.3, host has 1\.\d+")
        assert k.get("/api/v1/testplug/hello").status == 403


def test_init_failure_gives_init_failed():
    with Keeld(_testplug(built_plugin("init_fail"))) as k:
        r = k.get("/api/v1/testplug/hello", token=token())
        assert r.status == 200, r
        assert r.header("X-Keel-Fallback") == "testplug; reason=init_failed"
        k.wait_log(r"stage=init reason=init_failed")


def test_unresolved_symbol_fails_at_load_with_loader_message():
    with Keeld(_testplug(built_plugin("unresolved"))) as k:
        r = k.get("/api/v1/testplug/hello", token=token())
        assert r.status == 200
        assert r.header("X-Keel-Fallback") == "testplug; reason=load_failed"
        k.wait_log(r"stage=dlopen reason=load_failed: .*undefined symbol: "
                   r"keel_test_symbol_that_does_not_exist")


def test_disabled_plugin_gives_disabled_stubs():
    with Keeld(_testplug(built_plugin("versioned_v1"), enabled=False)) as k:
        r = k.get("/api/v1/testplug/hello", token=token())
        assert r.header("X-Keel-Fallback") == "testplug; reason=disabled", r


def test_summary_table_at_startup():
    with Keeld(_testplug(built_plugin("init_fail"))) as k:
        log = k.log_text()
        assert "PLUGIN" in log and "STATE" in log
        assert any("testplug" in l and "fallback" in l and "init_failed" in l
                   for l in log.splitlines())
        assert any("example" in l and "loaded" in l for l in log.splitlines())


def test_route_conflict_refused_naming_both_plugins():
    def mut(k):
        m = k.read_conf("50-example.json")
        m["plugin"]["name"] = "example2"
        k.write_conf("55-example2.json", m)
    k = Keeld(mut, start=False)
    r = k.run("--check")
    assert r.returncode != 0, r.stdout
    assert 'plugin "example2"' in r.stdout and 'plugin "example"' in r.stdout, r.stdout


def abi11_manifest(routes=("status", "query")):
    return {"plugin": {
        "name": "abi11", "file": built_plugin("abi11"),
        "routes": [{"method": "GET", "path": "/api/v1/abi11/" + r, "auth": "public"}
                   for r in routes]}}


def test_plugin_refused_for_its_routes_never_runs_init():
    # The manifest leaves out a route the plugin implements: the plugin is
    # refused at the routes stage before its init has any effect, at start
    # and on reload alike.
    def mut(k):
        k.write_conf("70-abi11.json", abi11_manifest(routes=("status",)))
    with Keeld(mut) as k:
        k.wait_log(r"plugin abi11 is down: .*stage=routes")
        assert "abi11 init ran" not in k.log_text()
        res = k.admin_post("/admin/reload?plugin=abi11").json()
        assert res["ok"] is False and res["results"][0]["stage"] == "routes", res
        assert "abi11 init ran" not in k.log_text()
    # A plugin whose routes conflict with another plugin's is refused before
    # it is loaded, so its init does not run either.
    def conflict(k):
        m = abi11_manifest()
        m["plugin"]["routes"].append(
            {"method": "GET", "path": "/api/v1/example/hello", "auth": "public"})
        k.write_conf("70-abi11.json", m)
    with Keeld(conflict) as k:
        k.wait_log(r"plugin abi11 refused: .*example")
        assert "abi11 init ran" not in k.log_text()
        assert k.get("/api/v1/example/hello").json()["plugin"] == "example"


def test_query_arg_tells_absent_from_malformed():
    with Keeld(lambda k: k.write_conf("70-abi11.json", abi11_manifest())) as k:
        k.wait_log(r"abi11 init ran")
        assert k.get("/api/v1/abi11/query").json() == {"name": "absent", "value": None}
        assert k.get("/api/v1/abi11/query?name=%zz").json() == {"name": "malformed",
                                                                "value": None}
        assert k.get("/api/v1/abi11/query?name=a%00").json()["name"] == "malformed"
        assert k.get("/api/v1/abi11/query?name=a+b%21").json() == {"name": "present",
                                                                   "value": "a b!"}


def test_no_database_result_outlives_its_request():
    with Keeld() as k:
        tok = token()
        for path in ("/api/v1/auth/me", "/api/v1/simple/creator/system/stats",
                     "/api/v1/simple/creator/unlocked?page=1&page_size=5"):
            r = k.get(path, token=tok)
            assert r.status == 200, (path, r)
        # A request's results go when it completes, which libmicrohttpd
        # reports a moment after the client has the answer.
        def live():
            m = re.search(r"^keel_plugin_db_results_live (\d+)$", k.admin_get("/metrics").text,
                          re.M)
            assert m is not None, "no keel_plugin_db_results_live in /metrics"
            return int(m.group(1))
        keeltest.wait_until(lambda: live() == 0, "every database result to be freed", timeout=5)


# ------------------------------------------------------------------ routing

def test_404_and_405_bodies():
    with Keeld() as k:
        r = k.get("/api/v1/nothing/here")
        assert r.status == 404 and r.json() == {"detail": "Not Found"}
        r = k.post("/api/v1/simple/creator/unlocked", token=token())
        assert r.status == 405 and r.json() == {"detail": "Method Not Allowed"}
        assert "GET" in r.header("Allow") and "POST" not in r.header("Allow")
        r = k.request("DELETE", "/health")
        assert r.status == 405 and r.header("Allow") == "GET, OPTIONS"
        # Literal segments beat parameters: /unlocked is not a username.
        r = k.get("/api/v1/simple/creator/unlocked")
        assert r.status == 403
        r = k.get("/api/v1/example/echo/a%2Fb")
        assert r.status == 404
        r = k.get("/api/v1/example/echo/%00")
        assert r.status == 404
        r = k.get("/api/v1/example/../example/hello")
        assert r.status == 404


def test_long_path_still_matches_its_route():
    # Paths up to the URI limit (4 KiB) are matched like short ones: a 2,000
    # byte username reaches the creator route and gets its validation error.
    long_name = "a" * 2000
    with Keeld() as k:
        r = k.get("/api/v1/simple/creator/" + long_name, token=token())
        assert r.status == 422, r
        assert r.json()["detail"][0]["loc"] == ["path", "username"], r.json()
        r = k.request("OPTIONS", "/api/v1/simple/creator/" + long_name)
        assert r.status == 204, r
        assert r.header("Allow") == "GET, OPTIONS", r.header("Allow")
        r = k.request("DELETE", "/api/v1/simple/creator/" + long_name)
        assert r.status == 405 and r.header("Allow") == "GET, OPTIONS", r


def test_cors_preflight_and_headers():
    with Keeld() as k:
        origin = "http://localhost:3000"
        r = k.request("OPTIONS", "/api/v1/simple/creator/unlocked",
                      headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                               "Access-Control-Request-Headers": "authorization"})
        assert r.status == 204, r
        assert r.header("Access-Control-Allow-Origin") == origin
        assert "Authorization" in r.header("Access-Control-Allow-Headers")
        assert "GET" in r.header("Access-Control-Allow-Methods")
        r = k.get("/health", headers={"Origin": origin})
        assert r.header("Access-Control-Allow-Origin") == origin
        r = k.get("/health", headers={"Origin": "http://evil.example"})
        assert r.header("Access-Control-Allow-Origin") is None
        r = k.request("OPTIONS", "/no/such/path", headers={"Origin": origin,
                      "Access-Control-Request-Method": "GET"})
        assert r.status == 404
        # Stubs get preflight answers too.
    def mut(k):
        k.write_conf("70-testplug.json", testplug_manifest(built_plugin("init_fail")))
    with Keeld(mut) as k:
        r = k.request("OPTIONS", "/api/v1/testplug/hello", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"})
        assert r.status == 204 and r.header("Access-Control-Allow-Origin")


# ------------------------------------------------------------------ config

def test_check_passes_on_shipped_config():
    k = Keeld(start=False)
    r = k.run("--check")
    assert r.returncode == 0, r.stdout
    assert "example" in r.stdout and "creator" in r.stdout and "OK" in r.stdout


def test_check_fails_on_bad_config_naming_file_and_key():
    def mut(k):
        k.write_conf("15-bad.json", {"server": {"prot": 1}})
    k = Keeld(mut, start=False)
    r = k.run("--check")
    assert r.returncode != 0
    assert "15-bad.json" in r.stdout, r.stdout


def test_check_fails_on_broken_plugin():
    k = Keeld(_testplug(built_plugin("abi_future")), start=False)
    r = k.run("--check")
    assert r.returncode != 0
    assert "testplug" in r.stdout and "abi_mismatch" in r.stdout, r.stdout


def test_version():
    r = Keeld(start=False).run("--version")
    assert r.returncode == 0 and r.stdout.startswith("keeld "), r.stdout


def test_env_overrides_and_bad_env():
    k = Keeld(start=False, env={"KEEL_LOG_LEVEL": "loud"})
    r = k.run("--check")
    assert r.returncode != 0 and "KEEL_LOG_LEVEL" in r.stdout, r.stdout


def test_sigterm_finishes_in_flight_requests():
    import threading
    def mut(k):
        k.write_conf("70-testplug.json", versioned_manifest(built_plugin("versioned_v1")))
    k = Keeld(mut)
    result = {}
    def slow():
        result["r"] = k.get("/api/v1/testplug/slow?ms=1500", timeout=20)
    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)
    code = k.stop()
    t.join(20)
    assert code == 0
    assert result["r"].status == 200 and result["r"].json()["version"] == "1"


# ------------------------------------------------------------------ tokens

def _b64(d):
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def test_token_battery():
    S = keeltest.SECRET
    sub = str(uuid.uuid4())
    email = "battery@test.keel"
    now = int(time.time())
    good = tokens.user_claims(sub, email)

    def tok(**over):
        claims = tokens.user_claims(sub, email)
        for key, value in over.items():
            if value is None:
                claims.pop(key, None)
            else:
                claims[key] = value
        return tokens.make_token(claims, secret=S)

    cases = [
        ("valid", tok(), 200, None),
        ("expired", tok(exp=now - 120), 401, "token_expired"),
        ("within leeway", tok(exp=now - 5), 200, None),
        ("future nbf", tok(nbf=now + 600), 401, "invalid_token"),
        ("wrong aud", tok(aud="someone-else"), 401, "invalid_token"),
        ("aud array", tok(aud=["x", "authenticated"]), 200, None),
        ("missing exp", tok(exp=None), 401, "invalid_token"),
        ("string exp", tok(exp=str(now + 600)), 401, "invalid_token"),
        ("alg none", tokens.raw_token({"alg": "none", "typ": "JWT"}, good, b""), 401,
         "invalid_token"),
        ("HS512 with the HS256 secret", tokens.make_token(good, secret=S, alg="HS512"), 401,
         "invalid_token"),
        ("tampered signature", tok()[:-4] + ("AAAA" if not tok().endswith("AAAA") else "BBBB"),
         401, "invalid_token"),
        ("two segments", ".".join(tok().split(".")[:2]), 401, "malformed_token"),
        ("four segments", tok() + ".abc", 401, "malformed_token"),
        ("anon role", tok(role="anon"), 401, "invalid_token"),
        ("service role", tok(role="service_role"), 401, "invalid_token"),
        ("non-UUID sub", tok(sub="not-a-uuid"), 401, "invalid_token"),
        ("9 KiB token", tok(pad="x" * 6600), 401, "malformed_token"),
    ]
    failures = []
    with Keeld() as k:
        for name, t, status, err in cases:
            r = k.get("/api/v1/example/whoami", token=t)
            if r.status != status:
                failures.append("%s: got %d %r" % (name, r.status, r.body[:200]))
                continue
            if status == 401:
                body = r.json()
                if body["detail"]["error"] != err or not body["detail"].get("message"):
                    failures.append("%s: body %r" % (name, body))
                if r.header("WWW-Authenticate") != 'Bearer error="invalid_token"':
                    failures.append("%s: WWW-Authenticate %r" % (name, r.header("WWW-Authenticate")))
        for name, hdrs in [("no header", {}),
                           ("Basic scheme", {"Authorization": "Basic dXNlcjpwYXNz"}),
                           ("empty bearer", {"Authorization": "Bearer "})]:
            r = k.get("/api/v1/example/whoami", headers=hdrs)
            if r.status != 403 or r.json() != NOT_AUTH:
                failures.append("%s: got %d %r" % (name, r.status, r.body))
        r = k.get("/api/v1/example/whoami", headers={"Authorization": "bEaReR " + tok()})
        if r.status != 200:
            failures.append("scheme case: %d" % r.status)
    assert not failures, "\n".join(failures)
