"""Write the README's configuration table from the product's settings classes.

Run it with the project's venv:

    .venv/bin/python scripts/settings-docs.py           # rewrite the table in README.md
    .venv/bin/python scripts/settings-docs.py --check   # exit 1 if it is out of date

Every ``DIGITLOOP_*`` variable is a field of one pydantic-settings class, declared once and
inherited where several components read it. The table has one row per field, in the class
that declares it: the variable, its default and the field's description. The classes are
found in the product's source (any class deriving from ``BaseSettings``, directly or through
another such class), so a new one is documented without being listed here.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

if TYPE_CHECKING:
    from contracts.settings import DigitloopEnv

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The product's packages, bottom of the import graph first: the table's order.
PRODUCT = ("contracts", "model", "services", "ui", "pipelines", "digitloop")
BEGIN = (
    "<!-- BEGIN settings-docs: written by `make docs` from the settings classes; "
    "edit their Field descriptions, not this table -->"
)
END = "<!-- END settings-docs -->"
# A default made by one of these is shown as its value; any other factory by its name.
PLAIN_FACTORIES = (dict, list)


@dataclass(frozen=True)
class Setting:
    """One environment variable: the field that reads it and the class that declares it."""

    env_name: str
    field: str
    declared_in: type[DigitloopEnv]
    info: FieldInfo


def product_modules() -> Iterator[tuple[str, Path]]:
    """(module name, path) of every module of the product, in PRODUCT order."""
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def settings_definitions() -> dict[str, dict[str, int]]:
    """Module -> {settings class: line} of the product, read from the source (nothing imported)."""
    defined: dict[str, list[tuple[str, int, set[str]]]] = {}
    for module, path in product_modules():
        tree = ast.parse(path.read_text(), str(path))
        defined[module] = [
            (node.name, node.lineno, {_base_name(base) for base in node.bases})
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef)
        ]
    names = {"BaseSettings"}
    found: dict[str, dict[str, int]] = {}
    grew = True
    while grew:  # a class deriving from a settings class is one too, in whatever module
        grew = False
        for module, classes in defined.items():
            for name, line, bases in classes:
                if name not in names and bases & names:
                    names.add(name)
                    found.setdefault(module, {})[name] = line
                    grew = True
    return {module: found[module] for module in defined if module in found}


def _base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _base_name(node.value)
    return node.id if isinstance(node, ast.Name) else ""


def settings_classes() -> list[type[DigitloopEnv]]:
    """Every settings class of the product, in PRODUCT order, then as defined in its module."""
    found: list[type[DigitloopEnv]] = []
    for module_name, classes in settings_definitions().items():
        module = importlib.import_module(module_name)
        found += [getattr(module, name) for name in sorted(classes, key=classes.__getitem__)]
    return found


def declared_fields(cls: type[DigitloopEnv]) -> list[str]:
    """The fields this class declares itself, not those it inherits."""
    own = vars(cls).get("__annotations__", {})
    return [name for name in cls.model_fields if name in own]


def settings() -> list[Setting]:
    """Every variable, at the class that declares it (a field declared twice appears twice)."""
    return [
        Setting(cls.env_name(name), name, cls, cls.model_fields[name])
        for cls in settings_classes()
        for name in declared_fields(cls)
    ]


def default_text(info: FieldInfo) -> str:
    """The default as a person sets it in the environment."""
    if info.default_factory is not None:
        factory: Any = info.default_factory
        if factory in PLAIN_FACTORIES:
            return _code(factory())
        return f"`{factory.__qualname__}()`"  # e.g. gethostname(): made where it runs
    if info.default is PydanticUndefined:
        return "required"
    if info.default is None:
        return "unset"
    return _code(info.default)


def _code(value: object) -> str:
    text = (
        str(value).lower() if isinstance(value, bool) else str(value)
    )  # as the environment spells it
    return f"`{text}`" if text else '`""`'


def table(rows: list[Setting]) -> str:
    lines = ["| variable | default | what |", "| --- | --- | --- |"]
    for row in rows:
        if not row.info.description:
            raise ValueError(
                f"{row.declared_in.__module__}.{row.declared_in.__name__}.{row.field} has no "
                "description: the README's table is made from it"
            )
        what = " ".join(row.info.description.split()).replace("|", "\\|")
        lines.append(f"| `{row.env_name}` | {default_text(row.info)} | {what} |")
    return "\n".join(lines) + "\n"


def updated(readme: str, rows: list[Setting]) -> str:
    """The README with the text between the markers replaced by the table."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md lacks the markers {BEGIN!r} ... {END!r}")
    return readme[: start + len(BEGIN)] + "\n" + table(rows) + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    current = README.read_text()
    wanted = updated(current, settings())
    if args.check:
        if wanted != current:
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    wanted.splitlines(keepends=True),
                    "README.md",
                    "README.md (from the settings classes)",
                )
            )
            print("README.md's configuration table is stale: run make docs", file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        README.write_text(wanted)
        print("README.md: configuration table rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
