"""The reference population each traffic window is compared with, one per model version.

The reference is MNIST test digits passed through the service's preprocessing and
featurised under the model being watched. Two choices matter and are measured, not
guessed:

- **MNIST test, not train.** The model has seen its training digits: on them it is more
  confident than on anything new, so a reference of training digits makes every window of
  fresh digits look drifted in ``confidence`` and ``entropy``.
- **A random half of MNIST test, not the first half.** MNIST's first 5,000 test digits
  come from a different writer population (cleaner) than the last 5,000; a reference of
  the first half against windows of the second differs by about 0.3 standard deviations in
  ink mass and confidence before anything drifts. :func:`split_indices` shuffles with a
  seed; the digits left out are what the calibration benchmark draws in-distribution
  windows from.

A reference is saved as one ``.npz`` (feature columns, the fitted
:class:`~pipelines.drift.features.EmbeddingSummary`, and what it was built from) so the
pipeline builds it once per model version and reuses it. A fine-tuned version also gets a
second one, built from the traffic it was adapted to (:mod:`pipelines.drift.adapted`); its
``source`` names that traffic.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from contracts.errors import DatasetError
from model.network import model_outputs
from model.preprocess import preprocess_batch
from pipelines.drift.features import CLASS_COLUMN, EmbeddingSummary, feature_frame

log = logging.getLogger(__name__)

# Bump when a feature's definition changes: references saved before are rebuilt.
FEATURES_VERSION = 1
# What a reference drawn from MNIST test says it was built from.
MNIST_SOURCE = "mnist-test"


@dataclass(frozen=True)
class ReferenceSpec:
    """How a reference is drawn from MNIST test; part of its cache key."""

    size: int = 5000
    seed: int = 0
    n_components: int = 4


@dataclass(frozen=True)
class Reference:
    """Reference features and the embedding summary fitted on them."""

    features: pd.DataFrame
    summary: EmbeddingSummary
    spec: ReferenceSpec
    model_version: str | None = None
    model_run_id: str | None = None
    features_version: int = FEATURES_VERSION
    source: str = MNIST_SOURCE  # what the images were: MNIST test, or a range of traffic

    @property
    def meta(self) -> dict[str, object]:
        return {
            "spec": asdict(self.spec),
            "model_version": self.model_version,
            "model_run_id": self.model_run_id,
            "features_version": self.features_version,
            "source": self.source,
            "columns": list(self.features.columns),
            "n": len(self.features),
        }

    def matches(
        self,
        spec: ReferenceSpec,
        model_version: str | None,
        model_run_id: str | None,
        source: str = MNIST_SOURCE,
    ) -> bool:
        """Whether this reference was built the way a caller now asks for."""
        return (
            self.spec == spec
            and self.model_version == model_version
            and self.model_run_id == model_run_id
            and self.features_version == FEATURES_VERSION
            and self.source == source
        )


def reference_path(data_dir: Path, model_name: str, version: str) -> Path:
    """Where the reference of one model version is cached: ``<data_dir>/references/``.

    The loop's drift step and ``digitloop drift check`` share it, so either builds it once.
    """
    return data_dir / "references" / f"{model_name}-v{version}.npz"


def split_indices(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(n)``: ``size`` reference indices and the rest."""
    if not 0 < size < n:
        raise ValueError(f"reference size must be in 1..{n - 1}, got {size}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:size]), np.sort(order[size:])


def build_reference(
    net: nn.Module,
    images: np.ndarray,
    spec: ReferenceSpec = ReferenceSpec(),
    model_version: str | None = None,
    model_run_id: str | None = None,
    source: str = MNIST_SOURCE,
) -> Reference:
    """Featurise (N, 28, 28) uint8 images, already as the service logs them, as a reference.

    The embedding summary is fitted on these same images, so the reference's principal
    components are centred and decorrelated by construction.
    """
    if len(images) < 2:
        raise DatasetError(f"a reference needs at least 2 images, got {len(images)}")
    outputs = model_outputs(net, images)
    summary = EmbeddingSummary.fit(
        outputs.embeddings, outputs.probabilities.argmax(axis=1), spec.n_components
    )
    return Reference(
        features=feature_frame(images, outputs, summary),
        summary=summary,
        spec=spec,
        model_version=model_version,
        model_run_id=model_run_id,
        source=source,
    )


def mnist_reference(
    net: nn.Module,
    mnist_test: np.ndarray,
    spec: ReferenceSpec = ReferenceSpec(),
    model_version: str | None = None,
    model_run_id: str | None = None,
) -> Reference:
    """The reference drawn from MNIST test digits by ``spec``, preprocessed like the service."""
    reference_idx, _ = split_indices(len(mnist_test), spec.size, spec.seed)
    images, accepted = preprocess_batch(mnist_test[reference_idx])
    return build_reference(net, images[accepted], spec, model_version, model_run_id)


def save_reference(reference: Reference, path: Path) -> Path:
    """Write ``reference`` as one ``.npz``, atomically (a crash never leaves half a file)."""
    arrays: dict[str, np.ndarray] = {
        f"feature:{name}": reference.features[name].to_numpy()
        for name in reference.features.columns
    }
    arrays["summary:mean"] = reference.summary.mean
    arrays["summary:components"] = reference.summary.components
    arrays["summary:centroids"] = reference.summary.centroids
    arrays["meta"] = np.array(json.dumps(reference.meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        np.savez_compressed(tmp, **arrays)
    os.replace(tmp.name, path)
    return path


def load_reference(path: Path) -> Reference:
    """Read a reference written by :func:`save_reference`.

    Raises:
        DatasetError: the file is missing, unreadable or not a reference.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            columns = meta["columns"]
            features = pd.DataFrame({name: archive[f"feature:{name}"] for name in columns})
            summary = EmbeddingSummary(
                mean=archive["summary:mean"],
                components=archive["summary:components"],
                centroids=archive["summary:centroids"],
            )
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable drift reference ({exc})") from exc
    features[CLASS_COLUMN] = features[CLASS_COLUMN].astype(np.int64)
    return Reference(
        features=features,
        summary=summary,
        spec=ReferenceSpec(**meta["spec"]),
        model_version=meta["model_version"],
        model_run_id=meta["model_run_id"],
        features_version=int(meta["features_version"]),
        # References saved before sources were recorded were all drawn from MNIST test.
        source=str(meta.get("source", MNIST_SOURCE)),
    )


def load_or_build_reference(
    net: nn.Module,
    mnist_test: np.ndarray,
    path: Path,
    spec: ReferenceSpec = ReferenceSpec(),
    model_version: str | None = None,
    model_run_id: str | None = None,
) -> Reference:
    """The MNIST reference cached at ``path`` if it matches, else a new one, saved there."""
    reference = cached_reference(
        path,
        spec,
        model_version,
        model_run_id,
        MNIST_SOURCE,
        build=lambda: mnist_reference(net, mnist_test, spec, model_version, model_run_id),
    )
    if reference is None:  # mnist_reference always builds one
        raise RuntimeError(f"no MNIST drift reference for {path}")
    return reference


def cached_reference(
    path: Path,
    spec: ReferenceSpec,
    model_version: str | None,
    model_run_id: str | None,
    source: str,
    build: Callable[[], Reference | None],
) -> Reference | None:
    """The reference cached at ``path`` if it was built this way, else ``build()``, saved.

    ``build`` may return None (nothing to build it from): nothing is saved then, so a later
    call tries again.
    """
    if path.is_file():
        try:
            cached = load_reference(path)
        except DatasetError as exc:
            log.warning("rebuilding the drift reference: %s", exc)
        else:
            if cached.matches(spec, model_version, model_run_id, source):
                return cached
            log.info("drift reference at %s is for another model, spec or source; rebuilding", path)
    reference = build()
    if reference is not None:
        save_reference(reference, path)
        log.info(
            "drift reference (%d images of %s) saved to %s", len(reference.features), source, path
        )
    return reference
