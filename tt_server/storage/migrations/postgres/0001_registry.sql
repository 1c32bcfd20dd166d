-- Models, their immutable versions, movable labels and the blob garbage-collection outbox.
-- Timestamps are microseconds since the Unix epoch (UTC); JSON values are stored as TEXT so the
-- SQLite schema can be identical in meaning.

CREATE TABLE models (
    name         TEXT PRIMARY KEY,
    description  TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    -- Next number to hand out; only ever incremented, so deleted versions' numbers are never reused.
    next_version BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE model_versions (
    model_name          TEXT NOT NULL REFERENCES models (name) ON DELETE CASCADE,
    version             BIGINT NOT NULL,
    format              TEXT NOT NULL,
    sha256              TEXT NOT NULL,
    size_bytes          BIGINT NOT NULL,
    blob_key            TEXT NOT NULL UNIQUE,
    signature           TEXT NOT NULL,
    feature_names       TEXT NOT NULL DEFAULT '[]',
    description         TEXT NOT NULL DEFAULT '',
    metadata            TEXT NOT NULL DEFAULT '{}',
    source              TEXT NOT NULL,
    parent_version      BIGINT,
    training_session_id TEXT,
    created_at          BIGINT NOT NULL,
    PRIMARY KEY (model_name, version)
);

-- No ON DELETE CASCADE on purpose: deleting a labelled version must be an explicit decision (force).
CREATE TABLE labels (
    model_name TEXT NOT NULL,
    label      TEXT NOT NULL,
    version    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (model_name, label),
    FOREIGN KEY (model_name, version) REFERENCES model_versions (model_name, version)
);

CREATE INDEX labels_by_version ON labels (model_name, version);

CREATE TABLE blob_gc (
    blob_key   TEXT PRIMARY KEY,
    not_before BIGINT NOT NULL
);

CREATE INDEX blob_gc_by_due ON blob_gc (not_before);
