"""Simulated users against the real HTTP API, with loop cycles between windows.

Phase 1 draws in-distribution digits (MNIST test), phase 2 a drifted population (a
built-in drawing style from :mod:`digitloop_bench.shifts`, or any ``.npz`` of ``x``/``y``).
Users label an answer with probability ``label_prob``: they confirm right answers and
correct wrong ones, or with ``feedback="correct-only"`` only correct wrong ones. When the
model is unsure the sketchpad asks (:func:`ui.asking.should_ask`, the same rule), and people
answer the question with probability ``answer_when_asked``.

Between windows the loop runs as its scheduler would; the drift it finds is its own: the
simulator never tells it which phase it is in. Without a loop cycle the simulator only
plays the users, and the loop runs elsewhere (a cluster's CronWorkflow) on the traffic
they leave in the store.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from contracts.api import ModelInfo, Prediction
from model.calibration import expected_accuracy
from services.client import DigitloopClient
from services.store.backends import StoreSettings
from ui.asking import should_ask
from ui.settings import UISettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimConfig:
    windows_before: int = 2
    windows_after: int = 6
    window_size: int = 400
    label_prob: float = 0.2  # chance a user confirms or corrects an answer unasked
    feedback: Literal["both", "correct-only"] = "both"  # correct-only: never confirm unasked
    # The sketchpad asks when the model's confidence is under this (its UI setting's
    # default); people answer the question with ``answer_when_asked``. 0 asks nothing.
    ask_below: float = field(default_factory=lambda: UISettings().ask_below_confidence)
    answer_when_asked: float = 0.5
    drift: str = "segments"  # a digitloop_bench.shifts population, or a path to an .npz
    scenario: str = "drift"  # or "bad-model": a deliberately poor challenger first
    seed: int = 0
    # Before the loop reads the window: one flush of the service's predictions log (its
    # setting, read from the same environment) and a second to write it.
    settle_s: float = field(default_factory=lambda: StoreSettings().flush_interval_s + 1.0)


@dataclass
class WindowResult:
    index: int
    phase: str
    n: int
    accuracy: float
    labelled: int
    stable_version: str
    canary_version: str | None
    canary_weight: int
    drift_score: float | None = None
    events: list[str] = field(default_factory=list)
    estimated_accuracy: float | None = None  # label-free, from the answers' probabilities
    asked: int = 0  # answers the sketchpad asked about
    labelled_on_canary: int = 0


@dataclass
class SimSummary:
    accuracy_drifted_before: float
    accuracy_drifted_after: float
    drift_detected: bool | None  # None: the loop ran elsewhere, its findings are not seen here
    promoted_version: str | None
    rolled_back: list[str]
    mnist_accuracy_final: float | None
    windows: list[dict[str, Any]]
    plot: str | None = None
    loop: bool = True  # whether the loop ran here, between windows
    labels: int = 0  # labels people gave over the whole run
    # From the first drifted window to the loop run that promoted (None: no promotion).
    labels_until_promotion: int | None = None
    cycles_until_promotion: int | None = None
    # The rolled-back canary's own labelled answers, from its first window to its rollback.
    canary_labels_until_rollback: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_population(
    spec: str, digits: np.ndarray, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A built-in population by name, or ``x``/``y`` from an ``.npz`` path."""
    if spec.endswith(".npz"):
        from model.data import load_labelled_npz

        return load_labelled_npz(spec)
    from digitloop_bench.shifts import make_shift

    return make_shift(spec, digits, labels, seed)


@dataclass
class UserWindow:
    """What the users of one window did."""

    answers: list[Prediction]
    right: int = 0
    labelled: int = 0
    asked: int = 0
    labelled_on_canary: int = 0
    served: Counter[tuple[str, str]] = field(default_factory=Counter)


def gives_label(right: bool, asked: bool, rng: np.random.Generator, config: SimConfig) -> bool:
    """Whether a person labels an answer: asked, with ``answer_when_asked``; unasked, with
    ``label_prob``, and never to confirm a right answer when they only correct."""
    if asked:
        return bool(rng.random() < config.answer_when_asked)
    if config.feedback == "correct-only" and right:
        return False
    return bool(rng.random() < config.label_prob)


