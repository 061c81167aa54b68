"""Smoke test: the installed keeld starts from its conf.d, answers /health and
stops cleanly on SIGTERM."""

from keeltest import Keeld


def test_health_answers_json_status():
    with Keeld() as k:
        r = k.get("/health")
        assert r.status == 200, r
        assert r.header("Content-Type", "").startswith("application/json"), r.headers
        body = r.json()
        assert "status" in body, body
        assert body["status"] in ("ok", "degraded"), body
        code = k.stop()
        assert code == 0, "SIGTERM must end keeld with status 0, got %s" % code
