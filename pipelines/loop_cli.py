"""``digitloop loop``: run the loop locally, or one step as an Argo pod does."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from model.cli import JsonOption, VerboseOption, cli_errors, emit, setup_logging, stderr
from pipelines.dag import FINISH, STEP_NAMES

loop_app = typer.Typer(
    help="The closed loop: drift, retrain, canary, promote or roll back.", no_args_is_help=True
)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("loop-%Y%m%d-%H%M%S")


@loop_app.command("run")
def run(
    once: Annotated[bool, typer.Option("--once", help="One run, then exit.")] = False,
    every: Annotated[float, typer.Option(min=0.1, help="Minutes between runs.")] = 10.0,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Run the loop's DAG in-process against the embedded stack (or the configured one)."""
    setup_logging(verbose)
    from pipelines.loop import run_once
    from pipelines.steps import LoopContext

    while True:
        with cli_errors():
            summary = run_once(LoopContext(run_id=new_run_id()), console=stderr)
        if once:
            emit(summary, as_json)
            return
        time.sleep(every * 60)


@loop_app.command("step")
def step(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(STEP_NAMES)}.")],
    run_id: Annotated[str, typer.Option(help="The run (Argo: the workflow's name).")],
    outputs_dir: Annotated[
        Path | None,
        typer.Option(help="Also write each scalar output to a file here (Argo output parameters)."),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Run one step of a run, as an Argo workflow pod does; prints its JSON output."""
    setup_logging(verbose)
    from pipelines.loop import finish, run_step
    from pipelines.steps import STEPS, LoopContext

    with cli_errors():
        if name not in STEP_NAMES:
            raise typer.BadParameter(f"unknown step {name!r}; one of {', '.join(STEP_NAMES)}")
        ctx = LoopContext(run_id=run_id)
        if name == FINISH:
            outputs = {s: out for s in STEPS if (out := ctx.load(s)) is not None}
            output = finish(ctx, outputs)
        else:
            output = run_step(ctx, name)
    if outputs_dir is not None:
        write_output_files(output, outputs_dir)
    emit(output, as_json=True)


def write_output_files(output: dict, directory: Path) -> None:
    """One file per scalar output, as Argo reads output parameters (booleans lower-case)."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in output.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float, str)) or value is None:
            text = "" if value is None else str(value)
        else:
            continue
        (directory / key).write_text(text)
