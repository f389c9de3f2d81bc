-- Each tenant's agent settings and FAQ (projections/agents.py, from AgentConfigured): what the
-- agent runner reads to build a turn, and what the offline FAQ agent searches. Tenant-owned, so
-- under the same row-level security as the conversation read models (ADR 0011); not versioned
-- (ADR 0012): a new AgentConfigured replaces the whole set.
CREATE TABLE agent_settings (
    tenant_id    uuid        PRIMARY KEY,
    settings     jsonb       NOT NULL,
    updated_seq  bigint      NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE TABLE faq_entries (
    tenant_id  uuid     NOT NULL,
    position   integer  NOT NULL CHECK (position >= 0),
    question   text     NOT NULL,
    answer     text     NOT NULL,
    language   regconfig NOT NULL,  -- the text-search configuration of the tenant's language
    search     tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector(language, question), 'A') || setweight(to_tsvector(language, answer), 'B')
    ) STORED,
    PRIMARY KEY (tenant_id, position)
);
CREATE INDEX faq_entries_search ON faq_entries USING gin (search);
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['agent_settings', 'faq_entries'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I FOR ALL TO zapflow_app, zapflow_projector '
            'USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)', t);
        EXECUTE format('GRANT SELECT ON %I TO zapflow_app', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO zapflow_projector', t);
    END LOOP;
END $$;
