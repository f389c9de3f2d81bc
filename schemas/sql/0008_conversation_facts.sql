-- Countable facts of conversations for the daily metrics (projections/conversations.py):
-- hand-offs, closings, opt-outs and delivery failures (with Twilio's error code), one row per
-- event so that a replayed event counts once. Messages are counted from `messages` itself.
-- Same row-level security as the other read models (ADR 0011).
CREATE TABLE conversation_facts (
    tenant_id        uuid NOT NULL,
    event_id         uuid NOT NULL,
    conversation_id  uuid NOT NULL,
    day              date NOT NULL,  -- UTC day the log recorded the event
    kind             text NOT NULL CHECK (kind IN ('handoff', 'closed', 'opted_out', 'failed')),
    code             text,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX conversation_facts_day ON conversation_facts (tenant_id, day);
ALTER TABLE conversation_facts ENABLE ROW LEVEL SECURITY;
ALTER TABLE conversation_facts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON conversation_facts FOR ALL TO zapflow_app, zapflow_projector
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT ON conversation_facts TO zapflow_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON conversation_facts TO zapflow_projector;
CREATE INDEX messages_created ON messages (tenant_id, created_at);
