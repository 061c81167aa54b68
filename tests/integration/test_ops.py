"""Service management: SIGUSR1 reopens the access and error logs (as
contrib/logrotate/keel, run by the real logrotate, expects), keel_build_info
and keel_start_time_seconds, the systemd unit's readiness notification,
and plugin copies left by a killed keeld.
"""

import json
import os
import re
import signal
import socket
import subprocess
import time

import keeltest
from keeltest import Keeld

TIMEOUT = 120

LOGROTATE_CONF = os.path.join(keeltest.srcdir, "contrib", "logrotate", "keel")


def with_log_files(k):
    s = k.read_conf("10-server.json")
    s["log"]["access_log"] = os.path.join(k.dir, "logs", "access.log")
    s["log"]["error_log"] = os.path.join(k.dir, "logs", "error.log")
    k.write_conf("10-server.json", s)
    os.makedirs(os.path.join(k.dir, "logs"), exist_ok=True)


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


def wait_for(pred, timeout=5):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in %d s" % timeout
        time.sleep(0.05)


def test_logrotate_with_sigusr1_loses_no_line():
    with Keeld(with_log_files) as k:
        logs = os.path.join(k.dir, "logs")
        access, error = os.path.join(logs, "access.log"), os.path.join(logs, "error.log")
        assert k.get("/health", headers={"X-Request-Id": "before-rotation"}).status == 200
        wait_for(lambda: "before-rotation" in read(access))
        assert "ready" in read(error)

        # The shipped configuration, pointed at this server's files and pid.
        conf = read(LOGROTATE_CONF)
        conf = conf.replace("/var/log/keel/*.log", logs + "/*.log")
        conf = conf.replace("create 0640 keel adm", "create 0640")
        conf = re.sub(r"postrotate\n.*?endscript",
                      "postrotate\n\t\tkill -USR1 %d\n\tendscript" % k.pid, conf, flags=re.S)
        assert "kill -USR1" in conf and logs in conf, conf
        path = os.path.join(k.dir, "logrotate.conf")
        with open(path, "w") as f:
            f.write(conf)
        os.chmod(path, 0o644)
        r = subprocess.run(["logrotate", "-f", "-s", os.path.join(k.dir, "logrotate.state"), path],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr

        assert os.path.exists(access + ".1") and os.path.exists(error + ".1"), os.listdir(logs)
        wait_for(lambda: os.path.exists(error) and "reopened the access log" in read(error))
        assert k.alive(), "SIGUSR1 must not stop keeld"
        assert k.get("/health", headers={"X-Request-Id": "after-rotation"}).status == 200
        wait_for(lambda: os.path.exists(access) and "after-rotation" in read(access))
        assert "after-rotation" not in read(access + ".1")
        assert "before-rotation" in read(access + ".1")
        # Several more signals in a row are harmless too.
        for _ in range(3):
            os.kill(k.pid, signal.SIGUSR1)
        time.sleep(0.3)
        assert k.get("/health").status == 200


UNIT = os.path.join(keeltest.srcdir, "contrib", "systemd", "keeld.service")


def test_systemd_unit_verifies():
    unit = read(UNIT)
    for key in ("Type=notify", "ExecReload=", "NoNewPrivileges=yes", "ProtectSystem=strict",
                "User=keel", "RuntimeDirectory=keel"):
        assert key in unit, key
    d = keeltest._mkdtemp("unit")
    path = os.path.join(d, "keeld.service")
    with open(path, "w") as f:
        f.write(unit.replace("/usr/bin/keeld", os.path.join(keeltest.prefix, "bin", "keeld")))
    r = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "keeld.service" not in r.stderr, r.stderr


def test_sd_notify_ready_once_serving_and_around_reloads():
    d = keeltest._mkdtemp("notify")
    addr = os.path.join(d, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(addr)
    sock.settimeout(keeltest.scaled(15))
    try:
        k = Keeld(env={"NOTIFY_SOCKET": addr}, start=False)
        k.start(wait=False)
        msg = sock.recv(4096).decode()
        assert "READY=1" in msg and "MAINPID=%d" % k.pid in msg, msg
        # Ready means serving: no retry needed for the first request.
        assert k.get("/health").status == 200
        assert k.get("/api/v1/example/hello").status == 200
        k.wait_ready()
        k.signal(signal.SIGHUP)
        assert "RELOADING=1" in sock.recv(4096).decode()
        assert "READY=1" in sock.recv(4096).decode()
        k.stop()
        assert "STOPPING=1" in sock.recv(4096).decode()
    finally:
        sock.close()


def test_stale_plugin_copies_of_a_killed_keeld_are_removed():
    rt = keeltest._mkdtemp("runtime")

    def conf(k):
        s = k.read_conf("10-server.json")
        s["server"]["runtime_dir"] = rt
        s["server"]["workers"] = 1
        k.write_conf("10-server.json", s)
    k = Keeld(conf)
    copies = [n for n in os.listdir(rt) if n.startswith("keeld-")]
    assert len(copies) == 1, os.listdir(rt)  # the worker's
    assert any(n.endswith(".so") for n in os.listdir(os.path.join(rt, copies[0])))
    # SIGKILL to the supervisor and its worker at once, like the OOM killer
    # taking the whole cgroup.
    os.killpg(os.getpgid(k.pid), signal.SIGKILL)
    k.kill()
    time.sleep(0.2)
    assert os.path.isdir(os.path.join(rt, copies[0]))  # nobody cleaned up
    # Something that is not ours stays.
    os.makedirs(os.path.join(rt, "keeld-notes"))
    with Keeld(conf) as k2:
        k2.wait_log(r"removed .*%s" % re.escape(copies[0]), timeout=5)
        left = sorted(os.listdir(rt))
        assert copies[0] not in left, left
        assert "keeld-notes" in left and len(left) == 2, left


PROM = os.path.join(keeltest.srcdir, "contrib", "prometheus")
DASHBOARD = os.path.join(keeltest.srcdir, "contrib", "grafana", "keel-dashboard.json")


def test_alert_rules_check_and_pass_their_unit_tests():
    r = subprocess.run(["promtool", "check", "rules", "keel-alerts.yml"], cwd=PROM,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "9 rules found" in r.stdout, r.stdout
    r = subprocess.run(["promtool", "test", "rules", "keel-alerts.test.yml"], cwd=PROM,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_metrics_lint_and_cover_what_dashboard_and_alerts_use():
    with Keeld() as k:
        assert k.get("/health").status == 200
        assert k.get("/api/v1/example/hello").status == 200
        text = k.admin_get("/metrics").text
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        exported = set(re.findall(r"^# TYPE (\w+) ", text, re.M))
        assert {"keel_build_info", "keel_start_time_seconds",
                "keel_degraded_responses_total"} <= exported, exported
        assert re.search(r'^keel_build_info\{version="[^"]+",abi="\d+\.\d+"\} 1$', text, re.M)
    with open(DASHBOARD) as f:
        dash = json.load(f)
    used = set()
    for p in dash["panels"]:
        for t in p["targets"]:
            used |= set(re.findall(r"\b(keel_\w+)", t["expr"]))
    used |= set(re.findall(r"\b(keel_\w+)", read(os.path.join(PROM, "keel-alerts.yml"))))
    histo = {m + "_bucket" for m in exported} | {m + "_sum" for m in exported}
    unknown = {m for m in used if m not in exported and m not in histo}
    assert not unknown, "dashboard or alerts use metrics keeld does not export: %s" % unknown
    assert len(used) >= 10, used


# ---------------------------------------------------------------- keeld --check

def test_check_names_the_file_and_key_of_a_plugin_problem():
    def missing(k):
        m = k.read_conf("60-creator.json")
        m["plugin"]["file"] = "creator-missing.so"
        k.write_conf("60-creator.json", m)
    k = Keeld(missing, start=False)
    r = k.run("--check")
    assert r.returncode != 0, r.stdout
    assert re.search(r"error: \S*60-creator\.json: plugin\.file: .*creator-missing\.so", r.stdout), \
        r.stdout


def test_check_validates_the_database_url_and_the_jwt_secret():
    k = Keeld(start=False, env={"KEEL_DATABASE_URL": "postgresql://keel@127.0.0.1:99999/keel"})
    r = k.run("--check")
    assert r.returncode != 0 and "problem: KEEL_DATABASE_URL: port" in r.stdout, r.stdout
    k = Keeld(start=False, env={"KEEL_DATABASE_URL": "postgresql://keel@h/db?sslmod=require"})
    r = k.run("--check")
    assert r.returncode != 0 and "invalid URI query parameter" in r.stdout, r.stdout
    # No secret while routes need a user.
    k = Keeld(start=False, env={"KEEL_JWT_SECRET": None})
    r = k.run("--check")
    assert r.returncode != 0 and "problem: auth: no jwt_secret" in r.stdout, r.stdout
    # --connect reaches the database and compares the schema.
    k = Keeld(start=False)
    r = k.run("--check", "--connect")
    assert r.returncode == 0 and "database: connected, schema up to date" in r.stdout, r.stdout
    with keeltest.Database() as db:
        db.query("DELETE FROM schema_migrations WHERE version = 3")
        k = Keeld(start=False, db=db)
        r = k.run("--check", "--connect")
        assert r.returncode != 0 and "1 migration(s) behind" in r.stdout, r.stdout


def test_unknown_keys_suggest_the_nearest_known_one():
    def typo(k):
        d = k.read_conf("20-database.json")
        d["database"]["pool_sise"] = d["database"].pop("pool_size")
        k.write_conf("20-database.json", d)
    r = Keeld(typo, start=False).run("--check")
    assert r.returncode != 0
    assert 'database.pool_sise: unknown key (did you mean "pool_size"?)' in r.stdout, r.stdout


def test_a_conflict_refuses_the_plugin_whose_manifest_is_wrong():
    # The example plugin's manifest claims a creator route that example.so
    # does not serve: example is refused, creator (the route's real owner)
    # serves, whatever the order of the files.
    def claim(k):
        m = k.read_conf("50-example.json")
        m["plugin"]["routes"].append({"method": "GET",
                                      "path": "/api/v1/simple/creator/system/stats",
                                      "auth": "user"})
        k.write_conf("50-example.json", m)
    k = Keeld(claim, start=False)
    r = k.run("--check")
    assert r.returncode != 0
    assert re.search(r"creator\s+1\.0\.0\s+loaded", r.stdout), r.stdout
    assert re.search(r"50-example\.json: plugin\.routes: manifest route GET "
                     r"/api/v1/simple/creator/system/stats is not implemented", r.stdout), r.stdout
    with Keeld(claim) as k:
        assert k.get("/health").json()["plugins"]["creator"] == "loaded"
        r = k.get("/api/v1/simple/creator/system/stats", token=keeltest.user_token())
        assert r.status == 200 and r.header("X-Keel-Fallback") is None, r
