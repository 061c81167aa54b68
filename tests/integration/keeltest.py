"""Helpers for keel's integration tests.

The tests run the installed keeld (``$KEEL_PREFIX/bin/keeld``) against a real
PostgreSQL. ``./dev test`` provides everything through the environment:

  KEEL_PREFIX             install prefix holding bin/keeld and etc/keel/conf.d
  KEEL_SRCDIR             source tree
  KEEL_BUILDDIR           build tree (test plugins in tests/plugins/.libs)
  KEEL_TEST_DATABASE_URL  superuser connection to the test PostgreSQL
  KEEL_TEST_PGBIN         PostgreSQL server binaries (for PrivatePostgres)
  KEEL_TEST_VALGRIND=1    run keeld under valgrind (timeouts scale up)
  KEEL_TEST_TIME_FACTOR   multiply every timeout by this factor
  KEEL_TEST_BOUND_FACTOR  multiply each test's own time bound by this factor
                          (default: the time factor, at most 4 under valgrind)
  KEEL_TEST_KEEP=1        keep temporary directories (conf.d copies, logs)

Only the Python standard library is used. Tokens come from tokens.py.
"""

import atexit
import glob
import hashlib
import http.client as httpclient
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

prefix = os.path.abspath(os.environ.get("KEEL_PREFIX", "/usr/local"))
srcdir = os.path.abspath(os.environ.get("KEEL_SRCDIR", os.path.join(HERE, "..", "..")))
builddir = os.path.abspath(os.environ.get("KEEL_BUILDDIR", srcdir))
PGBIN = os.environ.get("KEEL_TEST_PGBIN", "/usr/lib/postgresql/15/bin")
PSQL = os.path.join(PGBIN, "psql") if os.path.exists(os.path.join(PGBIN, "psql")) else "psql"

KEELD = os.path.join(prefix, "bin", "keeld")
KEELCTL = os.path.join(prefix, "bin", "keelctl")
CONFDIR = os.path.join(prefix, "etc", "keel", "conf.d")
PLUGINDIR = os.path.join(prefix, "lib", "keel")
MIGRATIONSDIR = os.path.join(prefix, "share", "keel", "migrations")
TEST_PLUGINDIR = os.path.join(builddir, "tests", "plugins", ".libs")

#: The HS256 secret every Keeld started by these helpers verifies tokens with.
SECRET = "keel-integration-test-secret-0123456789abcdef"

VALGRIND = os.environ.get("KEEL_TEST_VALGRIND") == "1"
TIME_FACTOR = float(os.environ.get("KEEL_TEST_TIME_FACTOR", "10" if VALGRIND else "1"))
KEEP = os.environ.get("KEEL_TEST_KEEP") == "1"
# A test's own time bound (run.py) grows less than the waits inside it under
# valgrind: tests that pass there take two to five times as long as without,
# and one that hangs should not hold the suite for ten times its bound.
BOUND_FACTOR = float(os.environ.get("KEEL_TEST_BOUND_FACTOR",
                                    str(min(TIME_FACTOR, 4.0)) if VALGRIND else str(TIME_FACTOR)))


def scaled(seconds):
    """A timeout scaled for slow runs (valgrind, sanitizers)."""
    return seconds * TIME_FACTOR


def scaled_count(n, valgrind):
    """How many requests, reloads or connections a load test makes: n, or
    `valgrind` when keeld runs under valgrind, where every request costs some
    twenty times as much. Use it for counts that only make a load; a count
    that is the point of a test (a limit, a bound) stays as it is."""
    return valgrind if VALGRIND else n


class Skip(Exception):
    """Raised by skip(): the runner counts the test as skipped, with the reason."""


def skip(reason):
    """Ends the running test as skipped (counted as such, never as passed)."""
    raise Skip(reason)


def note(text):
    """Prints a remark in the test output, e.g. why a figure is not checked."""
    print("  note: %s" % text, flush=True)


def figure_checked(what):
    """False (with a printed reason) when keeld runs under valgrind, whose
    allocator and slow-down make memory and throughput figures meaningless;
    the test then checks everything but that figure."""
    if VALGRIND:
        note("%s not checked under valgrind (its allocator and slow-down skew the figure)"
             % what)
        return False
    return True


def bound(seconds):
    """A test's whole time bound (run.py) for `seconds` before scaling."""
    return seconds * BOUND_FACTOR


