"""What every ``digitloop`` command shares: logging, error exits, ``--json`` output, options."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from contracts.errors import DigitloopError

stderr = Console(stderr=True)
stdout = Console()

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")]
MnistOption = Annotated[
    Path | None,
    typer.Option(
        "--mnist",
        help="MNIST .npz to use instead of DIGITLOOP_MNIST_PATH or a download.",
        exists=True,
        dir_okay=False,
    ),
]


def setup_logging(verbose: bool = False) -> None:
    """Logs to stderr through rich; MLflow's and others' chatter only when verbose."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if verbose else "WARNING")
    # MLflow prints run links on stdout, which belongs to the one JSON object of --json.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=stderr, show_path=False)],
        force=True,
    )
    for noisy in ("mlflow", "alembic", "urllib3", "httpx", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn an expected error into one line on stderr and exit code 2."""
    try:
        yield
    except DigitloopError as exc:
        stderr.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


def emit(result: dict[str, object], as_json: bool, table: Table | None = None) -> None:
    """One JSON object on stdout with ``--json``, a readable table otherwise."""
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    elif table is not None:
        stdout.print(table)