def user_window(
    client: DigitloopClient,
    images: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    config: SimConfig,
) -> UserWindow:
    """Users draw ``images``, see the answers, and label some (see the module's doc)."""
    answers = client.predict_batch_pixels(images)
    window = UserWindow(answers=answers)
    for answer, truth in zip(answers, labels, strict=True):
        right = answer.label == int(truth)
        window.right += right
        window.served[answer.track, answer.model_version] += 1
        asked = config.ask_below > 0 and should_ask(answer, config.ask_below)
        window.asked += asked
        if gives_label(right, asked, rng, config):
            source = "simulator-asked" if asked else "simulator"
            client.feedback(answer.prediction_id, int(truth), source=source)
            window.labelled += 1
            window.labelled_on_canary += answer.track == "canary"
    return window


def window_serving(
    info: ModelInfo, served: Counter[tuple[str, str]]
) -> tuple[str, str | None, int]:
    """What served a window: (stable version, canary version or None, canary percent).

    A service holding both tracks (the embedded stack) says so in ``/model``. Behind a
    gateway each pod serves one track and ``/model`` speaks for whichever pod answered, so
    the window's answers tell instead: the version each track answered with most, and the
    canary's share of the answers.
    """
    if info.only_track is None and "stable" in info.tracks:
        canary = info.tracks.get("canary")
        return (
            info.tracks["stable"].model_version,
            canary.model_version if canary else None,
            info.canary_weight,
        )
    versions: dict[str, str] = {}
    for (track, version), _ in served.most_common():
        versions.setdefault(track, version)
    total = sum(served.values())
    on_canary = sum(n for (track, _), n in served.items() if track == "canary")
    return (
        versions.get("stable", "-"),
        versions.get("canary"),
        round(100 * on_canary / total) if total else 0,
    )


def simulate(
    client: DigitloopClient,
    config: SimConfig,
    in_dist: tuple[np.ndarray, np.ndarray],
    drifted: tuple[np.ndarray, np.ndarray],
    loop_cycle: Callable[[int], dict[str, Any]] | None,
    inject_bad: Callable[[], str] | None = None,
    on_window: Callable[[WindowResult], None] | None = None,
) -> list[WindowResult]:
    """Run the windows; ``loop_cycle(i)`` runs one loop after window ``i`` and returns its
    summary (None: the loop runs elsewhere, the users only draw and label);
    ``inject_bad()`` registers a poor challenger and makes it the canary."""
    rng = np.random.default_rng(config.seed)
    results: list[WindowResult] = []
    plan = ["in-distribution"] * config.windows_before + ["drifted"] * config.windows_after
    cursor = {"in-distribution": 0, "drifted": 0}
    for index, phase in enumerate(plan):
        events: list[str] = []
        if phase == "drifted" and cursor["drifted"] == 0 and inject_bad is not None:
            events.append(f"bad challenger v{inject_bad()} set as canary")
        x, y = in_dist if phase == "in-distribution" else drifted
        start = cursor[phase] % max(1, len(x) - config.window_size)
        cursor[phase] = start + config.window_size
        window = slice(start, start + config.window_size)
        images, labels = x[window], y[window]
        users = user_window(client, images, labels, rng, config)
        stable_version, canary_version, canary_weight = window_serving(
            client.model_info(), users.served
        )
        # The loop runs between windows, as its scheduler would; after the last one its
        # verdict could no longer show in any window.
        summary: dict[str, Any] = {}
        if loop_cycle is not None and index < len(plan) - 1:
            time.sleep(config.settle_s)
            summary = loop_cycle(index)
        events += _events(summary)
        n = len(users.answers)
        result = WindowResult(
            index=index,
            phase=phase,
            n=n,
            accuracy=users.right / n if n else 0.0,
            labelled=users.labelled,
            stable_version=stable_version,
            canary_version=canary_version,
            canary_weight=canary_weight,
            drift_score=summary.get("drift_score"),
            events=events,
            estimated_accuracy=expected_accuracy(
                np.array([answer.probabilities for answer in users.answers])
            )
            if n
            else None,
            asked=users.asked,
            labelled_on_canary=users.labelled_on_canary,
        )
        results.append(result)
        if on_window:
            on_window(result)
    return results


def _events(summary: dict[str, Any]) -> list[str]:
    events = []
    if summary.get("drift_detected"):
        events.append(f"drift detected (score {summary['drift_score']:.2f})")
    if summary.get("challenger"):
        events.append(f"trained v{summary['challenger']}")
    outcome = summary.get("outcome", "")
    if outcome.startswith(("canary", "promoted", "rolled back", "challenger")):
        events.append(outcome)
    return events


