-- Batch jobs; same table as the PostgreSQL schema (see its comments). STRICT, INTEGER for BIGINT as in 0001.

CREATE TABLE jobs (
    id              TEXT NOT NULL PRIMARY KEY,
    model_name      TEXT NOT NULL,
    model_version   INTEGER NOT NULL,
    spec            TEXT NOT NULL,
    state           TEXT NOT NULL,
    rows_done       INTEGER NOT NULL DEFAULT 0,
    rows_total      INTEGER NOT NULL DEFAULT 0,
    rows_skipped    INTEGER NOT NULL DEFAULT 0,
    row_errors      TEXT NOT NULL DEFAULT '[]',
    attempts        INTEGER NOT NULL DEFAULT 0,
    attempt         INTEGER NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     INTEGER,
    input_blob_key  TEXT NOT NULL,
    input_size      INTEGER NOT NULL,
    result_blob_key TEXT,
    result_size     INTEGER NOT NULL DEFAULT 0,
    error           TEXT NOT NULL DEFAULT '',
    timings         TEXT NOT NULL DEFAULT '{}',
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    started_at      INTEGER,
    ended_at        INTEGER
) STRICT;

CREATE INDEX jobs_by_created ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_by_model ON jobs (model_name, created_at DESC, id DESC);
CREATE INDEX jobs_by_state ON jobs (state, created_at DESC, id DESC);
