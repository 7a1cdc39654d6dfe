"""``digitloop rollout``: see and change which model versions serve, as the loop does.

The same drivers and moves as the loop's canary and analyse steps (``DIGITLOOP_ROLLOUT``:
the embedded service, the Helm release or the KServe InferenceService), so ``make canary``,
``make promote`` and ``make rollback`` and the pipeline change a release one way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from model.cli import JsonOption, VerboseOption, cli_errors, emit, setup_logging, stderr
from services.state import RoutingState

rollout_app = typer.Typer(
    help="Which model versions serve stable and canary, and the canary's share.",
    no_args_is_help=True,
)

AliasesOption = Annotated[
    bool,
    typer.Option(
        "--aliases/--no-aliases",
        help="Move MLflow's champion and challenger aliases to match (as the loop does).",
    ),
]


def _change(
    move: Callable[[RoutingState], RoutingState], aliases: bool, as_json: bool, verbose: bool
) -> None:
    """Apply ``move`` to what serves now, through the configured driver, and show the result."""
    setup_logging(verbose)
    from pipelines.rollout import make_rollout
    from pipelines.settings import LoopSettings

    with cli_errors():
        settings = LoopSettings()
        rollout = make_rollout(settings)
        before = rollout.current()
        after = move(before)
        if after != before:
            stderr.print(f"{settings.rollout}: {describe(before)} -> {describe(after)}")
            rollout.apply(after)
        if aliases:
            _move_aliases(after)
    emit(asdict(after), as_json, table(after))


def _move_aliases(state: RoutingState) -> None:
    """MLflow's aliases after the rollout: a failure here must say the rollout itself held."""
    from mlflow.exceptions import MlflowException

    from model.errors import DigitloopError
    from model.registry import Registry
    from pipelines.rollout import RolloutError, sync_aliases

    try:
        sync_aliases(Registry(), state)
    except (MlflowException, DigitloopError, OSError) as exc:
        raise RolloutError(
            f"now serving {describe(state)}, but MLflow's aliases were not moved: {exc} "
            "(check DIGITLOOP_MLFLOW_TRACKING_URI, then run the same command again)"
        ) from exc


def describe(state: RoutingState) -> str:
    canary = (
        f", canary {state.canary_model} at {state.canary_weight} %" if state.canary_model else ""
    )
    return f"stable {state.stable_model}{canary}"


def table(state: RoutingState) -> Table:
    view = Table("track", "model version", "share of traffic")
    view.add_row("stable", state.stable_model, f"{100 - state.canary_weight} %")
    if state.canary_model:
        view.add_row("canary", state.canary_model, f"{state.canary_weight} %")
    return view


@rollout_app.command("status")
def status(as_json: JsonOption = False, verbose: VerboseOption = False) -> None:
    """Show which versions serve and the canary's share of the traffic."""
    setup_logging(verbose)
    from pipelines.rollout import make_rollout
    from pipelines.settings import LoopSettings

    with cli_errors():
        state = make_rollout(LoopSettings()).current()
    emit(asdict(state), as_json, table(state))


@rollout_app.command("canary")
def canary(
    version: Annotated[str, typer.Argument(help="Model version (or alias) the canary serves.")],
    weight: Annotated[
        int, typer.Option(min=0, max=100, help="Percent of requests the canary answers.")
    ] = 20,
    aliases: AliasesOption = True,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Serve VERSION as the canary with WEIGHT percent of the traffic."""
    from pipelines.rollout import with_canary

    _change(lambda state: with_canary(state, version, weight), aliases, as_json, verbose)


@rollout_app.command("promote")
def promote(
    aliases: AliasesOption = True, as_json: JsonOption = False, verbose: VerboseOption = False
) -> None:
    """Make the canary's version stable and end the canary."""
    from pipelines.rollout import RolloutError, promoted

    def promote_canary(state: RoutingState) -> RoutingState:
        if state.canary_model is None:
            raise RolloutError("no canary to promote (digitloop rollout status)")
        return promoted(state)

    _change(promote_canary, aliases, as_json, verbose)


@rollout_app.command("rollback")
def rollback(
    aliases: AliasesOption = True, as_json: JsonOption = False, verbose: VerboseOption = False
) -> None:
    """End the canary; stable keeps its version."""
    from pipelines.rollout import rolled_back

    _change(rolled_back, aliases, as_json, verbose)
