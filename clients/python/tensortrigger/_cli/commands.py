"""``tt`` commands. Each one parses its arguments, makes one or two client calls, and prints the answer."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn

from tensortrigger import __version__
from tensortrigger._cli import csvinput
from tensortrigger._cli import output as out
from tensortrigger._client import Client
from tensortrigger._errors import TensorTriggerError
from tensortrigger._messages import (
    TERMINAL_STATES,
    ClassScore,
    format_serving_policy,
    model_ref,
    parse_serving_policy,
    read_images,
    state_name,
)
from tensortrigger.v1 import jobs_service_pb2

PREVIEW_ROWS = 20


@dataclass
class Settings:
    """The global options; the client is opened on first use and closed when the command ends."""

    address: str
    json: bool
    timeout: float
    tls: bool
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    token: str | None
    _client: Client | None = field(default=None, repr=False)

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(
                self.address,
                timeout=self.timeout,
                tls=self.tls,
                root_certificates=self.ca_file,
                client_certificate=self.cert_file,
                client_key=self.key_file,
                token=self.token,
            )
            click.get_current_context().call_on_close(self._client.close)
        return self._client

    @property
    def interactive(self) -> bool:
        """Progress bars only for a person watching a terminal, never in --json mode."""
        return not self.json and out.stderr.is_terminal


pass_settings = click.make_pass_decorator(Settings)


class _Group(click.Group):
    """Turns client errors into a message and an exit code, for every subcommand."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TensorTriggerError as error:
            settings = ctx.find_object(Settings)
            out.print_error(error, settings is not None and settings.json)
            ctx.exit(out.exit_code(error))
        except ValueError as error:  # the client's own checks (a bad selector, a dict needed, ...)
            raise click.UsageError(str(error)) from None


