-- The creator plugin's schema, version 1: profiles, posts, access grants,
-- search jobs and the stats counters.  Until keel 0.1 these tables were part
-- of the core's 0001_init.sql; every statement here is idempotent, so a
-- database created by that older file takes this one as a no-op (and
-- records it), while a fresh database gets the same schema.

CREATE TABLE IF NOT EXISTS profiles (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    username             text NOT NULL UNIQUE CHECK (username = lower(username)),
    full_name            text,
    biography            text,
    followers_count      bigint NOT NULL DEFAULT 0,
    following_count      bigint NOT NULL DEFAULT 0,
    posts_count          bigint NOT NULL DEFAULT 0,
    is_verified          boolean NOT NULL DEFAULT false,
    is_private           boolean NOT NULL DEFAULT false,
    profile_pic_url      text,
    engagement_rate      double precision,
    avg_likes            double precision,
    avg_comments         double precision,
    ai_analyzed          boolean NOT NULL DEFAULT false,
    ai_primary_content_type  text,
    ai_avg_sentiment_score   double precision,
    ai_content_distribution  jsonb,
    ai_language_distribution jsonb,
    ai_content_quality_score double precision,
    ai_analyzed_at       timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS posts (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    profile_id         uuid NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
    shortcode          text NOT NULL UNIQUE,
    caption            text,
    likes_count        bigint NOT NULL DEFAULT 0,
    comments_count     bigint NOT NULL DEFAULT 0,
    engagement_rate    double precision,
    display_url        text,
    taken_at           timestamptz,
    ai_analyzed        boolean NOT NULL DEFAULT false,
    ai_content_category text,
    ai_sentiment       text,
    ai_sentiment_score double precision,
    ai_language_code   text,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS posts_profile_taken ON posts (profile_id, taken_at DESC NULLS LAST, id);

CREATE TABLE IF NOT EXISTS user_profile_access (
    id            bigserial PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    profile_id    uuid NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
    granted_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    credits_spent bigint NOT NULL DEFAULT 0,
    UNIQUE (user_id, profile_id)
);
-- The unlocked list: a user's unexpired grants, newest first.
CREATE INDEX IF NOT EXISTS user_profile_access_list ON user_profile_access (user_id, granted_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS user_profile_access_expiry ON user_profile_access (user_id, expires_at);

CREATE TABLE IF NOT EXISTS search_jobs (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    username   text NOT NULL,
    status     text NOT NULL DEFAULT 'queued'
               CHECK (status IN ('queued', 'processing', 'complete', 'failed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- One open job per user and username: the search de-duplicates on this.
CREATE UNIQUE INDEX IF NOT EXISTS search_jobs_open ON search_jobs (user_id, username)
    WHERE status IN ('queued', 'processing');
CREATE INDEX IF NOT EXISTS search_jobs_username_open ON search_jobs (username)
    WHERE status IN ('queued', 'processing');

-- Maintained counters for system/stats: one row per counted table, updated
-- by triggers in the same transaction as the change, so the stats route
-- reads two rows instead of counting millions.
CREATE TABLE IF NOT EXISTS stats_counters (
    name        text PRIMARY KEY,
    total       bigint NOT NULL DEFAULT 0,
    ai_analyzed bigint NOT NULL DEFAULT 0
);
INSERT INTO stats_counters (name) VALUES ('profiles'), ('posts') ON CONFLICT (name) DO NOTHING;

-- Statement-level triggers with transition tables: one counter UPDATE per
-- statement, so a COPY of millions of rows costs one update, not millions.
CREATE OR REPLACE FUNCTION stats_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE stats_counters c
       SET total = c.total + d.n, ai_analyzed = c.ai_analyzed + d.ai
      FROM (SELECT count(*) AS n, count(*) FILTER (WHERE ai_analyzed) AS ai FROM new_rows) d
     WHERE c.name = TG_TABLE_NAME AND d.n > 0;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION stats_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE stats_counters c
       SET total = c.total - d.n, ai_analyzed = c.ai_analyzed - d.ai
      FROM (SELECT count(*) AS n, count(*) FILTER (WHERE ai_analyzed) AS ai FROM old_rows) d
     WHERE c.name = TG_TABLE_NAME AND d.n > 0;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION stats_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE stats_counters c
       SET ai_analyzed = c.ai_analyzed + d.ai
      FROM (SELECT (SELECT count(*) FILTER (WHERE ai_analyzed) FROM new_rows)
                 - (SELECT count(*) FILTER (WHERE ai_analyzed) FROM old_rows) AS ai) d
     WHERE c.name = TG_TABLE_NAME AND d.ai <> 0;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER profiles_count_ins AFTER INSERT ON profiles REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_count_insert();
CREATE OR REPLACE TRIGGER profiles_count_del AFTER DELETE ON profiles REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_count_delete();
CREATE OR REPLACE TRIGGER profiles_count_upd AFTER UPDATE ON profiles
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_count_update();
CREATE OR REPLACE TRIGGER posts_count_ins AFTER INSERT ON posts REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_count_insert();
CREATE OR REPLACE TRIGGER posts_count_del AFTER DELETE ON posts REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_count_delete();
CREATE OR REPLACE TRIGGER posts_count_upd AFTER UPDATE ON posts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_count_update();
