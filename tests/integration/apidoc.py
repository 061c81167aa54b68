"""Helpers shared by test_openapi.py and test_frontend.py: the published
OpenAPI document and the Node.js checks of openapi_check.js (the npm
packages of tools/npm, which ./dev installs into .dev/npm/node_modules and
names in KEEL_TEST_NODE_MODULES)."""

import json
import os
import re
import subprocess
import tempfile

import keeltest

HERE = os.path.dirname(os.path.abspath(__file__))
CHECK = os.path.join(HERE, "openapi_check.js")
NODE_MODULES = os.environ.get("KEEL_TEST_NODE_MODULES") or os.path.join(
    keeltest.srcdir, ".dev", "npm", "node_modules")


def node(*args, timeout=120):
    """Runs openapi_check.js; returns (exit status, parsed stdout or text, stderr)."""
    assert os.path.isdir(NODE_MODULES), (
        "npm packages missing in %s: ./dev installs them (tools/npm)" % NODE_MODULES)
    env = dict(os.environ, KEEL_TEST_NODE_MODULES=NODE_MODULES)
    p = subprocess.run(["node", CHECK] + list(args), capture_output=True, text=True,
                       timeout=keeltest.scaled(timeout), env=env)
    try:
        out = json.loads(p.stdout)
    except ValueError:
        out = p.stdout
    return p.returncode, out, p.stderr


def template_of(doc, path):
    """The document's path template that a concrete path matches; literal
    segments win over parameters, as in keel's router."""
    path = path.split("?", 1)[0]
    if path in doc["paths"]:
        return path
    matches = [tpl for tpl in doc["paths"]
               if re.match("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(tpl)) + "$", path)]
    return min(matches, key=lambda t: t.count("{")) if matches else None


class Recorder:
    """Collects (method, path, status, body) of real answers for the schema check."""

    def __init__(self):
        self.cases = []

    def add(self, method, path, response, label=None):
        self.cases.append({"method": method, "path": path.split("?", 1)[0],
                           "status": response.status, "body": response.json(),
                           "label": label or "%s %s -> %d" % (method, path, response.status)})
        return response

    def check(self, doc):
        """Validates every recorded body against doc; returns the number checked."""
        out = self.run(doc)
        assert out["failures"] == [] and out["checked"] == len(self.cases), out
        return out["checked"]

    def run(self, doc):
        """Validates every recorded body; returns {"checked", "failures"}."""
        cases = []
        for c in self.cases:
            tpl = template_of(doc, c["path"])
            assert tpl is not None, "no path of the document matches %s" % c["path"]
            cases.append(dict(c, path=tpl))
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"document": doc, "cases": cases}, f)
            name = f.name
        try:
            rc, out, err = node("responses", name)
        finally:
            os.unlink(name)
        assert isinstance(out, dict) and rc == (1 if out["failures"] else 0), (rc, out, err)
        return out
