"""Calibrate the drift step: false alarms on unshifted windows, power on shifted ones.

    .venv/bin/python -m digitloop_bench.drift calibrate [--windows N] [--json]
    .venv/bin/python -m digitloop_bench.drift adapted --model-file champ.pt [--json]
    .venv/bin/python -m digitloop_bench.drift novelty [--model-file m.pt] [--share S] [--json]
    .venv/bin/python -m digitloop_bench.drift ceiling [--model-file m.pt] [--json]

``calibrate`` measures one model against its MNIST reference; ``adapted`` measures the rule
for a champion fine-tuned on a drifted population (see :func:`adapted`); ``novelty`` the
per-drawing novelty window test alone and OR'ed with Evidently's, on windows where 10 %,
25 % or all of the drawings are shifted, for every candidate score, and the geometry window
test beside them (see :func:`novelty`; its figures are in :mod:`model.novelty` and
:mod:`pipelines.drift.geometry`, about 7 minutes on one loaded core); ``ceiling`` what a
detector told each style could do at best, and what it sees (:mod:`digitloop_bench.ceiling`,
about 2 minutes). The figures in
:mod:`pipelines.drift.detect` came from

    .venv/bin/python -m digitloop_bench.drift adapted --model-file champ.pt \
        --save-adapted adapted.pt --threads 2 --json

with ``champ.pt`` an 8-epoch champion of all MNIST: 300 + 300 MNIST windows, 100 + 100
seven-segment ones, 50 + 50 of each mix and new shift (200 and 400 images), each against
13 references: about 17,000 window checks. On 2 cores shared with other jobs (load average
about 6) the fine-tune took 31 min, the windows 16 min and the check against Evidently's
report 3 min; with ``--adapted-file adapted.pt`` a rerun skips the fine-tune, and
``--mnist-limit 20000`` shortens it.

``calibrate``, with one model (a registered version, a saved state dict, or a quick one
trained here on 20,000 MNIST digits for 2 epochs), builds the reference from a random half
of MNIST test, then runs the real drift step (Evidently, with the current
:class:`DriftSettings`) on windows of ``--window-size`` images:

- ``--windows`` windows drawn at random from the other half of MNIST test, preprocessed
  like the service: every detection there is a false alarm;
- ``--shift-windows`` windows of each population of :mod:`digitloop_bench.shifts`: every
  detection there is a hit.

It records each column's score per window, so it can also replay the decision for other
column thresholds and share thresholds (the sweep) without rerunning Evidently, and it
times the drift step on 10,000 predictions. Rates come with Wilson 95 % intervals: 200
windows pin a false-alarm rate of 3 % only to about 1.5-6 %.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
from rich.table import Table
from torch import nn

from contracts.cli import JsonOption, MnistOption, cli_errors, emit, setup_logging, stderr
from digitloop_bench.shifts import SHIFTS, in_distribution, make_shift, on_the_canvas
from model.network import model_outputs
from model.novelty import NoveltyScorer, critical_count
from pipelines.drift.adapted import mixture, mixture_grid
from pipelines.drift.columns import ColumnTests
from pipelines.drift.detect import (
    DriftSettings,
    check_drift,
    column_tests,
    combine,
    detect_drift,
    detect_drift_adapted,
)
from pipelines.drift.features import CLASS_COLUMN, feature_frame, featurise
from pipelines.drift.geometry import geometry_features, mnist_geometry
from pipelines.drift.reference import (
    Reference,
    build_reference,
    mnist_reference,
    split_indices,
)

log = logging.getLogger(__name__)

COLUMN_THRESHOLDS = (0.001, 0.005, 0.01, 0.02, 0.05)
TARGET_FALSE_ALARMS = 0.05
TARGET_POWER = 0.95


@dataclass(frozen=True)
class WindowScores:
    """Per-window column scores (p-values) and the drift step's verdicts for one population."""

    name: str
    scores: np.ndarray  # (W, C) Evidently's per-column score
    drift_scores: np.ndarray  # (W,) share of drifted columns
    detected: np.ndarray  # (W,) bool

    @property
    def rate(self) -> float:
        return float(self.detected.mean()) if len(self.detected) else float("nan")


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (sound near 0 and 1, unlike +-2 SE)."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def run_windows(
    name: str,
    features: pd.DataFrame,
    reference: Reference,
    settings: DriftSettings,
    n_windows: int,
    window_size: int,
    rng: np.random.Generator,
    background: pd.DataFrame | None = None,
    mix: float = 1.0,
) -> WindowScores:
    """The drift step on ``n_windows`` random windows (rows without replacement) of a frame.

    With ``background``, each window takes ``mix`` of its rows from ``features`` and the
    rest from ``background``: traffic of which only a share has changed.
    """
    columns = list(reference.features.columns)
    scores = np.empty((n_windows, len(columns)))
    shares = np.empty(n_windows)
    detected = np.empty(n_windows, bool)
    n_shifted = window_size if background is None else round(mix * window_size)
    for w in range(n_windows):
        window = features.iloc[rng.choice(len(features), size=n_shifted, replace=False)]
        if n_shifted < window_size:
            rows = rng.choice(len(background), size=window_size - n_shifted, replace=False)
            window = pd.concat([window, background.iloc[rows]])
        result = check_drift(window, reference, settings)
        scores[w] = [result.features[c].score for c in columns]
        shares[w] = result.drift_score
        detected[w] = result.drift_detected
    return WindowScores(name, scores, shares, detected)


