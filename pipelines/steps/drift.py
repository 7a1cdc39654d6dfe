"""Drift: Evidently's check of the latest predictions against the champion's reference.

A champion trained on MNIST only is judged against MNIST. One fine-tuned on feedback is
judged against MNIST, the traffic it was adapted to, and mixes of the two
(:func:`~pipelines.drift.detect.detect_drift_adapted`): traffic it was built or adapted for
is no reason to retrain it.

A window with too few predictions is no verdict: the step says why and reports no drift.
The report (HTML and JSON) goes to the store under ``reports/<run_id>/``.

The adapted reference is built once per version, from the traffic up to the first window
it is checked on, and kept in the store (``loop-state/references/``) as well as in the data
folder: each Argo step has a data folder of its own (an ``emptyDir``), so a cache there
alone was rebuilt on every run, reading the champion's traffic since its training range
began (a read that grew with its age) and taking ever newer traffic as its reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipelines.drift.adapted import TrainingRange, adapted_reference_path, adapted_rows
from pipelines.drift.detect import (
    WindowTooSmallError,
    adapted_reference,
    detect_drift,
    detect_drift_adapted,
    model_reference,
)
from pipelines.outputs import CollectOutput, DriftOutput
from pipelines.steps.context import LoopContext

REFERENCES_PREFIX = "loop-state/references/"


@contextmanager
def stored_copy(ctx: LoopContext, path: Path) -> Iterator[None]:
    """Keep the file at ``path`` in the store too: fetched before the block if the store has
    it and the folder not, and stored after it if the block made or changed it."""
    key = REFERENCES_PREFIX + path.name
    if not path.is_file() and ctx.store.exists(key):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ctx.store.get(key))
    before = path.read_bytes() if path.is_file() else None
    yield
    if path.is_file() and (data := path.read_bytes()) != before:
        ctx.store.put(key, data, "application/octet-stream")


def step_drift(ctx: LoopContext, collect: CollectOutput) -> DriftOutput:
    """Evidently drift of the latest predictions against the champion's reference(s)."""
    window = ctx.window(collect.since, collect.until)
    # Only the newest answers, read back from the window's end: not the whole window.
    recent = window.latest(ctx.loop.drift_window)
    net, info = ctx.registry.load(collect.stable_version)
    reference = model_reference(net, info, ctx.mnist.x_test, ctx.model.data_dir, ctx.drift)
    # The adapted reference is read up to the window it is first checked on, so it holds
    # the traffic the version served as a canary (see pipelines.drift.adapted).
    before = recent["ts"].min().to_pydatetime() if len(recent) else collect.until

    def traffic(trained: TrainingRange, size: int) -> np.ndarray:
        adapted = ctx.window(trained.since, max(before, trained.end))
        rows = adapted_rows(adapted.predictions, adapted.labelled, trained, size, before)
        return adapted.images(rows)

    with stored_copy(ctx, adapted_reference_path(ctx.model.data_dir, info.name, info.version)):
        adapted = adapted_reference(net, info, reference, traffic, ctx.model.data_dir, ctx.drift)
    images = window.images(recent)
    adapted_fields: dict[str, object] = {}
    try:
        if adapted is None:
            result = detect_drift(net, images, reference, ctx.drift)
        else:
            result = mixed = detect_drift_adapted(net, images, reference, adapted, ctx.drift)
            adapted_fields = {
                "nearest_adapted_share": mixed.nearest_share,
                "mnist_drift_score": mixed.mnist.drift_score,
                "mixture_scores": mixed.scores,
            }
    except WindowTooSmallError as exc:
        return DriftOutput(drift_detected=False, drift_score=0.0, skipped=str(exc))
    for name, data in result.report_files().items():
        ctx.store.put(
            f"reports/{ctx.run_id}/{name}",
            data,
            "text/html" if name.endswith(".html") else "application/json",
        )
    return DriftOutput.model_validate(
        {
            "drift_detected": result.drift_detected,
            "drift_score": result.drift_score,
            "drifted_columns": tuple(result.drifted_columns),
            "n_current": result.n_current,
            "report": f"reports/{ctx.run_id}/drift_report.html",
            **adapted_fields,
        }
    )
