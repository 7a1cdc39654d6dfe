"""Retrain and gate: fine-tune the champion on MNIST plus the feedback, then judge it.

The most recent ``holdout_fraction`` of the labelled feedback is kept out of training:
the gate compares champion and challenger on it, so the challenger is judged on
corrections neither has seen.

People who only correct label a new population's hard cases and never its easy ones, and
a fine-tune on corrections alone learns a skewed picture of it. So the champion's own
confident, unlabelled answers of the window join the training data as it labelled them
(self-training, ``retrain_pseudo_label_confidence``); they never reach the gate.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from torch import nn

from model.data import Mnist
from model.evaluate import Evaluation, evaluate
from model.export import calibration_digits
from model.novelty import Source, fit_for_version
from model.registry import ModelVersionInfo, Registry, TrainingRecord
from model.train import TrainConfig, TrainResult, fine_tune
from pipelines.decisions import GateResult, Tally, gate
from pipelines.outputs import CollectOutput, RetrainOutput
from pipelines.settings import DecisionSettings, LoopSettings
from pipelines.steps.context import LoopContext
from pipelines.steps.window import stack_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeedbackSplit:
    """Labelled feedback images: the part to train on and the held-out recent part."""

    train_x: np.ndarray
    train_y: np.ndarray
    holdout_x: np.ndarray
    holdout_y: np.ndarray
    since: datetime | None  # the oldest feedback used
    until: datetime | None  # the newest feedback used


def split_holdout(labelled: pd.DataFrame, fraction: float) -> FeedbackSplit:
    """Hold out the most recent ``fraction`` of labelled feedback (by feedback time)."""
    frame = labelled.sort_values("feedback_ts", kind="stable")
    images = stack_images(frame)
    labels = frame["true_label"].to_numpy(dtype=np.int64)
    cut = len(frame) - round(len(frame) * fraction)
    since = frame["feedback_ts"].iloc[0].to_pydatetime() if len(frame) else None
    until = frame["feedback_ts"].iloc[-1].to_pydatetime() if len(frame) else None
    return FeedbackSplit(images[:cut], labels[:cut], images[cut:], labels[cut:], since, until)


@dataclass(frozen=True)
class PseudoLabels:
    """Unlabelled answers taken as labelled by the model that gave them."""

    x: np.ndarray  # (N, 28, 28) uint8
    y: np.ndarray  # (N,) int64
    prediction_ids: tuple[str, ...] = ()

    @classmethod
    def none(cls) -> PseudoLabels:
        return cls(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64))

    @classmethod
    def of(cls, rows: pd.DataFrame, images: np.ndarray) -> PseudoLabels:
        """The answers ``rows`` (see :func:`pseudo_label_rows`) and their ``images``."""
        return cls(images, rows["label"].to_numpy(dtype=np.int64), tuple(rows["prediction_id"]))


def pseudo_label_rows(
    predictions: pd.DataFrame, labelled: pd.DataFrame, version: str, min_confidence: float | None
) -> pd.DataFrame:
    """``version``'s stable answers in ``predictions`` that nobody labelled and whose
    (calibrated) top probability is at least ``min_confidence``; None takes none."""
    answers = predictions[
        (predictions["track"] == "stable")
        & (predictions["model_version"].astype(str) == str(version))
        & ~predictions["prediction_id"].isin(labelled["prediction_id"])
    ]
    if min_confidence is None or answers.empty:
        return answers.iloc[:0]
    confidence = np.stack(answers["probabilities"].to_numpy()).max(axis=1)
    return answers[confidence >= min_confidence]


def feedback_cutoff(info: ModelVersionInfo) -> datetime | None:
    """The newest feedback a version was trained on (None: MNIST only)."""
    until = json.loads(info.tags.get("training_data") or "{}").get("feedback_until")
    return datetime.fromisoformat(until) if until else None


def find_retrained(registry: Registry, run_id: str) -> ModelVersionInfo | None:
    """The version a loop run already registered, if any (steps may be retried)."""
    for info in reversed(registry.versions()):
        if json.loads(info.tags.get("training_data") or "{}").get("loop_run") == run_id:
            return info
    return None


@dataclass(frozen=True)
class RetrainResult:
    version: ModelVersionInfo
    mnist_test: Evaluation
    holdout_accuracy: float


def fine_tune_config(settings: LoopSettings, threads: int | None = None) -> TrainConfig:
    """The fine-tune's configuration when no search chooses one."""
    return TrainConfig(epochs=settings.retrain_epochs, max_lr=1e-3, seed=0, threads=threads)


