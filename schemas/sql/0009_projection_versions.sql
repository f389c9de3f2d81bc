-- Versions of the versioned projections (projections/versions.py, ADR 0012). Each version keeps
-- its tables in a schema of its own (version 1 of `conversations`: `public`, where migrations
-- 0005-0008 created it); exactly one version of a projection is active: the API reads it (its
-- schema is the transaction's search_path) and the projector keeps it current. A rebuild fills
-- a `building` version from offset 0 and swaps it in; `drop-old` drops `retired` ones.
CREATE TABLE projection_versions (
    projection    text        NOT NULL,
    version       integer     NOT NULL CHECK (version >= 1),
    schema_name   text        NOT NULL UNIQUE CHECK (schema_name ~ '^[a-z_][a-z0-9_]*$'),
    state         text        NOT NULL CHECK (state IN ('building', 'active', 'retired', 'dropped')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    activated_at  timestamptz,
    retired_at    timestamptz,
    PRIMARY KEY (projection, version)
);
CREATE UNIQUE INDEX projection_versions_one_active ON projection_versions (projection)
    WHERE state = 'active';
CREATE UNIQUE INDEX projection_versions_one_building ON projection_versions (projection)
    WHERE state = 'building';
INSERT INTO projection_versions (projection, version, schema_name, state, activated_at)
VALUES ('conversations', 1, 'public', 'active', now());
-- No tenant data: the API (which picks the schema to read) and the projector may read it.
GRANT SELECT ON projection_versions TO zapflow_app, zapflow_projector;
