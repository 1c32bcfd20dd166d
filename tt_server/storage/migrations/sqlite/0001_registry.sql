-- Models, their immutable versions, movable labels and the blob garbage-collection outbox.
-- Same tables as the PostgreSQL schema. STRICT makes SQLite check column types the way PostgreSQL does
-- (INTEGER is 64-bit in SQLite, so it stands in for BIGINT); timestamps are microseconds since the epoch.

CREATE TABLE models (
    name         TEXT NOT NULL PRIMARY KEY,
    description  TEXT NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    -- Next number to hand out; only ever incremented, so deleted versions' numbers are never reused.
    next_version INTEGER NOT NULL DEFAULT 1
) STRICT;

CREATE TABLE model_versions (
    model_name          TEXT NOT NULL REFERENCES models (name) ON DELETE CASCADE,
    version             INTEGER NOT NULL,
    format              TEXT NOT NULL,
    sha256              TEXT NOT NULL,
    size_bytes          INTEGER NOT NULL,
    blob_key            TEXT NOT NULL UNIQUE,
    signature           TEXT NOT NULL,
    feature_names       TEXT NOT NULL DEFAULT '[]',
    description         TEXT NOT NULL DEFAULT '',
    metadata            TEXT NOT NULL DEFAULT '{}',
    source              TEXT NOT NULL,
    parent_version      INTEGER,
    training_session_id TEXT,
    created_at          INTEGER NOT NULL,
    PRIMARY KEY (model_name, version)
) STRICT;

-- No ON DELETE CASCADE on purpose: deleting a labelled version must be an explicit decision (force).
CREATE TABLE labels (
    model_name TEXT NOT NULL,
    label      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (model_name, label),
    FOREIGN KEY (model_name, version) REFERENCES model_versions (model_name, version)
) STRICT;

CREATE INDEX labels_by_version ON labels (model_name, version);

CREATE TABLE blob_gc (
    blob_key   TEXT NOT NULL PRIMARY KEY,
    not_before INTEGER NOT NULL
) STRICT;

CREATE INDEX blob_gc_by_due ON blob_gc (not_before);
