-- Partitions the projector has stopped (projections/runner.py), so that another process
-- (`zapflow projections status`) can report them: a record a projection cannot apply, or a log
-- that ends before the checkpoint. One row per position the runner keeps on that partition (each
-- projection's and the archive's: a stopped partition stops them all), written when it stops and
-- deleted once it projects again: no row means running. Platform state, not tenant data: no RLS.
CREATE TABLE projection_status (
    projection      text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL CHECK (partition >= 0),
    state           text        NOT NULL DEFAULT 'stopped' CHECK (state IN ('stopped')),
    stopped_offset  bigint      NOT NULL CHECK (stopped_offset >= 0),
    error           text        NOT NULL,  -- one line, truncated
    event_id        uuid,                  -- of the record it stopped at, when known
    tenant_id       uuid,
    attempts        integer     NOT NULL CHECK (attempts >= 1),
    stopped_at      timestamptz NOT NULL DEFAULT now(),  -- first stop at this offset
    updated_at      timestamptz NOT NULL DEFAULT now(),  -- latest retry that failed
    PRIMARY KEY (projection, topic, partition)
);
