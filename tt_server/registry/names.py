"""The naming rules of the registry: model names and labels, one rule each, and the serving policy's fields.

Errors name the offending domain argument (``name``, ``label``, ``ref.name``, ``policy.label``), not a wire
field: each transport moves them onto its own request's fields (``InvalidArgument.relocated``), so a TF Serving
caller with a bad name hears about ``model_spec.name`` and a native one about ``model.name``.
"""

from __future__ import annotations

import re

from tt_server.errors import InvalidArgument
from tt_server.types import ServingPolicy

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
LABEL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def model_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a model name, or None when it is a valid one."""
    if MODEL_NAME.match(name):
        return None
    return (
        f"invalid model name {name[:80]!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )


def check_model_name(name: str, argument: str = "name") -> None:
    """``InvalidArgument`` on ``argument`` (the domain argument holding the name) for an invalid model name."""
    if (problem := model_name_problem(name)) is not None:
        raise InvalidArgument.field(argument, problem)


def check_label(label: str, argument: str = "label") -> None:
    if not LABEL_NAME.match(label):
        raise InvalidArgument.field(
            argument,
            f"invalid label {label[:80]!r}: use 1-63 lowercase letters, digits, '_' or '-', starting with a letter",
        )


def check_serving_policy(policy: ServingPolicy, argument: str = "policy") -> None:
    if policy.label is not None:
        check_label(policy.label, f"{argument}.label")
    if policy.version is not None and policy.version <= 0:
        raise InvalidArgument.field(f"{argument}.version", "versions are numbered from 1")
