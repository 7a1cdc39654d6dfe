"""Hyper-parameter search with Optuna: the loop's fine-tune and ``digitloop train --trials``.

Each trial trains one network and is scored on data it did not train on, never on what a
later judge uses (the gate's held-out feedback, MNIST test):

- fine-tune (:func:`search_fine_tune`): learning rate, epochs and replay share, scored on
  the newest slice of the labelled feedback handed in, ties broken by accuracy on a slice of
  the MNIST images kept out of the trials, so of two trials equal on feedback the one that
  forgot less MNIST wins;
- from scratch (:func:`search_train`): learning rate, epochs and weight decay, scored on a
  validation split of MNIST train. Augmentation strength is left alone on purpose: it is
  there for drawn digits, and MNIST validation would only reward turning it down.

The first trial is always the configuration handed in, so the search can only replace it with
one that scored better on validation data. The budget is ``trials`` trials and ``seconds`` of
wall time; no trial starts when the time left is shorter than the longest trial so far took
(Optuna's own timeout is checked only between trials, so a long trial would run past it).
Every trial is a nested MLflow run under one parent run when a :class:`TrialRuns` is given.

Optuna's TPE sampler is seeded, so the same data and seed give the same trials; it samples at
random for its first ten trials, so "a few trials" is a seeded random search around the default.

Whether the loop's search pays, measured on 2 cores shared with other jobs, one torch thread
per fine-tune: a champion trained 8 epochs on MNIST (99.62 % on MNIST test, 92.7 % on 3,000
held-out digits drawn as ``segments``, digitloop_bench.shifts) fine-tuned on N other labelled
``segments`` digits plus the first 5,000 MNIST train images, three seeds of the labelled
sample, the default (3 epochs, max_lr 1e-3, share 0.3) against 5 trials and a refit:

    N    variant   segments  MNIST test (mean)  wall time (mean)
    64   default   100 %     99.59 %             56 s
    64   search    100 %     99.53 %            468 s
    128  default   100 %     99.59 %             63 s
    128  search    100 %     99.56 %            430 s

Every trial scored 100 % on its feedback slice (16 or 32 images), so the choice fell to the
MNIST tie-break, where trials differed by 1-3 images in 1,000: noise, which picked longer,
replay-heavier fine-tunes that did no better on MNIST test. Hence the loop's default of no
search (``DIGITLOOP_RETRAIN_TRIALS=0``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from torch import nn

from model.network import predict_proba
from model.train import TrainConfig, TrainResult, fine_tune, train

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

# Share of the labelled feedback a fine-tune search scores trials on (its newest part).
FEEDBACK_VALIDATION_FRACTION = 0.25
# Fewest labelled images a fine-tune search takes: with fewer, the quarter trials are scored
# on is under 5 images, and a choice between trials on so few is a coin toss.
MIN_FEEDBACK_TO_SEARCH = 20
# MNIST images kept out of a fine-tune search's trials to break ties on (at most a fifth).
MNIST_VALIDATION_SIZE = 2000
# Share of MNIST train a from-scratch search scores trials on.
TRAIN_VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class Budget:
    """How much a search may spend: at most ``trials`` trials and ``seconds`` of wall time."""

    trials: int
    seconds: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"a search needs at least 1 trial, got {self.trials}")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"a search's time budget must be positive, got {self.seconds}")


@dataclass(frozen=True)
class Candidate:
    """One trial's hyper-parameters: a training configuration and, to fine-tune, a replay share."""

    config: TrainConfig
    extra_share: float = 0.0

    def params(self, names: Sequence[str]) -> dict[str, float | int]:
        """The searched ``names`` with their values, as Optuna and MLflow see them."""
        values = {"extra_share": self.extra_share, **self.config.as_params()}
        return {name: values[name] for name in names}  # type: ignore[misc]


@dataclass(frozen=True)
class TrialScore:
    """How one trial did: ``accuracy`` is the objective, ``tiebreak`` decides between equals."""

    number: int  # from 1; trial 1 is the configuration the search started from
    params: dict[str, float | int]
    accuracy: float
    tiebreak: float
    seconds: float
    run_id: str | None = None


@dataclass(frozen=True)
class Metrics:
    """What a search's scores are called: its objective and, if it has one, its tie-break."""

    objective: str
    tiebreak: str | None = None

    def of(self, trial: TrialScore) -> dict[str, float]:
        named = {self.objective: trial.accuracy}
        if self.tiebreak is not None:
            named[self.tiebreak] = trial.tiebreak
        return named


