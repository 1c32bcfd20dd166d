"""The client's public surface is on purpose: ``__all__`` lists every public name of ``tensortrigger``, sorted;
nothing private leaks, and each exported name says which module of the package it comes from."""

from __future__ import annotations

import types

import tensortrigger


def test_all_public_names_are_exported() -> None:
    public = sorted(name for name in vars(tensortrigger) if not name.startswith("_") or name == "__version__")
    assert tensortrigger.__all__ == public


def test_exported_members_come_from_the_package() -> None:
    for name in tensortrigger.__all__:
        member = getattr(tensortrigger, name)
        if name == "__version__":
            assert isinstance(member, str)
        elif isinstance(member, types.ModuleType):
            assert member.__name__ == f"tensortrigger.{name}"  # the generated contract, tensortrigger.v1
        else:
            assert member.__module__.startswith("tensortrigger."), name