def wait_until(predicate, what, timeout=10):
    """Polls predicate until it returns a true value, for up to `timeout`
    seconds before scaling; returns that value."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


def timeout(seconds):
    """Decorator: a time bound (before scaling) for one test instead of the default."""
    def mark(func):
        func.timeout = seconds
        return func
    return mark


def built_plugin(name):
    """Path of a test-only plugin built in the tree, e.g. built_plugin("init_fail")."""
    return os.path.join(TEST_PLUGINDIR, name + ".so")


def installed_plugin(name):
    """Path of an installed plugin, e.g. installed_plugin('creator')."""
    return os.path.join(PLUGINDIR, name + ".so")


# ---------------------------------------------------------------- bookkeeping
#
# Every process and directory these helpers create is recorded so that the
# runner can clean up after each test and atexit after everything, whatever
# the test did.

_live_processes = []     # Keeld and PrivatePostgres instances not yet stopped
_started_this_test = []  # Keeld instances started during the current test
_tempdirs = []
_handed_ports = set()


def _mkdtemp(tag):
    d = tempfile.mkdtemp(prefix="keeltest-%s-" % tag)
    _tempdirs.append(d)
    return d


def _cleanup_processes():
    for p in list(_live_processes):
        try:
            p._terminate_for_cleanup()
        except Exception as e:  # noqa: BLE001 - cleanup must go on
            print("keeltest: cleanup of %r failed: %s" % (p, e), file=sys.stderr)


def _atexit():
    _cleanup_processes()
    _end_module()
    if not KEEP:
        for d in _tempdirs:
            shutil.rmtree(d, ignore_errors=True)


atexit.register(_atexit)


def _begin_test():
    """Called by the runner before each test."""
    del _started_this_test[:]


def _end_test():
    """Called by the runner after each test: stops what the test left running."""
    for p in list(_live_processes):
        if isinstance(p, Keeld):
            p._terminate_for_cleanup()


def _keelds_of_test():
    return list(_started_this_test)


# ---------------------------------------------------------------- HTTP

def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Ports are not handed out twice in one process, so two servers started
    one after the other do not race for the same port.
    """
    for _ in range(100):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _handed_ports:
            _handed_ports.add(port)
            return port
    raise RuntimeError("no free port found")


class Response:
    """An HTTP response: .status, .headers (case-insensitive), .body (bytes)."""

    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError as e:
            raise AssertionError("response body is not JSON (%s): %r" % (e, self.body[:500]))

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def __repr__(self):
        body = self.body[:400]
        more = "..." if len(self.body) > 400 else ""
        return "<Response %d %s %r%s>" % (self.status, self.reason, body, more)


def http(method, url, headers=None, body=None, timeout=10):
    """Sends one request on a fresh connection and returns a Response.

    body may be bytes, str, or any JSON-serialisable object (then sent as
    application/json unless headers say otherwise).
    """
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http":
        raise ValueError("only http:// URLs are supported: %s" % url)
    hdrs = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        if not any(k.lower() == "content-type" for k in hdrs):
            hdrs["Content-Type"] = "application/json"
    if isinstance(body, str):
        body = body.encode("utf-8")
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    conn = httpclient.HTTPConnection(u.hostname, u.port or 80, timeout=scaled(timeout))
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.reason, resp.msg, data)
    finally:
        conn.close()


def bearer(token):
    return {"Authorization": "Bearer " + token}


# ---------------------------------------------------------------- tokens

def user_token(sub=None, email=None, secret=SECRET, **overrides):
    """A valid HS256 user token for the test secret (see tokens.py)."""
    import tokens
    sub = sub or _uuid4()
    email = email or "user-%s@test.keel" % sub[:8]
    return tokens.make_token(tokens.user_claims(sub, email, **overrides), secret=secret)


def _uuid4():
    import uuid
    return str(uuid.uuid4())


# ---------------------------------------------------------------- PostgreSQL

def _with_dbname(url, dbname):
    """The same connection with another database, for URIs and conninfo strings."""
    if url.startswith(("postgresql://", "postgres://")):
        u = urllib.parse.urlsplit(url)
        return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + dbname, u.query, u.fragment))
    parts = [p for p in url.split() if not p.startswith("dbname=")]
    parts.append("dbname=" + dbname)
    return " ".join(parts)


# Fields are separated by US; psql -0 ends every row (the last one too) with a
# NUL byte, so rows split exactly even when values contain newlines.
_FS = "\x1f"
_NULL = "\x1d<null>\x1d"


