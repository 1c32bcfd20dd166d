"""``tt`` for TFaaS users, as a subprocess against a real server: upload a frozen graph with its params and a
labels file, classify image files, get the labels back. One backend: the CLI only sees the API."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import models
from tests.clients.helpers import embedded_only, tt_cli
from tests.serving import unique_name
from tests.tfaas.helpers import image, png_declaring
from tt_server.app import Application

pytestmark = embedded_only


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tfaas-cli")
    labels = out / "labels.txt"
    labels.write_text("\n".join(models.COLOURS) + "\n")
    written = {"labels": labels, "colours": models.colour_classifier_keras(out), "mlp_pb": models.mlp_frozen_graph(out)}
    for name, blob in {
        "red.png": image("red", "PNG", (50, 40)),
        "green.jpg": image("green", "JPEG", (32, 32)),
        "bomb.png": png_declaring(100_000, 100_000),
    }.items():
        (out / name).write_bytes(blob)
        written[name] = out / name
    return written


async def test_classify_image_files(app: Application, files: dict[str, Path]) -> None:
    name = unique_name("cli-img")
    a = app.address
    uploaded = await tt_cli(
        "--json", "models", "upload", name, str(files["colours"]), "--class-names", str(files["labels"]),
        "--image-scaling", "unit", address=a,
    )  # fmt: skip
    assert uploaded.code == 0, uploaded.err
    assert uploaded.json()["class_names"] == list(models.COLOURS)
    assert uploaded.json()["image_scaling"] == "UNIT"

    # The version has class names, so --image prints the top classes (5 by default; the model has 3).
    table = await tt_cli(
        "predict", name, "--image", str(files["red.png"]), "--image", str(files["green.jpg"]), address=a
    )
    assert table.code == 0, table.err
    lines = [line.split() for line in table.out.splitlines()]
    assert lines[0] == ["ROW", "RANK", "CLASS", "SCORE"]
    assert lines[1][:3] == ["red.png", "1", "red"] and lines[4][:3] == ["green.jpg", "1", "green"]
    assert len(lines) == 1 + 2 * 3

    as_json = await tt_cli("--json", "predict", name, "--image", str(files["green.jpg"]), "-k", "1", address=a)
    assert as_json.code == 0, as_json.err
    [row] = as_json.json()["classifications"]
    assert row["row"] == "green.jpg" and [c["name"] for c in row["classes"]] == ["green"]
    assert row["classes"][0]["index"] == 1 and row["classes"][0]["score"] > 0.99

    shown = await tt_cli("models", "show", f"{name}:1", address=a)
    assert "class_names (3): red, green, blue" in shown.out and "image_scaling: UNIT" in shown.out


async def test_bad_image_exits_4(app: Application, files: dict[str, Path]) -> None:
    name = unique_name("cli-img")
    a = app.address
    assert (
        await tt_cli("models", "upload", name, str(files["colours"]), "--class-names", str(files["labels"]), address=a)
    ).code == 0
    run = await tt_cli("predict", name, "--image", str(files["red.png"]), "--image", str(files["bomb.png"]), address=a)
    assert run.code == 4
    assert 'inputs["image"].string_val[1]' in run.err and "100000 x 100000" in run.err


async def test_frozen_graph_params_and_labels_round_trip(
    app: Application, files: dict[str, Path], tmp_path: Path
) -> None:
    name = unique_name("cli-pb")
    a = app.address
    binary = tmp_path / "labels.txt"
    binary.write_text("background\nsignal\n")
    uploaded = await tt_cli(
        "--json", "models", "upload", name, str(files["mlp_pb"]), "--input-node", models.FROZEN_INPUT,
        "--output-node", models.FROZEN_OUTPUT, "--class-names", str(binary), address=a,
    )  # fmt: skip
    assert uploaded.code == 0, uploaded.err
    assert uploaded.json()["format"] == "FROZEN_GRAPH"
    assert uploaded.json()["frozen_graph"] == {"input_nodes": ["dense_1_input"], "output_nodes": ["output_node0"]}

    predicted = await tt_cli(
        "--json", "predict", name, "--json", '{"dense_1_input": [[0.1, 0.2, 0.3, 0.4]]}', address=a
    )
    assert predicted.code == 0, predicted.err
    [[score]] = predicted.json()["outputs"]["output_node0"]
    classes = await tt_cli("--json", "predict", name, "--json", "[[0.1, 0.2, 0.3, 0.4]]", "--top-k", "2", address=a)
    assert classes.code == 0, classes.err
    [row] = classes.json()["classifications"]
    by_name = {c["name"]: c["score"] for c in row["classes"]}
    assert by_name["signal"] == pytest.approx(score, abs=1e-6)
    assert by_name["background"] == pytest.approx(1 - score, abs=1e-6)

    saved = tmp_path / "model.pb"
    labels_out = tmp_path / "labels-out.txt"
    downloaded = await tt_cli("models", "download", name, str(saved), "--class-names-out", str(labels_out), address=a)
    assert downloaded.code == 0, downloaded.err
    assert saved.read_bytes() == files["mlp_pb"].read_bytes()
    assert labels_out.read_text() == "background\nsignal\n"

    missing = await tt_cli("models", "upload", name, str(files["mlp_pb"]), "--input-node", "x", address=a)
    assert missing.code == 2 and "--output-node" in missing.err
