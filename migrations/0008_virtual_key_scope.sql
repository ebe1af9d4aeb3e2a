-- Which operator instance refreshes a key's spend and restores its counters after a Redis
-- loss: "<installation>/<shard>". Two shards (or installations) sharing a database and a Redis
-- each restore only their own keys' months. Keys recorded before this column are claimed by
-- the instance that reconciles their VirtualKey next.
ALTER TABLE virtual_keys ADD COLUMN scope TEXT;
CREATE INDEX virtual_keys_live_scope ON virtual_keys (scope) WHERE revoked_at IS NULL;
