"""Compaction: each closed hour of a dataset becomes one parquet file.

Pods flush a predictions file every few seconds and feedback is one JSON object per label,
so an hour holds hundreds of small objects; after compaction it holds one
``compacted-<unix_ms>-<digest>.parquet``, so a read of a day is 24 GETs.

Safe while pods write, and exactly-once for readers, by the order of its writes:

1. list the hour's files and read them (rows once per prediction id, the first);
2. write the merged file under a new name (one atomic PUT or rename);
3. delete exactly the files it read.

Between 2 and 3 a reader sees some rows twice, and readers keep one row per prediction id.
A file that lands in the hour after step 1 (a pod's late flush, a spool's replay) is not
deleted and is merged by the next run. Two compactions of one hour at once each write a
merged file and delete the same inputs; the next run merges the two. A run that dies
anywhere leaves every row in some file. Running it again on a compacted hour does nothing.

It also moves objects of the legacy layout (``<prefix>date=YYYY-MM-DD/``) into the hourly
partitions, and deletes what is past retention where the backend has no lifecycle rule.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from contracts.records import (
    COMPACTED_PREFIX,
    FEEDBACK_IDS_PREFIX,
    FEEDBACK_PREFIX,
    FEEDBACK_SCHEMA,
    LABELLED_PREFIX,
    LABELLED_SCHEMA,
    PREDICTIONS_PREFIX,
    PREDICTIONS_SCHEMA,
    FeedbackRecord,
    as_utc,
    key_hour,
    legacy_date,
    partition,
    unix_ms,
)
from services.store.backends import ObjectNotFound, ObjectStore, S3Store, StoreSettings
from services.store.readers import HOUR, _json_format, once_per_prediction, range_days
from services.store.retention import expired_partitions
from services.store.writers import PARQUET

log = logging.getLogger(__name__)

# An hour is compacted once it ended this long ago: pods flush every few seconds.
SETTLE = timedelta(minutes=5)


@dataclass(frozen=True)
class Dataset:
    """One hourly-partitioned dataset of the store."""

    name: str
    prefix: str
    schema: pa.Schema
    ts_column: str


DATASETS = (
    Dataset("predictions", PREDICTIONS_PREFIX, PREDICTIONS_SCHEMA, "ts"),
    Dataset("feedback", FEEDBACK_PREFIX, FEEDBACK_SCHEMA, "ts"),
    Dataset("labelled", LABELLED_PREFIX, LABELLED_SCHEMA, "feedback_ts"),
)


@dataclass
class CompactionReport:
    """What one run did, per dataset."""

    partitions: dict[str, int] = field(default_factory=dict)  # hours rewritten
    files_in: dict[str, int] = field(default_factory=dict)  # files merged (and deleted)
    rows: dict[str, int] = field(default_factory=dict)  # rows in the merged files
    legacy_files: int = 0  # objects moved from the legacy date= layout
    expired: int = 0  # objects deleted past retention (backends without lifecycle)

    def add(self, name: str, files: int, rows: int) -> None:
        self.partitions[name] = self.partitions.get(name, 0) + 1
        self.files_in[name] = self.files_in.get(name, 0) + files
        self.rows[name] = self.rows.get(name, 0) + rows


def needs_compaction(keys: list[str]) -> bool:
    """An hour needs it unless it is one compacted file (or empty)."""
    names = [k.rsplit("/", 1)[-1] for k in keys]
    return len(names) > 1 or any(not n.startswith(COMPACTED_PREFIX) for n in names)


def merged(frame: pd.DataFrame, dataset: Dataset) -> pa.Table:
    """The rows once per prediction id (the first by time), in the dataset's schema."""
    frame = once_per_prediction(frame, dataset.ts_column)
    return pa.Table.from_pandas(frame[dataset.schema.names], dataset.schema, preserve_index=False)


def compacted_key(folder: str, table: pa.Table, now: datetime) -> str:
    """A new name in ``folder``: run time, and a digest of the ids it holds."""
    ids = "\n".join(sorted(table.column("prediction_id").to_pylist()))
    digest = hashlib.sha256(ids.encode()).hexdigest()[:12]
    return f"{folder}{COMPACTED_PREFIX}{unix_ms(now)}-{digest}.parquet"


