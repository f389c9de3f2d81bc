-- The tenant directory read model (projections/tenants.py), and the per-tenant sequence every
-- projection records so that duplicates in the log are skipped (ARCHITECTURE §2.4).
CREATE TABLE tenants (
    tenant_id                    uuid        PRIMARY KEY,
    name                         text        NOT NULL,
    twilio_account_sid           text        NOT NULL,
    twilio_auth_token_encrypted  text        NOT NULL,
    -- Global, not per tenant: an API key alone must identify its tenant.
    api_key_sha256               text        NOT NULL UNIQUE,
    registered_at                timestamptz NOT NULL,
    -- The tenant_seq of the event that last wrote the row; older events never overwrite it.
    updated_seq                  bigint      NOT NULL
);

CREATE TABLE tenant_senders (
    tenant_id  uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    sender     text NOT NULL,
    PRIMARY KEY (tenant_id, sender)
);

CREATE TABLE projection_tenant_seq (
    projection  text   NOT NULL,
    tenant_id   uuid   NOT NULL,
    last_seq    bigint NOT NULL CHECK (last_seq >= 1),
    PRIMARY KEY (projection, tenant_id)
);
