"""How the loop reads the store back: the hours of a time range, through ``pyarrow.dataset``.

A read lists only the ``dt=``/``hour=`` partitions of its range (:func:`partition_keys`)
and hands those files to :mod:`pyarrow.dataset`, which reads the columns asked for and
filters rows by time. The same code reads the local folder and S3 (pyarrow's own S3
client against MinIO), so the cost of a read follows its range, never the stored history.

Readers are exactly-once although writers are at-least-once and compaction rewrites files
while they read: rows are kept once per prediction id, and a file that compaction deleted
between the listing and the read makes the read list its partitions again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.json as pajson

from contracts.records import (
    FEEDBACK_PREFIX,
    FEEDBACK_SCHEMA,
    LABELLED_PREFIX,
    LABELLED_SCHEMA,
    PREDICTIONS_PREFIX,
    PREDICTIONS_SCHEMA,
    as_utc,
    key_hour,
)
from services.store.backends import ObjectStore, StoreUnavailable

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
# Past this many days a range is matched against the days that exist (one listing of the
# prefix's folders) instead of listing every day in it: a first run from the epoch.
_DISCOVER_AFTER_DAYS = 3
_ATTEMPTS = 10  # listings of a range when compaction deletes files under the reader
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def range_days(since: datetime, until: datetime) -> list[date]:
    """The UTC days that hold some of ``[since, until)``."""
    first, last = as_utc(since, "since").date(), (as_utc(until, "until") - timedelta.resolution)
    return [first + timedelta(days=n) for n in range((last.date() - first).days + 1)]


def in_range(hour: datetime, since: datetime, until: datetime) -> bool:
    """Whether the hour starting at ``hour`` overlaps ``[since, until)``."""
    return hour < until and hour + HOUR > since


def partition_files(
    store: ObjectStore, prefix: str, since: datetime, until: datetime, suffixes: Sequence[str]
) -> list[tuple[str, int]]:
    """``(key, size)`` of the files ending in one of ``suffixes`` in the hourly partitions
    overlapping the range, listed through the store's pyarrow filesystem.

    One listing per UTC day of the range (an S3 LIST page holds 1,000 keys: a compacted day
    has 24), and for a range of more than a few days one listing of the days that exist.
    """
    days = range_days(since, until)
    if len(days) > _DISCOVER_AFTER_DAYS:
        existing = set(store.list_dirs(prefix))
        days = [d for d in days if f"dt={d.isoformat()}" in existing]
    filesystem, root = store.arrow()
    found = []
    for day in days:
        selector = pafs.FileSelector(
            f"{root}/{prefix}dt={day.isoformat()}", recursive=True, allow_not_found=True
        )
        for info in filesystem.get_file_info(selector):
            key = info.path.removeprefix(f"{root}/")
            if info.type != pafs.FileType.File or info.base_name.startswith("."):
                continue  # folders, and the local backend's files being written
            hour = key_hour(key)
            if hour is None or not key.endswith(tuple(suffixes)):
                log.warning("skipping %s: not in the store layout", key)
            elif in_range(hour, since, until):
                found.append((key, info.size))
    return sorted(found)


def partition_keys(
    store: ObjectStore, prefix: str, since: datetime, until: datetime, suffixes: Sequence[str]
) -> list[str]:
    """The keys of :func:`partition_files`."""
    return [key for key, _ in partition_files(store, prefix, since, until, suffixes)]


def _json_format(schema: pa.Schema) -> ds.JsonFileFormat:
    # Each raw object must end with a newline: pyarrow's JSON reader drops a last line
    # without one (FeedbackRecord.to_json writes it).
    return ds.JsonFileFormat(parse_options=pajson.ParseOptions(explicit_schema=schema))


def _scan(
    store: ObjectStore,
    files: Iterable[tuple[str, int]],
    schema: pa.Schema,
    file_format: ds.FileFormat,
    columns: Sequence[str] | None,
    row_filter: pc.Expression | None,
) -> pa.Table:
    files = list(files)
    if not files:
        return schema.empty_table().select(list(columns) if columns else schema.names)
    filesystem, root = store.arrow()
    # The sizes from the listing spare pyarrow a HEAD request per file.
    fragments = [
        file_format.make_fragment(f"{root}/{key}", filesystem=filesystem, file_size=size)
        for key, size in files
    ]
    dataset = ds.FileSystemDataset(fragments, schema, file_format, filesystem)
    # pyarrow 22's JSON scan deadlocks when its CPU pool has one thread (OMP_NUM_THREADS=1,
    # as pods run): raw JSON objects are one line each, threads would not help them anyway.
    threads = not isinstance(file_format, ds.JsonFileFormat)
    return dataset.to_table(
        columns=list(columns) if columns else None, filter=row_filter, use_threads=threads
    )


def read_range(
    store: ObjectStore,
    prefix: str,
    schema: pa.Schema,
    since: datetime,
    until: datetime,
    *,
    ts_column: str = "ts",
    columns: Sequence[str] | None = None,
    row_filter: pc.Expression | None = None,
    json: bool = False,
    by_ts: bool = True,
) -> pa.Table:
    """Rows of ``prefix``'s parquet (and with ``json`` raw JSON) with ``since <= ts < until``
    (without ``by_ts``: every row of the range's partitions).

    Raises:
        StoreUnavailable: the store failed, or files kept vanishing under the read.
    """
    since, until = as_utc(since, "since"), as_utc(until, "until")
    ts = pc.field(ts_column)
    in_time = (ts >= pa.scalar(since, schema.field(ts_column).type)) & (
        ts < pa.scalar(until, schema.field(ts_column).type)
    )
    wanted = in_time if by_ts else None
    if row_filter is not None:
        wanted = row_filter if wanted is None else wanted & row_filter
    suffixes = (".parquet", ".json") if json else (".parquet",)
    for attempt in range(1, _ATTEMPTS + 1):
        files = partition_files(store, prefix, since, until, suffixes)
        try:
            parquet = [f for f in files if f[0].endswith(".parquet")]
            tables = [_scan(store, parquet, schema, ds.ParquetFileFormat(), columns, wanted)]
            if json:
                raw = [f for f in files if f[0].endswith(".json")]
                tables.append(_scan(store, raw, schema, _json_format(schema), columns, wanted))
            return pa.concat_tables(tables)
        except FileNotFoundError as exc:
            # Compaction replaced a file between our listing and our read: list again.
            log.info("%s changed under the read (attempt %d): %s", prefix, attempt, exc)
        except OSError as exc:
            if "NoSuchKey" not in str(exc) and "not found" not in str(exc).lower():
                raise StoreUnavailable(f"{store.description}: reading {prefix}: {exc}") from exc
            log.info("%s changed under the read (attempt %d): %s", prefix, attempt, exc)
        time.sleep(0.05 * attempt)
    raise StoreUnavailable(f"{store.description}: {prefix} kept changing during {_ATTEMPTS} reads")


def decode_predictions(data: bytes) -> pa.Table:
    """The table in one ``predictions/`` object, cast to :data:`PREDICTIONS_SCHEMA`."""
    import io

    import pyarrow.parquet as pq

    return with_schema(pq.read_table(io.BytesIO(data)), PREDICTIONS_SCHEMA)


def with_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` cast to ``schema``; a nullable column it lacks (a file written before the
    column was added, such as ``novelty``) is added as nulls.

    Raises:
        ValueError: a non-nullable column is missing.
    """
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise ValueError(f"the table lacks the column {field.name!r}")
            table = table.append_column(field, pa.nulls(len(table), field.type))
    return table.select(schema.names).cast(schema)


def once_per_prediction(frame: pd.DataFrame, ts_column: str = "ts") -> pd.DataFrame:
    """Oldest first, the first row per prediction id: writers and compaction may repeat."""
    frame = frame.sort_values(ts_column, kind="stable")
    return frame.drop_duplicates("prediction_id", keep="first").reset_index(drop=True)


def _since(since: datetime | None) -> datetime:
    return _EPOCH if since is None else since


def read_predictions(
    store: ObjectStore,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    columns: Sequence[str] | None = None,
    ids: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Logged predictions with ``since <= ts < until``, oldest first, once per prediction id.

    ``image`` holds (784,) uint8 arrays (28x28 row-major), ``probabilities`` (10,) float32.
    ``columns`` reads only those (``prediction_id`` and ``ts`` always), ``ids`` only those
    predictions: the image column is most of the bytes.
    """
    if columns is not None:
        columns = list(dict.fromkeys(["prediction_id", "ts", *columns]))
    row_filter = None if ids is None else pc.field("prediction_id").isin(list(ids))
    table = read_range(
        store,
        PREDICTIONS_PREFIX,
        PREDICTIONS_SCHEMA,
        _since(since),
        until or datetime.now(UTC),
        columns=columns,
        row_filter=row_filter,
    )
    return once_per_prediction(table.to_pandas())


def read_feedback(
    store: ObjectStore, since: datetime | None = None, until: datetime | None = None
) -> pd.DataFrame:
    """Feedback records that reached the store in ``[since, until)`` (by the hour of their
    key) with ``ts`` in it too, oldest first, the first per prediction id."""
    table = read_range(
        store,
        FEEDBACK_PREFIX,
        FEEDBACK_SCHEMA,
        _since(since),
        until or datetime.now(UTC),
        json=True,
    )
    return once_per_prediction(table.to_pandas())


def read_feedback_arrived(store: ObjectStore, since: datetime, until: datetime) -> pd.DataFrame:
    """Feedback in the partitions of ``[since, until)``, whatever its ``ts``: what reached the
    store in those hours (a spool replays old records into the hour it writes them in)."""
    table = read_range(
        store, FEEDBACK_PREFIX, FEEDBACK_SCHEMA, since, until, json=True, by_ts=False
    )
    return once_per_prediction(table.to_pandas())


def feedback_stored(store: ObjectStore, key: str, prediction_id: str) -> bool:
    """Whether feedback for ``prediction_id`` is stored under ``key`` or, once compaction
    merged that hour, in its compacted file.

    Compaction writes the merged file before it deletes ``key``, so one of the two always
    holds a stored record (and :func:`read_range` lists again if the file goes under it).
    Used only when a feedback marker names a key that holds nothing.
    """
    if store.exists(key):
        return True
    hour = key_hour(key)
    if hour is None:
        return False
    merged = read_range(
        store,
        FEEDBACK_PREFIX,
        FEEDBACK_SCHEMA,
        hour,
        hour + HOUR,
        columns=["prediction_id"],
        row_filter=pc.field("prediction_id") == prediction_id,
        by_ts=False,
    )
    return merged.num_rows > 0


def read_labelled(
    store: ObjectStore,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The labelled dataset: rows with ``since <= feedback_ts < until``, oldest feedback
    first, once per prediction id (:data:`contracts.records.LABELLED_SCHEMA`)."""
    if columns is not None:
        columns = list(dict.fromkeys(["prediction_id", "feedback_ts", *columns]))
    table = read_range(
        store,
        LABELLED_PREFIX,
        LABELLED_SCHEMA,
        _since(since),
        until or datetime.now(UTC),
        ts_column="feedback_ts",
        columns=columns,
    )
    return once_per_prediction(table.to_pandas(), "feedback_ts")
