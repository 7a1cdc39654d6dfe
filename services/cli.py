"""``digitloop serve`` runs the prediction service with BentoML; ``digitloop store`` keeps
its store compact."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from contracts.cli import JsonOption, VerboseOption, cli_errors, emit, setup_logging, stderr
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


store_app = typer.Typer(
    help="The predictions/feedback store: compaction and retention.", no_args_is_help=True
)


@store_app.command()
def compact(
    days: Annotated[
        float | None,
        typer.Option(
            min=0.05,
            help="Look back this many days for hours to compact (hours that got a late file); "
            "default DIGITLOOP_COMPACTION_LOOKBACK_DAYS.",
        ),
    ] = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Merge each closed hour's small files into one parquet file; apply retention.

    Idempotent and safe while pods write; the loop's compact step runs it every loop run,
    and this runs it by hand or from another scheduler. It also moves objects of the legacy
    date= layout into hourly partitions.
    """
    setup_logging(verbose)
    with cli_errors():
        from dataclasses import asdict
        from datetime import UTC, datetime

        from services.store.backends import StoreSettings, open_store
        from services.store.compaction import upkeep

        settings = StoreSettings()
        store = open_store(settings)
        store.ping()
        report = upkeep(store, settings, datetime.now(UTC), days=days)
        result = {"store": store.description, **asdict(report)}
    table = Table("dataset", "hours", "files merged", "rows")
    for name, hours in report.partitions.items():
        table.add_row(name, str(hours), str(report.files_in[name]), str(report.rows[name]))
    emit(result, as_json, table)
    if not as_json:
        stderr.print(f"legacy objects moved: {report.legacy_files}; expired: {report.expired}")
