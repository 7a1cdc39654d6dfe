"""``digitloop dev`` and ``digitloop simulate``: the whole loop on one machine."""

from __future__ import annotations

import threading
from contextlib import suppress
from pathlib import Path
from typing import Annotated

import typer

from model.cli import JsonOption, VerboseOption, cli_errors, emit, setup_logging, stderr


def dev(
    data_dir: Annotated[
        Path, typer.Option(help="Where models, predictions and feedback live.")
    ] = Path(".digitloop"),
    every: Annotated[float, typer.Option(min=0.5, help="Minutes between loop runs.")] = 10.0,
    workers: Annotated[int, typer.Option(min=1, help="Serving worker processes.")] = 2,
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
    from pipelines.loop import run_once
    from pipelines.loop_cli import new_run_id
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


def simulate(
    url: Annotated[
        str | None,
        typer.Option(
            help="A running stack's service (e.g. a port-forwarded cluster); default: start an "
            "embedded stack in --data-dir for this run."
        ),
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="Data directory of the embedded stack.")] = Path(
        ".digitloop/simulate"
    ),
    windows_before: Annotated[int, typer.Option(min=1, help="In-distribution windows.")] = 2,
    windows_after: Annotated[int, typer.Option(min=1, help="Drifted windows.")] = 6,
    window_size: Annotated[int, typer.Option(min=50, help="Drawings per window.")] = 400,
    label_prob: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Chance a user confirms or corrects an answer.")
    ] = 1.0,
    drift_data: Annotated[
        str,
        typer.Option(
            help="Drifted population: a built-in style (segments, typeset, small_offcentre, ...) "
            "or an .npz with x and y."
        ),
    ] = "segments",
    scenario: Annotated[
        str,
        typer.Option(
            help="drift, or bad-model (a deliberately poor challenger first: must roll back)."
        ),
    ] = "drift",
    loop: Annotated[
        bool,
        typer.Option(
            "--loop/--no-loop",
            help="Run the loop in this process between windows; --no-loop only plays the "
            "users: the loop runs elsewhere, such as the cluster's CronWorkflow (give --url).",
        ),
    ] = True,
    train_epochs: Annotated[int, typer.Option(min=1, help="Epochs of version 1 if trained.")] = 8,
    out: Annotated[Path, typer.Option(help="Where the plot and summary go.")] = Path(
        ".digitloop/simulate/out"
    ),
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Simulated users draw, get answers and correct them while the loop runs between windows
    (or elsewhere, with --no-loop)."""
    setup_logging(verbose)
    from contextlib import nullcontext

    from digitloop.simulation import run_simulation
    from digitloop.stack import EmbeddedStack, StackConfig
    from pipelines.simulate import SimConfig

    if scenario not in ("drift", "bad-model"):
        raise typer.BadParameter("scenario must be drift or bad-model")
    if not loop and not url:
        raise typer.BadParameter(
            "--no-loop plays the users against a stack whose loop runs elsewhere: give its --url"
        )
    config = SimConfig(
        windows_before=windows_before,
        windows_after=windows_after,
        window_size=window_size,
        label_prob=label_prob,
        drift=drift_data,
        scenario=scenario,
    )
    stack = (
        nullcontext()
        if url
        else EmbeddedStack(
            StackConfig(data_dir=data_dir, with_ui=False, workers=1, train_epochs=train_epochs),
            # SIGTERM or a closed terminal stops the stack it started, as `digitloop dev` does.
            handle_signals=True,
        )
    )
    with cli_errors(), stack as running:
        service_url = url or running.service_url
        summary = run_simulation(service_url, config, out, console=stderr, loop=loop)
    emit(summary.as_dict(), as_json)
    if not as_json:
        stderr.print(f"plot: {summary.plot}")
