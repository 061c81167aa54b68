#!/usr/bin/env python3
"""A local demo data provider for keel's search-job runner (kind "keel").

GET /profiles/<username> answers one import line (the POST /admin/import
format) for a fixed set of demo names that are not in db/demo.sql, and 404
for any other name.  Profiles and posts are generated deterministically from
the name, with post-level AI fields, so keeld computes the profile's AI
summary itself.  `./dev run` starts it on 127.0.0.1 and configures the
creator plugin's provider to point at it.

Usage: demo_provider.py [--port N] [--delay-ms N] [--list]
"""
import argparse
import hashlib
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEMO_NAMES = [
    "new_wanderlust_ana", "new_chef_marco", "new_techie_kim", "new_yoga_lena",
    "new_gamer_kai", "new_stylist_ines", "new_beats_omar", "new_glow_priya",
]
CATEGORIES = ["Travel", "Food", "Tech", "Fitness", "Gaming", "Fashion", "Music", "Beauty"]
NICHE = {"wanderlust": "Travel", "chef": "Food", "techie": "Tech", "yoga": "Fitness",
         "gamer": "Gaming", "stylist": "Fashion", "beats": "Music", "glow": "Beauty"}
CAPTIONS = ["A new day, a new story", "Behind the scenes of today's shoot",
            "Swipe for the details", "What do you think?", "Grateful for this community",
            "Trying something different this week"]


def rnd(name, salt, n):
    """A deterministic integer in [0, n) from the name and a salt."""
    d = hashlib.sha256(("%s/%s" % (name, salt)).encode()).digest()
    return int.from_bytes(d[:8], "big") % n


def profile(name):
    niche = NICHE.get(name.split("_")[1], "Travel")
    first = name.split("_")[-1].capitalize()
    followers = 5000 + rnd(name, "followers", 500000)
    posts = []
    for i in range(12):
        category = niche if rnd(name, "cat%d" % i, 10) < 7 else CATEGORIES[rnd(name, "c%d" % i, 8)]
        score = round((rnd(name, "s%d" % i, 200) - 60) / 100.0, 2)
        sentiment = "positive" if score > 0.2 else "negative" if score < -0.2 else "neutral"
        likes = followers // 50 + rnd(name, "likes%d" % i, followers // 20 + 1)
        posts.append({
            "shortcode": "dp%s%02d" % (hashlib.sha1(name.encode()).hexdigest()[:10], i),
            "caption": "%s #%s" % (CAPTIONS[rnd(name, "cap%d" % i, len(CAPTIONS))], category.lower()),
            "likes_count": likes,
            "comments_count": likes // 30 + rnd(name, "com%d" % i, 50),
            "display_url": "https://cdn.example.com/demo/%s/%d.jpg" % (name, i),
            "taken_at": 1735689600 - i * 86400 * (1 + rnd(name, "gap%d" % i, 4)),
            "ai": {"content_category": category, "sentiment": sentiment,
                   "sentiment_score": score,
                   "language_code": "en" if rnd(name, "lang%d" % i, 10) < 8 else "es"},
        })
    return {
        "username": name,
        "full_name": "%s (%s creator)" % (first, niche),
        "biography": "%s content, fresh from the demo provider." % niche,
        "followers_count": followers,
        "following_count": 100 + rnd(name, "following", 2000),
        "posts_count": 40 + rnd(name, "posts", 900),
        "is_verified": rnd(name, "verified", 4) == 0,
        "is_private": False,
        "profile_pic_url": "https://cdn.example.com/demo/%s.jpg" % name,
        "posts": posts,
    }


class Handler(BaseHTTPRequestHandler):
    delay = 0.0

    def log_message(self, fmt, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 2 and parts[0] == "profiles":
            name = parts[1].lower()
            if self.delay:
                time.sleep(self.delay)
            if name in DEMO_NAMES:
                return self.answer(200, profile(name))
            return self.answer(404, {"detail": "unknown profile"})
        if parts == ["health"]:
            return self.answer(200, {"status": "ok", "names": DEMO_NAMES})
        return self.answer(404, {"detail": "Not Found"})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--delay-ms", type=int, default=800,
                    help="answer after this long, so a search is seen processing")
    ap.add_argument("--list", action="store_true", help="print the demo names and exit")
    a = ap.parse_args()
    if a.list:
        print("\n".join(DEMO_NAMES))
        return 0
    Handler.delay = a.delay_ms / 1000.0
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
