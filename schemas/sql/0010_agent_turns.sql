-- Agent turns (projections/conversations.py, from AgentReplied): what each bot turn did and cost,
-- for audits and the tenant's bill. Version 1 of the conversations read models gets the table
-- here; later versions get it from schemas/projections/conversations.sql (ADR 0012). Same
-- row-level security as the other read models (ADR 0011).
CREATE TABLE agent_turns (
    tenant_id          uuid          NOT NULL,
    turn_id            text          NOT NULL,
    conversation_id    uuid          NOT NULL,
    trigger_message_id text          NOT NULL,
    agent              text          NOT NULL CHECK (agent IN ('llm', 'faq')),
    model              text          NOT NULL,
    prompt_hash        text          NOT NULL,
    reply_message_id   text,
    tool_calls         jsonb         NOT NULL DEFAULT '[]',
    tokens_in          integer       NOT NULL CHECK (tokens_in >= 0),
    tokens_out         integer       NOT NULL CHECK (tokens_out >= 0),
    cost_estimate_usd  numeric(14, 8),  -- NULL: no known price for the model
    latency_ms         integer       NOT NULL CHECK (latency_ms >= 0),
    created_at         timestamptz   NOT NULL,
    tenant_seq         bigint        NOT NULL,
    PRIMARY KEY (tenant_id, turn_id)
);
CREATE INDEX agent_turns_conversation ON agent_turns (tenant_id, conversation_id, tenant_seq);
ALTER TABLE agent_turns ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_turns FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON agent_turns FOR ALL TO zapflow_app, zapflow_projector
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT ON agent_turns TO zapflow_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON agent_turns TO zapflow_projector;
