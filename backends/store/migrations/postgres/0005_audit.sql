-- passgate schema, version 5 (PostgreSQL): a structured, bounded audit trail.
--
-- An event has columns for what a query filters on (protocol, client
-- address, credential, outcome, reason) instead of text to parse. Login
-- events (millions a day) and account changes (a few a day) are kept for
-- different times, so the table is partitioned by kind: account changes in
-- one plain table, login events in a table partitioned by day, so that the
-- retention drops whole partitions instead of deleting rows. passgate
-- creates the partitions ahead in the background (Store.MaintainAudit);
-- the default partition catches a login that finds none, so that no event
-- is ever refused.
--
-- A structured login row leaves actor and detail empty: both are derived
-- on reading (protocol:address, and the old "credential=… tls=… reason=…"
-- text). Rows from before this version keep their actor and detail.

ALTER TABLE audit_events RENAME TO audit_events_v1;
ALTER INDEX audit_events_time RENAME TO audit_events_v1_time;
ALTER INDEX audit_events_subject_time RENAME TO audit_events_v1_subject_time;

-- Ids come from one sequence for both kinds: (time, id) orders the trail.
CREATE SEQUENCE audit_event_ids AS BIGINT;

CREATE TABLE audit_events (
    id              BIGINT NOT NULL DEFAULT nextval('audit_event_ids'),
    time            TIMESTAMPTZ NOT NULL,
    app_password_id BIGINT,                  -- the app password of a login, if any
    client_port     INTEGER NOT NULL DEFAULT 0,
    is_login        BOOLEAN NOT NULL,
    tls             BOOLEAN NOT NULL DEFAULT false,
    subject         TEXT NOT NULL,
    subject_key     TEXT NOT NULL,           -- lower-cased subject, for filtering
    outcome         TEXT NOT NULL,
    protocol        TEXT NOT NULL DEFAULT '', -- imap, smtp, ldap, web
    client_addr     TEXT NOT NULL DEFAULT '', -- the client's IP address
    credential      TEXT NOT NULL DEFAULT '', -- app-password, primary, none
    label           TEXT NOT NULL DEFAULT '', -- the app password's label
    reason          TEXT NOT NULL DEFAULT '',
    client_name     TEXT NOT NULL DEFAULT '', -- e.g. from IMAP ID
    action          TEXT NOT NULL,
    actor           TEXT NOT NULL DEFAULT '',
    detail          TEXT NOT NULL DEFAULT ''
) PARTITION BY LIST (is_login);
ALTER SEQUENCE audit_event_ids OWNED BY audit_events.id;

CREATE TABLE audit_changes PARTITION OF audit_events FOR VALUES IN (false);
CREATE TABLE audit_logins PARTITION OF audit_events FOR VALUES IN (true) PARTITION BY RANGE (time);
CREATE TABLE audit_logins_default PARTITION OF audit_logins DEFAULT;

-- The two indexes that earn their place: (time, id) orders every page of
-- "passgate audit" and finds what the retention deletes outside whole
-- partitions; (subject_key, time, id) serves the per-user filter. Other
-- filters are applied on the time-ordered scan.
CREATE INDEX audit_events_time ON audit_events (time, id);
CREATE INDEX audit_events_subject_time ON audit_events (subject_key, time, id);

-- Login events from before this version go into one partition that ends
-- today; today and the next days get a partition each.
DO $$
DECLARE
    today DATE := (now() AT TIME ZONE 'UTC')::date;
    d DATE;
BEGIN
    EXECUTE format('CREATE TABLE %I PARTITION OF audit_logins FOR VALUES FROM (MINVALUE) TO (%L)',
        'audit_logins_upto_' || to_char(today, 'YYYYMMDD'), today::text || ' 00:00:00+00');
    FOR i IN 0..3 LOOP
        d := today + i;
        EXECUTE format('CREATE TABLE %I PARTITION OF audit_logins FOR VALUES FROM (%L) TO (%L)',
            'audit_logins_' || to_char(d, 'YYYYMMDD'), d::text || ' 00:00:00+00', (d + 1)::text || ' 00:00:00+00');
    END LOOP;
END $$;

INSERT INTO audit_events (id, time, is_login, subject, subject_key, outcome, protocol, action, actor, detail)
SELECT id, time, action = 'login', subject, subject_key, outcome,
       CASE WHEN action = 'login' THEN split_part(actor, ':', 1) ELSE '' END,
       action, actor, detail
FROM audit_events_v1;

SELECT setval('audit_event_ids', COALESCE((SELECT max(id) FROM audit_events_v1), 0) + 1, false);

DROP TABLE audit_events_v1;

-- Rollout (the admin center): primary-password logins of users in state
-- enabled, which enforcing would refuse.
CREATE INDEX audit_events_rollout ON audit_events (subject_key, time)
    WHERE action = 'login' AND outcome = 'success' AND credential = 'primary'
    AND reason LIKE '%would be refused once enforced%';
