"""Glue of ``digitloop simulate``: users, loop cycles and the report, against one stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from contracts.registry import CHAMPION_ALIAS
from digitloop_bench.simulator.population import (
    SimConfig,
    SimSummary,
    WindowResult,
    load_population,
    plot_windows,
    simulate,
    summarise,
    write_json,
)


def run_simulation(
    service_url: str, config: SimConfig, out: Path, console: Console, loop: bool = True
) -> SimSummary:
    """Simulated users against ``service_url``; with ``loop`` the loop runs in this process
    between windows (and the champion is scored on MNIST at the end), without it the users
    only draw and label, and the loop that sees their traffic runs elsewhere (a cluster's
    CronWorkflow): nothing here then reads or writes the model registry, except the
    bad-model scenario's challenger."""
    from model.data import load_mnist
    from model.evaluate import evaluate
    from model.registry import Registry
    from pipelines.runners.local import run_once
    from pipelines.settings import LoopSettings
    from pipelines.steps import LoopContext
    from services.client import DigitloopClient

    mnist = load_mnist()
    # MNIST test's first and second halves come from different writers (the first is
    # cleaner): a shuffle, then half each, so in-distribution really is MNIST's mix and no
    # digit is drawn in both phases.
    order = np.random.default_rng(config.seed).permutation(len(mnist.x_test))
    users, shifted = order[: len(order) // 2], order[len(order) // 2 :]
    in_dist = (mnist.x_test[users], mnist.y_test[users].astype("int64"))
    drifted = load_population(
        config.drift, mnist.x_test[shifted], mnist.y_test[shifted], config.seed
    )
    loop_settings = LoopSettings(service_url=service_url)

    def loop_cycle(index: int) -> dict:
        return run_once(LoopContext(run_id=f"sim-{index:03d}", loop=loop_settings), console=console)

    def inject_bad() -> str:
        return register_bad_challenger(Registry(), mnist, loop_settings)

    table = Table(
        "window", "phase", "accuracy", "estimated", "labels", "drift", "stable", "canary", "events"
    )

    def show(result: WindowResult) -> None:
        table.add_row(
            str(result.index),
            result.phase,
            f"{result.accuracy:.3f}",
            "-" if result.estimated_accuracy is None else f"{result.estimated_accuracy:.3f}",
            f"{result.labelled} ({result.asked} asked)",
            "-" if result.drift_score is None else f"{result.drift_score:.2f}",
            f"v{result.stable_version}",
            f"v{result.canary_version} ({result.canary_weight}%)" if result.canary_version else "-",
            "; ".join(result.events),
        )
        console.print(
            f"window {result.index} ({result.phase}): accuracy "
            f"{result.accuracy:.3f}; {'; '.join(result.events) or 'no events'}"
        )

    with DigitloopClient(service_url, timeout=120) as client:
        results = simulate(
            client,
            config,
            in_dist,
            drifted,
            loop_cycle if loop else None,
            inject_bad if config.scenario == "bad-model" else None,
            show,
        )
    console.print(table)
    final = None
    if loop:
        net, _ = Registry().load(CHAMPION_ALIAS)
        final = evaluate(net, mnist.x_test, mnist.y_test).accuracy
    plot = plot_windows(results, out / "simulation.png")
    summary = summarise(results, final, str(plot), loop=loop)
    write_json(summary, out / "summary.json")
    return summary


def register_bad_challenger(registry, mnist, loop_settings) -> str:
    """A deliberately poor model, registered and rolled out as the canary."""
    from digitloop_bench.simulator.population import train_bad_challenger
    from pipelines.rollout import make_rollout, sync_aliases, with_canary
    from pipelines.settings import DecisionSettings

    version = train_bad_challenger(registry, mnist)
    rollout = make_rollout(loop_settings)
    state = with_canary(rollout.current(), version, DecisionSettings().new_canary_weight)
    rollout.apply(state)
    sync_aliases(registry, state)
    return version
