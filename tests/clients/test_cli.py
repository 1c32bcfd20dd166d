"""The ``tt`` command line end to end: a real subprocess against a real server, checking output and exit codes.

The server runs on this test's event loop, so ``tt`` runs through ``asyncio.create_subprocess_exec`` (a blocking
``subprocess.run`` would stall the server it talks to). One backend is enough: the CLI only sees the API, and
every subprocess costs a Python start-up.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tensortrigger._cli.commands import job_progress
from tensortrigger.v1 import jobs_service_pb2

from tests import models
from tests.clients.helpers import embedded_only, free_port, keras_reference, tt_cli
from tests.serving import unique_name
from tt_server.app import Application


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cli-models")
    return {"keras": models.mlp_keras(out), "saved_model_dir": models.mlp_export_dir(out)}


@pytest.fixture(scope="module")
async def mlp(app: Application, model_files: dict[str, Path]) -> str:
    name = unique_name("cli")
    run = await tt_cli(
        "--json", "models", "upload", name, str(model_files["keras"]), "-l", "stable", address=app.address
    )
    assert run.code == 0, run.err
    return name


async def test_help_documents_the_exit_codes() -> None:
    run = await tt_cli("--help")
    assert run.code == 0
    for line in ("3  not found", "4  invalid argument", "5  server unavailable", "2  usage error"):
        assert line in run.out
    assert (await tt_cli("no-such-command")).code == 2


@embedded_only
async def test_health(app: Application) -> None:
    run = await tt_cli("health", address=app.address)
    assert (run.code, run.out.strip()) == (0, "SERVING")
    run = await tt_cli("--json", "health", env={"TT_ADDRESS": app.address})  # the address from the environment
    assert (run.code, run.json()) == (0, {"status": "SERVING"})


async def test_an_unreachable_server_exits_5() -> None:
    run = await tt_cli("--json", "--timeout", "1", "models", "list", address=f"127.0.0.1:{free_port()}")
    assert run.code == 5
    assert json.loads(run.err)["error"]["code"] == "UNAVAILABLE"


@embedded_only
async def test_models_lifecycle(app: Application, model_files: dict[str, Path], tmp_path: Path) -> None:
    name = unique_name("cli")
    a = app.address
    uploaded = await tt_cli("--json", "models", "upload", name, str(model_files["keras"]), "-l", "stable", address=a)
    assert uploaded.code == 0, uploaded.err
    assert uploaded.json()["version"] == 1 and uploaded.json()["labels"] == ["stable"]
    second = await tt_cli(
        "models", "upload", name, str(model_files["saved_model_dir"]), "-d", "exported", "--metadata", "k=v", address=a
    )
    assert (second.code, second.out.strip().split(",")[0]) == (0, f"uploaded {name}:2")

    listed = await tt_cli("--json", "models", "list", address=a)
    mine = next(m for m in listed.json() if m["name"] == name)
    assert (mine["latest_version"], mine["version_count"], mine["labels"]) == (2, 2, {"stable": 1})
    table = await tt_cli("models", "list", address=a)
    assert name in table.out and "stable->1" in table.out

    shown = await tt_cli("--json", "models", "show", name, address=a)
    assert [v["version"] for v in shown.json()["versions"]] == [2, 1]
    assert shown.json()["versions"][0]["metadata"] == {"k": "v"}
    version = await tt_cli("--json", "models", "show", f"{name}@stable", address=a)
    assert version.json()["format"] == "KERAS"
    assert version.json()["signature"]["inputs"] == [{"name": "features", "dtype": "FLOAT32", "shape": [-1, 4]}]
    human = await tt_cli("models", "show", f"{name}:1", address=a)
    assert "features" in human.out and "FLOAT32" in human.out and "(?, 4)" in human.out

    label = await tt_cli("--json", "models", "label", name, "canary", "2", address=a)
    assert label.json()["previous_version"] == 0
    assert (await tt_cli("models", "label", name, "canary", "--delete", address=a)).code == 0
    assert (await tt_cli("models", "label", name, "canary", address=a)).code == 2  # neither VERSION nor --delete

    downloaded = await tt_cli("models", "download", f"{name}:1", str(tmp_path / "v1.keras"), address=a)
    assert downloaded.code == 0 and (tmp_path / "v1.keras").read_bytes() == model_files["keras"].read_bytes()

    refused = await tt_cli("models", "delete", f"{name}:1", "--yes", address=a)  # "stable" points at it
    assert refused.code == 1 and "FAILED_PRECONDITION" in refused.err
    aborted = await tt_cli("models", "delete", name, address=a, stdin="n\n")  # asks first
    assert aborted.code == 1 and "Aborted" in aborted.err
    forced = await tt_cli("--json", "models", "delete", f"{name}:1", "--force", "--yes", address=a)
    assert forced.json() == {"deleted": f"{name}:1", "removed_labels": ["stable"]}
    deleted = await tt_cli("models", "delete", name, "--yes", address=a)
    assert deleted.code == 0
    assert (await tt_cli("models", "show", name, address=a)).code == 3


@embedded_only
async def test_models_policy_retention_and_description(app: Application, model_files: dict[str, Path]) -> None:
    name = unique_name("cli")
    a = app.address
    first = await tt_cli(
        "models", "upload", name, str(model_files["keras"]), "-l", "stable", "-d", "first",
        "--serving-policy", "label:stable", address=a,
    )  # fmt: skip
    assert first.code == 0, first.err
    assert (await tt_cli("models", "upload", name, str(model_files["keras"]), address=a)).code == 0
    shown = await tt_cli("models", "policy", name, address=a)
    assert shown.out.strip() == f"{name}: label:stable, serves version 1"
    changed = await tt_cli("--json", "models", "policy", name, "latest", address=a)
    assert changed.json() == {"model": name, "policy": "latest", "previous_policy": "label:stable", "served_version": 2}
    missing = await tt_cli("models", "policy", name, "label:nope", address=a)
    assert missing.code == 1 and "FAILED_PRECONDITION" in missing.err

    described = await tt_cli("models", "describe", name, "churn model", address=a)
    assert described.out.strip() == f"{name}: churn model"
    retention = await tt_cli("--json", "models", "retention", name, "--keep-versions", "1", address=a)
    assert retention.json()["pruned_versions"] == []  # 1 is labelled, 2 is served
    human = await tt_cli("models", "show", name, address=a)
    assert "serving policy: latest (serves version 2)" in human.out
    assert "retention: keep 5 training checkpoints, 1 versions" in human.out


@embedded_only
async def test_predict_from_json_csv_and_npy(
    app: Application, mlp: str, model_files: dict[str, Path], tmp_path: Path
) -> None:
    x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    expected = np.asarray(keras_reference(model_files["keras"])(x))
    (tmp_path / "x.csv").write_text("a,b,c,d\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in x))
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", features=x)
    cases: list[tuple[str, list[str], str | None]] = [
        (mlp, ["--json", json.dumps({"features": x.tolist()})], None),
        (f"{mlp}@stable", ["--json", json.dumps(x.tolist())], None),  # a bare array names the only input
        (mlp, ["--json", "-"], json.dumps(x.tolist())),  # from stdin
        (mlp, ["--csv", str(tmp_path / "x.csv")], None),  # the header row is skipped
        (f"{mlp}:1", ["--npy", str(tmp_path / "x.npy")], None),
        (mlp, ["--npy", str(tmp_path / "x.npz")], None),  # arrays by input name
    ]
    for model, inputs, stdin in cases:
        run = await tt_cli("--json", "predict", model, *inputs, address=app.address, stdin=stdin)
        assert run.code == 0, (inputs, run.err)
        np.testing.assert_allclose(np.asarray(run.json()["outputs"]["score"]), expected, atol=1e-5)

    human = await tt_cli("predict", mlp, "--csv", str(tmp_path / "x.csv"), address=app.address)
    assert human.code == 0 and "score" in human.out
    # The table's first row: "0    0.0697942" (6 significant digits; the last may differ from Keras in-process by
    # float rounding, as the allclose checks above allow).
    first_row = next(line for line in human.out.splitlines() if line.split()[:1] == ["0"])
    assert abs(float(first_row.split()[1]) - float(expected[0, 0])) <= 1e-5 + 1e-6 * abs(float(expected[0, 0]))


@embedded_only
async def test_predict_exit_codes(app: Application, mlp: str, tmp_path: Path) -> None:
    a = app.address
    wrong_shape = await tt_cli("predict", mlp, "--json", "[[1, 2, 3]]", address=a)
    assert wrong_shape.code == 4
    assert 'inputs["features"].shape[1]' in wrong_shape.err  # the field violations are listed
    as_json = await tt_cli("--json", "predict", mlp, "--json", "[[1, 2, 3]]", address=a)
    assert as_json.code == 4
    violations = json.loads(as_json.err)["error"]["violations"]
    assert 'inputs["features"].shape[1]' in [v["field"] for v in violations]

    assert (await tt_cli("predict", "no-such-model", "--json", "[[1, 2, 3, 4]]", address=a)).code == 3
    assert (await tt_cli("predict", f"{mlp}@nolabel", "--json", "[[1, 2, 3, 4]]", address=a)).code == 3
    assert (await tt_cli("predict", mlp, address=a)).code == 2  # no inputs
    (tmp_path / "x.csv").write_text("1,2,3,4\n")
    assert (
        await tt_cli("predict", mlp, "--json", "[[1,2,3,4]]", "--csv", str(tmp_path / "x.csv"), address=a)
    ).code == 2
    assert (await tt_cli("predict", mlp, "--json", "{not json", address=a)).code == 2
    assert (await tt_cli("predict", f"{mlp}:latest", "--json", "[[1,2,3,4]]", address=a)).code == 2
    assert (await tt_cli("predict", mlp, "--npy", str(tmp_path / "missing.npy"), address=a)).code == 2


def _csv(path: Path, header: list[str], columns: list[list[str]]) -> Path:
    """A CSV of ``columns`` (lists of text, one per column) under ``header`` (none when empty)."""
    lines = [",".join(header)] if header else []
    lines += [",".join(row) for row in zip(*columns, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


@embedded_only
async def test_predict_csv_picks_the_feature_names_columns_by_name(
    app: Application, model_files: dict[str, Path], tmp_path: Path
) -> None:
    """With a header and a version that declares feature_names, the columns are chosen by name in any order,
    like a batch job's; the other columns (an id) are copied to the output rows."""
    a = app.address
    name = unique_name("cli-named")
    features = ["age", "income", "tenure", "visits"]
    uploaded = await tt_cli(
        "models", "upload", name, str(model_files["keras"]), *(f"--feature-name={f}" for f in features), address=a
    )
    assert uploaded.code == 0, uploaded.err
    shown = await tt_cli("--json", "models", "show", name, address=a)
    assert shown.json()["versions"][0]["feature_names"] == features

    x = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    expected = np.asarray(keras_reference(model_files["keras"])(x))
    text = {f: [repr(float(v)) for v in x[:, i]] for i, f in enumerate(features)}
    ids = [f"cust-{i}" for i in range(len(x))]
    ordered = _csv(tmp_path / "ordered.csv", features, [text[f] for f in features])
    shuffled_order = ["tenure", "id", "visits", "age", "region", "income"]
    columns = {**text, "id": ids, "region": ["north"] * len(x)}
    shuffled = _csv(tmp_path / "shuffled.csv", shuffled_order, [columns[c] for c in shuffled_order])

    plain = await tt_cli("--json", "predict", name, "--csv", str(ordered), address=a)
    assert plain.code == 0, plain.err
    assert "passthrough" not in plain.json()
    picked = await tt_cli("--json", "predict", name, "--csv", str(shuffled), address=a)
    assert picked.code == 0, picked.err
    scores = np.asarray(picked.json()["outputs"]["score"])
    np.testing.assert_allclose(scores, np.asarray(plain.json()["outputs"]["score"]), atol=1e-6)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert picked.json()["passthrough"] == {"id": ids, "region": ["north"] * len(x)}

    human = await tt_cli("predict", name, "--csv", str(shuffled), address=a)
    assert human.code == 0, human.err
    assert human.out.split()[:4] == ["ROW", "id", "region", "score"]
    first_row = next(line for line in human.out.splitlines() if line.split()[:1] == ["0"])
    assert first_row.split()[1:3] == ["cust-0", "north"]

    missing_order = ["id", "visits", "age", "income"]
    missing = _csv(tmp_path / "missing.csv", missing_order, [columns[c] for c in missing_order])
    refused = await tt_cli("predict", name, "--csv", str(missing), address=a)
    assert refused.code == 2, refused.err
    assert "no column 'tenure' in the header" in refused.err
    assert "'id', 'visits', 'age', 'income'" in refused.err  # the columns the file has

    twice = _csv(tmp_path / "twice.csv", [*features, "age"], [*(text[f] for f in features), text["age"]])
    refused = await tt_cli("predict", name, "--csv", str(twice), address=a)
    assert refused.code == 2 and "the header has 2 columns named 'age'" in refused.err

    bad_order = ["id", *features]
    bad = columns | {"visits": ["1", "2", "x", "4", "5", "6"]}
    refused = await tt_cli(
        "predict", name, "--csv", str(_csv(tmp_path / "bad.csv", bad_order, [bad[c] for c in bad_order])), address=a
    )
    assert refused.code == 2 and "row 3: column 'visits': 'x' is not a valid number" in refused.err


