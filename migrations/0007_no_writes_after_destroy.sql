-- Nothing is billed or recorded about an object after its destroy event: the database refuses
-- a usage row or an audit event for a resource UID that has an `*.destroyed` event, whoever
-- writes it (a stale leader whose reconcile was still running, a sweeper, a person). The
-- destroy transaction itself writes its closing usage row before its event, so it passes. A new
-- sealed credential (an Agent's tunnel secret) is refused too: a stale leader cannot start a
-- tunnel for an object already torn down.
--
-- A refused insert writes nothing: no sequence number or hash of the audit chain is taken, so
-- the chain stays gapless and verifiable. Rows written before this migration are left as they
-- are (the trail is immutable).
--
-- Writers of one resource serialise on an advisory lock keyed by its UID (taken here, so every
-- writer takes it): without it, a usage row and the destroy event committed by two concurrent
-- transactions would each miss the other. Audit appends take it before the chain's lock (see
-- `store::audit::append`), so the two locks are always taken in the same order.

CREATE FUNCTION crabglamp_lock_resource(uid TEXT) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtextextended('crabglamp.resource/' || uid, 0));
$$;

CREATE FUNCTION crabglamp_refuse_after_destroy() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM crabglamp_lock_resource(NEW.resource_uid);
    IF EXISTS (
        SELECT 1 FROM audit_events
        WHERE resource_uid = NEW.resource_uid AND kind LIKE '%.destroyed'
    ) THEN
        RAISE EXCEPTION '% refused: the object % is destroyed', TG_TABLE_NAME, NEW.resource_uid
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'crabglamp_no_writes_after_destroy',
                  HINT = 'nothing may be billed or recorded about an object after its destroy event';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER usage_timeline_no_rows_after_destroy
    BEFORE INSERT ON usage_timeline
    FOR EACH ROW EXECUTE FUNCTION crabglamp_refuse_after_destroy();

CREATE TRIGGER audit_events_no_events_after_destroy
    BEFORE INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION crabglamp_refuse_after_destroy();

CREATE TRIGGER sealed_credentials_no_rows_after_destroy
    BEFORE INSERT ON sealed_credentials
    FOR EACH ROW EXECUTE FUNCTION crabglamp_refuse_after_destroy();