FINE_TUNE_METRICS = Metrics("feedback_val_accuracy", tiebreak="mnist_val_accuracy")
TRAIN_METRICS = Metrics("mnist_val_accuracy")


@dataclass(frozen=True)
class SearchResult:
    """The best candidate, its trained network, and every trial run."""

    best: TrialScore
    candidate: Candidate
    result: TrainResult  # the best trial's network, trained without the validation data
    trials: tuple[TrialScore, ...]
    seconds: float
    # How many images the trials trained on and were scored on: {"mnist_train": ..., ...}
    sizes: dict[str, int]
    parent_run_id: str | None = None

    @property
    def config(self) -> TrainConfig:
        return self.candidate.config

    @property
    def extra_share(self) -> float:
        return self.candidate.extra_share


# -- pure parts ---------------------------------------------------------------------------


def select_best(scores: Sequence[TrialScore]) -> TrialScore:
    """The trial with the highest accuracy, then the highest tie-break, then the earliest.

    The earliest wins exact ties so that the default configuration (trial 1) stays unless
    another one did better.
    """
    if not scores:
        raise ValueError("no trial finished")
    return max(scores, key=lambda s: (s.accuracy, s.tiebreak, -s.number))


def another_trial_fits(elapsed: float, durations: Sequence[float], seconds: float | None) -> bool:
    """Whether one more trial, as long as the longest so far, ends within ``seconds``."""
    if seconds is None or not durations:
        return True
    return elapsed + max(durations) <= seconds


def newest_slice(n: int, fraction: float) -> int:
    """How many of ``n`` samples (oldest first) a validation slice of ``fraction`` takes.

    Raises:
        ValueError: fewer than two samples, so none can be both trained on and held out.
    """
    if n < 2:
        raise ValueError(f"{n} labelled image(s): too few to hold a validation slice out")
    return min(n - 1, max(1, round(n * fraction)))


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded random split of ``n`` samples: (to train on, to validate on)."""
    order = np.random.default_rng(seed).permutation(n)
    held = newest_slice(n, fraction)
    return np.sort(order[held:]), np.sort(order[:held])


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Share of ``x`` that ``net`` labels ``y`` (no calibration: a trial needs no more)."""
    return float((predict_proba(net, x).argmax(axis=1) == y).mean())


def _log_range(low: float, high: float, default: float) -> tuple[float, float]:
    return min(low, default), max(high, default)


def fine_tune_space(trial: optuna.Trial, base: Candidate) -> Candidate:
    """Learning rate, epochs and replay share around the loop's defaults."""
    epochs = base.config.epochs
    config = replace(
        base.config,
        max_lr=trial.suggest_float("max_lr", *_log_range(1e-4, 5e-3, base.config.max_lr), log=True),
        epochs=trial.suggest_int("epochs", 1, max(2, 2 * epochs)),
    )
    share = trial.suggest_float(
        "extra_share", min(0.1, base.extra_share), max(0.7, base.extra_share)
    )
    return Candidate(config, share)


FINE_TUNE_PARAMS = ("max_lr", "epochs", "extra_share")


