-- Every record of zapflow.events, byte for byte: the durable audit copy, and what `zapflow up`
-- restores the development broker's in-memory log from (ADR 0009). Duplicates are kept: the
-- archive mirrors the log, offsets included.
CREATE TABLE event_archive (
    topic        text        NOT NULL,
    partition    integer     NOT NULL CHECK (partition >= 0),
    "offset"     bigint      NOT NULL CHECK ("offset" >= 0),
    key          bytea,
    value        bytea       NOT NULL,
    headers      jsonb       NOT NULL,
    timestamp_ms bigint      NOT NULL,
    -- NULL for a record that is not a decodable event: it is archived all the same.
    tenant_id    uuid,
    tenant_seq   bigint,
    hash         text,
    PRIMARY KEY (topic, partition, "offset")
);
CREATE INDEX event_archive_tenant ON event_archive (tenant_id, tenant_seq);
