-- keel schema, version 1: identity, credits, creators, access and search jobs.
-- Names follow the system keel replaces.

CREATE EXTENSION IF NOT EXISTS pgcrypto;

CREATE TABLE users (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    supabase_user_id  uuid UNIQUE,
    email             text NOT NULL UNIQUE,
    full_name         text,
    role              text NOT NULL DEFAULT 'user',
    status            text NOT NULL DEFAULT 'active'
                      CHECK (status IN ('active', 'pending', 'inactive', 'suspended')),
    subscription_tier text NOT NULL DEFAULT 'free',
    last_login        timestamptz,
    last_activity     timestamptz,
    -- Bumped by a trigger on every UPDATE so tests can prove a cache hit wrote nothing.
    update_count      bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION users_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.update_count := OLD.update_count + 1;
    NEW.updated_at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER users_touch BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION users_touch();

CREATE TABLE credit_wallets (
    user_id    uuid PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    balance    bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE credit_transactions (
    id            bigserial PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    amount        bigint NOT NULL,            -- positive = credit, negative = debit
    balance_after bigint NOT NULL CHECK (balance_after >= 0),
    kind          text NOT NULL,              -- 'grant', 'unlock', 'admin'
    reason        text,
    reference     text,                       -- e.g. the unlocked username
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_transactions_user ON credit_transactions (user_id, created_at DESC);

CREATE TABLE profiles (
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

CREATE TABLE posts (
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
CREATE INDEX posts_profile_taken ON posts (profile_id, taken_at DESC NULLS LAST, id);

CREATE TABLE user_profile_access (
    id            bigserial PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    profile_id    uuid NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
    granted_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    credits_spent bigint NOT NULL DEFAULT 0,
    UNIQUE (user_id, profile_id)
);
-- The unlocked list: a user's unexpired grants, newest first.
CREATE INDEX user_profile_access_list ON user_profile_access (user_id, granted_at DESC, id DESC);
CREATE INDEX user_profile_access_expiry ON user_profile_access (user_id, expires_at);

CREATE TABLE search_jobs (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    username   text NOT NULL,
    status     text NOT NULL DEFAULT 'queued'
               CHECK (status IN ('queued', 'processing', 'complete', 'failed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- One open job per user and username: the search de-duplicates on this.
CREATE UNIQUE INDEX search_jobs_open ON search_jobs (user_id, username)
    WHERE status IN ('queued', 'processing');
CREATE INDEX search_jobs_username_open ON search_jobs (username)
    WHERE status IN ('queued', 'processing');

-- Maintained counters for system/stats: one row per counted table, updated
-- by triggers in the same transaction as the change, so the stats route
-- reads two rows instead of counting millions.
CREATE TABLE stats_counters (
    name        text PRIMARY KEY,
    total       bigint NOT NULL DEFAULT 0,
    ai_analyzed bigint NOT NULL DEFAULT 0
);
INSERT INTO stats_counters (name) VALUES ('profiles'), ('posts');

-- Statement-level triggers with transition tables: one counter UPDATE per
-- statement, so a COPY of millions of rows costs one update, not millions.
CREATE FUNCTION stats_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE stats_counters c
       SET total = c.total + d.n, ai_analyzed = c.ai_analyzed + d.ai
      FROM (SELECT count(*) AS n, count(*) FILTER (WHERE ai_analyzed) AS ai FROM new_rows) d
     WHERE c.name = TG_TABLE_NAME AND d.n > 0;
    RETURN NULL;
END $$;

CREATE FUNCTION stats_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE stats_counters c
       SET total = c.total - d.n, ai_analyzed = c.ai_analyzed - d.ai
      FROM (SELECT count(*) AS n, count(*) FILTER (WHERE ai_analyzed) AS ai FROM old_rows) d
     WHERE c.name = TG_TABLE_NAME AND d.n > 0;
    RETURN NULL;
END $$;

CREATE FUNCTION stats_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE stats_counters c
       SET ai_analyzed = c.ai_analyzed + d.ai
      FROM (SELECT (SELECT count(*) FILTER (WHERE ai_analyzed) FROM new_rows)
                 - (SELECT count(*) FILTER (WHERE ai_analyzed) FROM old_rows) AS ai) d
     WHERE c.name = TG_TABLE_NAME AND d.ai <> 0;
    RETURN NULL;
END $$;

CREATE TRIGGER profiles_count_ins AFTER INSERT ON profiles REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_count_insert();
CREATE TRIGGER profiles_count_del AFTER DELETE ON profiles REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_count_delete();
CREATE TRIGGER profiles_count_upd AFTER UPDATE ON profiles
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_count_update();
CREATE TRIGGER posts_count_ins AFTER INSERT ON posts REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_count_insert();
CREATE TRIGGER posts_count_del AFTER DELETE ON posts REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_count_delete();
CREATE TRIGGER posts_count_upd AFTER UPDATE ON posts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_count_update();
