"""How many labels the loop's fine-tune needs on a new drawing style, with and without
the window's confident answers (self-training).

    .venv/bin/python -m digitloop_bench.few_labels --model-file champ.pt \\
        [--labels 16 --labels 24] [--runs 3] [--feedback correct-only] [--json]

Each run draws one window of ``--window`` drawings of ``--shift``, preprocessed as the
service does, and the champion answers them with calibrated probabilities (its temperature
fitted on half of MNIST test, as registration does). Simulated people label answers as the
simulator's do (:func:`~digitloop_bench.simulator.population.gives_label`, asked by the
sketchpad's :func:`~ui.asking.should_ask`), and the first N labels are kept. The loop's
fine-tune (:func:`pipelines.steps.retrain.retrain`'s configuration) then runs twice from
the champion: on the labels alone, and with the window's unlabelled answers that
:func:`pipelines.steps.retrain.pseudo_label_rows` takes. Both are scored on ``--test``
other drawings of the style and on MNIST test.

The figures behind ``min_new_labels`` and ``retrain_pseudo_label_confidence``
(:mod:`pipelines.settings`) came from the 8-epoch champion with ``--feedback correct-only
--labels 16 --runs 3 --mnist-limit 10000 --threads 1``: 98.5-99.9 % on the style with the
labels alone, 100 % in all 3 runs with the pseudo-labels (227-228, none wrong).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import torch
import typer
from rich.table import Table

from contracts.api import Prediction
from contracts.cli import JsonOption, MnistOption, emit, setup_logging, stderr
from digitloop_bench.shifts import make_shift
from digitloop_bench.simulator.population import SimConfig, gives_label
from model.calibration import apply_temperature, fit_temperature
from model.data import Mnist, load_mnist
from model.evaluate import evaluate
from model.network import DigitNet, predict_proba
from model.preprocess import preprocess_batch
from pipelines.settings import LoopSettings
from pipelines.steps.retrain import (
    PseudoLabels,
    fine_tune_config,
    fine_tune_on_feedback,
    pseudo_label_rows,
)
from pipelines.steps.window import stack_images
from ui.asking import should_ask


def as_logged(images: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """Version 1's stable answers as the predictions log holds them (the columns the retrain
    step reads); answer i has the id ``p<i>``."""
    return pd.DataFrame(
        {
            "prediction_id": [f"p{i}" for i in range(len(images))],
            "track": "stable",
            "model_version": "1",
            "image": list(images.reshape(len(images), -1)),
            "probabilities": list(probabilities),
            "label": probabilities.argmax(axis=1),
        }
    )


def user_labels(
    answers: np.ndarray,
    truth: np.ndarray,
    probabilities: np.ndarray,
    config: SimConfig,
    rng: np.random.Generator,
    keep: int,
) -> np.ndarray:
    """Which answers people label, as the simulator's people do; only the first ``keep``."""
    labelled = np.zeros(len(answers), bool)
    for i, (answer, true, probs) in enumerate(zip(answers, truth, probabilities, strict=True)):
        prediction = Prediction(
            prediction_id=f"p{i}",
            label=int(answer),
            probabilities=[float(p) for p in probs],
            model_version="1",
            track="stable",
        )
        asked = config.ask_below > 0 and should_ask(prediction, config.ask_below)
        labelled[i] = gives_label(bool(answer == true), asked, rng, config)
    labelled[np.flatnonzero(labelled)[keep:]] = False
    return labelled


def fine_tuned_scores(
    champion: torch.nn.Module,
    mnist: Mnist,
    labelled: tuple[np.ndarray, np.ndarray],
    pseudo: PseudoLabels,
    test: tuple[np.ndarray, np.ndarray],
    loop: LoopSettings,
    threads: int | None,
) -> dict[str, float]:
    """The loop's fine-tune on people's labels and pseudo-labels, scored on the style and
    on MNIST."""
    started = time.perf_counter()
    result = fine_tune_on_feedback(
        champion, mnist, *labelled, loop, pseudo, fine_tune_config(loop, threads)
    )
    return {
        "style": evaluate(result.net, *test).accuracy,
        "mnist": evaluate(result.net, mnist.x_test, mnist.y_test).accuracy,
        "seconds": round(time.perf_counter() - started, 1),
    }


@dataclass(frozen=True)
class Row:
    run: int
    labels: int
    corrections: int
    pseudo_labelled: int
    pseudo_wrong: int
    champion_window_accuracy: float
    labels_only: dict[str, float]
    with_pseudo: dict[str, float]


