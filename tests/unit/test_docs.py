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
    from model.settings import ModelSettings
    from pipelines.drift.detect import DriftSettings
    from pipelines.settings import DecisionSettings, LoopSettings
    from pipelines.workflows.loop import WorkflowSettings
    from services.settings import ServingSettings
    from services.store import StoreSettings
    from ui.settings import UISettings

    return [
        ModelSettings,
        ServingSettings,
        StoreSettings,
        DecisionSettings,
        LoopSettings,
        DriftSettings,
        UISettings,
        WorkflowSettings,
    ]


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
