-- The conversations read models of ONE version of the projection, created by
-- `zapflow projections rebuild conversations` in that version's own schema (conversations_vN),
-- which is first in search_path while this runs: names here are unqualified on purpose.
-- Version 1 lives in `public`, created by migrations 0005, 0006, 0008 and 0010; this file creates the
-- same tables, indexes, row-level security and grants (tests/integration/test_rebuild.py holds
-- the two equal, and runs the RLS checks on a rebuilt version too). From now on a read-model
-- change is made here and reaches the database through a rebuild, not through a migration.
CREATE TABLE conversations (
    tenant_id            uuid        NOT NULL,
    conversation_id      uuid        NOT NULL,
    contact              text        NOT NULL,
    sender               text        NOT NULL,
    state                text        NOT NULL
        CHECK (state IN ('bot', 'handoff_requested', 'human', 'closed')),
    owner                text,
    opted_out            boolean     NOT NULL DEFAULT false,
    window_open_until    timestamptz,
    last_message_at      timestamptz,
    last_message_preview text,
    unread_count         integer     NOT NULL DEFAULT 0 CHECK (unread_count >= 0),
    started_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, conversation_id)
);
CREATE INDEX conversations_recent ON conversations (tenant_id, updated_at DESC, conversation_id DESC);
CREATE INDEX conversations_contact ON conversations (tenant_id, contact);

CREATE TABLE messages (
    tenant_id        uuid        NOT NULL,
    message_id       text        NOT NULL,  -- Twilio MessageSid (inbound) or our outbound id
    conversation_id  uuid        NOT NULL,
    direction        text        NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    author           text        NOT NULL,  -- 'contact', 'bot' or 'human'
    body             text,
    media            jsonb       NOT NULL DEFAULT '[]',
    content_sid      text,
    twilio_sid       text,
    status           text,
    error_code       text,
    created_at       timestamptz NOT NULL,
    tenant_seq       bigint      NOT NULL,  -- order within the tenant's log
    body_search      tsvector GENERATED ALWAYS AS (to_tsvector('simple', coalesce(body, ''))) STORED,
    PRIMARY KEY (tenant_id, message_id)
);
CREATE INDEX messages_conversation ON messages (tenant_id, conversation_id, tenant_seq);
CREATE INDEX messages_twilio_sid ON messages (tenant_id, twilio_sid) WHERE twilio_sid IS NOT NULL;
CREATE INDEX messages_search ON messages USING gin (body_search);
CREATE INDEX messages_created ON messages (tenant_id, created_at);

CREATE TABLE contacts (
    tenant_id   uuid        NOT NULL,
    contact     text        NOT NULL,
    opted_out   boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, contact)
);

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

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['conversations', 'messages', 'contacts', 'command_results',
                             'conversation_facts', 'agent_turns'] LOOP
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
