-- When each API key was last used (issue #6, ADR 0019). Written by the API itself (role
-- zapflow_app, inside the key's tenant scope), at most once a minute per key and API process:
-- using a key is not a business fact, so it is not an event in the log. Under the same
-- row-level security as every tenant-owned table (ADR 0011).
CREATE TABLE api_key_usage (
    tenant_id     uuid        NOT NULL,
    key_id        uuid        NOT NULL,
    last_used_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key_id)
);
ALTER TABLE api_key_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_usage FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_key_usage FOR ALL TO zapflow_app, zapflow_projector
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE ON api_key_usage TO zapflow_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON api_key_usage TO zapflow_projector;
