"""Third-party plugin SDK and conformance kit.

The installed prefix ($KEEL_PREFIX) plays "an installed keel": a plugin made
by `keelctl new-plugin` is built with nothing but the installed headers and
keel-plugin.pc, installed into a running keeld's plugin and conf.d
directories, reloaded and called. keel-plugin-check must pass the shipped
plugins (example.so under valgrind) and fail each test plugin that breaks a
rule, naming the rule. A plugin built for a newer minor ABI that needs a
capability this host lacks is refused at the abi stage, naming it.
"""

import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import keeltest
from keeltest import Keeld, built_plugin, installed_plugin, scaled

KEELCTL = keeltest.KEELCTL
CHECK = os.path.join(keeltest.prefix, "bin", "keel-plugin-check")
PKGCONFIG_DIR = os.path.join(keeltest.prefix, "lib", "pkgconfig")
NAME = "sdkdemo"


def sdk_env(**extra):
    """The environment of a plugin author whose keel is the installed prefix."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KEEL_", "PKG_CONFIG", "MAKE", "MFLAGS"))}
    env["PKG_CONFIG_PATH"] = PKGCONFIG_DIR
    env.update(extra)
    return env


def run(cmd, cwd=None, env=None, timeout=120):
    p = subprocess.run(cmd, cwd=cwd, env=env or sdk_env(), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=scaled(timeout))
    return p


def must(cmd, **kw):
    p = run(cmd, **kw)
    assert p.returncode == 0, "%s failed (exit %d):\n%s" % (" ".join(cmd), p.returncode, p.stdout)
    return p


def pkg_config(*args):
    return must(["pkg-config"] + list(args)).stdout.strip()


def sanitized(binary):
    """True when binary was built with a sanitizer (valgrind cannot run it)."""
    p = subprocess.run(["readelf", "-d", binary], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True)
    if "libasan" in p.stdout or "libtsan" in p.stdout or "libubsan" in p.stdout:
        return True
    p = subprocess.run(["nm", binary], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       text=True)
    return "__asan_init" in p.stdout or "__tsan_init" in p.stdout or "__ubsan_handle" in p.stdout


def check_plugin(path, *args, valgrind=False, timeout=300):
    """Runs keel-plugin-check; valgrind=True runs it under valgrind (sanitizer
    builds check themselves instead)."""
    cmd = [CHECK] + list(args) + [path]
    if valgrind and not sanitized(CHECK):
        cmd = ["valgrind", "-q", "--error-exitcode=1", "--leak-check=full",
               "--errors-for-leak-kinds=definite"] + cmd
    return run(cmd, timeout=timeout)


def new_project(name=NAME):
    """keelctl new-plugin into a fresh temporary directory; returns the project dir."""
    base = keeltest._mkdtemp("sdk")
    proj = os.path.join(base, "src", name)
    p = must([KEELCTL, "new-plugin", name, proj])
    assert "make install" in p.stdout, p.stdout
    return proj


# ------------------------------------------------------------------ installed files

def test_installed_headers_and_pkg_config():
    include = os.path.join(keeltest.prefix, "include", "keel")
    for h in ("plugin.h", "error.h", "common.h"):
        assert os.path.isfile(os.path.join(include, h)), h
    assert pkg_config("--variable=plugindir", "keel-plugin") == os.path.join(keeltest.prefix, "lib", "keel")
    assert pkg_config("--variable=confdir", "keel-plugin") == \
        os.path.join(keeltest.prefix, "etc", "keel", "conf.d")
    assert pkg_config("--variable=plugin_check", "keel-plugin") == CHECK
    cflags = pkg_config("--cflags", "keel-plugin").split()
    assert "-I" + os.path.join(keeltest.prefix, "include") in cflags, cflags
    assert "-fvisibility=hidden" in cflags and "-fPIC" in cflags, cflags
    # A plugin compiles with the installed headers alone (the source tree's
    # include/ is nowhere on the command line).
    d = keeltest._mkdtemp("sdk")
    src = os.path.join(d, "t.c")
    with open(src, "w") as f:
        f.write("#include <keel/plugin.h>\n"
                "int t_abi(void);\n"
                "int t_abi(void) { return KEEL_ABI_MAJOR * 100 + (int)sizeof(keel_host); }\n")
    must(["cc", "-std=gnu11", "-Wall", "-Werror", "-c", "-o", os.path.join(d, "t.o"), src] + cflags)


# ------------------------------------------------------------------ new-plugin end to end

class UpstreamOK(BaseHTTPRequestHandler):
    """The service the generated plugin's task calls: GET / answers JSON."""
    calls = 0

    def log_message(self, *a):
        pass

    def do_GET(self):
        UpstreamOK.calls += 1
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_new_plugin_builds_checks_installs_reloads_and_serves():
    proj = new_project()
    for f in (NAME + ".c", NAME + ".json", "Makefile", "exports.map", "test.sh",
              "migrations/0001_%s.sql" % NAME):
        assert os.path.isfile(os.path.join(proj, f)), f
    assert os.access(os.path.join(proj, "test.sh"), os.X_OK)
    with open(os.path.join(proj, NAME + ".json")) as f:
        manifest = json.load(f)["plugin"]
    assert manifest["file"] == NAME + ".so"
    assert {(r["path"], r["auth"]) for r in manifest["routes"]} == {
        ("/api/v1/%s/hello" % NAME, "public"), ("/api/v1/%s/me" % NAME, "user"),
        ("/api/v1/%s/ticks" % NAME, "public")}
    assert manifest["migrations"] == NAME
    assert all("fallback" in r for r in manifest["routes"])

    # Build with only the installed keel: warnings are errors for the template.
    p = must(["make", "CFLAGS=-O2 -g -Werror"], cwd=proj)
    assert os.path.join(keeltest.prefix, "include") in p.stdout, p.stdout
    so = os.path.join(proj, NAME + ".so")
    assert os.path.isfile(so)
    p = must(["make", "check"], cwd=proj)
    assert "result:     PASS" in p.stdout, p.stdout

    plugdir = keeltest._mkdtemp("sdk-plugins")
    # The shipped plugins keep serving from the private plugin directory.
    for shipped in ("example", "creator"):
        os.symlink(installed_plugin(shipped), os.path.join(plugdir, shipped + ".so"))
    with Keeld(env={"KEEL_PLUGIN_DIR": plugdir}) as k:
        hello = "/api/v1/%s/hello" % NAME
        assert k.get(hello).status == 404  # not installed yet: no manifest, no route

        migdir = keeltest._mkdtemp("sdk-migrations")
        must(["make", "install", "PLUGINDIR=" + plugdir, "CONFDIR=" + k.confdir,
              "MIGRATIONSDIR=" + migdir], cwd=proj)
        assert os.path.isfile(os.path.join(plugdir, NAME + ".so"))
        assert os.path.isfile(os.path.join(k.confdir, NAME + ".json"))
        assert os.path.isfile(os.path.join(migdir, NAME, "0001_%s.sql" % NAME))

        # The task calls an upstream service once config.upstream names one.
        upstream = ThreadingHTTPServer(("127.0.0.1", 0), UpstreamOK)
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
        installed = os.path.join(k.confdir, NAME + ".json")
        with open(installed) as f:
            doc = json.load(f)
        assert doc["plugin"]["migrations"] == os.path.join(migdir, NAME), doc
        doc["plugin"]["config"]["upstream"] = {
            "url": "http://127.0.0.1:%d" % upstream.server_address[1], "timeout_ms": 2000}
        with open(installed, "w") as f:
            json.dump(doc, f)

        # Its table does not exist yet: the reload is refused at init ...
        r = k.keelctl("reload", NAME)
        assert r.returncode != 0 and "keeld --migrate" in r.stdout, r.stdout
        # ... until keeld --migrate has created it.
        p = k.run("--migrate")
        assert p.returncode == 0 and "1 migration(s) of plugin %s" % NAME in p.stdout, p.stdout

        r = k.keelctl("reload", NAME)
        assert r.returncode == 0, r.stdout
        assert NAME in r.stdout and "ok" in r.stdout, r.stdout

        r = k.get(hello)
        assert r.status == 200, r
        assert r.body == ('{"plugin":"%s","message":"hello"}' % NAME).encode(), r
        assert r.header("X-Keel-Fallback") is None

        me = "/api/v1/%s/me" % NAME
        r = k.get(me)
        assert r.status == 403 and r.json() == {"detail": "Not authenticated"}, r
        email = "sdk-author@test.keel"
        tok = keeltest.user_token(email=email)
        r = k.get(me, token=tok)
        assert r.status == 200, r
        assert r.json() == {"plugin": NAME, "email": email}, r

        # The generated test script agrees.
        p = run(["./test.sh"], cwd=proj,
                env=sdk_env(KEEL_URL=k.url("").rstrip("/"), TOKEN=tok, EMAIL=email))
        assert p.returncode == 0, p.stdout
        assert "all checks passed" in p.stdout and "FAIL" not in p.stdout, p.stdout

        plugins = k.admin_get("/admin/plugins").json()
        assert NAME in json.dumps(plugins), plugins

        # The periodic task (every 2 s) writes rows to the plugin's own table.
        deadline = time.monotonic() + keeltest.scaled(15)
        while True:
            r = k.get("/api/v1/%s/ticks" % NAME)
            assert r.status == 200, r
            if r.json()["ticks"] >= 1:
                break
            assert time.monotonic() < deadline, r
            time.sleep(0.25)
        metrics = k.admin_get("/metrics").text
        assert 'keel_plugin_%s_ticks_total{plugin="%s"}' % (NAME, NAME) in metrics
        # ... after calling the upstream service, whose status it stored.
        assert UpstreamOK.calls >= 1
        statuses = k.db.query("SELECT DISTINCT upstream_status FROM %s_ticks" % NAME)
        assert statuses == [("200",)], statuses
        assert ('keel_upstream_requests_total{plugin="%s",upstream="upstream",class="2xx"}'
                % NAME) in metrics
        upstream.shutdown()
        upstream.server_close()

        # The script fails when the plugin answers something else.
        p = run(["./test.sh"], cwd=proj,
                env=sdk_env(KEEL_URL=k.url("").rstrip("/"), TOKEN=tok, EMAIL="someone@else"))
        assert p.returncode != 0 and "FAIL" in p.stdout, p.stdout

        must(["make", "uninstall", "PLUGINDIR=" + plugdir, "CONFDIR=" + k.confdir], cwd=proj)
        assert not os.path.exists(os.path.join(plugdir, NAME + ".so"))