@click.group(cls=_Group, epilog=out.EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--address",
    envvar="TT_ADDRESS",
    default="127.0.0.1:50051",
    show_default=True,
    help="Server host:port [env TT_ADDRESS].",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of tables.")
@click.option("--timeout", envvar="TT_TIMEOUT", default=30.0, show_default=True, help="Deadline of each call, seconds.")
@click.option("--tls", is_flag=True, envvar="TT_TLS", help="Use TLS (implied by the certificate options).")
@click.option(
    "--ca-file", envvar="TT_CA_FILE", type=click.Path(exists=True, dir_okay=False), help="Root certificates (PEM)."
)
@click.option(
    "--cert-file",
    envvar="TT_CERT_FILE",
    type=click.Path(exists=True, dir_okay=False),
    help="Client certificate (PEM), for mutual TLS.",
)
@click.option(
    "--key-file",
    envvar="TT_KEY_FILE",
    type=click.Path(exists=True, dir_okay=False),
    help="Client private key (PEM), for mutual TLS.",
)
@click.option("--token", envvar="TT_TOKEN", help="Bearer token sent with every call [env TT_TOKEN].")
@click.version_option(__version__, prog_name="tt")
@click.pass_context
def cli(
    ctx: click.Context,
    address: str,
    as_json: bool,
    timeout: float,
    tls: bool,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    token: str | None,
) -> None:
    """Tensor Trigger from the command line: models, predictions, batch jobs and online training."""
    ctx.obj = Settings(address, as_json, timeout, tls, ca_file, cert_file, key_file, token)


# --- health ----------------------------------------------------------------------------------------------


@cli.command()
@click.option("--service", default="", help="One service's health (e.g. tensortrigger.v1.InferenceService).")
@pass_settings
def health(settings: Settings, service: str) -> None:
    """Check the server is up and serving (exit code 5 when not)."""
    status = settings.client().health(service)
    if settings.json:
        out.emit_json({"status": status})
    else:
        out.stdout.print(status)
    if status != "SERVING":
        sys.exit(out.EXIT_UNAVAILABLE)


# --- models ----------------------------------------------------------------------------------------------


@cli.group()
def models() -> None:
    """Upload, inspect, label and delete models."""


@models.command("list")
@pass_settings
def models_list(settings: Settings) -> None:
    """List models (and, on stderr, model repository entries the server refused)."""
    found = list(settings.client().list_models())
    for path, reason in settings.client().repository_problems().items():
        out.stderr.print(f"model repository: {path} refused: {reason}", markup=False)
    if settings.json:
        out.emit_json([out.plain(model) for model in found])
        return
    grid = out.table("NAME", "SERVED", "POLICY", "LATEST", "VERSIONS", "LABELS", "UPDATED")
    for model in found:
        grid.add_row(
            model.name,
            str(model.served_version or "-"),
            format_serving_policy(model.serving_policy),
            str(model.latest_version),
            str(model.version_count),
            out.labels_text(model.labels),
            out.when(model.update_time),
        )
    out.stdout.print(grid)


@models.command("show")
@click.argument("model")
@pass_settings
def models_show(settings: Settings, model: str) -> None:
    """Show a model and its versions (NAME), or one version and its signature (NAME:3, NAME@stable)."""
    client = settings.client()
    ref = model_ref(model)
    if ref.WhichOneof("selector") is None:
        record = client.get_model(ref.name)
        versions = list(client.list_versions(ref.name))
        if settings.json:
            out.emit_json({"model": out.plain(record), "versions": [out.plain(v) for v in versions]})
            return
        out.stdout.print(f"[bold]{escape(record.name)}[/]  {escape(record.description)}".rstrip(), markup=True)
        out.stdout.print(f"labels: {out.labels_text(record.labels)}")
        out.stdout.print(
            f"serving policy: {format_serving_policy(record.serving_policy)} "
            f"(serves version {record.served_version or '-'})"
        )
        keep = record.retention.keep_training_checkpoints
        out.stdout.print(
            f"retention: keep {'all' if keep < 0 else keep} training checkpoints, "
            f"{record.retention.keep_versions or 'all'} versions"
        )
        grid = out.table("VERSION", "FORMAT", "SIZE", "SOURCE", "LABELS", "CREATED")
        for v in versions:
            grid.add_row(
                str(v.version),
                out.plain(v)["format"],
                out.size(v.size_bytes),
                out.plain(v)["source"] + (" (promoted)" if v.promoted else ""),
                ", ".join(v.labels) or "-",
                out.when(v.create_time),
            )
        out.stdout.print(grid)
        return
    version = client.get_version(ref)
    if settings.json:
        out.emit_json(out.plain(version))
        return
    fields = out.plain(version)
    out.stdout.print(
        f"[bold]{escape(version.model_name)}:{version.version}[/]  {escape(version.description)}".rstrip(), markup=True
    )
    for key in ("format", "size_bytes", "sha256", "source", "labels", "feature_names", "create_time"):
        out.stdout.print(f"{key}: {fields[key]}")
    if version.HasField("frozen_graph"):
        nodes = version.frozen_graph
        out.stdout.print(f"frozen_graph: inputs {list(nodes.input_nodes)}, outputs {list(nodes.output_nodes)}")
    if version.class_names:
        shown = ", ".join(version.class_names[:10]) + (", ..." if len(version.class_names) > 10 else "")
        out.stdout.print(f"class_names ({len(version.class_names)}): {shown}")
        out.stdout.print(f"image_scaling: {fields['image_scaling']}")
    grid = out.table("", "NAME", "DTYPE", "SHAPE")
    for kind, specs in (("input", version.signature.inputs), ("output", version.signature.outputs)):
        for spec in specs:
            dtype = out.plain(spec)["dtype"]
            grid.add_row(kind, spec.name, dtype, "(" + ", ".join("?" if d < 0 else str(d) for d in spec.shape) + ")")
    out.stdout.print(grid)


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=option)
        pairs[key] = rest
    return pairs