def psql(url, sql, *params, timeout=60):
    """Runs SQL through psql and returns the rows as tuples of str (None for NULL).

    Each %s in sql is replaced by a quoted literal of the next parameter
    (None becomes NULL); write %% for a literal percent sign.
    """
    args = [PSQL, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
            "-F", _FS, "-0", "-P", "null=" + _NULL, "-d", url]
    pieces = sql.split("%%")
    out_pieces = []
    i = 0
    for piece in pieces:
        chunks = piece.split("%s")
        rebuilt = chunks[0]
        for chunk in chunks[1:]:
            if i >= len(params):
                raise ValueError("more %s placeholders than parameters")
            value = params[i]
            if value is None:
                rebuilt += "NULL"
            else:
                if isinstance(value, bool):
                    value = "true" if value else "false"
                elif isinstance(value, (dict, list)):
                    value = json.dumps(value)
                args += ["-v", "keel_p%d=%s" % (i, value)]
                rebuilt += ":'keel_p%d'" % i
            rebuilt += chunk
            i += 1
        out_pieces.append(rebuilt)
    if i != len(params):
        raise ValueError("%d parameters for %d placeholders" % (len(params), i))
    script = "%".join(out_pieces)
    p = subprocess.run(args, input=script, capture_output=True, text=True,
                       timeout=scaled(timeout), cwd="/")
    if p.returncode != 0:
        raise RuntimeError("psql failed (exit %d): %s\nSQL: %s"
                           % (p.returncode, p.stderr.strip(), sql))
    records = p.stdout.split("\0")[:-1]
    return [tuple(None if f == _NULL else f for f in rec.split(_FS)) for rec in records]


def _admin_url():
    url = os.environ.get("KEEL_TEST_DATABASE_URL")
    if not url:
        raise RuntimeError("KEEL_TEST_DATABASE_URL is not set; run the integration tests with ./dev test")
    return url


