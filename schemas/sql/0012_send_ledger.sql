-- The sender's ledger (streams/sender.py, ADR 0015): one row per part of an outbound message,
-- written (state 'attempting', synchronously committed) BEFORE the Twilio call and completed
-- after it. A row still 'attempting' after a crash or an unanswered call is ambiguous: it is
-- reconciled through Twilio's API before anything is sent again. 'not_sent' means Twilio
-- certainly created nothing (a 429, a refused connection), so the next attempt needs no lookup.
-- Tenant-owned, so under row-level security like every tenant table: the sender sets the tenant
-- of each transaction.
CREATE TABLE send_ledger (
    tenant_id           uuid        NOT NULL,
    outbound_id         text        NOT NULL,
    part                smallint    NOT NULL CHECK (part >= 0),
    recipient           text        NOT NULL,
    sender              text        NOT NULL,
    body_sha256         text,
    content_sid         text,
    state               text        NOT NULL
        CHECK (state IN ('attempting', 'not_sent', 'sent', 'failed')),
    attempts            integer     NOT NULL DEFAULT 1 CHECK (attempts >= 1),
    message_sid         text,
    error_code          text,
    attempt_started_at  timestamptz NOT NULL,
    completed_at        timestamptz,
    PRIMARY KEY (tenant_id, outbound_id, part),
    CHECK ((state = 'sent') = (message_sid IS NOT NULL))
);
CREATE UNIQUE INDEX send_ledger_sid ON send_ledger (tenant_id, message_sid)
    WHERE message_sid IS NOT NULL;
ALTER TABLE send_ledger ENABLE ROW LEVEL SECURITY;
ALTER TABLE send_ledger FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON send_ledger FOR ALL
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT ON send_ledger TO zapflow_app;
