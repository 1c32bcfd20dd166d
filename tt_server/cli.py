"""The command lines of ``tt-server`` and ``tt-worker``, generated from the settings model.

``--help`` lists every setting with its ``TT_*`` variable, default and description, read from ``Settings`` itself
(never a hand-kept copy); a few common settings also have flags, which override their variables. A bad value (from
a flag or the environment) ends the process with one line naming the variable and what it expects, exit code 2,
no traceback; so does an unknown argument (argparse's usage error).

Nothing here imports TensorFlow: ``--help``, ``--version`` and a bad setting answer at once.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from pydantic_settings import SettingsError

from tt_server.config import Settings

ENV_PREFIX = "TT_"
MASK = "***"
# Settings whose values are secrets: shown as *** (URLs keep everything but their password).
SECRET_FIELDS = frozenset({"page_token_secret"})
SECRET_URL_FIELDS = frozenset({"database_url", "amqp_url"})
# TT_* variables that are not settings but belong to the `tt` command line client, which may share the shell.
CLIENT_VARIABLES = frozenset({"TT_ADDRESS", "TT_TOKEN"})


@dataclass(frozen=True)
class Flag:
    """A command-line flag for one setting."""

    flag: str
    field: str
    metavar: str


SERVER_FLAGS = (
    Flag("--address", "grpc_address", "HOST:PORT"),
    Flag("--http-address", "http_address", "HOST:PORT"),
    Flag("--workers", "workers", "N|auto"),
    Flag("--data-dir", "data_dir", "PATH"),
    Flag("--metrics-address", "metrics_address", "HOST:PORT"),
    Flag("--log-level", "log_level", "LEVEL"),
)
WORKER_FLAGS = (
    Flag("--data-dir", "data_dir", "PATH"),
    Flag("--metrics-address", "metrics_address", "HOST:PORT"),
    Flag("--log-level", "log_level", "LEVEL"),
)


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def parse_settings(
    prog: str, description: str, flags: tuple[Flag, ...], argv: list[str] | None = None
) -> tuple[Settings, argparse.Namespace]:
    """Parse ``argv`` and the ``TT_*`` environment into settings, or exit: 0 after --help/--version/--print-config,
    2 on a usage error or an invalid setting."""
    parser = build_parser(prog, description, flags)
    args = parser.parse_args(argv)
    overrides = {f.field: getattr(args, f.field) for f in flags if getattr(args, f.field) is not None}
    settings = load_settings(prog, overrides, {f.field: f.flag for f in flags})
    if args.print_config:
        sys.stdout.write(render_config(settings))
        sys.exit(0)
    return settings, args


def build_parser(prog: str, description: str, flags: tuple[Flag, ...]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{prog} {package_version()}")
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective settings (secrets masked) and exit"
    )
    for flag in flags:
        parser.add_argument(
            flag.flag,
            dest=flag.field,
            metavar=flag.metavar,
            default=None,
            help=f"overrides {env_name(flag.field)}",
        )
    return parser


def package_version() -> str:
    try:
        return metadata.version("tensortrigger-server")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def settings_help() -> str:
    """Every setting: variable, default, description (what ``--help`` shows after the flags)."""
    lines = ["settings (environment variables; a flag above overrides its variable):", ""]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        lines.append(f"  {env_name(name)}  [default: {_show(name, default)}]")
        text = field.description or ""
        expects = _expects(field.annotation)
        if expects and expects not in text:
            text = f"{text} ({expects})" if text else expects
        lines.extend(textwrap.wrap(text, width=100, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def load_settings(prog: str, overrides: dict[str, Any], flags: dict[str, str] | None = None) -> Settings:
    """``Settings`` from the environment with ``overrides`` on top; on a bad value, one line per problem and exit 2."""
    flags = flags or {}
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems: dict[str, str] = {}  # by variable: one line each
        for error in e.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            message = re.sub(r"^Value error, ", "", error["msg"])
            if not field:  # a rule across settings: its message names them
                problems[message] = f"{prog}: invalid settings: {message}"
                continue
            where = flags[field] if field in overrides and field in flags else env_name(field)
            shown = _show(field, error.get("input"))
            expects = _expects(Settings.model_fields[field].annotation) if field in Settings.model_fields else ""
            bound = _BOUNDS.get(error["type"])
            if bound is not None and where not in problems:
                message = f"must be {bound} {_number(next(iter(error.get('ctx', {}).values()), ''))}"
            elif expects and ("Input should" in message or where in problems):  # where: a union's second member
                message = f"expected {expects}"
            problems[where] = f"{prog}: invalid setting {where}={shown}: {message}"
        _fail(list(problems.values()))
    except SettingsError as e:
        # pydantic-settings' own parse errors (a list or dict that is not JSON) name the field in quotes.
        match = re.search(r'field "([^"]+)"', str(e))
        field = match[1] if match else ""
        expects = _expects(Settings.model_fields[field].annotation) if field in Settings.model_fields else ""
        _fail([f"{prog}: invalid setting {env_name(field) if field else '(unknown)'}: expected {expects or 'JSON'}"])


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``TT_*`` variables that name no setting, each with the setting it was probably meant to be. pydantic-settings
    ignores them, so a typo (``TT_BATCH_MAX_ROW``) would silently leave the default in force."""
    known = [env_name(name) for name in Settings.model_fields]
    unknown = []
    for name in sorted(environ):
        upper = name.upper()  # pydantic-settings reads variable names case-insensitively
        if upper.startswith(ENV_PREFIX) and upper not in known and upper not in CLIENT_VARIABLES:
            close = difflib.get_close_matches(upper, known, n=1)
            unknown.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return unknown