def replay(
    scores: np.ndarray, column_threshold: float, drift_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Share of drifted columns and verdicts for other thresholds (p-value methods only)."""
    share = (scores < column_threshold).mean(axis=1)
    return share, share >= drift_threshold - 1e-12


def sweep(
    in_dist: WindowScores, shifted: list[WindowScores], n_columns: int
) -> list[dict[str, object]]:
    """False alarms and power for each column threshold and each share of k/C columns."""
    rows = []
    for alpha in COLUMN_THRESHOLDS:
        for k in range(1, n_columns + 1):
            share = k / n_columns
            fa = float(replay(in_dist.scores, alpha, share)[1].mean())
            power = {s.name: float(replay(s.scores, alpha, share)[1].mean()) for s in shifted}
            rows.append(
                {
                    "column_threshold": alpha,
                    "drift_threshold": round(share, 4),
                    "min_columns": k,
                    "false_alarm_rate": fa,
                    "min_power": min(power.values()) if power else float("nan"),
                    "power": power,
                }
            )
    return rows


def recommend(rows: list[dict[str, object]], required: list[str]) -> dict[str, object] | None:
    """The setting with false alarms <= 5 % and the best worst-case power on ``required``."""
    eligible = [r for r in rows if r["false_alarm_rate"] <= TARGET_FALSE_ALARMS]
    if not eligible:
        return None

    def worst(row: dict[str, object]) -> float:
        power = row["power"]
        return min(power[name] for name in required) if required else 0.0

    return max(eligible, key=lambda r: (worst(r), -r["false_alarm_rate"]))


def time_drift_step(
    net: nn.Module, images: np.ndarray, reference: Reference, settings: DriftSettings
) -> dict[str, object]:
    """Seconds to featurise ``images``, run Evidently on them, and render the report.

    Importing Evidently (a few seconds, once per process) is timed on its own.
    """
    before_import = time.perf_counter()
    import evidently.presets  # noqa: F401

    started = time.perf_counter()
    features = featurise(net, images, reference.summary)
    featurised = time.perf_counter()
    result = check_drift(features, reference, settings)
    checked = time.perf_counter()
    files = result.report_files()
    rendered = time.perf_counter()
    return {
        "n": len(images),
        "evidently_import_s": round(started - before_import, 3),
        "featurise_s": round(featurised - started, 3),
        "evidently_s": round(checked - featurised, 3),
        "drift_step_s": round(checked - started, 3),
        "render_s": round(rendered - checked, 3),
        "report_bytes": {name: len(data) for name, data in files.items()},
    }


def evidently_default_false_alarms(
    features: pd.DataFrame,
    reference: Reference,
    n_windows: int,
    window_size: int,
    rng: np.random.Generator,
) -> float:
    """False-alarm rate of Evidently's ``DataDriftPreset()`` with every default."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = list(reference.features.columns)
    definition = DataDefinition(
        numerical_columns=[c for c in columns if c != CLASS_COLUMN],
        categorical_columns=[CLASS_COLUMN],
    )
    ref = Dataset.from_pandas(reference.features[columns], data_definition=definition)
    alarms = 0
    for _ in range(n_windows):
        rows = rng.choice(len(features), size=window_size, replace=False)
        window = features.iloc[rows][columns].reset_index(drop=True)
        snapshot = Report([DataDriftPreset()]).run(
            Dataset.from_pandas(window, data_definition=definition), ref
        )
        metric = next(
            m for m in snapshot.dict()["metrics"] if "DriftedColumnsCount" in m["config"]["type"]
        )
        alarms += metric["value"]["share"] >= 0.5
    return alarms / n_windows


# Options several commands share, declared once.
ShiftsOption = Annotated[
    list[str] | None, typer.Option("--shift", help="Only these shifts (repeatable).")
]
SeedOption = Annotated[int, typer.Option(help="Seed of the windows, shifts and quick model.")]
ThreadsOption = Annotated[int | None, typer.Option(min=1, help="Torch threads.")]
QuickModelFileOption = Annotated[
    Path | None,
    typer.Option(help="A DigitNet state dict (torch.save); default a quick model.", exists=True),
]
ShareOption = Annotated[
    float | None,
    typer.Option(help="Share of held-out MNIST flagged (default: the novelty_share setting)."),
]
AlphaOption = Annotated[
    float | None,
    typer.Option(help="The window test's p-value threshold (default: the setting)."),
]


def chosen_shifts(shifts: list[str] | None) -> list[str]:
    """The shifted populations asked for on the command line (default: every one)."""
    chosen = shifts or list(SHIFTS)
    unknown = [s for s in chosen if s not in SHIFTS]
    if unknown:
        raise typer.BadParameter(f"unknown shift(s) {unknown}; choose from {list(SHIFTS)}")
    return chosen


def load_net(
    model: str | None,
    model_file: Path | None,
    x_train: np.ndarray,
    y_train: np.ndarray,
    seed: int,
    save: Path | None,
) -> tuple[nn.Module, str]:
    """A registered version, a saved state dict, or a quick model trained here."""
    import torch

    from model.network import DigitNet

    if model is not None:
        from model.registry import Registry

        net, info = Registry().load(model)
        return net, f"registry version {info.version}"
    if model_file is not None:
        net = DigitNet()
        net.load_state_dict(torch.load(model_file, map_location="cpu", weights_only=True))
        return net.eval(), f"state dict {model_file}"
    from model.train import TrainConfig, train

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x_train), size=min(20000, len(x_train)), replace=False)
    stderr.print("training a quick model: 20,000 MNIST digits, 2 epochs (about a minute)")
    result = train(x_train[idx], y_train[idx].astype(np.int64), TrainConfig(epochs=2, seed=seed))
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        torch.save(result.net.state_dict(), save)
    return result.net.eval(), "quick model (20k MNIST, 2 epochs)"