def few_labels(
    model_file: Annotated[
        Path, typer.Option(help="The champion: a DigitNet state dict (torch.save).", exists=True)
    ],
    labels: Annotated[
        list[int] | None, typer.Option("--labels", min=1, help="Labels kept (repeatable).")
    ] = None,
    runs: Annotated[int, typer.Option(min=1, help="Windows (seeds) per label count.")] = 3,
    feedback: Annotated[
        str, typer.Option(help="both: people confirm and correct; correct-only: only correct.")
    ] = "correct-only",
    label_prob: Annotated[float, typer.Option(min=0, max=1, help="Unasked label chance.")] = 0.2,
    shift: Annotated[str, typer.Option(help="The new drawing style.")] = "segments",
    window: Annotated[int, typer.Option(min=50, help="Drawings in the window.")] = 400,
    test: Annotated[int, typer.Option(min=100, help="Other drawings to score on.")] = 3000,
    mnist_limit: Annotated[
        int | None, typer.Option(help="Fine-tune on the first N MNIST digits only; unset: all.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first run.")] = 0,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads.")] = None,
    mnist: MnistOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fine-tune on the first N labels of a drifted window, with and without pseudo-labels."""
    setup_logging()
    if feedback not in ("both", "correct-only"):
        raise typer.BadParameter("--feedback must be 'both' or 'correct-only'")
    if threads:
        torch.set_num_threads(threads)
    config = SimConfig(
        feedback=_feedback(feedback), label_prob=label_prob, window_size=window, seed=seed
    )
    loop = LoopSettings(_env_file=None, retrain_mnist_limit=mnist_limit)
    data = load_mnist(mnist)
    champion = DigitNet()
    champion.load_state_dict(torch.load(model_file, map_location="cpu"))
    champion.eval()
    half = len(data.x_test) // 2
    temperature = fit_temperature(predict_proba(champion, data.x_test[:half]), data.y_test[:half])
    drawn, truth = make_shift(shift, data.x_test, data.y_test, seed)
    images, accepted = preprocess_batch(np.asarray(drawn))
    images, truth = images[accepted], np.asarray(truth)[accepted].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    test_idx, pool = order[:test], order[test:]
    results = []
    for count in labels or [16, 24]:
        for run in range(runs):
            rng = np.random.default_rng([seed, run])
            idx = rng.choice(pool, window, replace=False)
            probabilities = apply_temperature(predict_proba(champion, images[idx]), temperature)
            answers = probabilities.argmax(axis=1)
            labelled = user_labels(answers, truth[idx], probabilities, config, rng, count)
            logged = as_logged(images[idx], probabilities)
            chosen = pseudo_label_rows(
                logged, logged[labelled], "1", loop.retrain_pseudo_label_confidence
            )
            pseudo = PseudoLabels.of(chosen, stack_images(chosen))
            kept = [int(pid[1:]) for pid in pseudo.prediction_ids]
            x_l, y_l = images[idx][labelled], truth[idx][labelled]
            scored = (images[test_idx], truth[test_idx])
            stderr.print(f"{count} labels, run {run}: fine-tuning twice", highlight=False)
            results.append(
                Row(
                    run=run,
                    labels=int(labelled.sum()),
                    corrections=int((labelled & (answers != truth[idx])).sum()),
                    pseudo_labelled=len(pseudo.y),
                    pseudo_wrong=int((answers[kept] != truth[idx][kept]).sum()),
                    champion_window_accuracy=float((answers == truth[idx]).mean()),
                    labels_only=fine_tuned_scores(
                        champion, data, (x_l, y_l), PseudoLabels.none(), scored, loop, threads
                    ),
                    with_pseudo=fine_tuned_scores(
                        champion, data, (x_l, y_l), pseudo, scored, loop, threads
                    ),
                )
            )
    summary = {
        "shift": shift,
        "feedback": feedback,
        "temperature": temperature,
        "champion_style_accuracy": evaluate(champion, images[test_idx], truth[test_idx]).accuracy,
        "pseudo_label_confidence": loop.retrain_pseudo_label_confidence,
        "pseudo_label_share": loop.retrain_pseudo_label_share,
        "rows": [asdict(row) for row in results],
    }
    emit(summary, as_json, _table(results))


def _feedback(value: str) -> Literal["both", "correct-only"]:
    return "both" if value == "both" else "correct-only"


def _table(rows: list[Row]) -> Table:
    table = Table(title="Fine-tune on a few labels of a new style: labels alone vs + pseudo")
    for column in ("labels", "run", "corrections", "pseudo", "labels only", "+ pseudo"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row.labels),
            str(row.run),
            str(row.corrections),
            f"{row.pseudo_labelled} ({row.pseudo_wrong} wrong)",
            f"{row.labels_only['style']:.4f} / MNIST {row.labels_only['mnist']:.4f}",
            f"{row.with_pseudo['style']:.4f} / MNIST {row.with_pseudo['mnist']:.4f}",
        )
    return table


def main() -> None:
    typer.run(few_labels)


if __name__ == "__main__":
    main()
