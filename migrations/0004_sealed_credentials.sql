-- Credentials the operator must keep (e.g. tunnel tokens), sealed with AES-256-GCM.
-- The row identity (scope, resource_uid, name) is the associated data, so a ciphertext moved to
-- another row fails to open; key_id names the sealing key so keys can be rotated.
CREATE TABLE sealed_credentials (
    scope        TEXT        NOT NULL,
    resource_uid TEXT        NOT NULL,
    name         TEXT        NOT NULL,
    key_id       TEXT        NOT NULL,
    nonce        BYTEA       NOT NULL CHECK (octet_length(nonce) = 12),
    ciphertext   BYTEA       NOT NULL CHECK (octet_length(ciphertext) >= 16),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, resource_uid, name)
);
