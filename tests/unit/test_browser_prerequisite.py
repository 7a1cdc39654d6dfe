"""The browser tier's prerequisite (tests/browser/conftest.py): with browser tests selected and
no Chromium, pytest stops before anything runs and says how to install it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.browser import conftest as browser_conftest
from tests.conftest import REPO_ROOT


def collect_browser_tests(*args: str) -> subprocess.CompletedProcess[str]:
    """``pytest tests/browser --collect-only`` with no Chromium where the tests look for it."""
    command = [
        "-m",
        "pytest",
        "tests/browser",
        "--collect-only",
        "-q",
        "-p",
        "no:cacheprovider",
        *args,
    ]
    return subprocess.run(
        [sys.executable, *command],
        cwd=REPO_ROOT,
        env={**os.environ, "DIGITLOOP_TEST_CHROMIUM": "/nonexistent/chromium"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_chromium_stops_the_session_at_once_with_the_install_commands():
    result = collect_browser_tests()
    output = result.stdout + result.stderr
    assert result.returncode == 4, output  # pytest's usage error: nothing ran
    assert "Chromium not found" in output
    assert "no executable at /nonexistent/chromium" in output
    assert "sudo apt-get install chromium fonts-liberation" in output
    assert "brew install --cask chromium" in output
    assert "DIGITLOOP_TEST_CHROMIUM=/Applications/Chromium.app/Contents/MacOS/Chromium" in output
    assert """make test PYTEST_ARGS='-m "not browser"'""" in output


def stub_session(*test_files: str) -> SimpleNamespace:
    """What the hook reads of a session: the selected items (after -m/-k) and the config."""
    items = [SimpleNamespace(path=REPO_ROOT / name) for name in test_files]
    plugins = SimpleNamespace(getplugin=lambda name: None)  # no terminal: all in the reason
    return SimpleNamespace(items=items, config=SimpleNamespace(pluginmanager=plugins))


def test_runs_without_browser_tests_are_not_stopped(monkeypatch: pytest.MonkeyPatch):
    # Deselected tests (-m "not browser") are gone from session.items by collection_finish.
    monkeypatch.setattr(browser_conftest, "CHROMIUM", Path("/nonexistent/chromium"))
    browser_conftest.pytest_collection_finish(stub_session("tests/unit/test_data.py"))
    with pytest.raises(pytest.exit.Exception) as stopped:
        browser_conftest.pytest_collection_finish(
            stub_session("tests/unit/test_data.py", "tests/browser/test_sketchpad.py")
        )
    assert stopped.value.returncode == pytest.ExitCode.USAGE_ERROR
    assert "sudo apt-get install chromium fonts-liberation" in stopped.value.msg


def test_chromium_is_found_by_the_override_and_must_be_an_executable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    binary = tmp_path / "chromium"
    binary.write_text("#!/bin/sh\n")
    monkeypatch.setattr(browser_conftest, "CHROMIUM", binary)
    assert not browser_conftest.chromium_found()  # not executable
    binary.chmod(0o755)
    assert browser_conftest.chromium_found()
    monkeypatch.setattr(browser_conftest, "CHROMIUM", tmp_path)  # e.g. the .app folder
    assert not browser_conftest.chromium_found()