def summarise(
    results: list[WindowResult],
    mnist_accuracy: float | None,
    plot: str | None = None,
    loop: bool = True,
) -> SimSummary:
    """The run's summary; with ``loop=False`` the loop ran elsewhere, so whether it found
    drift is unknown here (None), not False."""
    drifted = [r for r in results if r.phase == "drifted"]
    events = [e for r in results for e in r.events]
    promoted = [e.split(" v", 1)[1] for e in events if e.startswith("promoted v")]
    rolled = [e.split(" v", 1)[1] for e in events if e.startswith("rolled back v")]
    until_promotion = _until(results, "promoted v", start=drifted[0].index if drifted else 0)
    rollback_window = next(
        (r.index for r in results if any(e.startswith("rolled back v") for e in r.events)), None
    )
    return SimSummary(
        accuracy_drifted_before=drifted[0].accuracy if drifted else float("nan"),
        accuracy_drifted_after=drifted[-1].accuracy if drifted else float("nan"),
        drift_detected=any(e.startswith("drift detected") for e in events) if loop else None,
        promoted_version=promoted[-1] if promoted else None,
        rolled_back=rolled,
        mnist_accuracy_final=mnist_accuracy,
        windows=[asdict(r) for r in results],
        plot=plot,
        loop=loop,
        labels=sum(r.labelled for r in results),
        labels_until_promotion=until_promotion[0] if until_promotion else None,
        cycles_until_promotion=until_promotion[1] if until_promotion else None,
        canary_labels_until_rollback=_canary_labels(results, rollback_window),
    )


def _until(results: list[WindowResult], event: str, start: int) -> tuple[int, int] | None:
    """(labels, loop runs) from window ``start`` through the first run whose events include
    ``event``; the loop runs after each window, so that window's labels count."""
    for r in results[start:]:
        if any(e.startswith(event) for e in r.events):
            span = results[start : r.index + 1]
            return sum(w.labelled for w in span), len(span)
    return None


def _canary_labels(results: list[WindowResult], rollback_window: int | None) -> int | None:
    """Labelled answers the rolled-back canary served, from its first window to its rollback."""
    if rollback_window is None:
        return None
    span = results[: rollback_window + 1]
    first = next((r.index for r in span if r.canary_version), rollback_window)
    return sum(r.labelled_on_canary for r in span[first:])


def plot_windows(results: list[WindowResult], path: Path) -> Path:
    """Accuracy per window, phases shaded, events marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    xs = [r.index for r in results]
    ax.plot(xs, [r.accuracy for r in results], marker="o", label="accuracy (answered)")
    estimated = [(r.index, r.estimated_accuracy) for r in results if r.estimated_accuracy]
    if estimated:
        ax.plot(
            *zip(*estimated, strict=True),
            marker="x",
            linestyle="--",
            label="estimated accuracy (label-free)",
        )
    drifted = [r.index for r in results if r.phase == "drifted"]
    if drifted:
        ax.axvspan(
            min(drifted) - 0.5,
            max(drifted) + 0.5,
            color="orange",
            alpha=0.12,
            label="drifted population",
        )
    for r in results:
        marks = [e for e in r.events if "still being judged" not in e]
        if marks:
            ax.axvline(r.index, color="grey", linestyle=":", linewidth=0.8)
            ax.text(
                r.index + 0.05,
                0.03,
                "\n".join(marks),
                fontsize=7,
                rotation=90,
                va="bottom",
                ha="left",
            )
    ax.set(xlabel="window", ylabel="accuracy", ylim=(0, 1.02), title="digitloop simulation")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_json(summary: SimSummary, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary.as_dict(), indent=2))


def train_bad_challenger(registry, mnist, n: int = 2000) -> str:
    """Register a model trained on shuffled labels: poor on purpose, for rollback drills."""
    from model.evaluate import evaluate
    from model.registry import TrainingRecord
    from model.train import TrainConfig, train

    rng = np.random.default_rng(0)
    x, y = mnist.x_train[:n], rng.permutation(mnist.y_train[:n]).astype(np.int64)
    config = TrainConfig(epochs=1, augment=False)
    result = train(x, y, config)
    record = TrainingRecord.of(
        config,
        result,
        evaluate(result.net, mnist.x_test, mnist.y_test),
        {"mnist_train": n, "labels": "shuffled on purpose"},
        run_name="bad-challenger",
    )
    return registry.log_and_register(result.net, record).version
