-- Start/stop transitions of servers, the basis of usage billing. One row per transition,
-- idempotent by transition key so a retried reconcile cannot count a start twice.
CREATE TABLE usage_timeline (
    id                 BIGSERIAL   PRIMARY KEY,
    transition_key     TEXT        NOT NULL UNIQUE CHECK (length(transition_key) BETWEEN 1 AND 512),
    resource_kind      TEXT        NOT NULL,
    resource_namespace TEXT        NOT NULL,
    resource_name      TEXT        NOT NULL,
    resource_uid       TEXT        NOT NULL,
    owner              TEXT        NOT NULL,
    region             TEXT        NOT NULL,
    server_type        TEXT        NOT NULL,
    price_cell         TEXT        NOT NULL,
    transition         TEXT        NOT NULL CHECK (transition IN ('start', 'stop')),
    occurred_at        TIMESTAMPTZ NOT NULL,
    recorded_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX usage_timeline_resource ON usage_timeline (resource_uid, occurred_at);
CREATE INDEX usage_timeline_owner ON usage_timeline (owner, occurred_at);
