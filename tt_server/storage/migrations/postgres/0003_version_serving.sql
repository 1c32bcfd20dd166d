-- What a version needs besides its artifact to be served as uploaded (TFaaS parity). JSON values are TEXT, as in 0001.
-- class_names:   JSON list of the labels file's lines; class i of the classification output is item i.
-- frozen_graph:  JSON {"inputs": [...], "outputs": [...]}, the node names a frozen GraphDef is fed at and read
--                from (the loader rebuilds its serving function from them); NULL for every other format.
-- image_scaling: how pixels of encoded images are scaled for an image input: 'raw', 'unit' or 'symmetric'.

ALTER TABLE model_versions ADD COLUMN class_names TEXT NOT NULL DEFAULT '[]';
ALTER TABLE model_versions ADD COLUMN frozen_graph TEXT;
ALTER TABLE model_versions ADD COLUMN image_scaling TEXT NOT NULL DEFAULT 'raw';
