-- passgate schema, version 4 (SQLite): the admin center and its API.
-- Admin tokens are stored as keyed hashes (HMAC-SHA-256 under the server
-- key), never in clear.

ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;

CREATE TABLE admin_tokens (
    name_key     TEXT PRIMARY KEY,          -- lower-cased token name
    name         TEXT NOT NULL,
    hash         BLOB NOT NULL UNIQUE,     -- HMAC-SHA-256 of the token
    read_only    INTEGER NOT NULL DEFAULT 0,
    created_by   TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMP NOT NULL,
    expires_at   TIMESTAMP,
    last_used_at TIMESTAMP
);

-- Active users: the app-password count and last use by user, from the
-- index alone.
CREATE INDEX app_passwords_user_used ON app_passwords (user_key, last_used_at);