@models.command("upload")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("-l", "--label", "labels", multiple=True, help="Point this label at the new version (repeatable).")
@click.option("-d", "--description", default="", help="Description of the version.")
@click.option(
    "--feature-name", "feature_names", multiple=True, help="Input feature names in column order (repeatable)."
)
@click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE", help="Metadata stored with the version.")
@click.option(
    "--format",
    "format_",
    type=click.Choice(["keras", "h5", "saved_model_tar_gz", "saved_model_zip", "frozen_graph"]),
    help="Artifact format (default: detected by the server; --input-node declares a frozen graph).",
)
@click.option(
    "--input-node",
    "input_nodes",
    multiple=True,
    help="Frozen graph (.pb): input node, e.g. dense_1_input (repeatable).",
)
@click.option(
    "--output-node",
    "output_nodes",
    multiple=True,
    help="Frozen graph (.pb): output node, e.g. output_node0 (repeatable).",
)
@click.option(
    "--class-names",
    "class_names",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labels file: one class name per line, class 0 first (TFaaS's labels.txt).",
)
@click.option(
    "--image-scaling",
    type=click.Choice(["raw", "unit", "symmetric"]),
    help="How the server scales image pixels for an image input: 0..255, 0..1 or -1..1 (default raw).",
)
@click.option(
    "--serving-policy",
    help="When the upload creates the model: what callers naming only the model get (latest, label:NAME, "
    "version:N; default latest).",
)
@pass_settings
def models_upload(
    settings: Settings,
    name: str,
    path: Path,
    labels: tuple[str, ...],
    description: str,
    feature_names: tuple[str, ...],
    metadata: tuple[str, ...],
    format_: str | None,
    input_nodes: tuple[str, ...],
    output_nodes: tuple[str, ...],
    class_names: Path | None,
    image_scaling: str | None,
    serving_policy: str | None,
) -> None:
    """Upload PATH (.keras, .h5, packed or unpacked SavedModel, frozen graph .pb) as a new version of model NAME."""
    if bool(input_nodes) != bool(output_nodes):
        raise click.UsageError("a frozen graph needs both --input-node and --output-node")
    with out.transfer(f"uploading {path.name}", settings.interactive) as progress:
        version = settings.client().upload(
            name,
            path,
            format=format_,
            description=description,
            feature_names=feature_names,
            metadata=_pairs(metadata, "--metadata"),
            labels=labels,
            input_nodes=input_nodes or None,
            output_nodes=output_nodes or None,
            class_names=class_names,
            image_scaling=image_scaling,
            serving_policy=_policy_option(serving_policy),
            progress=progress,
            timeout=None,  # an upload takes as long as the bytes take
        )
    if settings.json:
        out.emit_json(out.plain(version))
    else:
        labelled = f" (labels: {', '.join(version.labels)})" if version.labels else ""
        out.stdout.print(f"uploaded {version.model_name}:{version.version}, {out.size(version.size_bytes)}{labelled}")


@models.command("download")
@click.argument("model")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--class-names-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also save the version's class names here, one per line (a labels.txt).",
)
@pass_settings
def models_download(settings: Settings, model: str, dest: Path, class_names_out: Path | None) -> None:
    """Save the artifact of MODEL (NAME, NAME:3, NAME@stable) to DEST."""
    with out.transfer(f"downloading {model}", settings.interactive) as progress:
        version = settings.client().download(model, dest, progress=progress)
    if class_names_out is not None:
        if not version.class_names:
            raise click.UsageError(f"{version.model_name}:{version.version} has no class names to save")
        class_names_out.write_text("".join(f"{name}\n" for name in version.class_names), encoding="utf-8")
    if settings.json:
        out.emit_json(out.plain(version))
    else:
        out.stdout.print(f"saved {version.model_name}:{version.version} to {dest} ({out.size(version.size_bytes)})")