@embedded_only
async def test_predict_csv_without_feature_names_is_positional(
    app: Application, mlp: str, model_files: dict[str, Path], tmp_path: Path
) -> None:
    """No feature_names (or no header): the columns in file order, as before; a column count the model's
    input does not take is refused before any prediction, naming both counts."""
    a = app.address
    x = np.random.default_rng(6).normal(size=(3, 4)).astype(np.float32)
    expected = np.asarray(keras_reference(model_files["keras"])(x))
    text = [[repr(float(v)) for v in x[:, i]] for i in range(4)]
    cases = [
        _csv(tmp_path / "names.csv", ["w", "x", "y", "z"], text),  # names the model does not declare
        _csv(tmp_path / "bare.csv", [], text),  # no header
    ]
    for path in cases:
        run = await tt_cli("--json", "predict", mlp, "--csv", str(path), address=a)
        assert run.code == 0, (path.name, run.err)
        np.testing.assert_allclose(np.asarray(run.json()["outputs"]["score"]), expected, atol=1e-5)
        assert "passthrough" not in run.json()

    with_id = _csv(tmp_path / "id.csv", ["id", "a", "b", "c", "d"], [["1", "2", "3"], *text])
    refused = await tt_cli("predict", mlp, "--csv", str(with_id), address=a)
    assert refused.code == 2, refused.err
    assert "5 feature columns (its columns), but the model's inputs take 4 ('features' 4)" in refused.err
    assert "INVALID_ARGUMENT" not in refused.err  # refused here, not by the server

    # A feature-named version still reads a headerless file by position.
    name = unique_name("cli-named")
    uploaded = await tt_cli(
        "models", "upload", name, str(model_files["keras"]), *(f"--feature-name={f}" for f in "abcd"), address=a
    )
    assert uploaded.code == 0, uploaded.err
    run = await tt_cli("--json", "predict", name, "--csv", str(cases[1]), address=a)
    assert run.code == 0, run.err
    np.testing.assert_allclose(np.asarray(run.json()["outputs"]["score"]), expected, atol=1e-5)


def test_job_progress_text() -> None:
    """What `tt jobs watch` and `tt jobs list` show of a job's progress."""
    job = jobs_service_pb2.Job(
        rows_done=244_223, rows_total_estimate=1_000_000, rows_per_second=312_345.6, eta_seconds=2.4
    )
    assert job_progress(job) == {"rows": "244,223/~1,000,000", "speed": "312k rows/s", "eta": "ETA 0:00:02"}
    job = jobs_service_pb2.Job(rows_done=10, rows_total=20, rows_per_second=5, eta_seconds=3725)
    assert job_progress(job) == {"rows": "10/20", "speed": "5 rows/s", "eta": "ETA 1:02:05"}
    assert job_progress(jobs_service_pb2.Job(rows_done=3)) == {"rows": "3/?", "speed": "", "eta": ""}
