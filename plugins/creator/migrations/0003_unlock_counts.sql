-- The exact per-user unlocked total, kept by the database (docs/performance.md,
-- "The unlocked total").  The unlocked list reports how many unexpired grants
-- the caller has; counting them per request costs a scan of all of them.
-- Instead every user with grants has one row here:
--
--   live     = the number of the user's grants with expires_at > swept_to
--
-- kept true by triggers on user_profile_access in the same transaction as any
-- change to the grants, however it is made (keel's unlock, an import, an
-- operator's SQL, TRUNCATE).  The clock is the one writer no trigger sees: a
-- grant that expires stays in `live` until a sweep moves swept_to past it.  So
-- the unlocked total a request reports is
--
--   live - (the user's grants with swept_to < expires_at <= now())
--
-- which is exact at any time, swept or not; the sweep (unlock_counts_sweep(),
-- run every 30 s by keeld's creator plugin) only keeps that subtraction short.
--
-- Concurrency: a trigger and a sweep both lock the user's row before they
-- read swept_to and count, and count in a statement that starts after the
-- lock, so under READ COMMITTED each sees every grant change that the other
-- has already counted; under REPEATABLE READ and SERIALIZABLE a concurrent
-- change makes the lock fail with a serialization error instead of
-- miscounting.  Idempotent, like the plugin's other migrations.

-- Writers of grants wait here until the backfill below has committed; those
-- already running finish first, so the backfill counts their rows too.
LOCK TABLE user_profile_access IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE IF NOT EXISTS user_unlock_counts (
    user_id  uuid PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    live     bigint NOT NULL DEFAULT 0,
    swept_to timestamptz NOT NULL
);

-- The sweep's own state: one row, the cutoff of the last completed sweep.
-- Its row lock is also what keeps two sweeps (two keeld workers) apart.
CREATE TABLE IF NOT EXISTS unlock_counts_sweep (
    one      boolean PRIMARY KEY DEFAULT true CHECK (one),
    swept_to timestamptz NOT NULL
);

-- What the sweep looks for: grants by expiry across all users.
CREATE INDEX IF NOT EXISTS user_profile_access_expires ON user_profile_access (expires_at);

-- Applies one statement's grant changes: for each (user, expiry) one +1 (a
-- grant that came) or -1 (a grant that went).  Rows for users new to the
-- table start swept at the transaction's start with a count of zero: a user
-- without a row has no grants.
CREATE OR REPLACE FUNCTION unlock_counts_apply(uids uuid[], expiries timestamptz[], signs int[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_unlock_counts (user_id, live, swept_to)
    SELECT DISTINCT x.u, 0, now() FROM unnest(uids, signs) AS x(u, s) WHERE x.s > 0 ORDER BY 1
        ON CONFLICT (user_id) DO NOTHING;
    -- In user order, so that two writers of the same users cannot deadlock.
    PERFORM 1 FROM user_unlock_counts c
      WHERE c.user_id IN (SELECT DISTINCT x.u FROM unnest(uids) AS x(u))
      ORDER BY c.user_id FOR UPDATE OF c;
    -- A new statement: under READ COMMITTED it sees swept_to as the sweep
    -- that may just have released the row left it.
    UPDATE user_unlock_counts c SET live = c.live + d.n
      FROM (SELECT x.u, sum(x.s) AS n
              FROM unnest(uids, expiries, signs) AS x(u, e, s)
              JOIN user_unlock_counts c2 ON c2.user_id = x.u
             WHERE x.e > c2.swept_to
             GROUP BY x.u) d
     WHERE c.user_id = d.u AND d.n <> 0;
END $$;

CREATE OR REPLACE FUNCTION unlock_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM unlock_counts_apply(array_agg(user_id), array_agg(expires_at), array_agg(1))
       FROM new_rows HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION unlock_counts_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM unlock_counts_apply(array_agg(user_id), array_agg(expires_at), array_agg(-1))
       FROM old_rows HAVING count(*) > 0;
    RETURN NULL;
END $$;

-- Only rows whose user or expiry changed matter (keel's re-unlock changes
-- the expiry; a change of credits_spent alone changes nothing).
CREATE OR REPLACE FUNCTION unlock_counts_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM unlock_counts_apply(array_agg(d.user_id), array_agg(d.expires_at), array_agg(d.s))
       FROM ((SELECT user_id, expires_at, 1 AS s
                FROM (SELECT user_id, expires_at FROM new_rows
                      EXCEPT ALL SELECT user_id, expires_at FROM old_rows) came)
             UNION ALL
             (SELECT user_id, expires_at, -1 AS s
                FROM (SELECT user_id, expires_at FROM old_rows
                      EXCEPT ALL SELECT user_id, expires_at FROM new_rows) gone)) d
     HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION unlock_counts_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM user_unlock_counts;
    RETURN NULL;
END $$;

-- Statement-level with transition tables: an import of a million grants
-- costs one pass over them, not a million counter updates.
CREATE OR REPLACE TRIGGER user_profile_access_count_ins AFTER INSERT ON user_profile_access
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION unlock_counts_insert();
CREATE OR REPLACE TRIGGER user_profile_access_count_del AFTER DELETE ON user_profile_access
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION unlock_counts_delete();
CREATE OR REPLACE TRIGGER user_profile_access_count_upd AFTER UPDATE ON user_profile_access
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION unlock_counts_update();
CREATE OR REPLACE TRIGGER user_profile_access_count_trunc AFTER TRUNCATE ON user_profile_access
    FOR EACH STATEMENT EXECUTE FUNCTION unlock_counts_truncate();

-- Moves swept_to up to now() for every user whose grants expired since their
-- last sweep, and returns how many users it moved (NULL when another sweep
-- holds the state row: that one does the work).  Grants that expired up to
-- `margin` before the last sweep are looked at again, for rows a sweep could
-- not see yet (a transaction still open while it ran); the answer is exact
-- either way, the margin only keeps such rows from staying unswept.
CREATE OR REPLACE FUNCTION unlock_counts_sweep(margin interval DEFAULT '15 minutes')
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz := now();
    since  timestamptz;
    ids    uuid[];
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'unlock_counts_sweep() must run under READ COMMITTED';
    END IF;
    SELECT s.swept_to INTO since FROM unlock_counts_sweep s FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- Give way to writers rather than make them wait: a sweep that cannot
    -- lock a row in time fails, changes nothing, and the next one retries.
    PERFORM set_config('lock_timeout', '500', true);
    SELECT array_agg(l.user_id) INTO ids FROM (
        SELECT c.user_id FROM user_unlock_counts c
         WHERE c.user_id IN (SELECT a.user_id FROM user_profile_access a
                               JOIN user_unlock_counts c2 ON c2.user_id = a.user_id
                              WHERE a.expires_at > since - margin AND a.expires_at <= cutoff
                                AND a.expires_at > c2.swept_to)
         ORDER BY c.user_id FOR UPDATE OF c) l;
    IF ids IS NOT NULL THEN
        -- A new statement after the locks: it sees every grant the locked
        -- rows count.
        UPDATE user_unlock_counts c
           SET live = c.live - (SELECT count(*) FROM user_profile_access a
                                 WHERE a.user_id = c.user_id
                                   AND a.expires_at > c.swept_to AND a.expires_at <= cutoff),
               swept_to = cutoff
         WHERE c.user_id = ANY (ids) AND c.swept_to < cutoff;
    END IF;
    UPDATE unlock_counts_sweep SET swept_to = greatest(swept_to, cutoff);
    RETURN coalesce(cardinality(ids), 0);
END $$;

-- Recounts every user's row from the grants (the backfill below; and for an
-- operator after a restore or a bulk load made with triggers disabled).
-- Returns the number of users with grants.
CREATE OR REPLACE FUNCTION unlock_counts_rebuild() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    users bigint;
BEGIN
    -- Writers wait until the recount commits; those running finish first,
    -- and the statements below, started after the lock, see their rows.
    LOCK TABLE user_profile_access IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM user_unlock_counts;
    INSERT INTO user_unlock_counts (user_id, live, swept_to)
    SELECT user_id, count(*) FILTER (WHERE expires_at > now()), now()
      FROM user_profile_access GROUP BY user_id;
    GET DIAGNOSTICS users = ROW_COUNT;
    RETURN users;
END $$;

-- The backfill.
SELECT unlock_counts_rebuild();
INSERT INTO unlock_counts_sweep (one, swept_to) VALUES (true, now()) ON CONFLICT (one) DO NOTHING;