def test_new_plugin_refuses_bad_names_and_existing_files():
    base = keeltest._mkdtemp("sdk")
    for bad in ("Upper", "1digit", "dash-name", "a" * 33, ""):
        p = run([KEELCTL, "new-plugin", bad, os.path.join(base, "x")])
        assert p.returncode == 2, (bad, p.stdout)
        assert "invalid name" in p.stdout, p.stdout
    assert not os.path.exists(os.path.join(base, "x"))
    proj = os.path.join(base, "p")
    must([KEELCTL, "new-plugin", "a" * 32, proj])
    with open(os.path.join(proj, "Makefile")) as f:
        before = f.read()
    os.unlink(os.path.join(proj, "a" * 32 + ".c"))
    p = run([KEELCTL, "new-plugin", "a" * 32, proj])
    assert p.returncode == 2 and "already exists" in p.stdout, p.stdout
    # Nothing was written: the missing source stays missing.
    assert not os.path.exists(os.path.join(proj, "a" * 32 + ".c"))
    with open(os.path.join(proj, "Makefile")) as f:
        assert f.read() == before
    p = run([KEELCTL, "new-plugin", "onlyname"])
    assert p.returncode == 2 and "NAME DIR" in p.stdout, p.stdout


# ------------------------------------------------------------------ conformance

