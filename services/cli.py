"""``digitloop serve``: run the prediction service with BentoML."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from contracts.cli import stderr
from contracts.registry import CHAMPION_ALIAS
from services.settings import ServingSettings

_WORKERS_DEFAULT = ServingSettings.model_fields["workers"].default


def serve(
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 only when you mean it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 3000,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"Worker processes (env {ServingSettings.env_name('workers')}; "
            f"default {_WORKERS_DEFAULT}).",
        ),
    ] = None,
    stable_model: Annotated[
        str | None,
        typer.Option(
            help="Version or alias of the stable track "
            f"(env {ServingSettings.env_name('stable_model')}; default {CHAMPION_ALIAS})."
        ),
    ] = None,
    canary_model: Annotated[
        str | None,
        typer.Option(
            help="Version or alias of the canary track "
            f"(env {ServingSettings.env_name('canary_model')})."
        ),
    ] = None,
    canary_weight: Annotated[
        int | None, typer.Option(min=0, max=100, help="Percent of requests the canary answers.")
    ] = None,
) -> None:
    """Serve predictions, feedback and metrics over HTTP (BentoML)."""
    overrides = ServingSettings.env_vars(
        workers=workers,
        stable_model=stable_model,
        canary_model=canary_model,
        canary_weight=canary_weight,
    )
    env = {**os.environ, **overrides}
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
    shown = workers or env.get(ServingSettings.env_name("workers"), _WORKERS_DEFAULT)
    stderr.print(f"serving on http://{host}:{port} ({shown} workers)")
    os.execvpe(command[0], command, env)
