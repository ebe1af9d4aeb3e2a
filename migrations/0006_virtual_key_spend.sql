-- Review fixes on virtual_keys: PostgreSQL's numeric accepts 'NaN' and sorts it above every
-- number, so `>= 0` alone lets it through; refuse it explicitly.
ALTER TABLE virtual_keys DROP CONSTRAINT IF EXISTS virtual_keys_budget_monthly_usd_check;
ALTER TABLE virtual_keys ADD CONSTRAINT virtual_keys_budget_finite
    CHECK (budget_monthly_usd <> 'NaN'::numeric AND budget_monthly_usd >= 0);

-- When a revoked key's auth entry left Redis: a rotation with a grace period revokes the old
-- key at a future time, and its entry is removed only then.
ALTER TABLE virtual_keys ADD COLUMN unpublished_at TIMESTAMPTZ;
UPDATE virtual_keys SET unpublished_at = revoked_at WHERE revoked_at IS NOT NULL;

-- The proxy's spend, copied from Redis every resync: one row per VirtualKey (its UID, the
-- `budgetId` of the Redis contract), UTC day, surface and model. Costs are integer
-- micro-USD, as the Redis counters. Never request or response bodies.
CREATE TABLE virtual_key_spend_daily (
    budget_id    TEXT   NOT NULL,
    day          DATE   NOT NULL,
    surface      TEXT   NOT NULL CHECK (surface IN ('llm', 'tts')),
    model        TEXT   NOT NULL CHECK (length(model) BETWEEN 1 AND 128),
    cost_micros  BIGINT NOT NULL CHECK (cost_micros >= 0),
    requests     BIGINT NOT NULL CHECK (requests >= 0),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (budget_id, day, surface, model)
);

-- The monthly counter itself as last read (micro-USD): it can hold more than the sum of the
-- per-model rows (increments the proxy made without a model, or an operator's INCRBY), and a
-- restore must not bring back less than the month had.
CREATE TABLE virtual_key_spend_monthly (
    budget_id    TEXT   NOT NULL,
    month        TEXT   NOT NULL CHECK (month ~ '^[0-9]{4}-[0-9]{2}$'),
    cost_micros  BIGINT NOT NULL CHECK (cost_micros >= 0),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (budget_id, month)
);