def bench(
    windows: Annotated[int, typer.Option(min=10, help="Unshifted windows (false alarms).")] = 200,
    shift_windows: Annotated[
        int, typer.Option(min=5, help="Windows per shifted population (power).")
    ] = 50,
    window_size: Annotated[int, typer.Option(min=10, help="Images per window.")] = 200,
    shift_pool: Annotated[
        int, typer.Option(min=100, help="Images generated per shifted population.")
    ] = 2000,
    shifts: ShiftsOption = None,
    model: Annotated[
        str | None, typer.Option(help="A registered version or alias instead of a quick model.")
    ] = None,
    model_file: Annotated[
        Path | None,
        typer.Option(help="A DigitNet state dict (torch.save) instead.", exists=True),
    ] = None,
    save_model: Annotated[
        Path | None, typer.Option(help="Save the quick model's state dict here.")
    ] = None,
    mix: Annotated[
        float,
        typer.Option(
            min=0.05,
            max=1.0,
            help="Share of each shifted window that is shifted (the rest unshifted MNIST).",
        ),
    ] = 1.0,
    timing_only: Annotated[
        bool, typer.Option("--timing-only", help="Only time the drift step on 10,000 images.")
    ] = False,
    seed: SeedOption = 0,
    evidently_default: Annotated[
        int,
        typer.Option(help="Also measure false alarms of Evidently's defaults on N windows."),
    ] = 0,
    threads: ThreadsOption = None,
    mnist: MnistOption = None,
    as_json: JsonOption = False,
) -> None:
    """Measure the drift step's false-alarm rate and power, and time it on 10,000 images."""
    setup_logging()
    with cli_errors():
        import torch

        from model.data import load_mnist

        if threads:
            torch.set_num_threads(threads)
        chosen = chosen_shifts(shifts)
        settings = DriftSettings()
        data = load_mnist(mnist)
        net, model_name = load_net(model, model_file, data.x_train, data.y_train, seed, save_model)
        spec = settings.reference_spec()
        started = time.perf_counter()
        reference = mnist_reference(net, data.x_test, spec)
        if timing_only:
            x_all, _ = in_distribution(data.x_test, data.y_test)
            timing = time_drift_step(net, x_all[:10000], reference, settings)
            emit({"model": model_name, "timing_10k": timing}, as_json, _timing_table(timing))
            return
        _, holdout = split_indices(len(data.x_test), spec.size, spec.seed)
        x_in, _ = in_distribution(data.x_test[holdout], data.y_test[holdout])
        in_features = featurise(net, x_in, reference.summary)
        stderr.print(
            f"reference: {len(reference.features)} MNIST test digits; "
            f"{len(x_in)} held out for unshifted windows"
        )
        rng = np.random.default_rng(seed)
        in_dist = run_windows(
            "in_distribution", in_features, reference, settings, windows, window_size, rng
        )
        stderr.print(f"unshifted: {windows} windows, false alarms {in_dist.rate:.3f}")
        shifted = []
        for i, name in enumerate(chosen):
            pool = rng.choice(holdout, size=min(shift_pool, len(holdout)), replace=False)
            x_s, _ = make_shift(name, data.x_test[pool], data.y_test[pool], seed=seed + 1 + i)
            features = featurise(net, x_s, reference.summary)
            scores = run_windows(
                name,
                features,
                reference,
                settings,
                shift_windows,
                window_size,
                rng,
                background=in_features if mix < 1.0 else None,
                mix=mix,
            )
            shifted.append(scores)
            stderr.print(f"{name}: {shift_windows} windows, detected {scores.rate:.3f}")
        default_fa = None
        if evidently_default:
            default_fa = evidently_default_false_alarms(
                in_features, reference, evidently_default, window_size, rng
            )
        x_all, _ = in_distribution(data.x_test, data.y_test)
        timing = time_drift_step(net, x_all[:10000], reference, settings)
        elapsed = time.perf_counter() - started

    columns = list(reference.features.columns)
    rows = sweep(in_dist, shifted, len(columns))
    best = recommend(rows, [s.name for s in shifted])

    def rate_entry(scores: WindowScores) -> dict[str, object]:
        hits = int(scores.detected.sum())
        return {
            "rate": scores.rate,
            "ci95": [round(v, 4) for v in wilson(hits, len(scores.detected))],
            "n_windows": len(scores.detected),
            "mean_drift_score": float(scores.drift_scores.mean()),
            "column_rates": {
                c: float((scores.scores[:, j] < settings.drift_column_threshold).mean())
                for j, c in enumerate(columns)
            },
        }

    summary: dict[str, object] = {
        "command": "python -m digitloop_bench.drift calibrate",
        "model": model_name,
        "settings": settings.model_dump(),
        "window_size": window_size,
        "shifted_share_of_window": mix,
        "reference_size": len(reference.features),
        "false_alarms": rate_entry(in_dist),
        "power": {s.name: rate_entry(s) for s in shifted},
        "targets": {"false_alarm_rate_max": TARGET_FALSE_ALARMS, "power_min": TARGET_POWER},
        "meets_targets": bool(
            in_dist.rate <= TARGET_FALSE_ALARMS and all(s.rate >= TARGET_POWER for s in shifted)
        ),
        "recommended": best,
        "evidently_default_false_alarm_rate": default_fa,
        "timing_10k": timing,
        "bench_seconds": round(elapsed, 1),
        "sweep": rows,
    }
    emit(summary, as_json, _table(summary))


def _table(summary: dict[str, Any]) -> Table:
    settings = summary["settings"]
    table = Table(
        title=f"drift step on {summary['window_size']}-image windows vs "
        f"{summary['reference_size']} reference digits ({summary['model']}); "
        f"column p < {settings['drift_column_threshold']}, "
        f"share >= {settings['drift_threshold']}",
    )
    for column in ("population", "windows", "detected", "95% interval", "mean share", "target"):
        table.add_column(column, justify="left" if column == "population" else "right")

    def add_row(population: str, entry: dict, target: str) -> None:
        table.add_row(
            population,
            str(entry["n_windows"]),
            f"{entry['rate']:.3f}",
            f"{entry['ci95'][0]:.3f}-{entry['ci95'][1]:.3f}",
            f"{entry['mean_drift_score']:.3f}",
            target,
        )

    add_row("unshifted MNIST (false alarms)", summary["false_alarms"], f"<= {TARGET_FALSE_ALARMS}")
    mix = summary["shifted_share_of_window"]
    for name, entry in summary["power"].items():
        population = name if mix == 1.0 else f"{name} ({mix:.0%} of each window)"
        add_row(population, entry, f">= {TARGET_POWER}")
    timing = summary["timing_10k"]
    table.caption = (
        f"10,000 predictions: featurise {timing['featurise_s']} s + Evidently "
        f"{timing['evidently_s']} s = {timing['drift_step_s']} s (report render "
        f"{timing['render_s']} s)"
    )
    if summary["recommended"]:
        best = summary["recommended"]
        table.caption += (
            f"; best in sweep: column p < {best['column_threshold']}, share >= "
            f"{best['drift_threshold']} ({best['min_columns']} columns): false alarms "
            f"{best['false_alarm_rate']:.3f}, worst power {best['min_power']:.3f}"
        )
    if summary["evidently_default_false_alarm_rate"] is not None:
        default_fa = summary["evidently_default_false_alarm_rate"]
        table.caption += f"; Evidently defaults: false alarms {default_fa:.3f}"
    return table


def _timing_table(timing: dict[str, object]) -> Table:
    table = Table("step", "seconds", title=f"drift step on {timing['n']} predictions")
    for key in ("evidently_import_s", "featurise_s", "evidently_s", "drift_step_s", "render_s"):
        table.add_row(key.removesuffix("_s"), str(timing[key]))
    return table


# -- after a promotion: a champion fine-tuned on a drifted population -------------------

NEW_SHIFTS = ("typeset", "thick", "small_offcentre")


