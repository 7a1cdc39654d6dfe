"""The pipelines' commands: ``digitloop drift``, ``loop``, ``rollout`` and ``workflow``.

Heavy imports (torch, MLflow, Evidently, Hera) wait inside the commands so ``--help``
stays fast. Every command follows the ``digitloop`` contract: one JSON object on stdout
with ``--json``, logs on stderr, a ``DigitloopError`` as one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from contracts.cli import (
    JsonOption,
    MnistOption,
    VerboseOption,
    cli_errors,
    emit,
    setup_logging,
    stderr,
)
from contracts.registry import CHAMPION_ALIAS
from contracts.routing import RoutingState
from pipelines.dag import STEP_NAMES

if TYPE_CHECKING:
    import numpy as np


# -- digitloop drift --------------------------------------------------------------------

drift_app = typer.Typer(
    help="Drift: compare a set of digits with the model's reference population.",
    no_args_is_help=True,
)


@drift_app.callback()
def drift() -> None:
    """Drift: compare a set of digits with the model's reference population."""
    # A callback keeps ``check`` a sub-command even while it is the only one.


def read_images(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` (N, 28, 28 uint8, white ink on black) from an ``.npz``; ``y`` is optional.

    Raises:
        DatasetError: no such file, not an ``.npz``, no ``x``, or ``x``/``y`` malformed.
    """
    import numpy as np

    from contracts.errors import DatasetError
    from model.data import validate_images

    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path}: a single array, not an .npz archive with x (and y)")
    try:
        with archive:
            if "x" not in archive:
                raise DatasetError(f"{path}: missing key x (N, 28, 28 uint8 images)")
            x = archive["x"]
            y = archive.get("y")
    except (OSError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from exc
    # Labels are optional here: check the images against placeholder labels when absent.
    placeholder = np.zeros(x.shape[0] if x.ndim else 0, np.int64)
    validate_images(x, y if y is not None else placeholder, source=str(path))
    return x, y


@drift_app.command("check")
def check(
    data: Annotated[
        Path,
        typer.Option(
            help="An .npz with x (N, 28, 28 uint8, white ink on black, as the service logs "
            "them); y is optional.",
            dir_okay=False,
        ),
    ],
    model: Annotated[str, typer.Option(help="A version number or alias.")] = CHAMPION_ALIAS,
    preprocess: Annotated[
        bool,
        typer.Option(
            "--preprocess",
            help="Apply the service's sketch preprocessing first (for drawings not taken "
            "from the predictions log).",
        ),
    ] = False,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            help="Also write Evidently's report (HTML + JSON) into this folder.", file_okay=False
        ),
    ] = None,
    mnist: MnistOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Check a set of digits for drift against the model's MNIST reference."""
    setup_logging(verbose)
    with cli_errors():
        from model.data import load_mnist
        from model.preprocess import preprocess_batch
        from model.registry import Registry
        from pipelines.drift.detect import DriftSettings, detect_drift, model_reference

        settings = DriftSettings()
        x, _ = read_images(data)
        if preprocess:
            x, accepted = preprocess_batch(x)
            if not accepted.all():
                stderr.print(f"{int((~accepted).sum())} empty drawing(s) left out")
            x = x[accepted]
        registry = Registry()
        net, info = registry.load(model)
        reference = model_reference(
            net, info, load_mnist(mnist).x_test, registry.settings.data_dir, settings
        )
        result = detect_drift(net, x, reference, settings)
        written = {}
        if report_dir is not None:
            report_dir.mkdir(parents=True, exist_ok=True)
            for name, payload in result.report_files().items():
                (report_dir / name).write_bytes(payload)
                written[name] = str(report_dir / name)

    summary = {**result.as_dict(), "model_version": info.version, "data": str(data)}
    if written:
        summary["report_files"] = written
    table = Table(
        title=f"{data} vs version {info.version}'s reference: drift "
        f"{'DETECTED' if result.drift_detected else 'not detected'} "
        f"(share of drifted columns {result.drift_score:.3f}, threshold {result.threshold})"
    )
    for column in ("feature", "method", "score", "threshold", "drifted", "ref mean", "cur mean"):
        table.add_column(column, justify="left" if column == "feature" else "right")
    for name, feature in result.features.items():
        table.add_row(
            name,
            feature.method,
            f"{feature.score:.3g}",
            f"{feature.threshold:g}",
            "yes" if feature.drifted else "",
            "" if feature.reference_mean is None else f"{feature.reference_mean:.3f}",
            "" if feature.current_mean is None else f"{feature.current_mean:.3f}",
        )
    emit(summary, as_json, table)


# -- digitloop loop ---------------------------------------------------------------------

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
    from pipelines.runners.local import run_once
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
        typer.Option(help="Also write each Argo output parameter to a file here."),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Run one step of a run, as an Argo workflow pod does; prints its JSON output."""
    setup_logging(verbose)
    from pipelines.runners.argo import run_step
    from pipelines.steps import LoopContext

    with cli_errors():
        if name not in STEP_NAMES:
            raise typer.BadParameter(f"unknown step {name!r}; one of {', '.join(STEP_NAMES)}")
        output = run_step(LoopContext(run_id=run_id), name, outputs_dir)
    emit(output.model_dump(mode="json"), as_json=True)


@loop_app.command("calibrate")
def calibrate_command(
    canaries: Annotated[
        int, typer.Option(min=10, help="Simulated canaries per challenger and labelling.")
    ] = 1000,
    answers_per_run: Annotated[int, typer.Option(min=10, help="Answers between two runs.")] = 400,
    canary_share: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            max=0.99,
            help="Share of answers the canary serves; default: DIGITLOOP_NEW_CANARY_WEIGHT.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulation.")] = 0,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Measure the canary decision by simulation: how often it promotes a worse, an equal
    and a better challenger, and after how many labels (the DIGITLOOP_* settings apply)."""
    setup_logging(verbose)
    from pipelines.canary_calibration import calibrate
    from pipelines.settings import DecisionSettings

    with cli_errors():
        settings = DecisionSettings()
        canary_share = canary_share or settings.new_canary_weight / 100
        rows = calibrate(
            settings,
            canaries=canaries,
            seed=seed,
            answers_per_run=answers_per_run,
            canary_share=canary_share,
        )
    table = Table(
        "challenger",
        "labelling",
        "promoted",
        "rolled back",
        "out of budget",
        "undecided",
        "mean labels",
        "mean runs",
        title="canary decisions",
    )
    for row in rows:
        table.add_row(
            row.challenger,
            row.labelling,
            f"{row.promoted}/{row.canaries}",
            f"{row.rolled_back}/{row.canaries}",
            f"{row.out_of_budget}/{row.canaries}",
            f"{row.undecided}/{row.canaries}",
            "-" if row.mean_labels_to_decision is None else f"{row.mean_labels_to_decision:.0f}",
            "-" if row.mean_runs_to_decision is None else f"{row.mean_runs_to_decision:.1f}",
        )
    result = {
        "rows": [row.as_dict() for row in rows],
        "answers_per_run": answers_per_run,
        "canary_share": canary_share,
        "settings": settings.model_dump(
            include={
                "false_promotion_rate",
                "false_rollback_rate",
                "canary_max_labels",
                "canary_min_answers",
            }
        ),
    }
    emit(result, as_json, table)


# -- digitloop rollout ------------------------------------------------------------------

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

    from contracts.errors import DigitloopError
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


# -- digitloop workflow -----------------------------------------------------------------

workflow_app = typer.Typer(
    help="The loop's Argo WorkflowTemplate and CronWorkflow, rendered from Hera.",
    no_args_is_help=True,
)


@workflow_app.callback()
def workflow() -> None:
    """The loop's Argo WorkflowTemplate and CronWorkflow, rendered from Hera."""


@workflow_app.command("render")
def render_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="The chart's templates folder they are written to.", file_okay=False
        ),
    ] = Path("charts/digitloop/templates"),
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 if the files differ from a render."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Render the WorkflowTemplate and CronWorkflow into the chart, as its templates (the
    release's values fill in namespace, image, names and schedule)."""
    from pipelines.workflows.loop import render

    files = render()
    if check:
        stale = {name: diff for name, text in files.items() if (diff := _diff(out / name, text))}
        for name, diff in stale.items():
            added = sum(1 for line in diff if line.startswith("+") and not line.startswith("+++"))
            removed = sum(1 for line in diff if line.startswith("-") and not line.startswith("---"))
            stderr.print(
                f"{out / name}: +{added} -{removed} lines against a fresh render", style="red"
            )
            stderr.out("\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else ""), highlight=False)
        if stale:
            stderr.print("run `digitloop workflow render` and commit the result", style="bold")
        emit({"out": str(out), "stale": sorted(stale), "checked": sorted(files)}, as_json)
        if not as_json and not stale:
            stderr.print(f"{', '.join(str(out / n) for n in files)}: up to date", soft_wrap=True)
        raise typer.Exit(code=1 if stale else 0)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
        if not as_json:
            stderr.print(f"wrote {out / name}")
    emit({"out": str(out), "written": sorted(files)}, as_json)


def _diff(path: Path, text: str) -> list[str]:
    """The unified diff from the file on disk (or nothing) to ``text``; empty when equal."""
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if current == text:
        return []
    return list(
        difflib.unified_diff(
            current.splitlines(),
            text.splitlines(),
            fromfile=f"{path} (on disk)",
            tofile=f"{path} (rendered)",
            lineterm="",
        )
    )
