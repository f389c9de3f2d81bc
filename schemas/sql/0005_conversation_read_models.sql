-- The conversation read models (projections/conversations.py) under row-level security (ADR 0011).
--
-- Two roles, created once per server and shared by its databases: `zapflow_app`, which the query
-- API connects as, and `zapflow_projector`, which the projector switches to (SET LOCAL ROLE) for
-- its writes. Neither owns anything, is a superuser or bypasses RLS. Every table is
-- tenant-scoped with RLS enabled AND forced, and its one policy admits only the rows of the
-- tenant set for the current transaction (`set_config('app.tenant_id', …, true)`); with none
-- set, `current_setting(…, true)` is NULL (or '' once a transaction-local value has lapsed,
-- hence the NULLIF) and nothing matches.
DO $$
BEGIN
    CREATE ROLE zapflow_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
DO $$
BEGIN
    CREATE ROLE zapflow_projector NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
-- The migrating role must be able to SET ROLE to the projector role.
GRANT zapflow_projector TO CURRENT_USER;
GRANT USAGE ON SCHEMA public TO zapflow_app, zapflow_projector;

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

CREATE TABLE contacts (
    tenant_id   uuid        NOT NULL,
    contact     text        NOT NULL,
    opted_out   boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, contact)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['conversations', 'messages', 'contacts'] LOOP
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
