-- Model lifecycle; same columns as the PostgreSQL schema (see its comments).

ALTER TABLE models ADD COLUMN serving_policy TEXT NOT NULL DEFAULT 'latest';
ALTER TABLE models ADD COLUMN keep_training_checkpoints INTEGER NOT NULL DEFAULT 5;
ALTER TABLE models ADD COLUMN keep_versions INTEGER NOT NULL DEFAULT 0;
ALTER TABLE model_versions ADD COLUMN promoted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE model_versions ADD COLUMN retired INTEGER NOT NULL DEFAULT 0;
CREATE INDEX model_versions_by_source ON model_versions (model_name, source, version);

CREATE TABLE version_pins (
    holder     TEXT NOT NULL PRIMARY KEY,
    model_name TEXT NOT NULL,
    version    INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX version_pins_by_model ON version_pins (model_name, version);
