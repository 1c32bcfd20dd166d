-- Model lifecycle (issue 13). Integers rather than booleans so the same queries run on SQLite.
-- serving_policy:            what a request naming only the model gets: 'latest', 'label:<name>' or 'version:<n>'.
-- keep_training_checkpoints: unpromoted training checkpoints kept (-1 = all); keep_versions: all versions (0 = all).
-- promoted:                  1 for a training checkpoint the 'latest' policy may select.
-- retired:                   1 for a model repository version whose folder was removed: 'latest' skips it.

ALTER TABLE models ADD COLUMN serving_policy TEXT NOT NULL DEFAULT 'latest';
ALTER TABLE models ADD COLUMN keep_training_checkpoints BIGINT NOT NULL DEFAULT 5;
ALTER TABLE models ADD COLUMN keep_versions BIGINT NOT NULL DEFAULT 0;
ALTER TABLE model_versions ADD COLUMN promoted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE model_versions ADD COLUMN retired INTEGER NOT NULL DEFAULT 0;
CREATE INDEX model_versions_by_source ON model_versions (model_name, source, version);

-- Versions in use by an open Train session or PredictBatch stream on some replica: retention never prunes them.
-- A holder refreshes expires_at while it lives, so a crashed replica's pins lapse on their own.
CREATE TABLE version_pins (
    holder     TEXT PRIMARY KEY,
    model_name TEXT NOT NULL,
    version    BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX version_pins_by_model ON version_pins (model_name, version);