def installed_manifest(name):
    for f in sorted(os.listdir(keeltest.CONFDIR)):
        path = os.path.join(keeltest.CONFDIR, f)
        with open(path) as fh:
            if json.load(fh).get("plugin", {}).get("name") == name:
                return path
    raise AssertionError("no installed manifest for %s" % name)


def test_conformance_passes_example_under_valgrind():
    p = check_plugin(installed_plugin("example"), "--manifest", installed_manifest("example"),
                     valgrind=True)
    assert p.returncode == 0, p.stdout
    assert "result:     PASS" in p.stdout, p.stdout
    assert "50 of 50" in p.stdout, p.stdout
    assert '200 {"plugin":"example","message":"hello"}' in p.stdout, p.stdout


def test_conformance_passes_creator_without_a_database():
    p = check_plugin(installed_plugin("creator"), "--manifest", installed_manifest("creator"),
                     valgrind=True)
    assert p.returncode == 0, p.stdout
    assert "result:     PASS" in p.stdout, p.stdout
    # Database routes answered without a database, and none with a 500.
    assert "/api/v1/simple/creator/unlocked" in p.stdout and "-> 500" not in p.stdout, p.stdout


def test_conformance_without_manifest_uses_the_route_table():
    p = check_plugin(installed_plugin("example"), "--iterations", "3")
    assert p.returncode == 0, p.stdout
    assert "made from the route table" in p.stdout, p.stdout
    assert "3 of 3" in p.stdout, p.stdout


