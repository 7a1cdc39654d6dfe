"""``digitloop dev``: the whole loop on one machine."""

from __future__ import annotations

import threading
from contextlib import suppress
from pathlib import Path
from typing import Annotated

import typer

from contracts.cli import VerboseOption, cli_errors, setup_logging, stderr


def dev(
    data_dir: Annotated[
        Path, typer.Option(help="Where models, predictions and feedback live.")
    ] = Path(".digitloop"),
    every: Annotated[float, typer.Option(min=0.5, help="Minutes between loop runs.")] = 10.0,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Serving worker processes; default: the serving setting."),
    ] = None,
    port: Annotated[int, typer.Option(help="Prediction service port.")] = 3000,
    ui_port: Annotated[int, typer.Option(help="Sketchpad port.")] = 7860,
    mlflow_port: Annotated[int, typer.Option(help="MLflow server port.")] = 5000,
    verbose: VerboseOption = False,
) -> None:
    """Run the embedded stack: MLflow, serving, sketchpad, loop scheduler (Ctrl-C stops).

    SIGINT, SIGTERM and SIGHUP stop every process it started and exit 0 (128 + the signal
    while it still starts); a second signal skips the grace periods.
    """
    setup_logging(verbose)
    from digitloop.stack import EmbeddedStack, StackConfig, StopSignal
    from pipelines.cli import new_run_id
    from pipelines.runners.local import run_once
    from pipelines.steps import LoopContext

    config = StackConfig(
        data_dir=data_dir,
        workers=workers,
        serve_port=port,
        ui_port=ui_port,
        mlflow_port=mlflow_port,
    )

    def say(message: str) -> None:  # never fails: after SIGHUP the terminal may be gone
        with suppress(Exception):
            stderr.print(message)

    stop = threading.Event()
    started = False
    try:
        with cli_errors(), EmbeddedStack(config, handle_signals=True) as stack:
            started = True
            say(f"""
[bold]digitloop is running[/]
  sketchpad   {stack.ui_url}
  service     {stack.service_url}  (API docs at /, OpenAPI at /docs.json, metrics at /metrics)
  MLflow      {stack.mlflow_url}
  loop        every {every:g} min (same steps as the CronWorkflow); logs in {data_dir}/logs
Ctrl-C stops everything.""")

            def scheduler() -> None:
                while not stop.wait(every * 60):
                    try:
                        run_once(LoopContext(run_id=new_run_id()), console=stderr)
                    except Exception as exc:  # a failed run is reported; the next one retries
                        say(f"[red]loop run failed:[/] {exc}")

            thread = threading.Thread(target=scheduler, name="loop-scheduler", daemon=True)
            thread.start()
            try:
                while thread.is_alive():
                    thread.join(timeout=1)
            except StopSignal as exc:  # SIGINT, SIGTERM, SIGHUP: the stack stops on the way out
                say(f"{exc}: stopping...")
            finally:
                stop.set()
    except StopSignal as exc:  # what started is stopped already
        if not started:
            say(f"{exc} while starting: stopped")
            raise typer.Exit(code=128 + exc.signum) from None
    say("stopped")
