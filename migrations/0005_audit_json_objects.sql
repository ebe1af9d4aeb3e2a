-- cloud_ids and details are documented as JSON objects; the database holds writers to it, so a
-- reader of the trail never meets a bare string or array where a map of identifiers belongs.
ALTER TABLE audit_events
    ADD CONSTRAINT audit_events_cloud_ids_object CHECK (jsonb_typeof(cloud_ids) = 'object'),
    ADD CONSTRAINT audit_events_details_object CHECK (jsonb_typeof(details) = 'object');