def train_space(trial: optuna.Trial, base: Candidate) -> Candidate:
    """Learning rate, epochs (half of ``base``'s up to all of them) and weight decay."""
    epochs = base.config.epochs
    config = replace(
        base.config,
        max_lr=trial.suggest_float("max_lr", *_log_range(1e-3, 1e-2, base.config.max_lr), log=True),
        epochs=trial.suggest_int("epochs", max(1, epochs // 2), epochs),
        weight_decay=trial.suggest_float(
            "weight_decay", *_log_range(1e-5, 5e-3, base.config.weight_decay), log=True
        ),
    )
    return Candidate(config)


TRAIN_PARAMS = ("max_lr", "epochs", "weight_decay")


# -- MLflow --------------------------------------------------------------------------------


class TrialRuns:
    """Logs a search to MLflow: one parent run, and one run nested under it per trial."""

    def __init__(self, client: MlflowClient, experiment_id: str, run_name: str) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.run_name = run_name
        self.parent_id: str | None = None

    @contextmanager
    def search(self, params: dict[str, object]) -> Iterator[str]:
        """The parent run, open while the trials run; FAILED if the search raises."""
        run = self.client.create_run(self.experiment_id, run_name=self.run_name)
        self.parent_id = run.info.run_id
        self._log(self.parent_id, params=params)
        try:
            yield self.parent_id
        except BaseException:
            self.client.set_terminated(self.parent_id, "FAILED")
            raise
        self.client.set_terminated(self.parent_id, "FINISHED")

    def trial(
        self, score: TrialScore, history: Sequence[dict[str, float]], metrics: Metrics
    ) -> str:
        """One finished trial as a nested run: its parameters, per-epoch history and scores."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        if self.parent_id is None:
            raise RuntimeError("a trial is logged inside search()")
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{self.run_name}-trial-{score.number}",
            tags={MLFLOW_PARENT_RUN_ID: self.parent_id},
        )
        run_id = run.info.run_id
        epochs = [
            (int(entry["epoch"]), key, value)
            for entry in history
            for key, value in entry.items()
            if key != "epoch"
        ]
        self._log(
            run_id,
            params={"trial": score.number, **score.params},
            metrics={**metrics.of(score), "seconds": score.seconds},
            steps=epochs,
        )
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def best(self, best: TrialScore, metrics: Metrics, trials: int, seconds: float) -> None:
        """The chosen trial on the parent run."""
        if self.parent_id is None:
            raise RuntimeError("the best trial is logged inside search()")
        self._log(
            self.parent_id,
            params={f"best_{k}": v for k, v in best.params.items()} | {"best_trial": best.number},
            metrics={f"best_{k}": v for k, v in metrics.of(best).items()}
            | {"trials_run": trials, "seconds": seconds},
        )

    def _log(
        self,
        run_id: str,
        params: dict[str, object] | None = None,
        metrics: dict[str, float] | None = None,
        steps: Sequence[tuple[int, str, float]] = (),
    ) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
            + [Metric(k, float(v), now, step) for step, k, v in steps],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
        )


# -- the searches --------------------------------------------------------------------------

# Trains one candidate and scores it: (its training result, accuracy, tie-break).
Trainer = Callable[[Candidate], tuple[TrainResult, float, float]]


def search_fine_tune(
    parent: nn.Module,
    x_base: np.ndarray,
    y_base: np.ndarray,
    x_extra: np.ndarray,
    y_extra: np.ndarray,
    config: TrainConfig,
    extra_share: float,
    budget: Budget,
    runs: TrialRuns | None = None,
    console: Console | None = None,
) -> SearchResult:
    """Search the fine-tune of ``parent`` on MNIST (``x_base``) plus labelled ``x_extra``.

    ``x_extra`` is taken oldest first: trials train on all but its newest
    :data:`FEEDBACK_VALIDATION_FRACTION` and are scored on that, ties broken on the last
    :data:`MNIST_VALIDATION_SIZE` (at most a fifth) of ``x_base``, which no trial trains on.
    The returned network is the best trial's; refit on all of the data with
    ``result.config`` and ``result.extra_share`` to use every label.

    Raises:
        ValueError: fewer than :data:`MIN_FEEDBACK_TO_SEARCH` labelled images.
    """
    if len(x_extra) < MIN_FEEDBACK_TO_SEARCH:
        raise ValueError(
            f"{len(x_extra)} labelled image(s): a fine-tune search needs at least "
            f"{MIN_FEEDBACK_TO_SEARCH} to score its trials on a quarter of them"
        )
    held = newest_slice(len(x_extra), FEEDBACK_VALIDATION_FRACTION)
    fit_x, fit_y = x_extra[:-held], y_extra[:-held]
    val_x, val_y = x_extra[-held:], y_extra[-held:]
    mnist_held = min(MNIST_VALIDATION_SIZE, len(x_base) // 5)
    if mnist_held < 1:
        raise ValueError(f"{len(x_base)} MNIST image(s): too few to hold a slice out")
    base_x, base_y = x_base[:-mnist_held], y_base[:-mnist_held]
    mnist_x, mnist_y = x_base[-mnist_held:], y_base[-mnist_held:]

    def trainer(candidate: Candidate) -> tuple[TrainResult, float, float]:
        result = fine_tune(
            parent,
            base_x,
            base_y,
            fit_x,
            fit_y,
            candidate.config,
            extra_share=candidate.extra_share,
            console=console,
        )
        feedback = accuracy(result.net, val_x, val_y)
        return result, feedback, accuracy(result.net, mnist_x, mnist_y)

    sizes = {
        "feedback_train": len(fit_y),
        "feedback_validation": len(val_y),
        "mnist_train": len(base_y),
        "mnist_validation": len(mnist_y),
    }
    return _search(
        Candidate(config, extra_share),
        fine_tune_space,
        FINE_TUNE_PARAMS,
        trainer,
        FINE_TUNE_METRICS,
        sizes,
        budget,
        runs,
        console,
    )


def search_train(
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    budget: Budget,
    runs: TrialRuns | None = None,
    console: Console | None = None,
) -> SearchResult:
    """Search a from-scratch training on MNIST train ``x``, scored on a split of it.

    A seeded random :data:`TRAIN_VALIDATION_FRACTION` of ``x`` is the validation split; the
    returned network was trained on the rest (``result.result.net``).
    """
    fit_idx, val_idx = validation_split(len(x), TRAIN_VALIDATION_FRACTION, budget.seed)
    fit_x, fit_y, val_x, val_y = x[fit_idx], y[fit_idx], x[val_idx], y[val_idx]

    def trainer(candidate: Candidate) -> tuple[TrainResult, float, float]:
        result = train(fit_x, fit_y, candidate.config, console=console)
        return result, accuracy(result.net, val_x, val_y), 0.0

    sizes = {"mnist_train": len(fit_y), "mnist_validation": len(val_y)}
    return _search(
        Candidate(config),
        train_space,
        TRAIN_PARAMS,
        trainer,
        TRAIN_METRICS,
        sizes,
        budget,
        runs,
        console,
    )


def _search(
    default: Candidate,
    space: Callable[[optuna.Trial, Candidate], Candidate],
    names: Sequence[str],
    trainer: Trainer,
    metrics: Metrics,
    sizes: dict[str, int],
    budget: Budget,
    runs: TrialRuns | None,
    console: Console | None,
) -> SearchResult:
    """Run the study: the default first, then sampled candidates, within the budget."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=budget.seed)
    )
    study.enqueue_trial(default.params(names))
    scores: list[TrialScore] = []
    kept: dict[int, tuple[Candidate, TrainResult]] = {}
    started = time.perf_counter()

    def objective(trial: optuna.Trial) -> float:
        candidate = space(trial, default)
        trial_started = time.perf_counter()
        # train() and fine_tune() seed from the config, the same in every trial: only the
        # hyper-parameters differ.
        result, value, tiebreak = trainer(candidate)
        score = TrialScore(
            trial.number + 1,
            candidate.params(names),
            value,
            tiebreak,
            time.perf_counter() - trial_started,
        )
        if runs is not None:
            score = replace(score, run_id=runs.trial(score, result.history, metrics))
        scores.append(score)
        # Only the best network so far is kept: each is a few MB.
        if select_best(scores) is score:
            kept.clear()
            kept[score.number] = (candidate, result)
        _say(console, _trial_line(score, budget, metrics))
        return value

    def within_budget(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        elapsed = time.perf_counter() - started
        if not another_trial_fits(elapsed, [s.seconds for s in scores], budget.seconds):
            _say(console, f"search: {elapsed:.0f} s of {budget.seconds:.0f} s spent, stopping")
            study.stop()

    def optimize() -> None:
        study.optimize(objective, n_trials=budget.trials, callbacks=[within_budget])

    if runs is None:
        optimize()
    else:
        searched = {"searched": ",".join(names), "trials": budget.trials, "seed": budget.seed}
        with runs.search({**sizes, **searched, "budget_seconds": budget.seconds}):
            optimize()
            runs.best(select_best(scores), metrics, len(scores), time.perf_counter() - started)
    best = select_best(scores)
    candidate, result = kept[best.number]
    _say(console, f"search: best trial {best.number} of {len(scores)}: {_params_text(best)}")
    return SearchResult(
        best=best,
        candidate=candidate,
        result=result,
        trials=tuple(scores),
        seconds=time.perf_counter() - started,
        sizes=sizes,
        parent_run_id=runs.parent_id if runs else None,
    )


def _params_text(score: TrialScore) -> str:
    return ", ".join(
        f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in score.params.items()
    )


def _trial_line(score: TrialScore, budget: Budget, metrics: Metrics) -> str:
    scores = ", ".join(f"{k} {v:.4f}" for k, v in metrics.of(score).items())
    return (
        f"trial {score.number}/{budget.trials} ({_params_text(score)}): "
        f"{scores} in {score.seconds:.0f} s"
    )


def _say(console: Console | None, line: str) -> None:
    if console is not None:
        console.print(line, highlight=False)
    else:
        log.info("%s", line)
