-- Batch jobs. A job row is the source of truth; the broker message only carries its id.
-- ``attempt`` is a fencing token: every lease increments it, and a worker may only write progress or a
-- result while the row still carries its attempt, so a stale worker can never overwrite a newer one.
-- ``attempts`` counts the attempts charged against the retry budget (a clean release is not charged).
-- Timestamps are microseconds since the Unix epoch (UTC); JSON values are TEXT, as in 0001.

CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    model_name      TEXT NOT NULL,  -- no foreign key: a job's history outlives its model
    model_version   BIGINT NOT NULL,
    spec            TEXT NOT NULL,
    state           TEXT NOT NULL,
    rows_done       BIGINT NOT NULL DEFAULT 0,
    rows_total      BIGINT NOT NULL DEFAULT 0,
    rows_skipped    BIGINT NOT NULL DEFAULT 0,
    row_errors      TEXT NOT NULL DEFAULT '[]',
    attempts        INTEGER NOT NULL DEFAULT 0,
    attempt         INTEGER NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     BIGINT,
    input_blob_key  TEXT NOT NULL,
    input_size      BIGINT NOT NULL,
    result_blob_key TEXT,
    result_size     BIGINT NOT NULL DEFAULT 0,
    error           TEXT NOT NULL DEFAULT '',
    timings         TEXT NOT NULL DEFAULT '{}',
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    started_at      BIGINT,
    ended_at        BIGINT
);

-- Listings are newest first, optionally per model or per state; the sweeper looks for stale unfinished jobs.
CREATE INDEX jobs_by_created ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_by_model ON jobs (model_name, created_at DESC, id DESC);
CREATE INDEX jobs_by_state ON jobs (state, created_at DESC, id DESC);