def adapted_rules(grid: tuple[float, ...]) -> dict[str, tuple[str, ...]]:
    """The rules `adapted` compares: each names the references a window must drift against.

    ``mix_<w>``: MNIST's and the adapted reference mixed with an adapted share w (``mix_0``
    is MNIST alone, ``mix_1`` the adapted images alone); ``trained``: the images the
    champion was trained on instead; ``pooled``: MNIST's and the adapted images pooled into
    one reference (with its own embedding summary).
    """
    return {
        "mnist only (before)": ("mix_0.0",),
        "mnist and adapted": ("mix_0.0", "mix_1.0"),
        "mnist and trained-on images": ("mix_0.0", "trained"),
        "every mix (the drift step)": tuple(f"mix_{w}" for w in grid),
        "pooled (mnist + adapted images)": ("pooled",),
    }


@dataclass(frozen=True)
class Population:
    """Images a window is drawn from: ``parts`` of images, each a share of every window."""

    name: str
    parts: tuple[np.ndarray, ...]
    shares: tuple[float, ...] = (1.0,)

    @property
    def images(self) -> np.ndarray:
        return np.concatenate(self.parts)

    def window_rows(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """Row indices into :attr:`images` of one window, without replacement in each part."""
        rows, offset, taken = [], 0, 0
        for i, (part, share) in enumerate(zip(self.parts, self.shares, strict=True)):
            n = size - taken if i == len(self.parts) - 1 else round(share * size)
            rows.append(offset + rng.choice(len(part), size=n, replace=False))
            offset, taken = offset + len(part), taken + n
        return np.concatenate(rows)


def adapted_references(
    net: nn.Module,
    mnist_images: np.ndarray,
    unseen: np.ndarray,
    trained: np.ndarray,
    settings: DriftSettings,
) -> dict[str, Reference]:
    """The references the rules use (see :func:`adapted_rules`), under the adapted champion.

    The mixes are built as the drift step builds them (:func:`mixture`, the adapted images
    featurised with MNIST's embedding summary).
    """
    mnist = build_reference(net, mnist_images, settings.reference_spec())
    unseen_features = featurise(net, unseen, mnist.summary)
    references = {
        "pooled": build_reference(net, np.concatenate([mnist_images, unseen])),
        "trained": dataclasses.replace(mnist, features=featurise(net, trained, mnist.summary)),
    }
    for share in mixture_grid(settings.drift_mixture_steps):
        rows = mixture(mnist.features, unseen_features, share, settings.drift_reference_seed)
        references[f"mix_{share}"] = dataclasses.replace(mnist, features=rows)
    return references


Cell = dict[str, np.ndarray]  # one population, size and reference: detected, share, scores


def score_windows(
    net: nn.Module,
    populations: list[tuple[Population, int]],
    references: dict[str, Reference],
    tests: ColumnTests,
    sizes: list[int],
    rules: dict[str, tuple[str, ...]],
    rng: np.random.Generator,
) -> dict[str, dict[int, dict[str, Cell]]]:
    """Every window's verdict against every reference, and the rows it was drawn from.

    Returns ``[population][size][reference] -> {"detected", "share", "scores", "rows"}``;
    the same windows are judged against each reference.
    """
    tables = {name: tests.matrix(ref.features) for name, ref in references.items()}
    out: dict[str, dict[int, dict[str, Cell]]] = {}
    for population, n_windows in populations:
        images = population.images
        outputs = model_outputs(net, images)
        frames: dict[str, np.ndarray] = {}  # by summary: the mixes share MNIST's
        out[population.name] = {}
        for size in sizes:
            rows = np.stack([population.window_rows(size, rng) for _ in range(n_windows)])
            cells = {}
            for name, ref in references.items():
                key = ref.summary.fingerprint()
                if key not in frames:
                    frames[key] = tests.matrix(feature_frame(images, outputs, ref.summary))
                verdicts = [tests.check(frames[key][r], tables[name]) for r in rows]
                cells[name] = {
                    "detected": np.array([v.drift_detected for v in verdicts]),
                    "share": np.array([v.drift_score for v in verdicts]),
                    "scores": np.stack([v.scores for v in verdicts]),
                    "rows": rows,
                }
            out[population.name][size] = cells
            stderr.print(
                f"{population.name}, {size}-image windows: "
                + ", ".join(
                    f"{rule} {int(apply_rule(cells, names).sum())}/{n_windows}"
                    for rule, names in rules.items()
                )
            )
    return out


def apply_rule(cells: dict[str, Cell], names: tuple[str, ...]) -> np.ndarray:
    """The drift step's combined verdict (:func:`combine`) per window, over ``names``."""
    n = len(cells[names[0]]["detected"])
    return np.array(
        [
            combine(
                [bool(cells[name]["detected"][w]) for name in names],
                [float(cells[name]["share"][w]) for name in names],
            )[0]
            for w in range(n)
        ]
    )


def verify_against_step(
    net: nn.Module,
    populations: list[tuple[Population, int]],
    scored: dict[str, dict[int, dict[str, Cell]]],
    references: dict[str, Reference],
    rules: dict[str, tuple[str, ...]],
    settings: DriftSettings,
    n_per_cell: int,
) -> dict[str, int]:
    """Run the drift step itself on the first windows of each population and size: MNIST
    alone (:func:`detect_drift`, per-column scores too) and every mix
    (:func:`detect_drift_adapted`); count where it agrees with the direct tests here."""
    mnist = references["mix_0.0"]
    adapted = dataclasses.replace(mnist, features=references["mix_1.0"].features)
    step_rule = rules["every mix (the drift step)"]
    checked = agreed = 0
    for population, _ in populations:
        images = population.images
        for cells in scored[population.name].values():
            before, every = cells["mix_0.0"], apply_rule(cells, step_rule)
            for w in range(min(n_per_cell, len(before["rows"]))):
                window = images[before["rows"][w]]
                plain = detect_drift(net, window, mnist, settings)
                scores = [plain.features[c].score for c in mnist.features.columns]
                mixed = detect_drift_adapted(net, window, mnist, adapted, settings)
                same = (
                    plain.drift_detected == bool(before["detected"][w])
                    and np.allclose(scores, before["scores"][w])
                    and mixed.drift_detected == bool(every[w])
                )
                checked, agreed = checked + 1, agreed + same
    return {"windows_checked": checked, "agreed": agreed}


def adapted(
    model_file: Annotated[
        Path | None,
        typer.Option(help="The champion: a DigitNet state dict (torch.save).", exists=True),
    ] = None,
    adapted_file: Annotated[
        Path | None,
        typer.Option(
            help="The champion already fine-tuned (a state dict): skips the fine-tune. "
            "Must come from the same --shift, --train-images and --seed.",
        ),
    ] = None,
    save_adapted: Annotated[
        Path | None, typer.Option(help="Save the fine-tuned champion's state dict here.")
    ] = None,
    shift: Annotated[str, typer.Option(help="The population the champion adapts to.")] = "segments",
    train_images: Annotated[
        int, typer.Option(min=50, help="Labelled images of it the champion is fine-tuned on.")
    ] = 300,
    reference_images: Annotated[
        int | None,
        typer.Option(
            min=100, help="Images of it in the adapted reference (default: the setting's)."
        ),
    ] = None,
    windows: Annotated[
        int, typer.Option(min=10, help="Unshifted MNIST windows per size (false alarms).")
    ] = 300,
    adapted_windows: Annotated[
        int, typer.Option(min=5, help="Windows of the adapted population per size.")
    ] = 100,
    shift_windows: Annotated[
        int, typer.Option(min=5, help="Windows of each new shift and of each mix per size.")
    ] = 50,
    new_shifts: Annotated[
        list[str] | None, typer.Option("--new-shift", help="New shifts (repeatable).")
    ] = None,
    sizes: Annotated[
        list[int] | None, typer.Option("--window-size", help="Window sizes (repeatable).")
    ] = None,
    mixes: Annotated[
        list[float] | None,
        typer.Option(
            "--mix", min=0.0, max=1.0, help="Adapted share of mixed windows (repeatable)."
        ),
    ] = None,
    pool: Annotated[int, typer.Option(min=500, help="Images per generated population.")] = 2000,
    mnist_limit: Annotated[
        int | None, typer.Option(help="Fine-tune on the first N MNIST digits only; unset: all.")
    ] = None,
    verify: Annotated[
        int, typer.Option(min=0, help="Windows per cell also run through Evidently's report.")
    ] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the populations and windows.")] = 0,
    threads: ThreadsOption = None,
    mnist: MnistOption = None,
    as_json: JsonOption = False,
) -> None:
    """Drift after a promotion: a champion fine-tuned on --shift, judged by each rule.

    The loop fine-tunes the champion on labelled traffic of a drifted population, as
    pipelines/steps/retrain.py does (MNIST plus --train-images of it, LoopSettings'
    epochs and extra share), then watches windows of: unshifted MNIST (every alarm is a
    false alarm), fresh drawings of the adapted population (an alarm retrains for nothing),
    a mix of both, and populations it never saw (an alarm is a hit). Each rule names the
    references a window must drift against (:func:`adapted_rules`); "every mix" is the drift
    step's, with the adapted reference drawn from drawings the champion was not trained on.
    """
    setup_logging()
    with cli_errors():
        import torch

        from model.data import load_mnist
        from model.evaluate import evaluate
        from model.network import DigitNet
        from model.preprocess import preprocess_batch
        from pipelines.settings import LoopSettings
        from pipelines.steps.retrain import fine_tune_on_feedback

        if threads:
            torch.set_num_threads(threads)
        chosen = new_shifts or list(NEW_SHIFTS)
        unknown = [s for s in [shift, *chosen] if s not in SHIFTS]
        if unknown:
            raise typer.BadParameter(f"unknown shift(s) {unknown}; choose from {list(SHIFTS)}")
        sizes = sizes or [200, 400]
        mixes = mixes or [0.25, 0.5]
        settings = DriftSettings()
        reference_images = reference_images or settings.drift_adapted_reference_size
        loop = LoopSettings()
        data = load_mnist(mnist)
        champion, champion_name = load_net(None, model_file, data.x_train, data.y_train, seed, None)
        spec = settings.reference_spec()
        reference_idx, holdout = split_indices(len(data.x_test), spec.size, spec.seed)
        mnist_images, accepted = preprocess_batch(data.x_test[reference_idx])
        x_in, _ = in_distribution(data.x_test[holdout], data.y_test[holdout])
        rng = np.random.default_rng(seed)

        def drawn(name: str, n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
            # Labels (and digits to restyle) from the held-out half; disjoint drawings by seed.
            idx = rng.choice(holdout, size=min(n, len(holdout)), replace=False)
            return make_shift(name, data.x_test[idx], data.y_test[idx], seed=seed + offset)

        x_train, y_train = drawn(shift, train_images, 1)
        x_unseen, _ = drawn(shift, reference_images, 2)
        x_fresh, y_fresh = drawn(shift, pool, 3)
        started = time.perf_counter()
        if adapted_file is not None and adapted_file.is_file():
            net = DigitNet()
            net.load_state_dict(torch.load(adapted_file, map_location="cpu", weights_only=True))
            net.eval()
            tuned_s = None
        else:
            stderr.print(
                f"fine-tuning on {len(x_train)} {shift} images + "
                f"{len(data.x_train[:mnist_limit])} MNIST"
            )
            tuned = fine_tune_on_feedback(
                champion,
                data,
                x_train,
                y_train,
                loop.model_copy(update={"retrain_mnist_limit": mnist_limit}),
            )
            net, tuned_s = tuned.net.eval(), round(tuned.seconds, 1)
            if save_adapted is not None:
                save_adapted.parent.mkdir(parents=True, exist_ok=True)
                torch.save(net.state_dict(), save_adapted)
        accuracy = {
            "champion_mnist_test": evaluate(champion, data.x_test, data.y_test).accuracy,
            "adapted_mnist_test": evaluate(net, data.x_test, data.y_test).accuracy,
            f"champion_{shift}_fresh": evaluate(champion, x_fresh, y_fresh).accuracy,
            f"adapted_{shift}_fresh": evaluate(net, x_fresh, y_fresh).accuracy,
            f"adapted_{shift}_trained_on": evaluate(net, x_train, y_train).accuracy,
        }
        stderr.print(", ".join(f"{k} {v:.4f}" for k, v in accuracy.items()))
        references = adapted_references(
            net, mnist_images[accepted], x_unseen, x_train[-reference_images:], settings
        )
        rules = adapted_rules(mixture_grid(settings.drift_mixture_steps))
        tests = column_tests(list(references["mix_0.0"].features.columns), settings)
        populations = [
            (Population("mnist", (x_in,)), windows),
            (Population(f"{shift} (not trained on)", (x_fresh,)), adapted_windows),
            *(
                (
                    Population(f"mnist + {mix:.0%} {shift}", (x_in, x_fresh), (1 - mix, mix)),
                    shift_windows,
                )
                for mix in mixes
            ),
            *(
                (Population(name, (drawn(name, pool, 10 + i)[0],)), shift_windows)
                for i, name in enumerate(chosen)
            ),
        ]
        prepared = time.perf_counter()
        scored = score_windows(net, populations, references, tests, sizes, rules, rng)
        scored_at = time.perf_counter()
        verified = (
            verify_against_step(net, populations, scored, references, rules, settings, verify)
            if verify
            else None
        )
        seconds = {
            "fine_tune_and_references": round(prepared - started, 1),
            "windows": round(scored_at - prepared, 1),
            "verify": round(time.perf_counter() - scored_at, 1),
        }

    results: dict[str, dict[str, dict[str, dict[str, object]]]] = {}
    for population, by_size in scored.items():
        results[population] = {}
        for size, per_reference in by_size.items():
            results[population][str(size)] = {}
            for rule, names in rules.items():
                detected = apply_rule(per_reference, names)
                hits = int(detected.sum())
                results[population][str(size)][rule] = {
                    "detected": hits,
                    "windows": len(detected),
                    "rate": hits / len(detected),
                    "ci95": [round(v, 4) for v in wilson(hits, len(detected))],
                }
    summary: dict[str, object] = {
        "command": "python -m digitloop_bench.drift adapted",
        "champion": champion_name,
        "adapted_to": shift,
        "train_images": len(x_train),
        "reference_images": {name: len(ref.features) for name, ref in references.items()},
        "fine_tune_seconds": tuned_s,
        "seconds": seconds,
        "accuracy": accuracy,
        "settings": settings.model_dump(),
        "rules": {rule: list(names) for rule, names in rules.items()},
        "results": results,
        "verified_with_evidently_report": verified,
    }
    emit(summary, as_json, _adapted_table(summary))


def _adapted_table(summary: dict[str, Any]) -> Table:
    table = Table(
        title=f"drift after adapting to {summary['adapted_to']} "
        f"({summary['train_images']} images); detected / windows per rule"
    )
    table.add_column("population")
    table.add_column("size", justify="right")
    for rule in summary["rules"]:
        table.add_column(rule, justify="right")
    for population, by_size in summary["results"].items():
        for size, by_rule in by_size.items():
            table.add_row(
                population,
                size,
                *(f"{r['detected']}/{r['windows']} ({r['rate']:.3f})" for r in by_rule.values()),
            )
    verified = summary["verified_with_evidently_report"]
    if verified:
        table.caption = (
            f"Evidently's report agreed with the direct tests on {verified['agreed']} of "
            f"{verified['windows_checked']} windows; seconds {summary['seconds']}"
        )
    return table


# -- per-drawing novelty: a minority drawing differently -----------------------------------

NOVELTY_MIXES = (0.1, 0.25, 1.0)
NOVELTY_POWER_GOALS = {0.1: 0.8, 0.25: 0.95, 1.0: 1.0}
COMBINED_FALSE_ALARMS_MAX = 0.03
# One population's outputs: candidate novelty scores, the column-test matrix and which
# drawings the geometry scorer flags.
Prepared = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]


def candidate_scores(
    scorer: NoveltyScorer, embeddings: np.ndarray, logits: np.ndarray
) -> dict[str, np.ndarray]:
    """Every candidate novelty score of one forward pass's outputs; higher is more unusual.

    ``max_probability``: minus the top softmax probability (Hendrycks and Gimpel, 2017);
    ``energy``: minus the logits' log-sum-exp (Liu et al., 2020); ``mahalanobis``: the
    squared distance to the nearest class mean under the shared covariance (Lee et al.,
    2018); ``relative_mahalanobis``: that minus the distance to one Gaussian of all the
    training embeddings (Ren et al., 2021), the scorer :mod:`model.novelty` fits.
    """
    from scipy.special import logsumexp, softmax

    background = dataclasses.replace(scorer, background_whitening=scorer.background_whitening * 0)
    return {
        "max_probability": -softmax(logits, axis=1).max(axis=1),
        "energy": -logsumexp(logits, axis=1),
        "mahalanobis": background.score(embeddings),
        "relative_mahalanobis": scorer.score(embeddings),
    }


def novelty(
    model_file: QuickModelFileOption = None,
    save_model: Annotated[
        Path | None, typer.Option(help="Save the quick model's state dict here.")
    ] = None,
    windows: Annotated[
        int, typer.Option(min=10, help="Unshifted MNIST windows (false alarms).")
    ] = 300,
    shift_windows: Annotated[
        int, typer.Option(min=5, help="Windows per shifted population and mix (power).")
    ] = 50,
    window_size: Annotated[int, typer.Option(min=10, help="Images per window.")] = 200,
    mixes: Annotated[
        list[float] | None,
        typer.Option("--mix", min=0.01, max=1.0, help="Shifted share of a window (repeatable)."),
    ] = None,
    shifts: ShiftsOption = None,
    pool: Annotated[int, typer.Option(min=200, help="Images per shifted population.")] = 2000,
    fit_size: Annotated[
        int, typer.Option(min=500, help="MNIST training digits the scorer is fitted on.")
    ] = 10000,
    share: ShareOption = None,
    alpha: AlphaOption = None,
    geometry_alpha: Annotated[
        float | None,
        typer.Option(help="The geometry window test's p-value threshold (default: the setting)."),
    ] = None,
    seed: SeedOption = 0,
    threads: ThreadsOption = None,
    mnist: MnistOption = None,
    as_json: JsonOption = False,
) -> None:
    """Per-drawing novelty: false alarms and power of the window test, alone and OR'ed with
    the Evidently column tests, on windows where a share of the drawings is shifted.

    The scorer is fitted on --fit-size MNIST training digits and calibrated on the drift
    reference's half of MNIST test (as logged by the service); windows draw their unshifted
    drawings from the other half. Clean windows of that half drawn on the sketchpad's canvas
    (:func:`digitloop_bench.shifts.on_the_canvas`, "sketchpad") show what another rendering
    of the same digits does to each test. Every candidate score of :func:`candidate_scores` is run
    through the same windows, each with its own threshold at the same share.

    Beside them, the geometry window test (:mod:`pipelines.drift.geometry`), fitted and
    calibrated on the same reference half, and the drift step's verdict with it: "either
    (+geometry)", Evidently or the novelty test or the geometry test.
    """
    setup_logging()
    with cli_errors():
        import torch

        from model.data import load_mnist
        from model.novelty import calibrate_threshold, fit_novelty, logged_source, window_test
        from model.settings import ModelSettings

        if threads:
            torch.set_num_threads(threads)
        chosen = chosen_shifts(shifts)
        mixes = sorted(mixes or NOVELTY_MIXES)
        settings = DriftSettings()
        share = share if share is not None else ModelSettings().novelty_share
        alpha = alpha if alpha is not None else settings.drift_novelty_alpha
        geometry_alpha = (
            geometry_alpha if geometry_alpha is not None else settings.drift_geometry_alpha
        )
        data = load_mnist(mnist)
        net, model_name = load_net(None, model_file, data.x_train, data.y_train, seed, save_model)
        started = time.perf_counter()
        spec = settings.reference_spec()
        reference_idx, holdout = split_indices(len(data.x_test), spec.size, spec.seed)
        calibration = logged_source("mnist", data.x_test[reference_idx], data.y_test[reference_idx])
        train_source = logged_source("mnist", data.x_train, data.y_train, fit_size, seed)
        scorer = fit_novelty(net, [train_source], [calibration], share)
        reference = mnist_reference(net, data.x_test, spec)
        tests = column_tests(list(reference.features.columns), settings)
        reference_matrix = tests.matrix(reference.features)
        # As the drift step fits it: on the reference's digits, by the answers it recorded.
        geometry = mnist_geometry(reference, data.x_test, settings.drift_geometry_share)

        def prepare(images: np.ndarray) -> Prepared:
            outputs = model_outputs(net, images)
            frame = feature_frame(images, outputs, reference.summary)
            scores = candidate_scores(scorer, outputs.embeddings, outputs.logits)
            unusual = geometry.flagged(
                geometry.score(geometry_features(images), outputs.probabilities.argmax(axis=1))
            )
            return scores, tests.matrix(frame), unusual

        calibration_scores, _, _ = prepare(calibration.images)
        thresholds = {
            name: calibrate_threshold({"mnist": values}, share)[:2]
            for name, values in calibration_scores.items()
        }
        x_in, _ = in_distribution(data.x_test[holdout], data.y_test[holdout])
        clean = prepare(x_in)
        drawn = prepare(on_the_canvas(data.x_test[holdout], data.y_test[holdout])[0])
        rng = np.random.default_rng(seed)
        populations: dict[str, Prepared] = {}
        for i, name in enumerate(chosen):
            rows = rng.choice(holdout, size=min(pool, len(holdout)), replace=False)
            x_s, _ = make_shift(name, data.x_test[rows], data.y_test[rows], seed=seed + 1 + i)
            populations[name] = prepare(x_s)

        def run(
            n_windows: int, shifted: Prepared | None, mix: float, base: Prepared = clean
        ) -> dict[str, object]:
            n_shifted = 0 if shifted is None else round(mix * window_size)
            counts = {name: 0 for name in thresholds}
            evidently = combined = geometric = combined_geometry = 0
            flagged_shares = []
            for _ in range(n_windows):
                rows_in = rng.choice(len(base[1]), size=window_size - n_shifted, replace=False)
                parts = [(*base, rows_in)]
                if shifted is not None:
                    rows_s = rng.choice(len(shifted[1]), size=n_shifted, replace=False)
                    parts.append((*shifted, rows_s))
                matrix = np.concatenate([m[r] for _, m, _, r in parts])
                drifted = tests.check(matrix, reference_matrix).drift_detected
                evidently += drifted
                unusual = sum(int(g[r].sum()) for _, _, g, r in parts)
                odd_shapes = window_test(unusual, window_size, geometry.share, geometry_alpha)[0]
                geometric += odd_shapes
                for name, (threshold, calibrated) in thresholds.items():
                    flagged = sum(int((sc[name][r] > threshold).sum()) for sc, _, _, r in parts)
                    hit = window_test(flagged, window_size, calibrated, alpha)[0]
                    counts[name] += hit
                    if name == scorer.method:
                        combined += hit or drifted
                        combined_geometry += hit or drifted or odd_shapes
                        flagged_shares.append(flagged / window_size)
            return {
                "windows": n_windows,
                "novelty": _rate(counts[scorer.method], n_windows),
                "evidently": _rate(evidently, n_windows),
                "combined": _rate(combined, n_windows),
                "geometry": _rate(geometric, n_windows),
                "combined_geometry": _rate(combined_geometry, n_windows),
                "mean_flagged_share": float(np.mean(flagged_shares)),
                "candidates": {name: _rate(c, n_windows) for name, c in counts.items()},
            }

        results: dict[str, dict[str, object]] = {"mnist": {"0": run(windows, None, 0.0)}}
        stderr.print(f"mnist: {results['mnist']['0']['combined']}")
        for name, shifted in populations.items():
            results[name] = {}
            for mix in mixes:
                results[name][f"{mix:g}"] = entry = run(shift_windows, shifted, mix)
                stderr.print(
                    f"{name} {mix:.0%}: novelty {entry['novelty']['hits']}, evidently "
                    f"{entry['evidently']['hits']}, combined {entry['combined']['hits']}, "
                    f"geometry {entry['geometry']['hits']}, combined with geometry "
                    f"{entry['combined_geometry']['hits']} of {shift_windows}"
                )
        # Last, so that the rows above draw the same windows as they did before it.
        results["sketchpad"] = {"0": run(windows, None, 0.0, base=drawn)}
        stderr.print(f"sketchpad: {results['sketchpad']['0']['combined_geometry']}")
        per_drawing = {
            name: {
                **{
                    method: float((values[method] > thresholds[method][0]).mean())
                    for method in thresholds
                },
                "geometry": float(odd.mean()),
            }
            for name, (values, _, odd) in [
                ("mnist", clean),
                ("sketchpad", drawn),
                *populations.items(),
            ]
        }
        cost = _score_cost(scorer, model_outputs(net, x_in[:1]).embeddings)
        seconds = round(time.perf_counter() - started, 1)

    summary: dict[str, object] = {
        "command": "python -m digitloop_bench.drift novelty",
        "model": model_name,
        "window_size": window_size,
        "share": share,
        "alpha": alpha,
        "scorer": scorer.summary(),
        "critical_count": critical_count(window_size, scorer.share, alpha),
        "geometry": geometry.summary(),
        "geometry_alpha": geometry_alpha,
        "geometry_critical_count": critical_count(window_size, geometry.share, geometry_alpha),
        "thresholds": {name: list(t) for name, t in thresholds.items()},
        "evidently_settings": {
            "drift_column_threshold": settings.drift_column_threshold,
            "drift_threshold": settings.drift_threshold,
        },
        "per_drawing_flagged": per_drawing,
        "results": results,
        "goals": {
            "combined_false_alarms_max": COMBINED_FALSE_ALARMS_MAX,
            "power": {f"{k:g}": v for k, v in NOVELTY_POWER_GOALS.items()},
        },
        "score_cost_us": cost,
        "seconds": seconds,
    }
    emit(summary, as_json, _novelty_table(summary))


def _rate(hits: int, n: int) -> dict[str, object]:
    return {
        "hits": int(hits),
        "n": n,
        "rate": hits / n,
        "ci95": [round(v, 4) for v in wilson(int(hits), n)],
    }


def _score_cost(scorer: NoveltyScorer, embedding: np.ndarray, repeat: int = 5000) -> float:
    """Microseconds to score one request's embedding (median of five runs)."""
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat // 5):
            scorer.flagged(scorer.score(embedding))
        runs.append((time.perf_counter() - started) / (repeat // 5) * 1e6)
    return round(float(np.median(runs)), 1)


def _novelty_table(summary: dict[str, Any]) -> Table:
    scorer = summary["scorer"]
    table = Table(
        title=f"novelty ({scorer['method']}, {scorer['share']:.2%} of held-out MNIST flagged, "
        f"window test p < {summary['alpha']}: >= {summary['critical_count']} of "
        f"{summary['window_size']}) and Evidently; detected / windows ({summary['model']})"
    )
    columns = ("novelty", "Evidently", "either", "geometry", "either (+geometry)")
    for column in ("population", "shifted", *columns, "95% (+geometry)"):
        table.add_column(column, justify="left" if column == "population" else "right")
    keys = ("novelty", "evidently", "combined", "geometry", "combined_geometry")
    for population, by_mix in summary["results"].items():
        for mix, entry in by_mix.items():
            low, high = entry["combined_geometry"]["ci95"]
            table.add_row(
                population,
                f"{float(mix):.0%}",
                *(f"{entry[key]['hits']}/{entry['windows']}" for key in keys),
                f"{low:.3f}-{high:.3f}",
            )
    geometry = summary["geometry"]
    table.caption = (
        f"scoring one request: {summary['score_cost_us']} us; geometry: "
        f"{geometry['share']:.2%} of held-out MNIST flagged, p < {summary['geometry_alpha']}: "
        f">= {summary['geometry_critical_count']} of {summary['window_size']}"
    )
    return table


# -- the ceiling: a detector told the style -------------------------------------------------


def ceiling(
    model_file: QuickModelFileOption = None,
    windows: Annotated[int, typer.Option(min=10, help="Windows per style and mix.")] = 1000,
    window_size: Annotated[int, typer.Option(min=10, help="Images per window.")] = 200,
    mix: Annotated[float, typer.Option(min=0.01, max=1.0, help="Shifted share of a window.")] = 0.1,
    shifts: ShiftsOption = None,
    pool: Annotated[int, typer.Option(min=20, help="Images per shifted population.")] = 2000,
    held_out: Annotated[
        int, typer.Option(min=20, help="Held-out MNIST digits (as logged and on the canvas).")
    ] = 5000,
    share: ShareOption = None,
    alpha: AlphaOption = None,
    seed: SeedOption = 0,
    threads: ThreadsOption = None,
    mnist: MnistOption = None,
    as_json: JsonOption = False,
) -> None:
    """The ceiling of a per-drawing window test: a detector told each style, trained
    against MNIST as logged and drawn on the canvas, and what it flags of the style's
    resampling without the style (see :mod:`digitloop_bench.ceiling`)."""
    from digitloop_bench.ceiling import style_ceilings

    setup_logging()
    with cli_errors():
        import torch

        from model.data import load_mnist
        from model.settings import ModelSettings

        if threads:
            torch.set_num_threads(threads)
        chosen = chosen_shifts(shifts)
        settings = DriftSettings()
        share = share if share is not None else ModelSettings().novelty_share
        alpha = alpha if alpha is not None else settings.drift_novelty_alpha
        data = load_mnist(mnist)
        net, model_name = load_net(None, model_file, data.x_train, data.y_train, seed, None)
        started = time.perf_counter()
        spec = settings.reference_spec()
        reference_idx, holdout = split_indices(len(data.x_test), spec.size, spec.seed)
        if len(holdout) > held_out:
            holdout = np.sort(np.random.default_rng(seed).choice(holdout, held_out, replace=False))
        ceilings = style_ceilings(
            net,
            (data.x_test[reference_idx], data.y_test[reference_idx]),
            (data.x_test[holdout], data.y_test[holdout]),
            chosen,
            share=share,
            alpha=alpha,
            window_size=window_size,
            mix=mix,
            windows=windows,
            pool=pool,
            seed=seed,
        )
    summary: dict[str, object] = {
        "command": "python -m digitloop_bench.drift ceiling",
        "model": model_name,
        "window_size": window_size,
        "mix": mix,
        "share": share,
        "alpha": alpha,
        "styles": {name: c.as_dict() for name, c in ceilings.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    emit(summary, as_json, _ceiling_table(summary))


def _ceiling_table(summary: dict[str, Any]) -> Table:
    table = Table(
        title=f"a detector told the style: {summary['mix']:.0%} of {summary['window_size']}-image "
        f"windows shifted, {summary['share']:.0%} of held-out MNIST and canvas digits flagged, "
        f"p < {summary['alpha']} ({summary['model']})"
    )
    columns = ("style", "flagged", "its resampling alone", "detected", "clean detected")
    for column in columns:
        table.add_column(column, justify="left" if column == "style" else "right")
    for style, row in summary["styles"].items():
        control = row["control_flagged"]
        table.add_row(
            style,
            f"{row['flagged']:.1%}",
            "-" if control is None else f"{control:.1%}",
            *(
                ", ".join(f"{row[key][b]}" for b in ("mnist", "canvas")) + f" of {row['windows']}"
                for key in ("hits", "false_alarms")
            ),
        )
    table.caption = (
        f"windows detected with MNIST, canvas digits for the rest; seconds {summary['seconds']}"
    )
    return table


app = typer.Typer(help="Measure the drift step.", no_args_is_help=True)
app.command("calibrate")(bench)
app.command("adapted")(adapted)
app.command("novelty")(novelty)
app.command("ceiling")(ceiling)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
