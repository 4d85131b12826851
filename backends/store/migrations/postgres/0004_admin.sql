-- passgate schema, version 4 (PostgreSQL): the admin center and its API.
-- Admin tokens are stored as keyed hashes (HMAC-SHA-256 under the server
-- key), never in clear.

ALTER TABLE users ADD COLUMN admin BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE admin_tokens (
    name_key     TEXT PRIMARY KEY,          -- lower-cased token name
    name         TEXT NOT NULL,
    hash         BYTEA NOT NULL UNIQUE,     -- HMAC-SHA-256 of the token
    read_only    BOOLEAN NOT NULL DEFAULT FALSE,
    created_by   TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);

-- Active users: the app-password count and last use by user, from the
-- index alone.
CREATE INDEX app_passwords_user_used ON app_passwords (user_key, last_used_at);
