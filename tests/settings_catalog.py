"""The product's settings as the tests see them: scripts/settings-docs.py's catalogue.

One place finds the settings classes (in the product's source) and the variable each field
reads, for the README's generator and for the tests that hold every copy of a name to it.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections import defaultdict
from functools import cache
from pathlib import Path
from types import ModuleType

from pydantic_settings import BaseSettings

from contracts.settings import DigitloopEnv

ROOT = Path(__file__).resolve().parents[1]
# A variable's name: the settings prefix and at least one more character.
NAME = re.compile(r"\bDIGITLOOP_[A-Z0-9][A-Z0-9_]*\b")


@cache
def settings_docs() -> ModuleType:
    """scripts/settings-docs.py as a module."""
    spec = importlib.util.spec_from_file_location(
        "settings_docs", ROOT / "scripts" / "settings-docs.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


@cache
def classes() -> dict[str, type[DigitloopEnv]]:
    """Class name -> settings class, every one of the product."""
    return {cls.__name__: cls for cls in settings_docs().settings_classes()}


@cache
def declarations() -> dict[str, tuple[tuple[str, str], ...]]:
    """Variable -> (module, Class.field) of each declaration of it (one, when all is well)."""
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for setting in settings_docs().settings():
        cls = setting.declared_in
        found[setting.env_name].append((cls.__module__, f"{cls.__name__}.{setting.field}"))
    return {name: tuple(where) for name, where in found.items()}


def fields_of(*names: str) -> set[str]:
    """The variables the named settings classes read (their own fields and inherited ones)."""
    return {
        classes()[name].env_name(field) for name in names for field in classes()[name].model_fields
    }


def module_path(module: str) -> str:
    """A module's file, relative to the repository."""
    base = ROOT.joinpath(*module.split("."))
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    return str(path.relative_to(ROOT))


def from_values(cls: type[BaseSettings], values: dict[str, object]) -> BaseSettings:
    """``cls`` validated from ``values`` (by field name) alone: no environment, no .env file."""

    def init_only(
        owner: type, settings_cls: type, init_settings: object, **others: object
    ) -> tuple[object, ...]:
        return (init_settings,)  # pydantic-settings' documented hook for choosing sources

    isolated = type(cls.__name__, (cls,), {"settings_customise_sources": classmethod(init_only)})
    return isolated(**values)
