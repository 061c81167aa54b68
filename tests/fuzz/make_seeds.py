#!/usr/bin/python3
"""Writes the seed corpora of keel's fuzz harnesses (tests/fuzz/corpus/).

Seeds are small valid and nearly valid inputs that get the fuzzer past the
JSON parser and into keel's own checks quickly. Each file is named by the
SHA-1 of its content, like the inputs libFuzzer adds, so running this again
only adds what is new. Regression inputs (crashes that were fixed) live in
the same directories under names starting with "regress-" and are never
touched here.

    /usr/bin/python3 tests/fuzz/make_seeds.py
"""

import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import tokens  # noqa: E402

SECRET = "fuzz-secret-with-at-least-thirty-two-characters"  # as in fuzz_token.c
NOW = 1700000000                                              # as in fuzz_token.c
SUB = "0b9f6a5e-3c41-4f0e-9d7a-2a6f1c8e4b21"


def write(harness, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    d = os.path.join(HERE, "corpus", harness)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def compact(obj):
    return json.dumps(obj, separators=(",", ":"))


def claims(**over):
    c = {"sub": SUB, "email": "fuzz@keel.dev", "aud": "authenticated", "role": "authenticated",
         "iat": NOW - 10, "exp": NOW + 3600, "user_metadata": {"full_name": "Fuzz"},
         "app_metadata": {"provider": "email"}}
    for k, v in over.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def token_seeds():
    hdr = {"alg": "HS256", "typ": "JWT"}
    variants = [
        claims(), claims(exp=NOW - 120), claims(exp=NOW - 5), claims(nbf=NOW + 600),
        claims(iat=NOW + 600), claims(aud=["x", "authenticated"]), claims(aud="other"),
        claims(role="anon"), claims(role="service_role"), claims(sub="not-a-uuid"),
        claims(sub=SUB.upper()), claims(exp=str(NOW + 60)), claims(exp=1.5e9), claims(exp=None),
        claims(email=None), claims(iss="https://x.supabase.co/auth/v1"), claims(sub=None),
        claims(exp=2 ** 62), claims(exp=-1), claims(user_metadata=[1, 2]),
    ]
    headers = [
        hdr, {"alg": "HS256"}, {"alg": "none"}, {"alg": "HS512"}, {"alg": "RS256", "kid": "rsa-1"},
        {"alg": "HS256", "kid": "ec-1"}, {"alg": "ES256", "kid": "ec-1"},
        {"alg": "HS256", "kid": "../../../etc/passwd"}, {"alg": "HS256", "kid": "' OR 1=1 --"},
        {"alg": "HS256", "kid": "k" * 200}, {"alg": "HS256", "typ": "JWT", "crit": ["exp"]},
        {"alg": ["HS256"]}, {"kid": "rsa-1"},
    ]
    # Odd first byte: header and payload JSON, signed by the harness.
    for c in variants:
        write("fuzz_token", b"\x01" + compact(hdr).encode() + b"\n" + compact(c).encode())
    for h in headers:
        write("fuzz_token", b"\x01" + compact(h).encode() + b"\n" + compact(claims()).encode())
    write("fuzz_token", b'\x01{"alg":"HS256","alg":"none"}\n' + compact(claims()).encode())
    write("fuzz_token", b'\x01{"alg":"HS256"}\n{"sub":"%s","sub":"%s","aud":"authenticated",'
          b'"role":"authenticated","exp":%d}' % (SUB.encode(), SUB.encode(), NOW + 60))
    write("fuzz_token", b'\x01{"alg":"HS256"}\n[1,2,3]')
    write("fuzz_token", b'\x01{"alg":"HS256"}\n"just a string"')
    # Even first byte: the token verbatim.
    good = tokens.make_token(claims(), secret=SECRET)
    for t in [
        good, good[:-3], good + ".x", ".".join(good.split(".")[:2]), good.replace(".", "..", 1),
        tokens.raw_token({"alg": "none"}, claims(), b""),
        tokens.make_token(claims(), secret=SECRET, alg="HS512"),
        tokens.make_token(claims(), secret="wrong-secret-wrong-secret-wrong-secret"),
        good.split(".")[0] + ".!!!!." + good.split(".")[2], "a.b.c", "..", "", "Bearer " + good,
        good[:10] + "=" + good[10:], good + "\x00trailing",
    ]:
        write("fuzz_token", b"\x00" + t.encode("latin-1"))


def router_seeds():
    paths = [
        "/health", "/api/v1/auth/me", "/api/v1/example/hello", "/api/v1/example/echo/caf%C3%A9",
        "/api/v1/example/echo/a%2Fb", "/api/v1/example/echo/%00", "/api/v1/example/echo/%",
        "/api/v1/example/echo/%zz", "/api/v1/example/../example/hello",
        "/api/v1/example/%2e%2e/hello", "/api/v1/simple/creator/unlocked",
        "/api/v1/simple/creator/system/stats", "/api/v1/simple/creator/natgeo",
        "/api/v1/simple/creator/natgeo/status", "/api/v1/simple/creator/natgeo/posts",
        "/api/v1/simple/creator/search/natgeo", "/api/v1/simple/creator/unlock/natgeo",
        "/api/v1/discovery/unlock-profile", "/api/v1/jobs/123e4567-e89b-12d3-a456-426614174000/status",
        "/", "//", "/api//v1", "/api/v1/simple/creator/", "/" + "/a" * 40, "/x" * 33,
        "/api/v1/simple/creator/" + "%41" * 100, "/api/v1/example/echo/%ff%fe",
        "/api/v1/example/echo/%C0%AF", "/api/v1/example/echo/%ED%A0%80",
        "/api/v1/simple/creator/%F0%9F%98%80", "/api/v1/example/echo/caf\xe9",
    ]
    for m in ["GET", "POST", "DELETE", "OPTIONS", "HEAD", "\x01"]:
        for p in paths:
            write("fuzz_router", m + "\n" + p)


def manifest_seeds():
    for name in ("50-example.json", "60-creator.json"):
        with open(os.path.join(ROOT, "conf.d", name), "rb") as f:
            write("fuzz_manifest", f.read())
    base = {"name": "fz", "file": "fz.so", "routes": [
        {"method": "GET", "path": "/a/{x}", "auth": "user",
         "fallback": {"status": 200, "body": {"error": "down: ${reason}"},
                      "headers": {"Retry-After": "5"}}},
        {"method": "POST", "path": "/a/{x}/b", "auth": "public", "listener": "admin"}]}
    write("fuzz_manifest", compact({"plugin": base}))
    bad_routes = [
        {"method": "get", "path": "/a"}, {"method": "GET", "path": "a"},
        {"method": "GET", "path": "/a/{x}/{x}"}, {"method": "GET", "path": "/a/../b"},
        {"method": "GET", "path": "/a/{}"}, {"method": "GET", "path": "/a//b"},
        {"method": "BREW", "path": "/a"}, {"method": "GET", "path": "/a", "auth": "root"},
        {"method": "GET", "path": "/a", "listener": "other"},
        {"method": "GET", "path": "/a", "fallback": {"status": 99}},
        {"method": "GET", "path": "/a", "fallback": {"body": "x" * 10}},
        {"method": "GET", "path": "/" + "/".join("s%d" % i for i in range(40))},
        {"method": "GET", "path": "/" + "/".join("{p%d}" % i for i in range(10))},
    ]
    for r in bad_routes:
        m = dict(base)
        m["routes"] = [r]
        write("fuzz_manifest", compact({"plugin": m}))
    dup = dict(base)
    dup["routes"] = [{"method": "GET", "path": "/a/{x}"}, {"method": "GET", "path": "/a/{y}"}]
    write("fuzz_manifest", compact({"plugin": dup}))
    write("fuzz_manifest", '{"plugin":{"name":"a","name":"b"}}')
    write("fuzz_manifest", '{"plugin":{"name":"fz","file":"../../../etc/passwd","routes":[]}}')


def conf_seeds():
    d = os.path.join(ROOT, "conf.d")
    for name in sorted(os.listdir(d)):
        if name.endswith(".json"):
            with open(os.path.join(d, name), "rb") as f:
                write("fuzz_conf", f.read())
    for doc in [
        {}, {"server": {"port": 0}}, {"server": {"port": 70000}}, {"server": {"prot": 1}},
        {"limits": {"max_body_bytes": 1, "rate_per_user": 5, "rate_burst": 10}},
        {"limits": {"max_uri_bytes": 100}}, {"limits": {"max_drain_bytes": 0}},
        {"auth": {"jwt_secret": "s", "keys": [{"kid": "k", "alg": "RS256", "pem": "x"}]}},
        {"auth": {"jwt_secret_file": "nonexistent"}}, {"auth": {"keys": [{"kid": "k"}, {"kid": "k"}]}},
        {"cors": {"origins": ["*", "http://a", "ftp://b", ""]}}, {"log": {"level": "loud"}},
        {"database": {"url": None, "pool_size": 0}}, {"admin": {"host": "0.0.0.0", "token": None}},
        {"server": {"threads": 1}, "server2": {}}, [], "text", None,
    ]:
        write("fuzz_conf", compact(doc))
    write("fuzz_conf", '{"server":{"port":1},"server":{"port":2}}')


def json_body_seeds():
    docs = [
        "{}", '{"username":"natgeo"}', '{"email":"a@b.c","amount":25,"reason":"gift"}', "[]",
        "[1,2]", '"text"', "null", "1", "{", '{"a":', '{"a":1,"a":2}', '{"a":"\\u0000"}',
        '{"a":"\\ud800"}', '{"a":1e999}', '{"a":123456789012345678901234567890}', '{"a":-0.0}',
        '{"\\u00e9":"caf\\u00e9"}', '{"a":[true,false,null,1.5,"x",{"b":[]}]}',
        '{"a" : 1 } ', '\ufeff{"a":1}',
    ]
    for d in docs:
        write("fuzz_json_body", d)
    write("fuzz_json_body", b'{"a":"\xff\xfe"}')
    write("fuzz_json_body", b'{"a":"\xc3\xa9"}')
    for depth in (31, 32, 33, 100, 3000):
        write("fuzz_json_body", '{"a":' * depth + "1" + "}" * depth)
        write("fuzz_json_body", "{\"a\":" + "[" * (depth - 1) + "]" * (depth - 1) + "}")


def import_seeds():
    def line(username="natgeo", **extra):
        d = {"username": username, "full_name": "Nat Geo", "biography": "bio",
             "followers_count": 1000, "following_count": 12, "posts_count": 2,
             "is_verified": True, "is_private": False,
             "profile_pic_url": "https://cdn.test/p.jpg", "engagement_rate": 3.5,
             "ai": {"primary_content_type": "travel", "avg_sentiment_score": 0.5,
                    "content_distribution": {"travel": 0.75, "food": 0.25},
                    "language_distribution": {"en": 1.0}, "content_quality_score": 7.5},
             "posts": [{"shortcode": "Abc_1-x", "caption": "hi", "likes_count": 10,
                        "comments_count": 2, "display_url": "https://cdn.test/1.jpg",
                        "taken_at": "2024-05-01T12:00:00Z",
                        "ai": {"content_category": "travel", "sentiment": "positive",
                               "sentiment_score": 0.8, "language_code": "en"}}]}
        for k, v in extra.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
        return compact(d)
    write("fuzz_import", line() + "\n")
    write("fuzz_import", line() + "\r\n\n   \n" + line("second") + "\n" + '{"username":"min"}')
    for extra in [dict(username="Bad Name"), dict(username="x" * 31), dict(username=""),
                  dict(username=7), dict(username=None), dict(followers_count=-1),
                  dict(followers_count=1.5), dict(followers_count="10"),
                  dict(followers_count=2 ** 63), dict(is_verified="yes"),
                  dict(engagement_rate="high"), dict(ai=[]), dict(ai=None),
                  dict(ai={"content_distribution": [1]}), dict(posts={}),
                  dict(posts=[{"shortcode": "a"}, {"shortcode": "a"}]),
                  dict(posts=[{"shortcode": "bad code"}]), dict(posts=[{"caption": "no code"}]),
                  dict(posts=[{"shortcode": "d1", "taken_at": "2024-13-45T99:00:00Z"}]),
                  dict(posts=[{"shortcode": "d2", "taken_at": 1714560000}]),
                  dict(posts=[{"shortcode": "d3", "taken_at": "2024-05-01"}]),
                  dict(posts=[{"shortcode": "d4", "taken_at": "2024-05-01T12:00:00+02:00"}]),
                  dict(posts=[{"shortcode": "d5", "ai": {"sentiment_score": "x"}}]),
                  dict(posts=[1, 2]), dict(unknown_key={"nested": [1, 2]}),
                  dict(full_name="caf\u00e9 \ud83d\ude00")]:
        write("fuzz_import", line(**extra) + "\n")
    write("fuzz_import", '{"username":"a","username":"b"}\n')
    write("fuzz_import", "[1,2,3]\nnull\n\"text\"\n{\n")
    write("fuzz_import", b'{"username":"ok","full_name":"\xff"}\n')
    write("fuzz_import", '{"username":"nul","full_name":"a\\u0000b"}\n')


def main():
    import_seeds()
    token_seeds()
    router_seeds()
    manifest_seeds()
    conf_seeds()
    json_body_seeds()


if __name__ == "__main__":
    main()
