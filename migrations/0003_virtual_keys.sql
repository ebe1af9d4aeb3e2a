-- LLM-proxy keys: business data only. The key itself is never stored, only its SHA-256.
CREATE TABLE virtual_keys (
    key_id             TEXT          PRIMARY KEY,
    resource_namespace TEXT          NOT NULL,
    resource_name      TEXT          NOT NULL,
    resource_uid       TEXT          NOT NULL,
    owner              TEXT          NOT NULL,
    key_sha256         BYTEA         NOT NULL UNIQUE CHECK (octet_length(key_sha256) = 32),
    prefix             TEXT          NOT NULL CHECK (length(prefix) BETWEEN 4 AND 16),
    models             TEXT[]        NOT NULL,
    budget_monthly_usd NUMERIC(18,6) NOT NULL CHECK (budget_monthly_usd >= 0),
    rate_limit_rpm     INTEGER       CHECK (rate_limit_rpm > 0),
    expires_at         TIMESTAMPTZ,
    created_at         TIMESTAMPTZ   NOT NULL DEFAULT now(),
    revoked_at         TIMESTAMPTZ
);

-- At most one live key per VirtualKey object; rotation revokes the old one first.
CREATE UNIQUE INDEX virtual_keys_one_live_per_resource ON virtual_keys (resource_uid) WHERE revoked_at IS NULL;
CREATE INDEX virtual_keys_owner ON virtual_keys (owner);
