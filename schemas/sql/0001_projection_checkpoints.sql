-- Where each projection stands in the log, written in the same transaction as its rows
-- (ARCHITECTURE §2.5): Kafka's committed offsets are only a hint.
CREATE TABLE projection_checkpoints (
    projection   text    NOT NULL,
    topic        text    NOT NULL,
    partition    integer NOT NULL CHECK (partition >= 0),
    next_offset  bigint  NOT NULL CHECK (next_offset >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition)
);
