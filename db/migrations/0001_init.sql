-- keel schema, version 1: identity and credits.
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

-- The creator plugin's tables (profiles, posts, access grants, search jobs,
-- stats counters) are its own migrations: plugins/creator/migrations/.
