"""``digitloop simulate``: simulated users against a stack, with the loop between windows."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from contracts.cli import JsonOption, VerboseOption, cli_errors, emit, setup_logging, stderr


def free_port() -> int:
    """A port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        float,
        typer.Option(
            min=0.0, max=1.0, help="Chance a user labels an answer unasked (see --feedback)."
        ),
    ] = 0.2,
    feedback: Annotated[
        str,
        typer.Option(
            help="both: users confirm right answers and correct wrong ones; correct-only: "
            "unasked, they only correct wrong ones."
        ),
    ] = "both",
    ask_below: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="The sketchpad asks when the model's confidence is under this (0: never); "
            "default: the UI's DIGITLOOP_ASK_BELOW_CONFIDENCE.",
        ),
    ] = None,
    answer_when_asked: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Chance a user answers when asked.")
    ] = 0.5,
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
    seed: Annotated[
        int,
        typer.Option(help="Seed of the drawings and of what users do; repeat runs with others."),
    ] = 0,
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

    from digitloop.stack import EmbeddedStack, StackConfig
    from digitloop_bench.simulator.population import SimConfig
    from digitloop_bench.simulator.run import run_simulation

    if feedback not in ("both", "correct-only"):
        raise typer.BadParameter("feedback must be both or correct-only")
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
        feedback=feedback,  # type: ignore[arg-type]
        answer_when_asked=answer_when_asked,
        **({} if ask_below is None else {"ask_below": ask_below}),
        drift=drift_data,
        scenario=scenario,
        seed=seed,
    )
    stack = (
        nullcontext()
        if url
        else EmbeddedStack(
            # Ports of its own: a `make dev` stack (3000, 5000) may be running beside it.
            StackConfig(
                data_dir=data_dir,
                with_ui=False,
                workers=1,
                train_epochs=train_epochs,
                mlflow_port=free_port(),
                serve_port=free_port(),
            ),
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
