-- Commands the API accepted while the broker was unreachable (api/spool.py): each row is one
-- encoded Kafka record, relayed in id order and deleted only after the broker acknowledged it.
CREATE TABLE command_spool (
    id          bigserial   PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    topic       text        NOT NULL,
    key         bytea       NOT NULL,
    value       bytea       NOT NULL,
    -- Kafka headers as [[name, base64(value)], ...], in their original order.
    headers     jsonb       NOT NULL DEFAULT '[]',
    created_at  timestamptz NOT NULL DEFAULT now()
);
