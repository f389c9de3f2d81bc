-- What became of each decided command (projections/conversations.py): accepted (it produced
-- events) or rejected (a CommandRejected event, with its reason). Operator endpoints wait on it
-- (`?wait=true`). Same row-level security as the other read models (ADR 0011).
CREATE TABLE command_results (
    tenant_id     uuid        NOT NULL,
    command_id    uuid        NOT NULL,
    command_type  text,
    outcome       text        NOT NULL CHECK (outcome IN ('accepted', 'rejected')),
    reason_code   text,
    reason        text,
    tenant_seq    bigint      NOT NULL,
    recorded_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, command_id)
);
ALTER TABLE command_results ENABLE ROW LEVEL SECURITY;
ALTER TABLE command_results FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON command_results FOR ALL TO zapflow_app, zapflow_projector
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT ON command_results TO zapflow_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON command_results TO zapflow_projector;
