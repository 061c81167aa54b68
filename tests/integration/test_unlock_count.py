"""The unlocked total the database keeps (plugins/creator/migrations/
0003_unlock_counts.sql): whatever writes, changes, deletes or expires grants
-- plain SQL, COPY, keel's unlock route, TRUNCATE, a deleted user, the clock --
the total both unlocked lists report stays exactly the number of the user's
unexpired grants, and the per-user row stays consistent with its sweep mark.
"""

import os
import subprocess
import threading
import time

import keeltest
from keeltest import Database, Keeld
from test_creator import BASE, User, creator_config, import_ok, name, profile_line

TIMEOUT = 240

# The per-user rows must count exactly the grants past their sweep mark.
DRIFT = ("SELECT c.user_id, c.live, (SELECT count(*) FROM user_profile_access a"
         "  WHERE a.user_id = c.user_id AND a.expires_at > c.swept_to) AS want"
         "  FROM user_unlock_counts c"
         " WHERE c.live <> (SELECT count(*) FROM user_profile_access a"
         "                   WHERE a.user_id = c.user_id AND a.expires_at > c.swept_to)")
# Every user with grants has a row.
ORPHANS = ("SELECT DISTINCT a.user_id FROM user_profile_access a"
           " WHERE NOT EXISTS (SELECT 1 FROM user_unlock_counts c WHERE c.user_id = a.user_id)")


# Sweeps only when the test runs one: keeld's own task would race it.
no_sweep_task = creator_config(unlock_sweep_s=0)


def unexpired(u):
    return int(u.scalar("SELECT count(*) FROM user_profile_access"
                        " WHERE user_id = %s AND expires_at > now()", u.id))


def check(u, want=None):
    """Both routes report the SQL count of u's unexpired grants (and want, if given)."""
    truth = unexpired(u)
    if want is not None:
        assert truth == want, (truth, want)
    body = u.get(BASE + "/unlocked?page=1&page_size=3").json()
    assert body["success"] is True, body
    assert body["pagination"]["total"] == truth, (body["pagination"], truth)
    assert body["message"] == "Found %d unlocked profiles" % truth, body
    assert len(body["profiles"]) == min(3, truth), body
    # A page past the end has no rows to carry the total: asked on its own.
    body = u.get(BASE + "/unlocked?page=1000&page_size=100").json()
    assert body["profiles"] == [] and body["pagination"]["total"] == truth, body
    body = u.get("/api/v1/auth/unlocked?page=1&page_size=5").json()
    assert body["success"] is True and body["pagination"]["total"] == truth, body
    assert body["pagination"]["total_count"] == truth, body
    assert u.query(DRIFT) == [], u.query(DRIFT)
    assert u.query(ORPHANS) == [], u.query(ORPHANS)
    return truth


def profiles(k, n):
    names = [name("uc") for _ in range(n)]
    import_ok(k, [profile_line(x) for x in names])
    return names


def grant_sql(uid, username, expires, granted="now()"):
    return ("INSERT INTO user_profile_access (user_id, profile_id, granted_at, expires_at)"
            " SELECT '%s', id, %s, %s FROM profiles WHERE username = '%s'"
            % (uid, granted, expires, username))


def grant_expired_by_the_clock(k, u, username):
    """A grant of u's that expires a second from now, once it has."""
    k.db.query(grant_sql(u.id, username, "now() + interval '1 second'"))
    deadline = time.time() + keeltest.scaled(60)
    while unexpired(u) == 1 and time.time() < deadline:
        time.sleep(0.2)


