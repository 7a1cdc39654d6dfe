"""The README stays true: its commands exist and every setting is documented."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
from typer.testing import CliRunner

from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
LINES = [
    line.split("#", 1)[0].strip()
    for block in BLOCKS
    for line in block.replace("\\\n", " ").splitlines()
]
LINES = [line for line in LINES if line]


def settings_classes():
    """Every settings class of the product, as the README's generator finds them."""
    from tests.settings_catalog import classes

    return list(classes().values())


def test_every_setting_is_in_the_configuration_table():
    missing = [
        f"DIGITLOOP_{name.upper()}"
        for cls in settings_classes()
        for name in cls.model_fields
        if f"`DIGITLOOP_{name.upper()}`" not in README
    ]
    assert not missing, f"README's configuration table lacks {missing}"


def test_every_make_target_in_the_readme_exists():
    help_text = subprocess.run(
        ["make", "help"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    targets = {
        re.sub(r"\x1b\[[0-9;]*m", "", line).split()[0]
        for line in help_text.splitlines()
        if line.startswith("  ")
    }
    used = {line.split()[1] for line in LINES if line.startswith("make ")}
    assert used and used <= targets, used - targets


@pytest.mark.parametrize("line", [line for line in LINES if "bin/digitloop " in line])
def test_every_digitloop_command_in_the_readme_parses(line):
    """The sub-command exists and takes these options (``--help`` after them, not run)."""
    from digitloop.cli import app

    args = shlex.split(line)[1:]
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, (line, result.output)


def layout_table() -> list[str]:
    """The names in the first column of the README's Layout table (``model/``, ``Makefile``)."""
    section = README.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])]


def test_the_layout_table_lists_every_package_and_distribution():
    """Each top-level package and each distribution of its own (``bench/``) has its row."""
    listed = {name.rstrip("/") for name in layout_table()}
    folders = {
        path.name
        for path in REPO_ROOT.iterdir()
        if (path / "__init__.py").is_file() or (path / "pyproject.toml").is_file()
    }
    assert {"contracts", "pipelines", "bench", "tests"} <= folders  # what the check looks at
    assert folders <= listed, f"README's Layout table lacks {sorted(folders - listed)}"


def test_every_name_in_the_layout_table_exists():
    """A folder in the table holds files (an emptied one is gone from a fresh clone)."""
    stale = [
        name
        for name in layout_table()
        if not (
            any(path.is_file() for path in (REPO_ROOT / name).rglob("*"))
            if name.endswith("/")
            else (REPO_ROOT / name).is_file()
        )
    ]
    assert not stale, f"README's Layout table lists what the repository does not hold: {stale}"