BAD_PLUGINS = {
    "exports_extra": ["exports:", "exports_extra_calls", "besides keel_plugin_entry"],
    "has_ctor": ["1 constructor(s): has_ctor_setup", "do set-up in init"],
    "uses_tls": ["thread-local storage", "PT_TLS"],
    "nodelete": ["DF_1_NODELETE", "stayed mapped after fini and dlclose()"],
    "no_response": ["GET /api/v1/no_response/silent", "without queuing a response"],
    "leaves_thread": ["1 thread(s) left running after fini"],
    "needs_cap": ["stage abi", 'needs capability "kv_store"'],
}


def test_conformance_fails_each_bad_plugin_with_its_reason():
    for name, reasons in BAD_PLUGINS.items():
        p = check_plugin(built_plugin(name), "--iterations", "3")
        assert p.returncode == 1, (name, p.returncode, p.stdout)
        assert "result:     FAIL" in p.stdout, (name, p.stdout)
        for reason in reasons:
            assert reason in p.stdout, (name, reason, p.stdout)
    # Only the broken route of no_response is blamed.
    p = check_plugin(built_plugin("no_response"), "--iterations", "1")
    assert "/api/v1/no_response/hello:" not in p.stdout, p.stdout
    assert "FAIL (1 problem)" in p.stdout, p.stdout


def test_conformance_usage_errors():
    p = run([CHECK])
    assert p.returncode == 2 and "no plugin given" in p.stdout, p.stdout
    p = run([CHECK, "--iterations", "0", installed_plugin("example")])
    assert p.returncode == 2 and "--iterations" in p.stdout, p.stdout
    p = run([CHECK, os.path.join(keeltest._mkdtemp("sdk"), "missing.so")])
    assert p.returncode == 2, p.stdout


# ------------------------------------------------------------------ ABI policy

def test_newer_minor_needing_missing_capability_is_refused_naming_it():
    def mut(k):
        k.write_conf("70-needs-cap.json", {"plugin": {
            "name": "needs_cap", "file": built_plugin("needs_cap"),
            "routes": [{"method": "GET", "path": "/api/v1/needs_cap/hello", "auth": "user",
                        "fallback": {"status": 200, "body": {"down": "${reason}"}}}]}})
    with Keeld(mut) as k:
        k.wait_log(r'needs_cap.*stage=abi reason=abi_mismatch: needs capability "kv_store" '
                   r'which this host \(ABI 1\.\d+\) lacks; the plugin was built for ABI 1\.\d+')
        r = k.get("/api/v1/needs_cap/hello", token=keeltest.user_token())
        assert r.status == 200 and r.json() == {"down": "abi_mismatch"}, r
        assert r.header("X-Keel-Fallback") == "needs_cap; reason=abi_mismatch"
        r = k.keelctl("reload", "needs_cap")
        assert r.returncode == 1, r.stdout
        assert "abi" in r.stdout and "kv_store" in r.stdout, r.stdout