@models.command("delete")
@click.argument("model")
@click.option("--force", is_flag=True, help="Delete a version even if labels point at it (the labels go too).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_settings
def models_delete(settings: Settings, model: str, force: bool, yes: bool) -> None:
    """Delete a whole model (NAME) or one version (NAME:3)."""
    ref = model_ref(model)
    which = ref.WhichOneof("selector")
    if which == "label":
        raise click.UsageError("delete a model (NAME) or a version (NAME:3), not a label; see `tt models label`")
    what = f"version {ref.name}:{ref.version}" if which == "version" else f"model {ref.name} and all its versions"
    if not yes:
        click.confirm(f"Delete {what}?", abort=True, err=True)
    client = settings.client()
    if which == "version":
        removed = client.delete_version(ref.name, ref.version, force=force)
        result: dict[str, Any] = {"deleted": f"{ref.name}:{ref.version}", "removed_labels": removed}
    else:
        result = {"deleted": ref.name, "deleted_versions": client.delete_model(ref.name)}
    if settings.json:
        out.emit_json(result)
    else:
        out.stdout.print(f"deleted {what}")


@models.command("label")
@click.argument("name")
@click.argument("label")
@click.argument("version", type=int, required=False)
@click.option("--delete", is_flag=True, help="Remove the label instead of setting it.")
@pass_settings
def models_label(settings: Settings, name: str, label: str, version: int | None, delete: bool) -> None:
    """Point LABEL of model NAME at VERSION, or remove it with --delete."""
    if delete == (version is not None):
        raise click.UsageError("give a VERSION to set the label, or --delete to remove it")
    client = settings.client()
    if version is None:
        previous = client.delete_label(name, label)
        message = f"removed {name}@{label} (was version {previous})"
    else:
        previous = client.set_label(name, label, version)
        message = f"{name}@{label} -> {version}" + (f" (was {previous})" if previous else "")
    if settings.json:
        out.emit_json({"model": name, "label": label, "version": version, "previous_version": previous})
    else:
        out.stdout.print(message)


def _policy_option(text: str | None) -> str | None:
    if text is not None:
        try:
            parse_serving_policy(text)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    return text


@models.command("policy")
@click.argument("name")
@click.argument("policy", required=False)
@pass_settings
def models_policy(settings: Settings, name: str, policy: str | None) -> None:
    """Show or set what callers naming only model NAME get: POLICY is latest (the newest upload or repository
    version; training checkpoints only once promoted), label:NAME or version:N."""
    client = settings.client()
    if policy is None:
        model = client.get_model(name)
        current, served = format_serving_policy(model.serving_policy), model.served_version
        previous = current
    else:
        response = client.set_serving_policy(name, _policy_option(policy) or "")
        current, served = policy.strip(), response.served_version
        previous = format_serving_policy(response.previous_policy)
    if settings.json:
        out.emit_json({"model": name, "policy": current, "previous_policy": previous, "served_version": served})
    else:
        out.stdout.print(
            f"{name}: {current}, serves version {served or '-'}" + (f" (was {previous})" if previous != current else "")
        )


@models.command("promote")
@click.argument("name")
@click.argument("version", type=int)
@pass_settings
def models_promote(settings: Settings, name: str, version: int) -> None:
    """Let the latest policy serve training checkpoint VERSION of model NAME."""
    promoted = settings.client().promote_version(name, version)
    served = settings.client().get_model(name).served_version
    if settings.json:
        out.emit_json({"model": name, "version": promoted.version, "served_version": served})
    else:
        out.stdout.print(f"promoted {name}:{promoted.version}; {name} serves version {served or '-'}")


@models.command("describe")
@click.argument("name")
@click.argument("description")
@pass_settings
def models_describe(settings: Settings, name: str, description: str) -> None:
    """Replace the description of model NAME."""
    model = settings.client().set_description(name, description)
    if settings.json:
        out.emit_json(out.plain(model))
    else:
        out.stdout.print(f"{name}: {model.description}")


@models.command("retention")
@click.argument("name")
@click.option(
    "--keep-training-checkpoints",
    type=int,
    help="Unpromoted training checkpoints kept, newest first (0: the default 5; -1: all). Unset: unchanged.",
)
@click.option("--keep-versions", type=int, help="Versions of any source kept (0: all). Unset: unchanged.")
@pass_settings
def models_retention(
    settings: Settings, name: str, keep_training_checkpoints: int | None, keep_versions: int | None
) -> None:
    """Show or set how many versions of model NAME are kept, and prune now (labelled, served and in-use versions
    stay)."""
    client = settings.client()
    current = client.get_model(name).retention
    if keep_training_checkpoints is None and keep_versions is None:
        pruned: list[int] = []
        retention = current
    else:
        response = client.set_retention(
            name,
            keep_training_checkpoints=current.keep_training_checkpoints
            if keep_training_checkpoints is None
            else keep_training_checkpoints,
            keep_versions=current.keep_versions if keep_versions is None else keep_versions,
        )
        pruned, retention = list(response.pruned_versions), response.retention
    keep = retention.keep_training_checkpoints
    if settings.json:
        out.emit_json({"model": name, "retention": out.plain(retention), "pruned_versions": pruned})
    else:
        out.stdout.print(
            f"{name}: keep {'all' if keep < 0 else keep} training checkpoints, "
            f"{retention.keep_versions or 'all'} versions; pruned: {', '.join(map(str, pruned)) or 'none'}"
        )


# --- predict ---------------------------------------------------------------------------------------------


def _read_csv(path: Path) -> tuple[list[str] | None, np.ndarray]:
    """A numeric CSV as float rows, and its header (the first row, when it is not all numbers)."""
    header, rows = csvinput.read_rows(path)
    try:
        return header, np.asarray(rows, dtype=np.float64)
    except ValueError as error:
        raise click.BadParameter(f"{path}: not a numeric CSV ({error})") from None


def _load_inputs(json_text: str | None, npy_path: Path | None) -> Any:
    if json_text is not None:
        try:
            value = json.loads(sys.stdin.read() if json_text == "-" else json_text)
        except json.JSONDecodeError as error:
            raise click.BadParameter(str(error), param_hint="--json") from None
        return value if isinstance(value, dict) else np.asarray(value)
    assert npy_path is not None
    loaded = np.load(npy_path, allow_pickle=False)  # never unpickle a file: it could run code
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    return loaded


@cli.command()
@click.argument("model")
@click.option(
    "--json", "json_text", metavar="JSON", help='Inputs: {"input": [[...]]}, or a bare array; "-" reads stdin.'
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Rows of numbers; with a header row, the columns the version's feature_names name are picked by name "
    "and the others (an id) are copied to the output rows.",
)
@click.option(
    "--npy",
    "npy_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=".npy array, or .npz of arrays by input name.",
)
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PNG or JPEG file for an image model, one row each (repeatable); the server decodes and resizes it.",
)
@click.option("-o", "--output", "outputs", multiple=True, help="Return only this output (repeatable).")
@click.option(
    "-k",
    "--top-k",
    type=click.IntRange(min=1),
    help="Print the K best classes of each row (needs class names; the default, 5, with --image when the "
    "version has them).",
)
@pass_settings
def predict(
    settings: Settings,
    model: str,
    json_text: str | None,
    csv_path: Path | None,
    npy_path: Path | None,
    images: tuple[Path, ...],
    outputs: tuple[str, ...],
    top_k: int | None,
) -> None:
    """Run MODEL (NAME, NAME:3, NAME@stable) on inputs from --json, --csv, --npy or --image files."""
    client = settings.client()
    passthrough: dict[str, list[str]] = {}
    if sum(v is not None for v in (json_text, csv_path, npy_path)) + bool(images) != 1:
        raise click.UsageError("give exactly one of --json, --csv, --npy or --image files")
    if images:
        inputs: Any = read_images(images)
        if top_k is None and client.get_version(model).class_names:
            top_k = 5
    elif csv_path is not None:
        # The columns are chosen by this version's feature names: pin it, so a version promoted meanwhile
        # cannot get columns meant for another.
        version = client.get_version(model)
        model = f"{version.model_name}:{version.version}"
        read = csvinput.read_inputs(csv_path, version)
        inputs, passthrough = read.inputs, read.passthrough
    else:
        inputs = _load_inputs(json_text, npy_path)
    if top_k is not None:
        if outputs:
            raise click.UsageError("--top-k prints classes, not outputs: drop --output")
        # Rows are named by their image file, else numbered.
        _print_classes(settings, client.classify(model, inputs, top_k=top_k), [path.name for path in images])
        return
    result = client.predict(model, inputs, outputs or None)
    if settings.json:
        body: dict[str, Any] = {"outputs": {name: out.array_json(array) for name, array in result.items()}}
        if passthrough:
            body["passthrough"] = passthrough
        out.emit_json(body)
        return
    rows = min(len(array) if array.ndim else 1 for array in result.values()) if result else 0
    grid = out.table(
        "ROW",
        *passthrough,
        *(f"{name} {tuple(array.shape[1:]) or ''}".rstrip() for name, array in result.items()),
    )
    for i in range(min(rows, PREVIEW_ROWS)):
        grid.add_row(
            str(i),
            *(values[i] for values in passthrough.values()),
            *(out.cell(array[i] if array.ndim else array) for array in result.values()),
        )
    out.stdout.print(grid)
    if rows > PREVIEW_ROWS:
        out.stdout.print(f"... {rows - PREVIEW_ROWS} more rows (use --json for all)")


