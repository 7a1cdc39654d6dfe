"""``digitloop serve``: run the prediction service with BentoML."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from contracts.cli import stderr


def serve(
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 only when you mean it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 3000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
    stable_model: Annotated[
        str | None,
        typer.Option(
            help="Version or alias of the stable track (env DIGITLOOP_STABLE_MODEL; "
            "default champion)."
        ),
    ] = None,
    canary_model: Annotated[
        str | None,
        typer.Option(help="Version or alias of the canary track (env DIGITLOOP_CANARY_MODEL)."),
    ] = None,
    canary_weight: Annotated[
        int | None, typer.Option(min=0, max=100, help="Percent of requests the canary answers.")
    ] = None,
) -> None:
    """Serve predictions, feedback and metrics over HTTP (BentoML)."""
    overrides = {
        "DIGITLOOP_WORKERS": str(workers),
        "DIGITLOOP_STABLE_MODEL": stable_model,
        "DIGITLOOP_CANARY_MODEL": canary_model,
        "DIGITLOOP_CANARY_WEIGHT": None if canary_weight is None else str(canary_weight),
    }
    env = {**os.environ, **{k: v for k, v in overrides.items() if v is not None}}
    # One torch/OpenMP thread per worker: settings made here would not reach the workers.
    env.setdefault("OMP_NUM_THREADS", "1")
    bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
    command = [
        bentoml,
        "serve",
        "services.service:DigitService",
        "--host",
        host,
        "--port",
        str(port),
    ]
    stderr.print(f"serving on http://{host}:{port} ({workers} workers)")
    os.execvpe(command[0], command, env)