def fine_tune_on_feedback(
    champion: nn.Module,
    mnist: Mnist,
    x: np.ndarray,
    y: np.ndarray,
    settings: LoopSettings,
    pseudo: PseudoLabels | None = None,
    config: TrainConfig | None = None,
    extra_share: float | None = None,
) -> TrainResult:
    """The loop's fine-tune: the champion on MNIST (``retrain_mnist_limit``), people's labels
    ``x``/``y`` and ``pseudo``-labels, each at its share; the benches run this one too."""
    base = mnist.limit(n_train=settings.retrain_mnist_limit)
    pseudo = pseudo or PseudoLabels.none()
    return fine_tune(
        champion,
        base.x_train,
        base.y_train.astype(np.int64),
        x,
        y,
        config or fine_tune_config(settings),
        extra_share=settings.retrain_extra_share if extra_share is None else extra_share,
        pseudo=(pseudo.x, pseudo.y),
        pseudo_share=settings.retrain_pseudo_label_share,
    )


def retrain(
    registry: Registry,
    champion: nn.Module,
    champion_info: ModelVersionInfo,
    mnist: Mnist,
    split: FeedbackSplit,
    settings: LoopSettings,
    run_id: str,
    pseudo: PseudoLabels | None = None,
    novelty_share: float = 0.05,
) -> RetrainResult:
    """Fine-tune the champion on MNIST + the training part of the feedback (+ ``pseudo``);
    register it. A search, when on, scores its trials on human labels only."""
    base = mnist.limit(n_train=settings.retrain_mnist_limit)
    config = fine_tune_config(settings)
    extra_share = settings.retrain_extra_share
    searched: dict[str, object] = {}
    if settings.retrain_trials:
        from model.tune import MIN_FEEDBACK_TO_SEARCH, Budget, TrialRuns, search_fine_tune

        if len(split.train_y) >= MIN_FEEDBACK_TO_SEARCH:
            # Scored on the newest training feedback, never on the gate's holdout; the
            # chosen configuration is then refit on all of the training feedback below.
            search = search_fine_tune(
                champion,
                base.x_train,
                base.y_train.astype(np.int64),
                split.train_x,
                split.train_y,
                config,
                extra_share,
                Budget(settings.retrain_trials, settings.retrain_search_seconds),
                TrialRuns(registry.client, registry.experiment_id, f"tune-{run_id}"),
            )
            config, extra_share = search.config, search.extra_share
            searched = {"search_run_id": search.parent_run_id, "search_trials": len(search.trials)}
        else:
            log.info("%d labelled images: too few to search, defaults", len(split.train_y))
    pseudo = pseudo or PseudoLabels.none()
    result = fine_tune_on_feedback(
        champion, mnist, split.train_x, split.train_y, settings, pseudo, config, extra_share
    )
    mnist_test = evaluate(result.net, mnist.x_test, mnist.y_test)
    holdout = (
        evaluate(result.net, split.holdout_x, split.holdout_y) if len(split.holdout_y) else None
    )
    training_data = {
        "mnist_train": len(base.x_train),
        "feedback": len(split.train_y),
        "pseudo_labelled": len(pseudo.y),
        "feedback_holdout": len(split.holdout_y),
        "feedback_since": split.since.isoformat() if split.since else None,
        "feedback_until": split.until.isoformat() if split.until else None,
        "loop_run": run_id,
    }
    extra = {"feedback_holdout_accuracy": holdout.accuracy} if holdout else {}
    # Fitted on this version's own training data: the traffic it was adapted to (labels and
    # pseudo-labels, one source) is what it is for, and must not stay "unusual" to it.
    traffic = Source(
        "traffic",
        np.concatenate([split.train_x, pseudo.x]),
        np.concatenate([split.train_y, pseudo.y]),
    )
    novelty = fit_for_version(
        result.net,
        (base.x_train, base.y_train),
        (mnist.x_test, mnist.y_test),
        novelty_share,
        traffic=[traffic],
        traffic_held_out=[Source("traffic", split.holdout_x, split.holdout_y)],
    )
    info = registry.log_and_register(
        result.net,
        TrainingRecord.of(
            config,
            result,
            mnist_test,
            training_data,
            extra_params={
                "extra_share": extra_share,
                "pseudo_label_share": settings.retrain_pseudo_label_share,
                **searched,
            },
            parent_version=champion_info.version,
            extra_metrics=extra,
            run_name=f"retrain-{run_id}",
            novelty=novelty,
            # MNIST's digits as served; the traffic it was adapted to is not drawn on
            # (measured only on MNIST: digitloop_bench.serving.forward).
            int8_calibration=calibration_digits(base.x_train),
        ),
    )
    if searched:
        registry.client.set_tag(str(searched["search_run_id"]), "registered_version", info.version)
    log.info("registered challenger version %s (parent %s)", info.version, champion_info.version)
    return RetrainResult(info, mnist_test, holdout.accuracy if holdout else float("nan"))


