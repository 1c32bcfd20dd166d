"""The trainer in-process: prequential metrics are scored before the update, and loading leaves the weights
exactly as stored (the warm-up step is undone)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from tests.runtime.helpers import version_of
from tests.training.helpers import Teacher, save, student
from tt_server.formats.artifacts import ArchiveLimits
from tt_server.formats.inspect import inspect_artifact
from tt_server.training.decoding import Batch
from tt_server.training.engine import Trainer
from tt_server.training.messages import TrainSpec
from tt_server.types import ModelFormat, ModelRef

LIMITS = ArchiveLimits(max_members=1000, max_unpacked_bytes=1 << 30, max_ratio=1000.0)


@pytest.fixture
def trainer(tmp_path: Path) -> Trainer:
    path = save(student(), tmp_path / "student.keras")
    work = tmp_path / "inspect"
    work.mkdir()
    signature = inspect_artifact(path, ModelFormat.KERAS, work, LIMITS, frozenset())
    spec = TrainSpec(model=ModelRef("m"), metrics=("mae",), micro_batch_size=64)
    trainer = Trainer(version_of(path, ModelFormat.KERAS, signature), path, spec, frozenset())
    trainer.load()
    return trainer


def weights(path: Path) -> list[np.ndarray]:
    return [np.asarray(w) for w in keras.saving.load_model(path, compile=False).weights]


def test_loading_leaves_the_weights_as_stored(trainer: Trainer, tmp_path: Path) -> None:
    trainer.save(tmp_path / "untouched.keras")
    for before, after in zip(weights(tmp_path / "student.keras"), weights(tmp_path / "untouched.keras"), strict=True):
        np.testing.assert_array_equal(before, after)
    assert trainer.steps == 0


def test_prequential_metrics_score_each_example_before_training_on_it(trainer: Trainer, tmp_path: Path) -> None:
    x, y = Teacher().data(64, seed=20)
    batch = Batch((x,), (y,), 64)
    trainer.save(tmp_path / "before.keras")
    before = keras.saving.load_model(tmp_path / "before.keras", compile=False)
    predicted = np.asarray(before(x, training=False))
    expected_loss = float(np.mean(keras.losses.binary_crossentropy(y, predicted)))
    expected_accuracy = float(np.mean((predicted > 0.5) == (y > 0.5)))

    (result,) = trainer.train([batch])
    assert result.prequential["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert result.prequential["accuracy"] == pytest.approx(expected_accuracy)
    assert result.metrics["mae"] == pytest.approx(float(np.mean(np.abs(y - predicted))), rel=1e-5)
    # The update happened: the same examples now score differently, and evaluation sees the new weights.
    evaluation = trainer.evaluate(batch)
    assert evaluation.rows == 64 and evaluation.loss != pytest.approx(expected_loss, rel=1e-6)
    assert (trainer.steps, trainer.examples) == (1, 64)
