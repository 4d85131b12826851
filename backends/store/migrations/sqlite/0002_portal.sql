-- passgate schema, version 2 (SQLite): the Security info portal.
-- Secrets are never stored in clear: primary passwords as argon2id hashes,
-- TOTP seeds and session data sealed with AES-GCM under a key derived from
-- the server key, recovery codes and session ids as keyed or plain hashes.

CREATE TABLE user_passwords (
    user_key   TEXT PRIMARY KEY,            -- lower-cased login name
    hash       TEXT NOT NULL,               -- argon2id, PHC string format
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE totp_secrets (
    user_key   TEXT PRIMARY KEY,
    sealed     BLOB NOT NULL,               -- the seed, AES-GCM sealed
    last_step  INTEGER NOT NULL DEFAULT 0,  -- last accepted 30 s time step
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE recovery_codes (
    user_key   TEXT NOT NULL,
    hash       BLOB NOT NULL,               -- HMAC-SHA-256 under a derived key
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (user_key, hash)
);

CREATE TABLE webauthn_credentials (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_key      TEXT NOT NULL,
    name          TEXT NOT NULL,
    credential_id BLOB NOT NULL UNIQUE,
    data          BLOB NOT NULL,            -- the credential (public key, counters) as JSON
    created_at    TIMESTAMP NOT NULL,
    last_used_at  TIMESTAMP
);
CREATE INDEX webauthn_credentials_user ON webauthn_credentials (user_key);

CREATE TABLE web_sessions (
    id_hash    BLOB PRIMARY KEY,            -- SHA-256 of the cookie's value
    user_key   TEXT NOT NULL,
    user_name  TEXT NOT NULL,
    stage      TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    seen_at    TIMESTAMP NOT NULL,
    auth_at    TIMESTAMP NOT NULL,
    addr       TEXT NOT NULL DEFAULT '',
    agent      TEXT NOT NULL DEFAULT '',
    data       BLOB                         -- AES-GCM sealed; NULL when empty
);
CREATE INDEX web_sessions_user ON web_sessions (user_key);
