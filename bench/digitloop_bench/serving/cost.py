"""The CPU cost of one request's work, measured in-process on one thread.

One request's work is what every server does per request whatever its stack: decode the
PNG (:func:`decode_image`), turn the sketch into the 28x28 digit (:func:`to_mnist`) and
run the forward pass on it (:meth:`Classifier.predict` on one image), then score the
novelty of its embedding (:meth:`Classifier.novelty_of`, for a version with a scorer).
Measured here with no HTTP, no framework and one thread, the sum is the least CPU time a
request can take, so ``cores / cost`` is the most requests per second this machine could
answer: the limit every server is reported against.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from model.preprocess import decode_image, to_mnist
from services.inference import Classifier

STAGES = ("decode", "preprocess", "forward", "novelty")


@dataclass(frozen=True)
class Cost:
    """Median milliseconds per stage over ``n`` requests, and the in-process labels."""

    decode: float
    preprocess: float
    forward: float
    n: int
    labels: list[int]
    # Scoring the forward pass's embedding (model.novelty); 0 for a version without a scorer.
    novelty: float = 0.0

    @property
    def total(self) -> float:
        return self.decode + self.preprocess + self.forward + self.novelty

    def as_dict(self) -> dict[str, float]:
        return {
            "decode": round(self.decode, 4),
            "preprocess": round(self.preprocess, 4),
            "forward": round(self.forward, 4),
            "novelty": round(self.novelty, 4),
            "total": round(self.total, 4),
        }


def machine_cores() -> int:
    """The cores this process may run on (the affinity mask, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def limit_rps(cost_ms: float, cores: int) -> float:
    """Requests per second the machine could answer if requests cost only their work."""
    if cost_ms <= 0:
        raise ValueError(f"a request's cost must be positive, got {cost_ms} ms")
    return cores * 1000.0 / cost_ms


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """torch (and, where threadpoolctl is present, BLAS/OpenMP) on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # optional: numpy's small operations here barely use BLAS
            limits = contextlib.nullcontext()
        else:
            limits = threadpool_limits(limits=1)
        with limits:
            yield
    finally:
        torch.set_num_threads(before)


def measure(
    classifier: Classifier, pngs: Sequence[bytes], rounds: int = 2, warmup: int = 20
) -> Cost:
    """Per-stage medians over ``rounds`` passes of the request set, after a warm-up."""
    if not pngs:
        raise ValueError("no images to measure")
    timings: dict[str, list[float]] = {stage: [] for stage in STAGES}
    labels: list[int] = []
    clock = time.perf_counter
    with single_threaded():
        for png in list(pngs)[:warmup]:
            classifier.predict(to_mnist(decode_image(png))[None])
        for round_ in range(rounds):
            for png in pngs:
                t0 = clock()
                image = decode_image(png)
                t1 = clock()
                digit = to_mnist(image)
                t2 = clock()
                probabilities = classifier.predict(digit[None])
                t3 = clock()
                if getattr(classifier, "novelty", None) is not None:
                    # The embedding of that same forward pass (taken again, untimed): the
                    # service scores it as it answers (Classifier.answer).
                    embeddings, _ = classifier.forward(digit[None])
                    t4 = clock()
                    classifier.novelty.flagged(classifier.novelty_of(embeddings))
                    timings["novelty"].append((clock() - t4) * 1000.0)
                else:
                    timings["novelty"].append(0.0)
                timings["decode"].append((t1 - t0) * 1000.0)
                timings["preprocess"].append((t2 - t1) * 1000.0)
                timings["forward"].append((t3 - t2) * 1000.0)
                if round_ == 0:
                    labels.append(int(np.argmax(probabilities[0])))
    medians = {stage: statistics.median(values) for stage, values in timings.items()}
    return Cost(**medians, n=len(timings["decode"]), labels=labels)
