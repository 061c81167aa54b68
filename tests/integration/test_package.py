"""The Debian packages: dpkg-buildpackage -us -uc builds keel and keel-dev
from a copy of this tree, and installing them on this machine gives a keeld
that starts from the packaged files (/usr/bin/keeld, /etc/keel/conf.d,
/usr/lib/keel) and serves, a `keel` user, the unit and the logrotate file;
then they are purged again.

Slow (a full build, about a minute on two cores) and needs root for
apt-get, so it is kept to one test.
"""

import glob
import os
import shutil
import subprocess
import time

import keeltest
from keeltest import Database

TIMEOUT = 600


def run(cmd, timeout, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert p.returncode == 0, "%s failed (%d):\n%s\n%s" % (cmd, p.returncode, p.stdout[-3000:],
                                                           p.stderr[-3000:])
    return p


def source_copy(dst):
    """The tree as git sees it (tracked and new files, nothing ignored)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=keeltest.srcdir, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = os.path.join(keeltest.srcdir, rel)
        if not os.path.lexists(src):
            continue  # deleted in the working tree
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        if os.path.islink(src):
            os.symlink(os.readlink(src), os.path.join(dst, rel))
        else:
            shutil.copy2(src, os.path.join(dst, rel))


def apt(*args):
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    return run(sudo + ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q",
                       "-o", "DPkg::Lock::Timeout=120"] + list(args), timeout=300)


def test_deb_builds_installs_and_serves():
    work = keeltest._mkdtemp("deb")
    tree = os.path.join(work, "keel")
    source_copy(tree)
    env = dict(os.environ, DEB_BUILD_OPTIONS="nocheck noddebs parallel=2")
    run(["dpkg-buildpackage", "-us", "-uc", "-b"], timeout=420, cwd=tree, env=env)
    debs = sorted(glob.glob(os.path.join(work, "*.deb")))
    debs.sort(key=lambda d: os.path.basename(d).split("_")[0])
    names = [os.path.basename(d).split("_")[0] for d in debs]
    assert names == ["keel", "keel-dev"], debs
    contents = run(["dpkg", "-c", debs[0]], timeout=60).stdout
    for path in ("./usr/bin/keeld", "./usr/bin/keelctl", "./usr/lib/keel/creator.so",
                 "./etc/keel/conf.d/60-creator.json", "./lib/systemd/system/keeld.service",
                 "./etc/logrotate.d/keel", "./usr/share/keel/migrations/0003_notify.sql"):
        assert path in contents, path
    dev = run(["dpkg", "-c", debs[1]], timeout=60).stdout
    for path in ("./usr/include/keel/plugin.h", "./usr/lib/pkgconfig/keel-plugin.pc",
                 "./usr/bin/keel-plugin-check"):
        assert path in dev, path

    apt("install", *debs)
    proc = None
    try:
        run(["getent", "passwd", "keel"], timeout=10)
        assert run(["pkg-config", "--variable=plugindir", "keel-plugin"],
                   timeout=10).stdout.strip() == "/usr/lib/keel"
        with Database() as db:
            port, admin = keeltest.free_port(), keeltest.free_port()
            # What the unit's RuntimeDirectory=keel gives it: a directory of
            # its own for the plugin copies.
            rt = os.path.join(work, "run")
            os.makedirs(rt)
            os.chmod(work, 0o755)
            if os.geteuid() == 0:
                shutil.chown(rt, "keel", "keel")
            env = dict(os.environ, KEEL_DATABASE_URL=db.url, KEEL_JWT_SECRET=keeltest.SECRET,
                       KEEL_LISTEN="127.0.0.1:%d" % port,
                       KEEL_ADMIN_LISTEN="127.0.0.1:%d" % admin, TMPDIR=rt)
            # As the unit runs it: as the keel user.
            as_keel = {"user": "keel", "group": "keel", "extra_groups": []} \
                if os.geteuid() == 0 else {}
            check = subprocess.run(["/usr/bin/keeld", "--check"], env=env, capture_output=True,
                                   text=True, timeout=60, **as_keel)
            assert check.returncode == 0, check.stdout + check.stderr
            log = open(os.path.join(work, "keeld.log"), "wb")
            proc = subprocess.Popen(["/usr/bin/keeld"], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, **as_keel)
            deadline = time.monotonic() + 15
            while True:
                try:
                    r = keeltest.http("GET", "http://127.0.0.1:%d/health" % port, timeout=2)
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, \
                        open(os.path.join(work, "keeld.log")).read()[-3000:]
                    time.sleep(0.1)
            h = r.json()
            assert r.status == 200 and h["plugins"] == {"example": "loaded",
                                                        "creator": "loaded",
                                                        "credits": "loaded"}, h
            r = keeltest.http("GET", "http://127.0.0.1:%d/api/v1/example/whoami" % port,
                              headers=keeltest.bearer(keeltest.user_token()))
            assert r.status == 200, r
            proc.terminate()
            assert proc.wait(timeout=30) == 0
            proc = None
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        apt("purge", "keel", "keel-dev")
    assert not os.path.exists("/usr/bin/keeld")