def psql_session(k):
    """A psql session of the test's own, fed on stdin, answering on stdout."""
    return subprocess.Popen([keeltest.PSQL, "-X", "-q", "-At", "-d", k.db.url],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def psql_until(holder, text, marker):
    """Feeds text to a psql_session, then echoes marker; returns the lines
    the session printed before the marker."""
    holder.stdin.write(text + "\\echo " + marker + "\n")
    holder.stdin.flush()
    lines = []
    for line in holder.stdout:
        if line.strip() == marker:
            return lines
        lines.append(line.strip())
    raise AssertionError("the session ended before %r: %r" % (marker, lines))


def query_in_thread(k, sql, *args):
    """Runs one query on a thread of its own: the thread, and a dict that
    gets "ok" or the database's "error" when the query ends."""
    out = {}

    def run():
        try:
            k.db.query(sql, *args)
            out["ok"] = True
        except RuntimeError as e:
            out["error"] = str(e)

    t = threading.Thread(target=run)
    t.start()
    return t, out


def wait_until_blocked(k, t, out, blocked_sql, what):
    """Waits until blocked_sql finds the query running on t waiting for a lock."""
    def blocked():
        if k.db.query(blocked_sql):
            return True
        assert t.is_alive(), out
        return False

    keeltest.wait_until(blocked, "the writer to wait for " + what, timeout=30)


def release(holder, t, text):
    """Lets the held session go on with text and waits for t to finish."""
    holder.stdin.write(text)
    holder.stdin.flush()
    t.join(keeltest.scaled(30))
    assert not t.is_alive()


def test_plain_sql_writes_updates_deletes_and_the_clock_keep_the_total_exact():
    with Database() as db:
        with Keeld(no_sweep_task, db=db) as k:
            u, v = User(k), User(k)
            names = profiles(k, 24)
            check(u, 0)

            # One statement, several rows: 7 live, 3 already expired.
            k.db.query("INSERT INTO user_profile_access (user_id, profile_id, granted_at,"
                       " expires_at) SELECT %s, id, now() - make_interval(mins => n::int),"
                       " CASE WHEN n <= 7 THEN now() + make_interval(days => n::int)"
                       "      ELSE now() - make_interval(hours => n::int) END"
                       " FROM (SELECT id, row_number() OVER (ORDER BY username) AS n"
                       "         FROM profiles WHERE username = ANY (%s::text[])) p",
                       u.id, "{%s}" % ",".join(names[:10]))
            check(u, 7)

            # One statement for two users.
            k.db.query("INSERT INTO user_profile_access (user_id, profile_id, expires_at)"
                       " SELECT uid::uuid, p.id, now() + interval '2 days'"
                       " FROM profiles p, unnest(ARRAY[%s, %s]) AS uid"
                       " WHERE p.username = ANY (%s::text[])",
                       u.id, v.id, "{%s}" % ",".join(names[10:13]))
            check(u, 10)
            check(v, 3)

            # Updates: revive an expired grant, expire a live one, change
            # nothing that counts, move one grant to the other user.
            k.db.query("UPDATE user_profile_access SET expires_at = now() + interval '1 day'"
                       " WHERE id = (SELECT min(id) FROM user_profile_access"
                       "              WHERE user_id = %s AND expires_at <= now())", u.id)
            check(u, 11)
            k.db.query("UPDATE user_profile_access SET expires_at = now() - interval '1 second'"
                       " WHERE id = (SELECT max(id) FROM user_profile_access"
                       "              WHERE user_id = %s AND expires_at > now())", u.id)
            check(u, 10)
            k.db.query("UPDATE user_profile_access SET credits_spent = credits_spent + 1"
                       " WHERE user_id = %s", u.id)
            check(u, 10)
            k.db.query("UPDATE user_profile_access SET user_id = %s"
                       " WHERE id = (SELECT min(id) FROM user_profile_access a"
                       "              WHERE a.user_id = %s AND a.expires_at > now()"
                       "                AND NOT EXISTS (SELECT 1 FROM user_profile_access b"
                       "                                 WHERE b.user_id = %s"
                       "                                   AND b.profile_id = a.profile_id))",
                       v.id, u.id, v.id)
            check(u, 9)
            check(v, 4)

            # Keel's own unlock statement, as plain SQL: a re-unlock of an
            # expired grant (the conflict path) and a new one.
            expired = u.scalar("SELECT p.username FROM user_profile_access a"
                               " JOIN profiles p ON p.id = a.profile_id"
                               " WHERE a.user_id = %s AND a.expires_at <= now()"
                               " ORDER BY a.id LIMIT 1", u.id)
            for n in (expired, names[13]):
                k.db.query("INSERT INTO user_profile_access (user_id, profile_id, granted_at,"
                           " expires_at) SELECT %s, id, now(), now() + interval '30 days'"
                           " FROM profiles WHERE username = %s"
                           " ON CONFLICT (user_id, profile_id) DO UPDATE"
                           " SET granted_at = now(), expires_at = EXCLUDED.expires_at",
                           u.id, n)
            check(u, 11)

            # keel's unlock route.
            u.set_balance(100)
            r = u.post(BASE + "/unlock/" + names[14])
            assert r.status == 200 and r.json()["unlocked"] is True, r
            check(u, 12)

            # Deletes, expired and live mixed, in one statement.
            doomed = "(SELECT id FROM user_profile_access WHERE user_id = '%s'" \
                " ORDER BY expires_at LIMIT 4)" % u.id
            live = int(u.scalar("SELECT count(*) FROM user_profile_access WHERE id IN "
                                + doomed + " AND expires_at > now()"))
            assert 0 < live < 4, live
            k.db.query("DELETE FROM user_profile_access WHERE id IN " + doomed)
            left = check(u, 12 - live)

            # A transaction that changes a lot and rolls back changes nothing.
            k.db.query("BEGIN; DELETE FROM user_profile_access WHERE user_id = %s;"
                       " INSERT INTO user_profile_access (user_id, profile_id, expires_at)"
                       " SELECT %s, id, now() + interval '1 day' FROM profiles"
                       "  WHERE username = %s; ROLLBACK", u.id, v.id, names[20])
            check(u, left)
            check(v, 4)

            # Several statements in one transaction, read committed.
            k.db.query("BEGIN; " + grant_sql(u.id, names[15], "now() + interval '1 hour'") + ";"
                       " UPDATE user_profile_access SET expires_at = expires_at + interval '1 day'"
                       "  WHERE user_id = '%s' AND expires_at > now();" % u.id
                       + " DELETE FROM user_profile_access WHERE user_id = '%s'"
                       "  AND profile_id = (SELECT id FROM profiles WHERE username = '%s');"
                       % (u.id, names[15]) + " COMMIT")
            check(u, left)

            # COPY, the way a bulk import arrives.
            ids = dict(k.db.query("SELECT username, id FROM profiles"
                                  " WHERE username = ANY (%s::text[])",
                                  "{%s}" % ",".join(names[16:20])))
            rows = "\n".join("%s\t%s\t%s" % (u.id, ids[n], "2999-01-01 00:00:00+00"
                                               if i % 2 == 0 else "2000-01-01 00:00:00+00")
                             for i, n in enumerate(names[16:20]))
            k.db.query("COPY user_profile_access (user_id, profile_id, expires_at)"
                       " FROM STDIN;\n" + rows + "\n\\.\n")
            check(u, left + 2)

            # The clock: two grants that expire a moment from now count
            # until then and stop counting after, with no write at all.
            # (One transaction, so both expire at the same instant.)
            soon = "now() + interval '2 seconds'"
            k.db.query("BEGIN; " + grant_sql(u.id, names[20], soon) + "; "
                       + grant_sql(u.id, names[21], soon) + "; COMMIT")
            before = left + 4
            check(u, before)
            deadline = time.time() + keeltest.scaled(60)
            while unexpired(u) == before and time.time() < deadline:
                time.sleep(0.2)
            check(u, before - 2)
            window = ("SELECT count(*) FROM user_profile_access a JOIN user_unlock_counts c"
                      " ON c.user_id = a.user_id WHERE a.user_id = %s"
                      " AND a.expires_at > c.swept_to AND a.expires_at <= now()")
            assert int(u.scalar(window, u.id)) >= 2

            # A sweep moves the expired grants out of the row's live count
            # and the total stays the same.
            live = int(u.scalar("SELECT live FROM user_unlock_counts WHERE user_id = %s", u.id))
            assert live > before - 2, live
            assert k.db.scalar("SELECT unlock_counts_sweep()") == "1"
            assert int(u.scalar(window, u.id)) == 0
            assert u.scalar("SELECT live FROM user_unlock_counts WHERE user_id = %s",
                            u.id) == str(before - 2)
            check(u, before - 2)
            assert k.db.scalar("SELECT unlock_counts_sweep()") == "0"
            check(u, before - 2)

            # A deleted user takes its grants and its row along.
            k.db.query("DELETE FROM users WHERE id = %s", v.id)
            assert k.db.query("SELECT 1 FROM user_unlock_counts WHERE user_id = %s", v.id) == []
            check(u, before - 2)

            # TRUNCATE empties the counts too; new grants start from zero.
            k.db.query("TRUNCATE user_profile_access")
            assert k.db.scalar("SELECT count(*) FROM user_unlock_counts") == "0"
            check(u, 0)
            k.db.query(grant_sql(u.id, names[0], "now() + interval '1 day'"))
            check(u, 1)


def test_repeatable_read_writer_racing_a_sweep_fails_instead_of_miscounting():
    """A REPEATABLE READ writer whose snapshot predates a sweep of its user
    gets a serialization error from the count's row lock, not a wrong count:
    its grant expires between the old and the new sweep mark, so read with
    the old mark it would count as live."""
    with Database() as db:
        with Keeld(no_sweep_task, db=db) as k:
            u = User(k)
            names = profiles(k, 3)
            grant_expired_by_the_clock(k, u, names[0])
            # The writer takes its snapshot, then waits for an advisory lock
            # this test holds in a session of its own; the sweep commits
            # meanwhile; then the writer adds a grant for the swept user.
            holder = psql_session(k)
            try:
                psql_until(holder, "SELECT pg_advisory_lock(718281);\n", "held")
                t, out = query_in_thread(k, "BEGIN ISOLATION LEVEL REPEATABLE READ;"
                                         " SELECT count(*) FROM user_unlock_counts;"
                                         " SELECT pg_advisory_lock_shared(718281); "
                                         + grant_sql(u.id, names[1], "now()") + "; COMMIT")
                wait_until_blocked(k, t, out, "SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
                                   " AND objid = 718281 AND NOT granted", "the lock")
                assert k.db.scalar("SELECT unlock_counts_sweep()") == "1"
                release(holder, t, "SELECT pg_advisory_unlock(718281);\n")
            finally:
                holder.stdin.close()
                holder.wait(keeltest.scaled(10))
            assert "could not serialize" in out.get("error", ""), out
            check(u, 0)
            # The writer's retry, with a fresh snapshot, counts.
            k.db.query(grant_sql(u.id, names[1], "now() + interval '1 day'"))
            check(u, 1)


def test_read_committed_writer_waiting_on_a_sweep_counts_against_the_new_mark():
    """A writer that deletes a grant which expired between the old and the
    new sweep mark, and reaches the user's row while that sweep holds it,
    must judge the grant by the mark the sweep leaves: the sweep has already
    taken it out of the live count, so the delete must not take it again.
    (Inserts are kept apart by the row's unique key as well; a delete has
    only the row lock the trigger takes before it reads the mark.)"""
    with Database() as db:
        with Keeld(no_sweep_task, db=db) as k:
            u = User(k)
            names = profiles(k, 3)
            grant_expired_by_the_clock(k, u, names[0])
            # A sweep that has moved u's row and not committed yet.
            holder = psql_session(k)
            try:
                lines = psql_until(holder, "BEGIN;\nSELECT unlock_counts_sweep();\n", "swept")
                assert lines[-1:] == ["1"], lines
                t, out = query_in_thread(k, "DELETE FROM user_profile_access WHERE user_id = %s",
                                         u.id)
                wait_until_blocked(k, t, out, "SELECT 1 FROM pg_stat_activity WHERE"
                                   " wait_event_type = 'Lock'"
                                   " AND query LIKE 'DELETE FROM user_profile_access%%'",
                                   "the sweep")
                release(holder, t, "COMMIT;\n")
            finally:
                holder.stdin.close()
                holder.wait(keeltest.scaled(10))
            assert out == {"ok": True}, out
            check(u, 0)
            assert u.scalar("SELECT live FROM user_unlock_counts WHERE user_id = %s",
                            u.id) == "0"


def test_concurrent_writers_and_sweeps_keep_every_row_consistent():
    with Database() as db:
        with Keeld(no_sweep_task, db=db) as k:
            users = [User(k) for _ in range(3)]
            names = profiles(k, 40)
            errors = []

            def writer(i):
                # Grants that expire within a second or two, live ones, and
                # deletes, for all three users, in random-ish order.
                try:
                    for j in range(12):
                        u = users[(i + j) % 3]
                        n = names[(i * 12 + j) % 40]
                        expires = "now() + make_interval(secs => %d)" % (j % 3) \
                            if j % 2 == 0 else "now() + interval '1 day'"
                        k.db.query(
                            "INSERT INTO user_profile_access (user_id, profile_id, expires_at)"
                            " SELECT %s, id, " + expires + " FROM profiles WHERE username = %s"
                            " ON CONFLICT (user_id, profile_id) DO UPDATE"
                            " SET expires_at = EXCLUDED.expires_at", u.id, n)
                        if j % 4 == 3:
                            k.db.query("DELETE FROM user_profile_access WHERE id ="
                                       " (SELECT min(id) FROM user_profile_access"
                                       "   WHERE user_id = %s)", u.id)
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            def sweeper():
                try:
                    for _ in range(15):
                        k.db.query("SELECT unlock_counts_sweep()")
                        time.sleep(0.1)
                except Exception as e:  # noqa: BLE001 - reported below
                    # A sweep may give way to a writer's lock (lock_timeout).
                    if "lock timeout" not in str(e):
                        errors.append(e)

            threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
            threads += [threading.Thread(target=sweeper) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(keeltest.scaled(120))
            assert not any(t.is_alive() for t in threads)
            assert errors == [], errors
            # Let the short grants run out, sweep, and check again.
            time.sleep(2.5)
            for u in users:
                check(u)
            k.db.query("SELECT unlock_counts_sweep()")
            for u in users:
                check(u)


def test_migration_backfills_existing_grants_and_runs_again_as_a_no_op():
    """The counts of grants written before the migration existed: the
    migration's own SQL, run on a database where it had not run, counts them."""
    with Database() as db:
        with Keeld(no_sweep_task, db=db) as k:
            u, v = User(k), User(k)
            names = profiles(k, 6)
            path = os.path.join(keeltest.MIGRATIONSDIR, "creator", "0003_unlock_counts.sql")
            with open(path) as f:
                migration = f.read()
            # Back to before 0003, then grants written with no trigger.
            k.db.query("DROP TABLE user_unlock_counts, unlock_counts_sweep;"
                       " DROP TRIGGER user_profile_access_count_ins ON user_profile_access;"
                       " DROP TRIGGER user_profile_access_count_del ON user_profile_access;"
                       " DROP TRIGGER user_profile_access_count_upd ON user_profile_access;"
                       " DROP TRIGGER user_profile_access_count_trunc ON user_profile_access")
            for i, n in enumerate(names):
                k.db.query(grant_sql(u.id, n, "now() + interval '1 day'" if i < 4
                                     else "now() - interval '1 day'"))
            k.db.query(grant_sql(v.id, names[0], "now() + interval '1 day'"))
            k.db.query("BEGIN;\n" + migration + "\nCOMMIT;")
            check(u, 4)
            check(v, 1)
            k.db.query("BEGIN;\n" + migration + "\nCOMMIT;")
            check(u, 4)
            k.db.query(grant_sql(v.id, names[1], "now() + interval '1 day'"))
            check(v, 2)
            # The rebuild an operator runs after writes that bypassed the
            # triggers (here: the counts themselves damaged).
            k.db.query("UPDATE user_unlock_counts SET live = live + 7")
            assert k.db.scalar("SELECT unlock_counts_rebuild()") == "2"
            check(u, 4)
            check(v, 2)
