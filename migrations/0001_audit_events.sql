-- The audit trail: one row per logical event (transfer, destroy, revoke, ...), append-only and
-- hash-chained. Rows outlive the resources they describe, so nothing here references another
-- table: no foreign key can ever cascade a delete into the trail.
CREATE TABLE audit_events (
    -- Position in the chain: 1, 2, 3, ... with no gap (writers serialise on an advisory lock).
    seq                BIGINT      PRIMARY KEY CHECK (seq >= 1),
    -- One key per logical event, so a retried write is a no-op instead of a duplicate.
    event_key          TEXT        NOT NULL UNIQUE CHECK (length(event_key) BETWEEN 1 AND 512),
    kind               TEXT        NOT NULL CHECK (kind ~ '^[a-z]+\.[a-z_]+$'),
    resource_kind      TEXT        NOT NULL,
    resource_namespace TEXT        NOT NULL,
    resource_name      TEXT        NOT NULL,
    resource_uid       TEXT        NOT NULL,
    -- The owner(s) concerned: [owner] for most events, [from, to] for a transfer.
    owners             TEXT[]      NOT NULL,
    region             TEXT,
    -- Outside identifiers at the time of the event (server id, tunnel id, firewall id, ...).
    cloud_ids          JSONB       NOT NULL DEFAULT '{}'::jsonb,
    details            JSONB       NOT NULL DEFAULT '{}'::jsonb,
    occurred_at        TIMESTAMPTZ NOT NULL,
    recorded_at        TIMESTAMPTZ NOT NULL,
    -- SHA-256 of the previous row (32 zero bytes for the first) and of this row's content.
    prev_hash          BYTEA       NOT NULL UNIQUE CHECK (octet_length(prev_hash) = 32),
    hash               BYTEA       NOT NULL UNIQUE CHECK (octet_length(hash) = 32)
);

CREATE INDEX audit_events_resource ON audit_events (resource_uid, seq);
CREATE INDEX audit_events_kind_time ON audit_events (kind, occurred_at);

CREATE FUNCTION audit_events_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit events are immutable; record a new event instead';
END;
$$;

CREATE TRIGGER audit_events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_reject_change();

CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_reject_change();
