-- passgate schema, version 6 (SQLite): the lockout shared by every
-- instance (policy.Lockout). Times are microseconds since 1970 (UTC), so
-- that both dialects compare them alike. No secret is kept: recent holds
-- keyed hashes (HMAC-SHA-256 under a key derived from the server key,
-- cut to 16 bytes) of the last wrong secrets of a (user, address) pair.

-- One row per counted key: a (user, address) pair (both set), an address
-- (user_key empty) or a user (addr empty).
CREATE TABLE lockout_counters (
    user_key     TEXT NOT NULL,
    addr         TEXT NOT NULL,
    failures     INTEGER NOT NULL DEFAULT 0,   -- in the window that started at window_start
    window_start INTEGER NOT NULL,
    locked_until INTEGER NOT NULL DEFAULT 0,
    locks        INTEGER NOT NULL DEFAULT 0,   -- lockouts in a row, each longer
    recent       BLOB,                      -- last wrong secrets' keyed hashes, 16 bytes each
    PRIMARY KEY (user_key, addr)
);

-- The addresses (IPv6: their /64) from which a user logged in.
CREATE TABLE familiar_addresses (
    user_key  TEXT NOT NULL,
    addr      TEXT NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (user_key, addr)
);
CREATE INDEX familiar_addresses_last_seen ON familiar_addresses (last_seen);
CREATE INDEX lockout_counters_window ON lockout_counters (window_start);

-- The networks an app password may be used from (comma-separated CIDRs,
-- canonical); empty: from anywhere.
ALTER TABLE app_passwords ADD COLUMN networks TEXT NOT NULL DEFAULT '';
