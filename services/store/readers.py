"""How the loop reads the store back: predictions and feedback as DataFrames.

Writers are at-least-once across crashes and keys are listed by date partition, so the
readers filter by time, sort, and keep one row per prediction id: exactly once.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contracts.records import (
    FEEDBACK_PREFIX,
    PREDICTIONS_PREFIX,
    PREDICTIONS_SCHEMA,
    FeedbackRecord,
    as_utc,
    key_date,
)
from services.store.backends import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)


def decode_predictions(data: bytes) -> pa.Table:
    """The table in one ``predictions/`` object, cast to :data:`PREDICTIONS_SCHEMA`."""
    return pq.read_table(io.BytesIO(data)).cast(PREDICTIONS_SCHEMA)


def _keys_since(store: ObjectStore, prefix: str, suffix: str, since: datetime | None) -> list[str]:
    first_day = as_utc(since, "since").date() if since is not None else None
    keys = []
    for key in store.list(prefix):
        day = key_date(key)
        if day is None or not key.endswith(suffix):
            log.warning("skipping %s: not in the store layout", key)
        elif first_day is None or day >= first_day:
            keys.append(key)
    return keys


def _get_all(store: ObjectStore, keys: Iterable[str]) -> list[tuple[str, bytes]]:
    def get(key: str) -> bytes | None:
        try:
            return store.get(key)
        except ObjectNotFound:  # deleted between list and get
            return None

    keys = list(keys)
    # S3 round trips dominate with many small objects; a few in flight hide the latency.
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = zip(keys, pool.map(get, keys), strict=True)
        return [(key, data) for key, data in found if data is not None]


def read_predictions(store: ObjectStore, since: datetime | None = None) -> pd.DataFrame:
    """Every logged prediction with ``ts >= since``, oldest first, one row per prediction id.

    ``image`` holds (784,) uint8 arrays (28x28 row-major), ``probabilities`` (10,) float32.
    """
    tables = []
    for key, data in _get_all(store, _keys_since(store, PREDICTIONS_PREFIX, ".parquet", since)):
        try:
            tables.append(decode_predictions(data))
        except (pa.ArrowException, OSError) as exc:
            log.warning("skipping %s: unreadable parquet: %s", key, exc)
    table = pa.concat_tables(tables) if tables else PREDICTIONS_SCHEMA.empty_table()
    frame = table.to_pandas()
    return _finish(frame, since)


def read_feedback(store: ObjectStore, since: datetime | None = None) -> pd.DataFrame:
    """Every feedback record with ``ts >= since``, oldest first, the first per prediction id.

    A prediction id can have feedback under two dates only if it came on two UTC days;
    the first one wins, as the write path intends.
    """
    rows: list[dict[str, Any]] = []
    for key, data in _get_all(store, _keys_since(store, FEEDBACK_PREFIX, ".json", since)):
        try:
            record = FeedbackRecord.from_json(data)
        except ValueError as exc:
            log.warning("skipping %s: %s", key, exc)
            continue
        rows.append(
            {
                "prediction_id": record.prediction_id,
                "label": record.label,
                "ts": record.ts.astimezone(UTC),
                "source": record.source,
            }
        )
    frame = pd.DataFrame(rows, columns=["prediction_id", "label", "ts", "source"])
    frame = frame.astype(
        {"prediction_id": object, "label": "int8", "ts": "datetime64[us, UTC]", "source": object}
    )
    return _finish(frame, since)


def _finish(frame: pd.DataFrame, since: datetime | None) -> pd.DataFrame:
    if since is not None:
        frame = frame[frame["ts"] >= pd.Timestamp(as_utc(since, "since"))]
    frame = frame.sort_values("ts", kind="stable")
    # Writers are at-least-once across crashes; readers make it exactly once.
    frame = frame.drop_duplicates("prediction_id", keep="first")
    return frame.reset_index(drop=True)
