"""Drift: Evidently's check of the latest predictions against the champion's reference.

A champion trained on MNIST only is judged against MNIST. One fine-tuned on feedback is
judged against MNIST, the traffic it was adapted to, and mixes of the two
(:func:`~pipelines.drift.detect.detect_drift_adapted`): traffic it was built or adapted for
is no reason to retrain it.

Beside Evidently's distribution tests, the share of drawings the champion's novelty scorer
flags is tested against its calibrated share (:mod:`pipelines.drift.novelty`): a minority
of users drawing differently. The window drifts when either test says so; both are in the
output and the report (``novelty_report.json`` beside Evidently's). A champion registered
without a scorer is judged by Evidently alone.

A third test reads the logged pixels: the share of drawings whose stroke geometry is unusual
for the class answered, against MNIST's (:mod:`pipelines.drift.geometry`; a thick marker or
a hairline pen, which the network was trained to answer alike). It is fitted on the MNIST
reference's digits, so it judges only a champion judged against MNIST alone: for one
fine-tuned on feedback the traffic it was adapted to would stay unusual to it for good.
Its verdict and counts are in the output and ``geometry_report.json``.

A window with too few predictions is no verdict: the step says why and reports no drift.
The report (HTML and JSON) goes to the store under ``reports/<run_id>/``.

The adapted reference is built once per version, from the traffic up to the first window
it is checked on, and kept in the store (``loop-state/references/``) as well as in the data
folder: each Argo step has a data folder of its own (an ``emptyDir``), so a cache there
alone was rebuilt on every run, reading the champion's traffic since its training range
began (a read that grew with its age) and taking ever newer traffic as its reference.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from model.network import model_outputs
from pipelines.drift.adapted import TrainingRange, adapted_reference_path, adapted_rows
from pipelines.drift.detect import (
    WindowTooSmallError,
    adapted_reference,
    detect_drift,
    detect_drift_adapted,
    model_reference,
)
from pipelines.drift.geometry import judge_geometry, mnist_geometry
from pipelines.drift.novelty import cluster_flagged, clusters_png, judge_window, window_scores
from pipelines.outputs import CollectOutput, DriftOutput
from pipelines.steps.context import LoopContext

REFERENCES_PREFIX = "loop-state/references/"
_CONTENT_TYPES = {"html": "text/html", "json": "application/json", "png": "image/png"}


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
    # One forward pass of the window: Evidently's features, the novelty scores the log lacks
    # and the clusters of the flagged drawings all read it.
    outputs = model_outputs(net, images)
    adapted_fields: dict[str, object] = {}
    try:
        if adapted is None:
            result = detect_drift(net, images, reference, ctx.drift, outputs=outputs)
        else:
            result = mixed = detect_drift_adapted(
                net, images, reference, adapted, ctx.drift, outputs=outputs
            )
            adapted_fields = {
                "nearest_adapted_share": mixed.nearest_share,
                "mnist_drift_score": mixed.mnist.drift_score,
                "mixture_scores": mixed.scores,
            }
    except WindowTooSmallError as exc:
        return DriftOutput(drift_detected=False, drift_score=0.0, skipped=str(exc))
    files = result.report_files()
    scorer = ctx.registry.novelty(info)
    novelty_fields: dict[str, object] = {}
    novelty = None
    if scorer is not None:
        scores, from_log = window_scores(recent, outputs.embeddings, scorer, info.version)
        novelty = judge_window(scores, scorer, ctx.drift.drift_novelty_alpha, from_log)
        # What the flagged drawings look like: a few groups, examples of each in the report.
        flagged = np.flatnonzero(scorer.flagged(scores))
        labels = recent["label"].to_numpy(dtype=np.int64)[flagged]
        clusters = cluster_flagged(outputs.embeddings[flagged], scores[flagged], labels)
        if clusters:
            files["novelty_clusters.png"] = clusters_png(images[flagged], clusters)
        novelty_fields = {
            "novelty_detected": novelty.detected,
            "novelty_flagged": novelty.flagged,
            "novelty_share": novelty.share,
            "novelty_p_value": novelty.p_value,
            "novelty_clusters": (
                f"reports/{ctx.run_id}/novelty_clusters.png" if clusters else None
            ),
        }
        files["novelty_report.json"] = json.dumps(
            {
                "novelty": novelty.as_dict(),
                "evidently": {
                    "drift_detected": result.drift_detected,
                    "drift_score": result.drift_score,
                },
                "scorer": scorer.summary(),
                # Members are rows of the window's flagged drawings, not of the window.
                "clusters": [c.as_dict() for c in clusters],
                "model_version": info.version,
            }
        ).encode()
    geometry_fields: dict[str, object] = {}
    geometry = None
    if adapted is None:
        shapes = mnist_geometry(reference, ctx.mnist.x_test, ctx.drift.drift_geometry_share)
        answered = outputs.probabilities.argmax(axis=1)
        geometry = judge_geometry(images, answered, shapes, ctx.drift.drift_geometry_alpha)
        geometry_fields = {
            "geometry_detected": geometry.detected,
            "geometry_flagged": geometry.flagged,
            "geometry_share": geometry.share,
            "geometry_threshold": geometry.threshold,
            "geometry_p_value": geometry.p_value,
        }
        files["geometry_report.json"] = json.dumps(
            {
                "geometry": geometry.as_dict(),
                "scorer": shapes.summary(),
                # Fitted on the reference's digits grouped by this version's answers.
                "model_version": info.version,
            }
        ).encode()
    for name, data in files.items():
        ctx.store.put(
            f"reports/{ctx.run_id}/{name}",
            data,
            _CONTENT_TYPES[name.rsplit(".", 1)[-1]],
        )
    return DriftOutput.model_validate(
        {
            # Any test: Evidently's distributions, or either flagged share (issue 18).
            "drift_detected": result.drift_detected
            or bool(novelty and novelty.detected)
            or bool(geometry and geometry.detected),
            "evidently_drift_detected": result.drift_detected,
            **novelty_fields,
            **geometry_fields,
            "drift_score": result.drift_score,
            "drifted_columns": tuple(result.drifted_columns),
            "n_current": result.n_current,
            "report": f"reports/{ctx.run_id}/drift_report.html",
            **adapted_fields,
        }
    )