def _encode(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _read(store: ObjectStore, keys: list[str], dataset: Dataset) -> pd.DataFrame:
    filesystem, root = store.arrow()
    tables = []
    for suffix, file_format in ((".parquet", "parquet"), (".json", _json_format(dataset.schema))):
        paths = [f"{root}/{k}" for k in keys if k.endswith(suffix)]
        if paths:
            found = ds.dataset(paths, schema=dataset.schema, format=file_format,
                               filesystem=filesystem)  # fmt: skip
            # One thread for JSON: see services.store.readers._scan.
            tables.append(found.to_table(use_threads=suffix == ".parquet"))
    return pa.concat_tables(tables).to_pandas()


def compact_hour(
    store: ObjectStore, dataset: Dataset, keys: list[str], now: datetime
) -> tuple[str, int] | None:
    """Merge ``keys`` (one hour's files) into one new file, then delete them.

    Returns the new key and its rows; None when a file vanished under the read (another
    compaction got there first: the next run looks again).
    """
    folder = keys[0].rsplit("/", 1)[0] + "/"
    try:
        frame = _read(store, keys, dataset)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if "NoSuchKey" not in str(exc):
            raise
        return None
    table = merged(frame, dataset)
    key = compacted_key(folder, table, now)
    store.put(key, _encode(table), PARQUET)
    for old in keys:
        if old != key:
            store.delete(old)
    return key, table.num_rows


def hours_to_compact(
    store: ObjectStore, dataset: Dataset, since: datetime, now: datetime
) -> dict[str, list[str]]:
    """The closed hours since ``since`` that need compaction: folder -> its data files."""
    closed_before = as_utc(now, "now") - SETTLE
    folders: dict[str, list[str]] = defaultdict(list)
    for day in range_days(since, closed_before):
        for key in store.list(f"{dataset.prefix}dt={day.isoformat()}/"):
            hour = key_hour(key)
            if hour is None or hour < since - HOUR or hour + HOUR > closed_before:
                continue
            if key.endswith((".parquet", ".json")):
                folders[key.rsplit("/", 1)[0] + "/"].append(key)
    return {f: keys for f, keys in sorted(folders.items()) if needs_compaction(keys)}


def _legacy_frame(store: ObjectStore, dataset: Dataset, keys: list[str]) -> pd.DataFrame:
    # Legacy feedback objects are JSON without a final newline, which pyarrow's dataset
    # reader skips: they are read one by one, once, by this migration.
    if dataset.prefix != FEEDBACK_PREFIX:
        return _read(store, keys, dataset)
    rows = []
    for key in keys:
        try:
            record = FeedbackRecord.from_json(store.get(key))
        except (ObjectNotFound, ValueError) as exc:
            log.warning("skipping %s: %s", key, exc)
            continue
        rows.append(
            {"prediction_id": record.prediction_id, "label": record.label,
             "ts": record.ts.astimezone(UTC), "source": record.source}
        )  # fmt: skip
    return pd.DataFrame(rows, columns=FEEDBACK_SCHEMA.names)


def migrate_legacy(store: ObjectStore, dataset: Dataset, now: datetime) -> int:
    """Move ``<prefix>date=YYYY-MM-DD/`` objects into hourly compacted files; the count."""
    moved = 0
    for name in store.list_dirs(dataset.prefix):
        if not name.startswith("date="):
            continue
        keys = [k for k in store.list(f"{dataset.prefix}{name}/") if legacy_date(k)]
        if dataset.prefix == FEEDBACK_PREFIX:
            keys = [k for k in keys if k.endswith(".json")]
        else:
            keys = [k for k in keys if k.endswith(".parquet")]
        if not keys:
            continue
        frame = _legacy_frame(store, dataset, keys)
        hours = frame[dataset.ts_column].dt.floor("h")
        for hour, rows in frame.groupby(hours, sort=True):
            table = merged(rows, dataset)
            folder = f"{dataset.prefix}{partition(hour.to_pydatetime())}/"
            store.put(compacted_key(folder, table, now), _encode(table), PARQUET)
        for key in keys:
            store.delete(key)
        moved += len(keys)
    return moved


def compact(
    store: ObjectStore,
    now: datetime,
    *,
    days: float = 2.0,
    datasets: Iterable[Dataset] = DATASETS,
    settings: StoreSettings | None = None,
) -> CompactionReport:
    """Compact the closed hours of the last ``days`` of each dataset, move legacy objects,
    and (given ``settings``) delete what is past retention."""
    now = as_utc(now, "now")
    report = CompactionReport()
    for dataset in datasets:
        report.legacy_files += migrate_legacy(store, dataset, now)
        todo = hours_to_compact(store, dataset, now - timedelta(days=days), now)
        for keys in todo.values():
            done = compact_hour(store, dataset, keys, now)
            if done is not None:
                report.add(dataset.name, len(keys), done[1])
    if settings is not None:
        report.expired = len(sweep(store, settings.retention(), now))
    return report


def upkeep(
    store: ObjectStore, settings: StoreSettings, now: datetime, days: float | None = None
) -> CompactionReport:
    """Everything the store needs kept: lifecycle rules on S3 (a bucket made before the rules
    existed gets them too), compaction of the last ``days`` (default
    ``settings.compaction_lookback_days``), and retention."""
    if isinstance(store, S3Store):
        store.apply_lifecycle()
    lookback = settings.compaction_lookback_days if days is None else days
    return compact(store, now, days=lookback, settings=settings)


def sweep(store: ObjectStore, days: dict[str, int], now: datetime) -> list[str]:
    """Delete every object of the expired partitions (:func:`expired_partitions`).

    Used where the backend has no lifecycle of its own (the local folder); harmless on S3,
    where MinIO's rule got there first. Per-id feedback markers are not partitioned: they
    expire through the bucket rule only (a folder of small files costs nothing to keep).
    """
    partitioned = {p: store.list_dirs(p) for p in days if p != FEEDBACK_IDS_PREFIX}
    deleted = []
    for folder in expired_partitions(partitioned, days, now):
        for key in store.list(folder):
            store.delete(key)
            deleted.append(key)
    return deleted
