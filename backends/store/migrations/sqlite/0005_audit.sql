-- passgate schema, version 5 (SQLite): a structured, bounded audit trail.
--
-- An event has columns for what a query filters on (protocol, client
-- address, credential, outcome, reason) instead of text to parse. Login
-- events and account changes are kept for different times: the retention
-- (Store.MaintainAudit) deletes old rows of each kind in small batches.
-- A structured login row leaves actor and detail empty: both are derived
-- on reading. Rows from before this version keep their actor and detail.

ALTER TABLE audit_events ADD COLUMN is_login INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit_events ADD COLUMN app_password_id INTEGER;
ALTER TABLE audit_events ADD COLUMN client_port INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit_events ADD COLUMN tls INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit_events ADD COLUMN protocol TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN client_addr TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN credential TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN label TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN reason TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN client_name TEXT NOT NULL DEFAULT '';

UPDATE audit_events SET is_login = 1, protocol = substr(actor, 1, instr(actor, ':') - 1)
WHERE action = 'login' AND instr(actor, ':') > 0;
UPDATE audit_events SET is_login = 1 WHERE action = 'login';

-- Rollout (the admin center): primary-password logins of users in state
-- enabled, which enforcing would refuse.
CREATE INDEX audit_events_rollout ON audit_events (subject_key, time)
    WHERE action = 'login' AND outcome = 'success' AND credential = 'primary'
    AND reason LIKE '%would be refused once enforced%';