def _print_classes(settings: Settings, rows: list[list[ClassScore]], names: list[str]) -> None:
    """The best classes of each row: a table of ROW, RANK, CLASS, SCORE (rows named by image file), or JSON."""
    names = names if len(names) == len(rows) else [str(i) for i in range(len(rows))]
    if settings.json:
        body = [
            {"row": name, "classes": [{"name": c.name, "index": c.index, "score": c.score} for c in classes]}
            for name, classes in zip(names, rows, strict=True)
        ]
        out.emit_json({"classifications": body})
        return
    grid = out.table("ROW", "RANK", "CLASS", "SCORE")
    for name, classes in zip(names, rows, strict=True):
        for rank, c in enumerate(classes, start=1):
            grid.add_row(name if rank == 1 else "", str(rank), c.name, f"{c.score:.4f}")
    out.stdout.print(grid)


# --- jobs ------------------------------------------------------------------------------------------------


@cli.group()
def jobs() -> None:
    """Batch jobs: run a model over a CSV file on the server's workers."""


def _job_row(job: jobs_service_pb2.Job) -> tuple[str, ...]:
    progress = job_progress(job)["rows"]
    return (job.id, f"{job.model.name}:{job.model.version}", state_name(job.state), progress, out.when(job.create_time))


def job_progress(job: jobs_service_pb2.Job) -> dict[str, str]:
    """How far a job is, as text: rows done of the total ("~" marks an estimated total, "?" an unknown one),
    the rate and the time left, as the server measures them."""
    if job.rows_total:
        total = f"{job.rows_total:,}"
    elif job.rows_total_estimate:
        total = f"~{job.rows_total_estimate:,}"
    else:
        total = "?"
    rate = job.rows_per_second
    speed = "" if rate <= 0 else f"{rate / 1000:,.0f}k rows/s" if rate >= 10_000 else f"{rate:,.0f} rows/s"
    eta = ""
    if job.eta_seconds > 0:
        minutes, seconds = divmod(round(job.eta_seconds), 60)
        hours, minutes = divmod(minutes, 60)
        eta = f"ETA {hours}:{minutes:02d}:{seconds:02d}"
    return {"rows": f"{job.rows_done:,}/{total}", "speed": speed, "eta": eta}


