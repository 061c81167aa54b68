-- The notes test plugin's own table (tests/plugins/notes.c).
CREATE TABLE notes_ticks (
    id         bigserial PRIMARY KEY,
    upstream   int,          -- HTTP status of the upstream ping, or NULL
    created_at timestamptz NOT NULL DEFAULT now()
);
