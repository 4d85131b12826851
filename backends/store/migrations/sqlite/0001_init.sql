-- passgate schema, version 1 (SQLite).
-- Times are TIMESTAMP text in UTC ("2006-01-02 15:04:05.999999-07:00"),
-- which sorts in time order. AUTOINCREMENT keeps a deleted app password's id
-- from ever being reused, so a live session tied to it cannot outlive it.

CREATE TABLE users (
    name_key   TEXT PRIMARY KEY,            -- lower-cased login name
    name       TEXT NOT NULL,               -- as first given
    mfa        TEXT NOT NULL CHECK (mfa IN ('disabled', 'enabled', 'enforced')),
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE app_passwords (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    user_key         TEXT NOT NULL REFERENCES users (name_key) ON DELETE CASCADE,
    user_name        TEXT NOT NULL,
    label            TEXT NOT NULL,
    label_key        TEXT NOT NULL,         -- lower-cased label
    scopes           TEXT NOT NULL,         -- comma-separated: imap,smtp,ldap
    hash             BLOB NOT NULL,         -- HMAC-SHA-256 under the server key
    created_at       TIMESTAMP NOT NULL,
    expires_at       TIMESTAMP,
    last_used_at     TIMESTAMP,
    last_used_addr   TEXT NOT NULL DEFAULT '',
    last_used_proto  TEXT NOT NULL DEFAULT '',
    last_used_client TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX app_passwords_user_label ON app_passwords (user_key, label_key);
CREATE UNIQUE INDEX app_passwords_user_hash ON app_passwords (user_key, hash);

CREATE TABLE settings (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time        TIMESTAMP NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    subject_key TEXT NOT NULL,              -- lower-cased subject, for filtering
    outcome     TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_time ON audit_events (time, id);
CREATE INDEX audit_events_subject_time ON audit_events (subject_key, time, id);