def _watch(settings: Settings, job_id: str) -> jobs_service_pb2.Job:
    """Follow a job to its end with a progress bar (rows of the total, rate, ETA); returns its final state."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[rows]}"),
        TextColumn("{task.fields[speed]}"),
        TextColumn("{task.fields[eta]}"),
    )
    last = None
    with Progress(*columns, console=out.stderr, transient=True, disable=not settings.interactive) as bar:
        task = bar.add_task(job_id, total=None, rows="", speed="", eta="")
        for job in settings.client().watch_job(job_id):
            last = job
            text = job_progress(job)
            bar.update(
                task,
                description=f"{job_id} {state_name(job.state)}",
                completed=job.rows_done,
                total=job.rows_total or job.rows_total_estimate or None,
                rows=text["rows"],
                speed=text["speed"],
                eta=text["eta"],
            )
    if last is None or last.state not in TERMINAL_STATES:
        last = settings.client().get_job(job_id)
    return last


def _job_finished(settings: Settings, job: jobs_service_pb2.Job) -> None:
    if settings.json:
        out.emit_json(out.plain(job))
    else:
        detail = f": {job.error}" if job.error else ""
        out.stdout.print(f"{job.id} {state_name(job.state)} ({job.rows_done} rows, {job.rows_skipped} skipped){detail}")
    if job.state != jobs_service_pb2.JOB_STATE_SUCCEEDED:
        sys.exit(out.EXIT_ERROR)


@jobs.command("submit")
@click.argument("model")
@click.argument("path")
@click.option("--no-header", is_flag=True, help="The first row is data, not column names.")
@click.option("--delimiter", default=",", show_default=True, help="Field delimiter.")
@click.option(
    "--feature-column", "feature_columns", multiple=True, help="Feature column by name, in model order (repeatable)."
)
@click.option("--passthrough", "passthrough_columns", multiple=True, help="Column copied to the results (repeatable).")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["csv", "jsonl", "parquet"]),
    default="csv",
    show_default=True,
    help="Results format.",
)
@click.option(
    "--input-format",
    type=click.Choice(["csv", "parquet", "jsonl"]),
    help="Input format [default: from the extension (.parquet, .jsonl), else csv].",
)
@click.option("--skip-bad-rows", is_flag=True, help="Skip malformed rows instead of failing the job.")
@click.option("--annotation", "annotations", multiple=True, metavar="KEY=VALUE", help="Label stored with the job.")
@click.option("--output-uri", default="", metavar="S3_PREFIX", help="Write the results under this s3://bucket/prefix/.")
@click.option("--watch", is_flag=True, help="Follow the job until it ends (exit code 1 unless it succeeds).")
@pass_settings
def jobs_submit(
    settings: Settings,
    model: str,
    path: str,
    no_header: bool,
    delimiter: str,
    feature_columns: tuple[str, ...],
    passthrough_columns: tuple[str, ...],
    output_format: str,
    input_format: str | None,
    skip_bad_rows: bool,
    annotations: tuple[str, ...],
    output_uri: str,
    watch: bool,
) -> None:
    """Run MODEL over the file PATH (CSV, Parquet or JSON Lines) as a batch job. PATH may be an s3://bucket/key
    URI that the server reads itself (nothing is uploaded; the server must allow that prefix)."""
    source: str | Path = path
    if not path.startswith("s3://"):
        source = Path(path)
        if not source.is_file():
            raise click.BadParameter(f"{path!r} is not a file (or an s3:// URI)", param_hint="PATH")
    with out.transfer(f"sending {Path(path).name}", settings.interactive and isinstance(source, Path)) as progress:
        job = settings.client().submit_job(
            model,
            source,
            output_uri=output_uri,
            progress=progress,
            has_header=not no_header,
            delimiter=delimiter,
            feature_columns=feature_columns,
            passthrough_columns=passthrough_columns,
            output_format=output_format,
            input_format=input_format or "",
            skip_bad_rows=skip_bad_rows,
            annotations=_pairs(annotations, "--annotation"),
        )
    if watch:
        _job_finished(settings, _watch(settings, job.id))
    elif settings.json:
        out.emit_json(out.plain(job))
    else:
        out.stdout.print(f"{job.id} {state_name(job.state)} ({job.model.name}:{job.model.version})")


@jobs.command("watch")
@click.argument("job_id")
@pass_settings
def jobs_watch(settings: Settings, job_id: str) -> None:
    """Follow a job until it ends (exit code 1 unless it succeeds)."""
    _job_finished(settings, _watch(settings, job_id))


@jobs.command("show")
@click.argument("job_id")
@pass_settings
def jobs_show(settings: Settings, job_id: str) -> None:
    """Show a job."""
    job = settings.client().get_job(job_id)
    if settings.json:
        out.emit_json(out.plain(job))
        return
    for key, value in out.plain(job).items():
        if key != "spec":
            out.stdout.print(f"{key}: {value}")


@jobs.command("list")
@click.option("--model", help="Only jobs of this model.")
@click.option(
    "--state",
    type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]),
    help="Only jobs in this state.",
)
@click.option("--limit", default=50, show_default=True, help="Most jobs to show.")
@pass_settings
def jobs_list(settings: Settings, model: str | None, state: str | None, limit: int) -> None:
    """List jobs, newest first."""
    found: list[jobs_service_pb2.Job] = []
    for job in settings.client().list_jobs(model=model, state=state):
        if len(found) == limit:
            break
        found.append(job)
    if settings.json:
        out.emit_json([out.plain(job) for job in found])
        return
    grid = out.table("ID", "MODEL", "STATE", "ROWS", "CREATED")
    for job in found:
        grid.add_row(*_job_row(job))
    out.stdout.print(grid)


@jobs.command("results")
@click.argument("job_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save to this file (an interrupted download resumes); default: stdout.",
)
@pass_settings
def jobs_results(settings: Settings, job_id: str, output: Path | None) -> None:
    """Fetch a succeeded job's results."""
    client = settings.client()
    if output is None:
        for chunk in client.job_results(job_id):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return
    with out.transfer(f"downloading {job_id}", settings.interactive) as progress:
        client.download_job_results(job_id, output, progress=progress)
    if settings.json:
        out.emit_json({"job": job_id, "path": str(output), "size_bytes": output.stat().st_size})
    else:
        out.stdout.print(f"saved results of {job_id} to {output} ({out.size(output.stat().st_size)})")