def judge(
    champion: nn.Module,
    champion_info: ModelVersionInfo,
    challenger: nn.Module,
    challenger_mnist: float,
    mnist: Mnist,
    split: FeedbackSplit,
    settings: DecisionSettings,
) -> GateResult:
    """Score both models on MNIST test and the held-out feedback, then apply :func:`gate`."""
    champion_mnist = champion_info.tags.get("mnist_test_accuracy")
    champion_acc = (
        float(champion_mnist)
        if champion_mnist
        else evaluate(champion, mnist.x_test, mnist.y_test).accuracy
    )

    def tally(net: nn.Module) -> Tally:
        if not len(split.holdout_y):
            return Tally(0, 0)
        score = evaluate(net, split.holdout_x, split.holdout_y)
        return Tally(score.n, int(np.trace(score.confusion)))

    return gate(champion_acc, challenger_mnist, tally(champion), tally(challenger), settings)


def step_retrain(ctx: LoopContext, collect: CollectOutput) -> RetrainOutput:
    """Fine-tune the champion on MNIST + feedback, register, and gate the challenger."""
    window = ctx.window(collect.since, collect.until)
    split = split_holdout(window.labelled, ctx.loop.holdout_fraction)
    champion, champion_info = ctx.registry.load(collect.stable_version)
    rows = pseudo_label_rows(
        window.predictions,
        window.labelled,
        collect.stable_version,
        ctx.loop.retrain_pseudo_label_confidence,
    )
    pseudo = PseudoLabels.of(rows, window.images(rows))
    # An Argo retry after the version was registered judges that version, not a new one.
    version = find_retrained(ctx.registry, ctx.run_id)
    if version is None:
        version = retrain(
            ctx.registry,
            champion,
            champion_info,
            ctx.mnist,
            split,
            ctx.loop,
            ctx.run_id,
            pseudo,
            novelty_share=ctx.model.novelty_share,
        ).version
    challenger, _ = ctx.registry.load(version.version)
    mnist_accuracy = float(version.tags["mnist_test_accuracy"])
    holdout = version.tags.get("feedback_holdout_accuracy")
    verdict = judge(
        champion, champion_info, challenger, mnist_accuracy, ctx.mnist, split, ctx.decisions
    )
    return RetrainOutput(
        challenger=version.version,
        mlflow_run_id=version.run_id,
        mnist_test_accuracy=mnist_accuracy,
        holdout_accuracy=float(holdout) if holdout else None,
        gate_passed=verdict.passed,
        gate_reasons=tuple(verdict.reasons),
        train_samples=len(split.train_y),
        pseudo_labelled=len(pseudo.y),
        holdout_samples=len(split.holdout_y),
    )
