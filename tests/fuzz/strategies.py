"""Hypothesis strategies for the wire: any request message of any method on the port, built from its descriptor;
byte-level mutations of valid messages; whole random frames.

Messages come from descriptors, not from hand-written strategies, so a field or RPC added later is fuzzed
without anyone remembering to. Values lean towards what reaches deep into the server: names of the model it
serves, the tensor names and shapes of that model, small numbers, empty and oversized strings, non-finite floats.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

MODEL = "fuzz-mlp"  # the model the fuzzed server serves: input "features" float32 (-1, 4), output "score"
MAX_DEPTH = 4

_NAMES = [MODEL, "", "features", "score", "stable", "serving_default", "x" * 300, "fuzz-missing", "\u00e9\u00e8"]
_F32 = FieldDescriptor.CPPTYPE_FLOAT
_F64 = FieldDescriptor.CPPTYPE_DOUBLE
_FLOAT_BYTES = st.lists(st.floats(width=32, allow_nan=True), min_size=0, max_size=12).map(
    lambda xs: struct.pack(f"<{len(xs)}f", *xs)
)


@dataclass(frozen=True)
class Case:
    """One call: the method and the raw request messages (one for unary requests)."""

    method: MethodDescriptor
    messages: tuple[bytes, ...]
    kind: str  # "message", "mutation" or "frame"

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"


def methods(service_names: list[str]) -> list[MethodDescriptor]:
    pool = descriptor_pool.Default()
    return [m for name in service_names for m in pool.FindServiceByName(name).methods]


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(_NAMES), st.text(max_size=24))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(_FLOAT_BYTES, st.binary(max_size=64))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-3, 200))
    if field.cpp_type in (_F32, _F64):
        return st.floats(width=32 if field.cpp_type == _F32 else 64, allow_nan=True, allow_infinity=True)
    signed = field.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64)
    bits = 32 if field.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_UINT32) else 64
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return st.one_of(st.integers(-2 if signed else 0, 8), st.integers(low, high))


_cache: dict[tuple[str, int], st.SearchStrategy[Message]] = {}


def message(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``'s type with any subset of fields set (nesting bounded by ``MAX_DEPTH``)."""
    key = (descriptor.full_name, depth)
    if key in _cache:
        return _cache[key]
    cls = message_factory.GetMessageClass(descriptor)
    if depth >= MAX_DEPTH:
        _cache[key] = st.just(cls())
        return _cache[key]
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            value = _value(value_field, depth + 1)
            optional[field.name] = st.dictionaries(_scalar(key_field), value, max_size=3)
        elif field.is_repeated:
            optional[field.name] = st.lists(_value(field, depth + 1), max_size=4)
        else:
            optional[field.name] = _value(field, depth + 1)
    strategy = st.fixed_dictionaries({}, optional=optional).map(lambda values: _build(cls, values))
    _cache[key] = strategy
    return strategy


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        return st.deferred(lambda: message(field.message_type, depth))
    return _scalar(field)


def _build(cls: Callable[[], Message], values: dict[str, Any]) -> Message:
    built = cls()
    for name, value in values.items():
        field = built.DESCRIPTOR.fields_by_name[name]
        target = getattr(built, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if isinstance(v, Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            if field.message_type is not None:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(built, name, value)
    return built


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few byte-level edits: flips, inserts, deletes, a truncation, a duplicated span."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate"]))
        at = draw(st.integers(0, max(0, len(out) - 1)))
        if op == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and out:
            out[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x12]))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and out:
            del out[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del out[at:]
        elif op == "duplicate" and out:
            out[at:at] = out[at : at + draw(st.integers(1, 16))]
    return bytes(out)


def cases(all_methods: list[MethodDescriptor], seeds: dict[str, list[bytes]]) -> st.SearchStrategy[Case]:
    """Any call on any method: well-formed messages of its type, mutations of valid ones, or random frames."""

    @st.composite
    def one(draw: st.DrawFn) -> Case:
        method = draw(st.sampled_from(all_methods))
        count = draw(st.integers(1, 4)) if method.client_streaming else 1
        kind = draw(st.sampled_from(["message", "message", "mutation", "frame"]))
        valid = seeds.get(method.full_name, [])
        messages = []
        for _ in range(count):
            if kind == "frame":
                messages.append(draw(st.binary(max_size=256)))
                continue
            if valid and draw(st.booleans()):
                base = draw(st.sampled_from(valid))
            else:
                base = draw(message(method.input_type)).SerializeToString()
            messages.append(draw(mutated(base)) if kind == "mutation" else base)
        return Case(method, tuple(messages), kind)

    return one()
