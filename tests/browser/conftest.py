"""The browser tier: Debian's chromium driven by Playwright, the app run as a person runs it.

The app is ``python -m ui.cli`` (what ``digitloop ui`` runs) in a child process on
127.0.0.1, in front of a real ``bentoml serve`` of the service (tests/serving.py).
Playwright never downloads a browser: it drives ``/usr/bin/chromium`` (Debian's package;
override with DIGITLOOP_TEST_CHROMIUM). When browser tests are selected and that browser is
missing, the session stops before anything runs, saying how to install it. Screenshots go to
``test-artifacts/browser/`` (override with DIGITLOOP_TEST_ARTIFACTS).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, free_port, stop, wait_http
from tests.serving import Service, clean_env

BROWSER_TESTS = Path(__file__).resolve().parent
# The one place the browser is found: DIGITLOOP_TEST_CHROMIUM, else Debian's package.
CHROMIUM = Path(os.environ.get("DIGITLOOP_TEST_CHROMIUM", "/usr/bin/chromium"))
INSTALL_CHROMIUM = """\
The browser tests (tests/browser/) need Chromium, and there is no executable at {path}.
Install it, or point DIGITLOOP_TEST_CHROMIUM at a Chromium binary:
  Debian/Ubuntu: sudo apt-get install chromium fonts-liberation
  macOS:         brew install --cask chromium
                 export DIGITLOOP_TEST_CHROMIUM=/Applications/Chromium.app/Contents/MacOS/Chromium
Or run without them: make test PYTEST_ARGS='-m "not browser"'"""
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("DIGITLOOP_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))


def chromium_found() -> bool:
    return CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop before anything runs when browser tests are selected and Chromium is missing."""
    selected = any(BROWSER_TESTS in Path(item.path).parents for item in session.items)
    if not selected or chromium_found():
        return
    message = INSTALL_CHROMIUM.format(path=CHROMIUM)
    reporter = session.config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "Chromium not found", red=True)
        reporter.write_line(message)
        message = f"Chromium not found at {CHROMIUM}; see above"
    pytest.exit(message, returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    directory = ARTIFACTS / "browser"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


# Package scope: Playwright's sync API keeps an event loop running in the main thread
# while it is open, which would break later tests that call asyncio.run.
@pytest.fixture(scope="package")
def browser():
    # CHROMIUM exists: pytest_collection_finish stopped the session otherwise.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    """A fresh browser context (no cookies, no storage) and page; page errors are collected."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda error: page.errors.append(str(error)))  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        context.close()


@contextmanager
def run_ui(service_url: str, workdir: Path, timeout: float = 90, **settings: str) -> Iterator[str]:
    """Serve the app on 127.0.0.1 in a child process, in front of ``service_url``.

    ``settings``: more DIGITLOOP_* variables for the app, e.g. its asking threshold.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = clean_env(
        DIGITLOOP_SERVICE_URL=service_url,
        DIGITLOOP_REQUEST_TIMEOUT_S="10",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(workdir / "gradio"),
        **settings,
    )
    log_path = workdir / "ui.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ui.cli", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{url}/", timeout=timeout, process=process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n--- ui log ---\n{log_path.read_text()}") from None
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="session")
def served(sketch_service: Service) -> Service:
    return sketch_service


@pytest.fixture(scope="module")
def ui_url(served: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_ui(served.url, tmp_path_factory.mktemp("ui")) as url:
        yield url


@pytest.fixture(scope="module")
def ui_always_asks(served: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app asking about every answer: no top probability is below 1.01."""
    workdir = tmp_path_factory.mktemp("ui-asks")
    with run_ui(served.url, workdir, DIGITLOOP_ASK_BELOW_CONFIDENCE="1.01") as url:
        yield url


@pytest.fixture(scope="module")
def ui_asks_unusual(served: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app asking about unusual drawings only: no top probability is below 1e-6."""
    workdir = tmp_path_factory.mktemp("ui-unusual")
    with run_ui(served.url, workdir, DIGITLOOP_ASK_BELOW_CONFIDENCE="0.000001") as url:
        yield url


@pytest.fixture(scope="module")
def ui_without_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app in front of a stopped service: nothing listens on its port."""
    with run_ui(f"http://127.0.0.1:{free_port()}", tmp_path_factory.mktemp("ui-down")) as url:
        yield url