def _migrations_digest():
    h = hashlib.sha256()
    h.update(KEELD.encode())
    # Plugins' own migrations live in subdirectories (migrations/creator/).
    for root, dirs, files in sorted(os.walk(MIGRATIONSDIR)):
        dirs.sort()
        for name in sorted(files):
            h.update(os.path.relpath(os.path.join(root, name), MIGRATIONSDIR).encode())
            with open(os.path.join(root, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def migrate(url, confdir=CONFDIR, timeout=120):
    """Applies keel's migrations to the database at url with keeld --migrate."""
    env = _keeld_base_env()
    env["KEEL_DATABASE_URL"] = url
    p = subprocess.run([KEELD, "--migrate", "--config-dir", confdir], env=env,
                       capture_output=True, text=True, timeout=scaled(timeout), cwd="/")
    if p.returncode != 0:
        raise RuntimeError("keeld --migrate failed (exit %d):\n%s%s"
                           % (p.returncode, p.stdout, p.stderr))
    return p


TEMPLATE = "keel_template"
_template_ready = False


def _ensure_template():
    """Creates keel_template with all migrations applied, once per process.

    The template carries a digest of the installed migrations (and keeld's
    path) in its comment, so changed migrations rebuild it.
    """
    global _template_ready
    if _template_ready:
        return
    admin = _admin_url()
    digest = _migrations_digest()
    rows = psql(admin, "SELECT coalesce(shobj_description(oid, 'pg_database'), '') "
                       "FROM pg_database WHERE datname = %s", TEMPLATE)
    if rows and rows[0][0] == "keel-migrations:" + digest:
        _template_ready = True
        return
    if rows:
        psql(admin, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % TEMPLATE)
    psql(admin, "CREATE DATABASE %s" % TEMPLATE)
    try:
        migrate(_with_dbname(admin, TEMPLATE))
    except Exception:
        psql(admin, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % TEMPLATE)
        raise
    psql(admin, "COMMENT ON DATABASE %s IS 'keel-migrations:%s'" % (TEMPLATE, digest))
    _template_ready = True


class Database:
    """A fresh database with keel's schema, cloned from keel_template.

    .url is its connection string; .query(sql, *params) runs SQL (see psql());
    .drop() removes it.
    """

    def __init__(self):
        _ensure_template()
        self.name = "keel_t_" + secrets.token_hex(6)
        self._admin = _admin_url()
        psql(self._admin, "CREATE DATABASE %s TEMPLATE %s" % (self.name, TEMPLATE))
        self.url = _with_dbname(self._admin, self.name)
        self.dropped = False

    def query(self, sql, *params):
        return psql(self.url, sql, *params)

    def scalar(self, sql, *params):
        """The first column of the first row, or None when there is no row."""
        rows = self.query(sql, *params)
        return rows[0][0] if rows else None

    def drop(self):
        if not self.dropped:
            self.dropped = True
            psql(self._admin, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % self.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.drop()

    def __repr__(self):
        return "<Database %s>" % self.name


_module_db = None


def module_db():
    """The database shared by the tests of the current module (created on first use)."""
    global _module_db
    if _module_db is None or _module_db.dropped:
        _module_db = Database()
    return _module_db


def _end_module():
    """Called by the runner after each module: drops the module's database."""
    global _module_db
    if _module_db is not None:
        db, _module_db = _module_db, None
        try:
            db.drop()
        except Exception as e:  # noqa: BLE001 - cleanup must go on
            print("keeltest: dropping %s failed: %s" % (db.name, e), file=sys.stderr)


# ---------------------------------------------------------------- keeld

def _keeld_base_env():
    """The caller's environment without KEEL_* settings that would leak into keeld."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    return env


# Keeld has a method named signal, which hides the module in its class body.
_SIGTERM = signal.SIGTERM


class KeeldStartError(AssertionError):
    pass


class Keeld:
    """One keeld process with its own copy of conf.d, ports and log file.

    The constructor copies $KEEL_PREFIX/etc/keel/conf.d, calls
    confdir_mutator(self) (which may use write_conf/remove_conf), then starts
    keeld and waits for GET /health to answer (any status). Pass start=False
    to prepare the directory and call start() (or run()) yourself.
    env entries override the defaults; a value of None removes the variable.
    db defaults to the current module's database (module_db()).
    """

    def __init__(self, confdir_mutator=None, env=None, db=None, args=(), start=True,
                 wait=True, wait_inits=None):
        self.dir = _mkdtemp("keeld")
        self.confdir = os.path.join(self.dir, "conf.d")
        if os.path.isdir(CONFDIR):
            shutil.copytree(CONFDIR, self.confdir)
            # No lame-duck period by default: every test's keeld is stopped
            # with SIGTERM, and five seconds of "draining" each would add
            # minutes to the suite. Tests of the drain set it themselves.
            server_conf = os.path.join(self.confdir, "10-server.json")
            if os.path.exists(server_conf):
                with open(server_conf) as f:
                    c = json.load(f)
                c.setdefault("server", {})["drain_s"] = 0
                with open(server_conf, "w") as f:
                    json.dump(c, f, indent=2)
        else:
            os.makedirs(self.confdir)
        self.log_path = os.path.join(self.dir, "keeld.log")
        self.valgrind_log = os.path.join(self.dir, "valgrind.%p.log")
        self.port = free_port()
        self.admin_port = free_port()
        self.extra_env = dict(env or {})
        self._db = db
        self.args = tuple(args)
        self.proc = None
        self.returncode = None
        self.cleanup_status = None
        # Set by a test whose plugin leaks on purpose (tests/plugins/faulty.c
        # once its code is unmapped, valgrind cannot name it): leak records
        # are then not errors; every other record still is.
        self.leaks_on_purpose = False
        # Under valgrind a plugin's init often outlasts the 250 ms a worker
        # gives the inits before it serves (docs/operations.md), so its
        # routes would answer 503 "starting" to a test's first requests:
        # readiness then also waits until no plugin is starting. A test of
        # the starting state passes wait_inits=False.
        self.wait_inits = VALGRIND if wait_inits is None else wait_inits
        self.prefix = prefix
        self.builddir = builddir
        if confdir_mutator is not None:
            confdir_mutator(self)
        if start:
            self.start(wait=wait)

    # -- configuration

    @property
    def db(self):
        if self._db is None:
            self._db = module_db()
        return self._db

    def conf_path(self, name):
        return os.path.join(self.confdir, name)

    def write_conf(self, name, obj):
        """Writes conf.d/name: dicts and lists as JSON, str/bytes as they are."""
        if isinstance(obj, (dict, list)):
            data = json.dumps(obj, indent=2).encode()
        elif isinstance(obj, str):
            data = obj.encode()
        else:
            data = obj
        tmp = self.conf_path(name) + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.conf_path(name))

    def read_conf(self, name):
        with open(self.conf_path(name)) as f:
            return json.load(f)

    def update_conf(self, name, section, **values):
        """Sets keys of one section of conf.d/name (which must exist),
        leaving the rest of the file as it is."""
        c = self.read_conf(name)
        c.setdefault(section, {}).update(values)
        self.write_conf(name, c)

    def remove_conf(self, name):
        try:
            os.unlink(self.conf_path(name))
        except FileNotFoundError:
            pass

    def conf_files(self):
        return sorted(os.listdir(self.confdir))

    # -- environment and command line

    def environment(self):
        env = _keeld_base_env()
        env.update({
            "KEEL_LISTEN": "127.0.0.1:%d" % self.port,
            "KEEL_ADMIN_LISTEN": "127.0.0.1:%d" % self.admin_port,
            "KEEL_JWT_SECRET": SECRET,
            "KEEL_LOG_LEVEL": "debug",
        })
        if "KEEL_DATABASE_URL" not in self.extra_env:
            env["KEEL_DATABASE_URL"] = self.db.url
            bouncer = through_pgbouncer
            if bouncer is not None and isinstance(self.db, Database):
                env["KEEL_DATABASE_URL"] = bouncer.url_for(self.db.name)
                env["KEEL_DATABASE_POOLER"] = "pgbouncer-" + bouncer.mode
        for k, v in self.extra_env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = str(v)
        return env

    def command(self, *args):
        cmd = [KEELD, "--config-dir", self.confdir] + list(args)
        if VALGRIND:
            # Workers are forked, so valgrind traces them as it is; a binary
            # upgrade execs keeld again, which --trace-children follows.
            # Each process writes its own log (%p is its pid).
            cmd = ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
                   "--show-leak-kinds=definite", "--errors-for-leak-kinds=definite",
                   "--track-origins=yes", "--trace-children=yes",
                   "--log-file=" + self.valgrind_log] + cmd
        return cmd

    def run(self, *args, timeout=60):
        """Runs keeld synchronously (e.g. run('--check')); returns CompletedProcess
        with .returncode and .stdout (stdout and stderr together)."""
        return subprocess.run(self.command(*args), env=self.environment(), cwd=self.dir,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=scaled(timeout))

    # -- process

    def start(self, wait=True, timeout=15):
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("keeld is already running")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(*self.args), env=self.environment(),
                                     cwd=self.dir, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.returncode = None
        _live_processes.append(self)
        _started_this_test.append(self)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=15):
        """Waits until GET /health answers with any status and the admin
        listener, which starts just after the main one, accepts connections
        (a bare connect, so no request shows up in its logs or metrics)."""
        deadline = time.monotonic() + scaled(timeout)
        main_up = False
        while True:
            code = self.proc.poll()
            if code is not None:
                self._reap(code)
                raise KeeldStartError("keeld exited with status %d during start-up; log:\n%s"
                                      % (code, self.log_tail()))
            try:
                if not main_up:
                    http("GET", self.url("/health"), timeout=1)
                    main_up = True
                socket.create_connection(("127.0.0.1", self.admin_port), timeout=1).close()
                if not self.wait_inits or not self._plugins_starting():
                    return
            except (OSError, httpclient.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise KeeldStartError("keeld did not answer /health within %.0f s; log:\n%s"
                                      % (scaled(timeout), self.log_tail()))
            time.sleep(0.05)

    def _plugins_starting(self):
        """True while the server log shows a start-up init still running: a
        worker's "init still running" warning not yet followed by that
        plugin's late load or refusal.  Read from the log, not asked over
        HTTP, so that waiting adds no line to the access log or metrics."""
        text = self.log_text()
        started = re.findall(r"plugin (\S+): init still running after", text)
        settled = re.findall(r"loaded (\S+) \S+ generation \d+ from \S+ \(init finished after "
                             r"the listeners opened\)|plugin (\S+) is down: .* stage=init ", text)
        done = [a or b for a, b in settled]
        return any(started.count(name) > done.count(name) for name in set(started))

    @property
    def pid(self):
        """The supervisor's pid (keeld's process; workers are its children)."""
        return self.proc.pid if self.proc else None

    def workers(self):
        """Pids of the worker processes (the supervisor's children)."""
        return sorted(_children(self.pid)) if self.pid else []

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        """Sends a signal without waiting (e.g. signal.SIGHUP for a reload)."""
        self.proc.send_signal(sig)

    def wait(self, timeout=15):
        """Waits for the process to exit on its own; returns its exit status."""
        code = self.proc.wait(timeout=scaled(timeout))
        self._reap(code)
        return code

    def stop(self, sig=_SIGTERM, timeout=15):
        """Sends sig and waits for the exit; returns the exit status (negative for
        death by a signal). Kills the process and raises if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=scaled(timeout))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("keeld did not exit within %.0f s of signal %d"
                                     % (scaled(timeout), sig))
        code = self.proc.returncode
        self._reap(code)
        return code

    def kill(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reap(self.proc.returncode)
        return self.returncode

    def _reap(self, code):
        self.returncode = code
        if self in _live_processes:
            _live_processes.remove(self)
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    def _terminate_for_cleanup(self):
        # A graceful stop lets sanitizers and valgrind report leaks; a process
        # that does not stop in time is killed. The status of that stop is
        # kept: SIGTERM must end keeld with 0, so anything else (a crash while
        # draining, say) is reported by the runner as a failure of the test.
        if self.alive():
            try:
                self.cleanup_status = self.stop(timeout=10)
            except AssertionError:
                self.cleanup_status = "no exit within %.0f s of SIGTERM" % scaled(10)
        self.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._terminate_for_cleanup()

    def __repr__(self):
        return "<Keeld pid=%s port=%s dir=%s>" % (self.pid, self.port, self.dir)

    # -- HTTP shortcuts

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def admin_url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.admin_port, path)

    def request(self, method, path, body=None, token=None, headers=None, timeout=10):
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = "Bearer " + token
        return http(method, self.url(path), headers=hdrs, body=body, timeout=timeout)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def admin(self, method, path, body=None, headers=None, timeout=10):
        # The admin listener refuses writes without a JSON content type
        # (docs/reliability.md); send what keelctl sends unless told.
        hdrs = dict(headers or {})
        if method not in ("GET", "HEAD", "OPTIONS") and \
                not any(k.lower() == "content-type" for k in hdrs):
            hdrs["Content-Type"] = "application/json"
        return http(method, self.admin_url(path), headers=hdrs, body=body, timeout=timeout)

    def admin_get(self, path, **kw):
        return self.admin("GET", path, **kw)

    def admin_post(self, path, body=None, **kw):
        return self.admin("POST", path, body=body, **kw)

    def keelctl(self, *args, timeout=60):
        """Runs the installed keelctl against this server's admin listener."""
        return subprocess.run([KEELCTL, "--admin", self.admin_url("").rstrip("/")] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=scaled(timeout), cwd=self.dir)

    # -- log

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_mark(self):
        """The current end of the log, for wait_log(..., since=mark)."""
        try:
            return os.path.getsize(self.log_path)
        except FileNotFoundError:
            return 0

    def log_tail(self, lines=40):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_log(self, regex, timeout=10, since=0):
        """Waits until regex matches a line written after byte offset since;
        returns the match. Raises AssertionError on timeout."""
        pattern = re.compile(regex, re.M)
        deadline = time.monotonic() + scaled(timeout)
        while True:
            try:
                with open(self.log_path, "rb") as f:
                    f.seek(since)
                    text = f.read().decode("utf-8", "replace")
            except FileNotFoundError:
                text = ""
            m = pattern.search(text)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError("log did not match %r within %.0f s; tail:\n%s"
                                     % (regex, scaled(timeout), self.log_tail()))
            time.sleep(0.05)

    def sanitizer_report(self):
        """Text of an ASan/UBSan/LSan or valgrind error report, or None."""
        text = self.log_text()
        m = re.search(r"^.*(ERROR: (Address|Leak|Thread)Sanitizer|WARNING: ThreadSanitizer"
                      r"|runtime error:).*$", text, re.M)
        if m:
            return text[m.start():m.start() + 6000]
        if VALGRIND:
            # A worker killed by a signal (crashed, or killed on purpose or
            # at a deadline, as the supervisor logs it) never ran its
            # clean-up: what it still held at that moment is not a leak.
            killed = {int(next(g for g in m if g)) for m in _KILLED_WORKER.findall(text)}
            reports = []
            for path in sorted(glob.glob(self.valgrind_log.replace("%p", "*"))):
                with open(path, errors="replace") as f:
                    vg = f.read()
                m = re.search(r"valgrind\.(\d+)\.log$", path)
                dead = (m is not None and int(m.group(1)) in killed) or \
                    _KILLED.search(vg) is not None
                leaks_expected = dead or self.leaks_on_purpose
                reports += [r for r in _valgrind_records(vg)
                            if not _on_purpose(r)
                            and not (leaks_expected and "lost in loss record" in r)]
            if reports:
                return "\n\n".join(reports)[:6000]
        return None


def _valgrind_records(text):
    """The error records of one valgrind log (with -q, nothing but errors):
    blocks of "==pid==" lines separated by an empty one."""
    records, cur = [], []
    for line in text.splitlines():
        body = re.sub(r"^==\d+== ?", "", line)
        if body.strip():
            cur.append(line)
        elif cur:
            records.append("\n".join(cur))
            cur = []
    if cur:
        records.append("\n".join(cur))
    return records


_KILLED = re.compile(r"Process terminating with default action of signal \d+")
_KILLED_WORKER = re.compile(r"crash report: .* worker=(\d+)|worker (\d+) was killed by "
                            r"|worker (\d+) killed at its drain deadline")


def _on_purpose(record):
    """True for what the test plugins built to fault do on purpose: the
    crash_* and leak plugins (tests/plugins/faulty.c) dereference NULL,
    abort and leak, and a process that dies of a signal says so (the test
    that sent or caused the signal checks how keel took it)."""
    return "faulty.c" in record or _KILLED.search(record) is not None


# ---------------------------------------------------------------- private PostgreSQL

def _children(pid):
    """Direct children of pid, read from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces; fields after it are fixed.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def _alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _as_postgres(cmd):
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + cmd
    return cmd


class PrivatePostgres:
    """A throwaway PostgreSQL server for fault tests (stop, restart, crash).

    initdb runs into a fresh directory owned by the postgres user; the server
    listens on 127.0.0.1 at a random port with trust authentication.
    .url connects as the superuser to database postgres; url_for(db) to another.
    """

    def __init__(self, start=True):
        base = "/var/tmp" if os.path.isdir("/var/tmp") else None
        self.dir = tempfile.mkdtemp(prefix="keeltest-pg-", dir=base)
        os.chmod(self.dir, 0o700)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.url = "postgresql://postgres@127.0.0.1:%d/postgres" % self.port
        self._running = False
        _live_processes.append(self)
        self._pg(["initdb", "-D", self.dir, "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync"], timeout=120)
        with open(os.path.join(self.dir, "postgresql.conf"), "a") as f:
            f.write("\nlisten_addresses = '127.0.0.1'\nport = %d\n"
                    "unix_socket_directories = '%s'\nfsync = off\n"
                    "synchronous_commit = off\nmax_connections = 100\n"
                    % (self.port, self.dir))
        if start:
            self.start()

    def _pg(self, args, timeout=60, check=True):
        cmd = _as_postgres([os.path.join(PGBIN, args[0])] + args[1:])
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(timeout), cwd="/")
        if check and p.returncode != 0:
            raise RuntimeError("%s failed (exit %d): %s%s\n%s"
                               % (args[0], p.returncode, p.stdout, p.stderr, self.log_tail()))
        return p

    @property
    def log_path(self):
        return os.path.join(self.dir, "server.log")

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def start(self):
        # After crash() the pid file names a dead postmaster; where nothing reaps
        # orphans (some containers) it stays a zombie that PostgreSQL would take
        # for a running server.
        pid = self.pid
        if pid and not _alive(pid):
            for name in os.listdir(self.dir):
                if name == "postmaster.pid" or name.startswith(".s.PGSQL."):
                    os.unlink(os.path.join(self.dir, name))
        self._pg(["pg_ctl", "-D", self.dir, "-l", self.log_path, "-w", "-t", "60", "start"],
                 timeout=90)
        self._running = True
        if self not in _live_processes:
            _live_processes.append(self)

    def stop(self, mode="fast"):
        """Stops the server (mode: smart, fast or immediate)."""
        if self._running:
            self._pg(["pg_ctl", "-D", self.dir, "-m", mode, "-w", "-t", "60", "stop"],
                     timeout=90, check=False)
            self._running = False

    def restart(self, mode="fast"):
        self.stop(mode)
        self.start()

    @property
    def pid(self):
        """The postmaster's pid, or None when it is not running."""
        try:
            with open(os.path.join(self.dir, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def crash(self):
        """Kills the postmaster and every backend with SIGKILL, like a machine
        losing power, and waits until they are gone."""
        pid = self.pid
        if pid:
            victims = [pid] + _children(pid)
            for p in victims:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 30
            while any(_alive(p) for p in victims) and time.monotonic() < deadline:
                time.sleep(0.02)
        self._running = False

    def url_for(self, dbname, user="postgres"):
        return "postgresql://%s@127.0.0.1:%d/%s" % (user, self.port, dbname)

    def query(self, sql, *params, dbname="postgres"):
        return psql(self.url_for(dbname), sql, *params)

    def create_keel_db(self, dbname="keel"):
        """Creates a database with keel's migrations applied; returns its URL."""
        self.query("CREATE DATABASE %s" % dbname)
        url = self.url_for(dbname)
        migrate(url)
        return url

    def cleanup(self):
        try:
            self.stop("immediate")
        finally:
            if self in _live_processes:
                _live_processes.remove(self)
            shutil.rmtree(self.dir, ignore_errors=True)

    def _terminate_for_cleanup(self):
        self.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()

    def __repr__(self):
        return "<PrivatePostgres port=%d dir=%s>" % (self.port, self.dir)


# ---------------------------------------------------------------- PgBouncer

PGBOUNCER = os.environ.get("KEEL_TEST_PGBOUNCER", "/usr/sbin/pgbouncer")


class PgBouncer:
    """Debian's pgbouncer in front of a PostgreSQL server (default: the test
    server of KEEL_TEST_DATABASE_URL), in "session" or "transaction" pool
    mode. Every database name is forwarded (a "*" entry) and connects as the
    target URL's user; clients are not authenticated (auth_type any), as on
    a loopback-only test set-up. .url_for(dbname) is a libpq URL through it.
    Nothing is configured to help keel: no ignore_startup_parameters.
    """

    def __init__(self, mode, target_url=None):
        if mode not in ("session", "transaction"):
            raise ValueError("pool mode %r" % mode)
        target = urllib.parse.urlsplit(target_url or _admin_url())
        self.mode = mode
        self.dir = tempfile.mkdtemp(prefix="keeltest-pgbouncer-")
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.log_path = os.path.join(self.dir, "pgbouncer.log")
        ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(ini, "w") as f:
            f.write("[databases]\n* = host=%s port=%d user=%s\n\n"
                    "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = %d\n"
                    "unix_socket_dir =\nauth_type = any\npool_mode = %s\n"
                    "max_client_conn = 400\ndefault_pool_size = 20\n"
                    "logfile = %s\npidfile = %s\n"
                    % (target.hostname, target.port or 5432, target.username or "postgres",
                       self.port, mode, self.log_path, os.path.join(self.dir, "pgbouncer.pid")))
        os.chmod(ini, 0o644)
        self.proc = subprocess.Popen(_as_postgres([PGBOUNCER, ini]), cwd="/",
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _live_processes.append(self)
        deadline = time.monotonic() + scaled(15)
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.cleanup()
                    raise RuntimeError("pgbouncer did not start: %s" % self.log_tail())
                time.sleep(0.05)

    def url_for(self, dbname):
        return "postgresql://keel@127.0.0.1:%d/%s" % (self.port, dbname)

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self in _live_processes:
            _live_processes.remove(self)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _terminate_for_cleanup(self):
        self.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()

    def __repr__(self):
        return "<PgBouncer %s port=%d>" % (self.mode, self.port)


# While set, every Keeld whose database is a Database (not a URL given in
# env) reaches it through this PgBouncer with database.pooler set to match:
# that is how test_pgbouncer.py runs other modules' tests through a pooler.
through_pgbouncer = None


# ---------------------------------------------------------------- HAProxy

HAPROXY = os.environ.get("KEEL_TEST_HAPROXY", "/usr/sbin/haproxy")


class HAProxy:
    """Debian's haproxy in front of keelds, as a fleet's load balancer:
    round robin, health checks on GET /health every 200 ms (down after 2
    failures, up after 2 successes), X-Forwarded-For added, and no retries
    or redispatch, so every failure a backend causes reaches the client.
    .url(path) is the address clients use.
    """

    def __init__(self, keelds):
        self.dir = _mkdtemp("haproxy")
        self.port = free_port()
        self.log_path = os.path.join(self.dir, "haproxy.log")
        servers = "".join(
            "    server k%d 127.0.0.1:%d check inter 200ms fall 2 rise 2\n" % (i, k.port)
            for i, k in enumerate(keelds))
        cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write("global\n    maxconn 2000\n\n"
                    "defaults\n    mode http\n    timeout connect 2s\n"
                    "    timeout client 30s\n    timeout server 30s\n    retries 0\n"
                    "    no option redispatch\n\n"
                    "frontend fleet\n    bind 127.0.0.1:%d\n    default_backend keel\n\n"
                    "backend keel\n    balance roundrobin\n    option forwardfor\n"
                    "    option httpchk GET /health\n    http-check expect status 200\n%s"
                    % (self.port, servers))
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([HAPROXY, "-f", cfg, "-db"], stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self.dir)
        _live_processes.append(self)
        deadline = time.monotonic() + scaled(10)
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.cleanup()
                    raise RuntimeError("haproxy did not start: %s" % self.log_tail())
                time.sleep(0.05)

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        if self in _live_processes:
            _live_processes.remove(self)

    def _terminate_for_cleanup(self):
        self.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()

    def __repr__(self):
        return "<HAProxy port=%d>" % self.port


class Load:
    """Bounded load through a URL: `threads` clients, each sending GET path
    one after the other (a new connection each time) until stop() or
    max_requests in all. .ok, .failed (list of (time, what)) count results;
    a request fails on any status but 200 or a connection error."""

    def __init__(self, url, threads=4, max_requests=20000, timeout=10):
        self.url = url
        self.ok = 0
        self.failed = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._left = max_requests
        self._timeout = timeout
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self):
        while not self._stop.is_set():
            with self._lock:
                if self._left <= 0:
                    return
                self._left -= 1
            try:
                r = http("GET", self.url, timeout=self._timeout)
                good = r.status == 200
                what = "status %d" % r.status
            except Exception as e:  # noqa: BLE001 - every failure counts
                good, what = False, repr(e)
            with self._lock:
                if good:
                    self.ok += 1
                else:
                    self.failed.append((time.monotonic(), what))

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=scaled(30))
        return self
