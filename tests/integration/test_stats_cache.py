"""system/stats' cache (plugins/creator/read.c): each worker keeps the counts
it read for at most config.stats_cache_ms (default 1000). What can be
asserted without depending on how fast anything runs:

  - a read that starts a whole bound after a change was committed shows it;
  - with the cache off, a read right after the change shows it;
  - reads sent one after another cost at most one query per worker per bound
    (counted by keel_plugin_creator_stats_reads_total), whatever their pace.
"""

import math
import re
import time

from keeltest import Database, Keeld
from test_creator import BASE, User, import_ok, name, no_stats_cache, profile_line

TIMEOUT = 180

STATS = BASE + "/system/stats"


def profiles_total(u):
    r = u.get(STATS)
    assert r.status == 200, r
    body = r.json()
    assert body["success"] is True, body
    return body["stats"]["profiles"]["total"]


def stats_reads(k):
    text = k.admin_get("/metrics").text
    m = re.search(r'^keel_plugin_creator_stats_reads_total\{plugin="creator"\} (\S+)$', text,
                  re.M)
    assert m, text[-2000:]
    return float(m.group(1))


def test_a_change_shows_once_the_bound_has_passed():
    with Database() as db:
        with Keeld(db=db) as k:
            u = User(k)
            before = profiles_total(u)
            import_ok(k, [profile_line(name("sc"))])
            committed = time.monotonic()  # the import answered after its commit
            # Reads inside the window may show either value; none may show
            # anything else.
            for _ in range(5):
                assert profiles_total(u) in (before, before + 1)
            # The cache and this clock are both CLOCK_MONOTONIC.
            time.sleep(max(0.0, committed + 1.05 - time.monotonic()))
            for _ in range(10):  # both workers, whichever takes the request
                assert profiles_total(u) == before + 1


def test_without_the_cache_a_change_shows_at_once():
    with Database() as db:
        with Keeld(no_stats_cache, db=db) as k:
            u = User(k)
            before = profiles_total(u)
            for i in range(3):
                import_ok(k, [profile_line(name("sc"))])
                assert profiles_total(u) == before + i + 1


def test_sequential_reads_cost_at_most_one_query_per_worker_and_bound():
    with Keeld() as k:
        u = User(k)
        workers = len(k.workers())
        assert workers >= 1
        n0 = stats_reads(k)
        t0 = time.monotonic()
        for _ in range(200):
            assert u.get(STATS).status == 200
        elapsed = time.monotonic() - t0
        queries = stats_reads(k) - n0
        # Without the cache this would be 200.
        limit = workers * (math.floor(elapsed / 1.0) + 1)
        assert 1 <= queries <= limit, (queries, limit, elapsed)