@jobs.command("cancel")
@click.argument("job_id")
@pass_settings
def jobs_cancel(settings: Settings, job_id: str) -> None:
    """Cancel a queued or running job."""
    job = settings.client().cancel_job(job_id)
    if settings.json:
        out.emit_json(out.plain(job))
    else:
        out.stdout.print(f"{job.id} {state_name(job.state)}")


# --- train -----------------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--metrics",
    "metrics_url",
    default="",
    help="The server's Prometheus endpoint (TT_METRICS_ADDRESS) [default: http://ADDRESS-HOST:9090/metrics].",
)
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between refreshes.")
@click.option("--iterations", type=int, default=0, help="Stop after this many refreshes (default: until Ctrl-C).")
@pass_settings
def top(settings: Settings, metrics_url: str, interval: float, iterations: int) -> None:
    """Live view of the server: per model and version req/s, errors, p50/p99, rows per call, queue, state."""
    from tensortrigger._cli import top as live_view  # rich's live display only when asked for

    if not metrics_url:
        host = settings.address.rsplit(":", 1)[0] if ":" in settings.address else settings.address
        metrics_url = f"http://{host}:9090/metrics"
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a live view ends
        live_view.run(metrics_url, max(0.1, interval), iterations)


def _training_batches(path: Path, label_column: str | None, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    header, data = _read_csv(path)
    if data.ndim != 2 or data.shape[1] < 2:
        raise click.BadParameter(f"{path}: needs feature columns and a label column")
    index = data.shape[1] - 1
    if label_column is not None:
        if header is None or label_column not in header:
            raise click.BadParameter(f"no column {label_column!r} in the header of {path}", param_hint="--label-column")
        index = header.index(label_column)
    labels = data[:, index : index + 1]
    features = np.delete(data, index, axis=1)
    for start in range(0, len(data), rows):
        yield features[start : start + rows], labels[start : start + rows]


@cli.command()
@click.argument("model")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--label-column", help="Name of the label column (default: the last column).")
@click.option("--batch-rows", default=256, show_default=True, help="Rows per streamed message.")
@click.option("--loss", default="", help="Keras loss, e.g. mse (default: the model's).")
@click.option(
    "--optimizer", type=click.Choice(["sgd", "adam", "adamw", "rmsprop"]), help="Optimizer (default: the model's)."
)
@click.option("--learning-rate", type=float, default=0.0, help="Learning rate (default: the optimizer's).")
@click.option("--micro-batch-size", type=int, default=0, help="Examples per train step (default 32).")
@click.option(
    "--checkpoint-every", type=int, default=0, help="Publish a version every N examples (and always at the end)."
)
@click.option("--move-label", default="", help="Label moved to each published version.")
@click.option(
    "--promote",
    is_flag=True,
    help="Promote the last version at the end, so callers that name only the model get it (policy latest).",
)
@click.option(
    "--drop-non-finite", is_flag=True, help="Drop rows holding NaN or Inf (counted) instead of failing the session."
)
@click.option("--metric", "metrics", multiple=True, help="Extra Keras metric to report (repeatable).")
@pass_settings
def train(
    settings: Settings,
    model: str,
    path: Path,
    label_column: str | None,
    batch_rows: int,
    loss: str,
    optimizer: str | None,
    learning_rate: float,
    micro_batch_size: int,
    checkpoint_every: int,
    move_label: str,
    promote: bool,
    drop_non_finite: bool,
    metrics: tuple[str, ...],
) -> None:
    """Train MODEL online on the CSV file PATH (features, then the label column); prints live metrics."""
    last_print = 0.0

    def show(progress: Any) -> None:
        nonlocal last_print
        if settings.json or time.monotonic() - last_print < 0.5:
            return
        last_print = time.monotonic()
        extra = "  ".join(f"{k}={v:.4g}" for k, v in sorted({**progress.prequential, **progress.metrics}.items()))
        out.stderr.print(
            f"step {progress.step}  examples {progress.examples_seen}  loss={progress.loss:.4g}  {extra}".rstrip()
        )

    options: dict[str, Any] = {
        "loss": loss,
        "learning_rate": learning_rate,
        "micro_batch_size": micro_batch_size,
        "checkpoint_every_examples": checkpoint_every,
        "move_label": move_label,
        "metrics": metrics,
        "promote": promote,
        "drop_non_finite": drop_non_finite,
    }
    if optimizer:
        options["optimizer"] = optimizer
    result = settings.client().train(
        model, _training_batches(path, label_column, batch_rows), on_progress=show, **options
    )
    if settings.json:
        body = {k: v for k, v in vars(result).items() if k not in ("checkpoints", "last_progress")}
        body["checkpoints"] = [out.plain(v) for v in result.checkpoints]
        body["last_progress"] = out.plain(result.last_progress) if result.last_progress else None
        out.emit_json(body)
        return
    published = ", ".join(str(v.version) for v in result.checkpoints) or "none"
    out.stdout.print(
        f"trained on {result.examples_seen} examples in {result.steps} steps; published versions: {published}"
    )
    dropped = result.last_progress.dropped_examples if result.last_progress else 0
    if dropped:
        out.stdout.print(f"dropped {dropped} rows holding NaN or infinite values")
