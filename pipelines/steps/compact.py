"""Compact: the store's upkeep, every loop run, as its own step with its own retries.

Each closed hour's small files (a predictions file per pod every few seconds, a JSON object
per label) become one parquet file, objects past retention go, and on S3 the bucket's
lifecycle rules are kept (:func:`services.store.compaction.upkeep`). It reads nothing of
the run and the loop's decisions read nothing of it: on Argo it runs beside them, and its
failure, retried on its own, holds up none of them. Safe while pods write and steps read.
"""

from __future__ import annotations

from dataclasses import asdict

from pipelines.outputs import CompactOutput
from pipelines.steps.context import LoopContext
from services.store.compaction import upkeep


def step_compact(ctx: LoopContext) -> CompactOutput:
    """Merge the closed hours of the last days into one file each; apply retention."""
    report = upkeep(ctx.store, ctx.store_settings, ctx.now)
    return CompactOutput(**asdict(report))
