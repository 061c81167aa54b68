-- The job runner (plugins/creator/runner.c): attempts, progress, the error a
-- failed job reports, and a lease so that one job is run by one worker at a
-- time and taken again when its worker died.  Idempotent, like 0001.

ALTER TABLE search_jobs
    ADD COLUMN IF NOT EXISTS attempts         int NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS progress_percent int NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS progress_message text,
    ADD COLUMN IF NOT EXISTS error            text,
    ADD COLUMN IF NOT EXISTS lease_owner      text,
    ADD COLUMN IF NOT EXISTS lease_until      timestamptz,
    ADD COLUMN IF NOT EXISTS next_attempt_at  timestamptz NOT NULL DEFAULT now();

-- What the runner's claim looks for: open jobs, oldest first.
CREATE INDEX IF NOT EXISTS search_jobs_runnable ON search_jobs (created_at)
    WHERE status IN ('queued', 'processing');
