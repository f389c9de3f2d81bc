-- Identity read models (issue #6, ADR 0018): the tenant's people (projections/people.py), its
-- API keys (projections/api_keys.py), its registrations and the platform's e-mail directory
-- (projections/registrations.py), and the suspension flag of the tenant directory.
-- Secrets only as the log has them: argon2id password hashes, SHA-256 of tokens and keys.
-- Every table is tenant-owned and under the same row-level security as the conversation read
-- models (ADR 0011). The e-mail directory's rows belong to the platform tenant, as its stream
-- does: no tenant's API role ever sees them.
ALTER TABLE tenants ADD COLUMN suspended boolean NOT NULL DEFAULT false;

CREATE TABLE users (
    tenant_id        uuid        NOT NULL,
    user_id          uuid        NOT NULL,
    email            text        NOT NULL,
    password_hash    text,  -- argon2id; NULL until set through the invitation
    active           boolean     NOT NULL,
    registration_id  uuid        NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX users_email ON users (tenant_id, email);

CREATE TABLE memberships (
    tenant_id        uuid        NOT NULL,
    user_id          uuid        NOT NULL,
    role             text        NOT NULL CHECK (role IN ('owner', 'admin', 'operator', 'viewer')),
    registration_id  uuid,
    added_at         timestamptz NOT NULL,
    removed_at       timestamptz,  -- NULL: a member now
    PRIMARY KEY (tenant_id, user_id)
);

CREATE TABLE invitations (
    tenant_id        uuid        NOT NULL,
    invitation_id    uuid        NOT NULL,
    user_id          uuid        NOT NULL,
    token_sha256     text        NOT NULL,
    expires_at       timestamptz NOT NULL,
    registration_id  uuid,
    issued_at        timestamptz NOT NULL,
    revoked_at       timestamptz,
    PRIMARY KEY (tenant_id, invitation_id)
);

CREATE TABLE api_keys (
    tenant_id    uuid        NOT NULL,
    key_id       uuid        NOT NULL,
    name         text        NOT NULL,
    key_sha256   text        NOT NULL,
    scopes       text[]      NOT NULL,
    created_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    PRIMARY KEY (tenant_id, key_id)
);
CREATE UNIQUE INDEX api_keys_hash ON api_keys (tenant_id, key_sha256);

-- Where each registration is, folded like the saga folds it: the row may be created by the
-- directory's EmailReserved (another partition) before its UserRegistrationStarted arrives.
CREATE TABLE registrations (
    tenant_id        uuid        NOT NULL,
    registration_id  uuid        NOT NULL,
    email            text        NOT NULL,
    role             text,         -- NULL until UserRegistrationStarted is projected
    user_id          uuid        NOT NULL,
    invitation_id    uuid,
    status           text        NOT NULL DEFAULT 'started'
        CHECK (status IN ('started', 'compensating', 'completed', 'failed')),
    failed_step      text,
    reason           text,
    reservation      text        NOT NULL DEFAULT 'none'
        CHECK (reservation IN ('none', 'held', 'released')),
    user_state       text        NOT NULL DEFAULT 'none'
        CHECK (user_state IN ('none', 'active', 'disabled')),
    membership       boolean     NOT NULL DEFAULT false,
    invitation       text        NOT NULL DEFAULT 'none'
        CHECK (invitation IN ('none', 'issued', 'revoked')),
    started_at       timestamptz,
    updated_at       timestamptz NOT NULL,
    ended_at         timestamptz,
    PRIMARY KEY (tenant_id, registration_id)
);
CREATE INDEX registrations_user ON registrations (tenant_id, user_id);

CREATE TABLE email_directory (
    tenant_id           uuid        NOT NULL,  -- the platform tenant (the stream's owner)
    registration_id     uuid        NOT NULL,
    email               text        NOT NULL,
    claimant_tenant_id  uuid        NOT NULL,
    user_id             uuid        NOT NULL,
    held                boolean     NOT NULL,
    reserved_at         timestamptz NOT NULL,
    released_at         timestamptz,
    PRIMARY KEY (tenant_id, registration_id)
);
-- The decider grants an address to one registration at a time; the read model agrees or fails.
CREATE UNIQUE INDEX email_directory_holder ON email_directory (tenant_id, email) WHERE held;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'memberships', 'invitations', 'api_keys', 'registrations',
                             'email_directory'] LOOP
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