def warn_unknown_variables(log: logging.Logger, environ: Mapping[str, str] = os.environ) -> None:
    """One start-up warning naming every ``TT_*`` variable that is not a setting (see ``unknown_variables``)."""
    unknown = unknown_variables(environ)
    if unknown:
        log.warning("unknown TT_* environment variables, ignored: %s", ", ".join(unknown))


def render_config(settings: Settings) -> str:
    """The effective settings as ``TT_NAME=value`` lines (an env file), secrets masked."""
    return "".join(
        f"{env_name(name)}={_show(name, getattr(settings, name), raw=True)}\n" for name in Settings.model_fields
    )


def _fail(lines: list[str]) -> NoReturn:
    for line in lines:
        print(line, file=sys.stderr)
    sys.exit(2)


def _show(field: str, value: Any, raw: bool = False) -> str:
    """A value as an operator would type it, with secrets masked."""
    if value is None:
        return "" if raw else "unset"
    if field in SECRET_FIELDS and value:
        return MASK
    if field in SECRET_URL_FIELDS and isinstance(value, str) and value:
        return mask_url(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        return json.dumps(value)
    if isinstance(value, Path):
        return str(value)
    if value == "" and not raw:
        return '""'
    return str(value)


def mask_url(url: str) -> str:
    """``url`` with its password, if any, shown as ``***`` (for logs and --print-config)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return MASK


def stores_in_use(s: Settings) -> dict[str, str]:
    """Which stores ``s`` selects, as the start-up lines of tt-server and tt-worker report them (an operator
    checking a deployment reads them there); passwords in URLs are masked."""
    if s.s3_bucket:
        blobs_at = f"s3://{s.s3_bucket}/{s.s3_prefix}" + (f" at {s.s3_endpoint_url}" if s.s3_endpoint_url else "")
    else:
        blobs_at = str(s.blob_dir)
    return {
        "database": "postgresql" if s.database_url else "sqlite",
        "database_url": mask_url(s.database_url) if s.database_url else str(s.sqlite_path),
        "blobs": "s3" if s.s3_bucket else "local",
        "blobs_at": blobs_at,
        "jobs": f"rabbitmq {mask_url(s.amqp_url)}" if s.amqp_url else "in-process",
    }


# pydantic's error types for a number out of its bounds, and how an operator reads them.
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _expects(annotation: Any) -> str:
    """What a value of this type looks like in an environment variable."""
    origin = get_origin(annotation)
    args = [a for a in get_args(annotation) if a is not type(None)]
    if origin is Literal:
        values = [str(a) for a in get_args(annotation)]
        return "one of " + ", ".join(values) if len(values) > 1 else values[0]
    if origin is list:
        return 'a JSON list, e.g. ["a", "b"]'
    if origin is dict:
        return 'a JSON object, e.g. {"key": "value"}'
    if origin is Annotated:  # a union member with bounds of its own: Annotated[int, Field(ge=1)]
        limits = [m for info in args[1:] for m in getattr(info, "metadata", [info])]
        return _expects(args[0]) + "".join(_limit(m) for m in limits)
    if args and origin is not None:  # a union: X | None, int | Literal["auto"]
        optional = len(args) < len(get_args(annotation))
        return ", or ".join(_expects(a) for a in args) + (", or unset" if optional else "")
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "a whole number"
    if annotation is float:
        return "a number"
    if annotation is Path:
        return "a path"
    return ""


def _limit(constraint: Any) -> str:
    """`` >= 1`` for annotated_types' Ge(1), and so on; nothing for other metadata."""
    for attribute, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if hasattr(constraint, attribute):
            return f" {sign} {_number(getattr(constraint, attribute))}"
    return ""


def _number(value: Any) -> str:
    """A bound as an operator would write it: 0, not 0.0."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
