"""``digitloop bench loop``: does one loop run cost the same over 1 and 30 days of history?

It builds a stored history at ``rate`` predictions per second with ``labelled`` of them
labelled, for each of ``history_days``, in a local folder and in the S3 test server (moto,
as the integration tests use), then times one loop run's collect, quality and drift steps
(the real step functions, each with a fresh context as each Argo step is its own pod),
counts the S3 requests the run makes, and reports the run's peak memory.

The history is what a month looks like after compaction, written directly by this
module's own writer: one compacted parquet file per hour for predictions, feedback and the
labelled dataset, with the same schemas the product writes (2.6 M predictions for 30 days
at 1/s are not sent through the service). The run's own 10 minutes are written as pods
write them: small predictions files every 5 s from 2 pods and one JSON object per label,
through the product's writers. The champion was fine-tuned a day before the run, so the
loop's window is the same day in every history: only the stored history differs.

Each measurement runs in a process of its own (:func:`measure`), so its peak RSS is the
run's (torch, Evidently and pyarrow imported: a baseline of a few hundred MB is included).
S3 requests are counted from the S3 server's request log, between two marks.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from contracts.records import (
    FEEDBACK_PREFIX,
    FEEDBACK_SCHEMA,
    LABELLED_PREFIX,
    LABELLED_SCHEMA,
    PREDICTIONS_PREFIX,
    PREDICTIONS_SCHEMA,
    FeedbackRecord,
    PredictionRecord,
    partition,
    time_ordered_hex,
)
from services.store.backends import LocalStore, ObjectStore, S3Store

# The run happens at a fixed hour so histories line up; ten minutes after the last run.
RUN_AT = datetime(2026, 3, 2, 12, 10, tzinfo=UTC)
RUN_INTERVAL = timedelta(minutes=10)
CHAMPION_AGE = timedelta(days=1)
PODS = 2
FLUSH_S = 5
BUCKET = "digitloop-bench"
ACCESS_KEY, SECRET_KEY = "digitloop-bench", "digitloop-bench-secret"
PARQUET = "application/vnd.apache.parquet"


# -- the history -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """How the history is made: rate, labelled share, and the images drawn from."""

    rate: float  # predictions per second
    labelled: float  # share of them labelled
    images: np.ndarray  # (N, 28, 28) uint8, cycled through


def _ids(start: datetime, n: int, step_ms: float, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    ms = int(start.timestamp() * 1000) + (np.arange(n) * step_ms).astype(np.int64)
    bits = rng.integers(0, 2**62, n, dtype=np.int64)
    ids = [
        f"{time_ordered_hex(datetime.fromtimestamp(t / 1000, UTC), int(b))}.stable.1.{i % 10}."
        f"{hashlib.sha256(str(t).encode()).hexdigest()[:16]}"
        for i, (t, b) in enumerate(zip(ms.tolist(), bits.tolist(), strict=True))
    ]
    return ids, ms


def _encode(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def hour_tables(hour: datetime, traffic: Traffic, seed: int) -> dict[str, pa.Table]:
    """One hour of compacted predictions, feedback and labelled rows."""
    n = round(3600 * traffic.rate)
    ids, ms = _ids(hour, n, 1000 / traffic.rate, seed)
    rng = np.random.default_rng(seed)
    images = traffic.images[(np.arange(n) + seed * 7) % len(traffic.images)]
    answers = rng.integers(0, 10, n)
    probabilities = np.full((n, 10), 0.02, np.float32)
    probabilities[np.arange(n), answers] = 0.82
    ts = pa.array(ms, pa.timestamp("ms", tz="UTC"))
    predictions = pa.Table.from_arrays(
        [
            pa.array(ids, pa.string()),
            ts,
            pa.array(["1"] * n, pa.string()),
            pa.array(["stable"] * n, pa.string()),
            pa.FixedSizeListArray.from_arrays(
                pa.array(images.reshape(-1), pa.uint8()),
                type=PREDICTIONS_SCHEMA.field("image").type,
            ),
            pa.FixedSizeListArray.from_arrays(
                pa.array(probabilities.reshape(-1), pa.float32()),
                type=PREDICTIONS_SCHEMA.field("probabilities").type,
            ),
            pa.array(answers, pa.int8()),
            pa.array(np.full(n, 2.0, np.float32), pa.float32()),
            pa.nulls(n, pa.float32()),  # novelty: a version registered without a scorer
        ],
        schema=PREDICTIONS_SCHEMA,
    )
    chosen = np.flatnonzero(rng.random(n) < traffic.labelled)
    # Labelled a few seconds after the answer, inside the hour.
    feedback_ms = np.minimum(
        ms[chosen] + 5_000, int((hour + timedelta(hours=1)).timestamp() * 1000) - 1
    )
    truth = np.where(rng.random(len(chosen)) < 0.9, answers[chosen], (answers[chosen] + 1) % 10)
    feedback = pa.Table.from_arrays(
        [
            pa.array([ids[i] for i in chosen], pa.string()),
            pa.array(truth, pa.int8()),
            pa.array(feedback_ms * 1000, pa.timestamp("us", tz="UTC")),
            pa.array(["user"] * len(chosen), pa.string()),
        ],
        schema=FEEDBACK_SCHEMA,
    )
    joined = predictions.take(pa.array(chosen)).drop_columns(["prediction_id"])
    labelled = pa.Table.from_arrays(
        [feedback.column(i) for i in range(4)] + list(joined.columns),
        schema=LABELLED_SCHEMA,
    )
    return {PREDICTIONS_PREFIX: predictions, FEEDBACK_PREFIX: feedback, LABELLED_PREFIX: labelled}


def build_history(
    store: ObjectStore, days: float, traffic: Traffic, run_at: datetime = RUN_AT
) -> int:
    """Compacted hours from ``days`` before the last run up to it; the last run's watermark;
    then the 10 minutes since, as the pods write them. Returns the predictions stored."""
    from pipelines.steps.labelling import STATE_KEY, LabellingState

    last_run = run_at - RUN_INTERVAL
    first = (last_run - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
    hour, stored, seed = first, 0, 0
    while hour + timedelta(hours=1) <= last_run.replace(minute=0):
        seed += 1
        for prefix, table in hour_tables(hour, traffic, seed).items():
            name = f"compacted-{int(hour.timestamp() * 1000)}-{seed:06d}.parquet"
            key = f"{prefix}{partition(hour)}/{name}"
            store.put(key, _encode(table), PARQUET)
            if prefix == PREDICTIONS_PREFIX:
                stored += table.num_rows
        hour += timedelta(hours=1)
    store.put(STATE_KEY, LabellingState(last_run).to_json(), "application/json")
    # From the start of the last run's hour to the run: raw files, as pods write them.
    stored += _live(store, hour, run_at, traffic)
    return stored


def _live(store: ObjectStore, start: datetime, end: datetime, traffic: Traffic) -> int:
    from services.store.writers import FeedbackWriter, PredictionLog

    rng = np.random.default_rng(1)
    logs = [PredictionLog(store, f"pod-{p}") for p in range(PODS)]
    writer = FeedbackWriter(
        store, Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-spool-{os.getpid()}"
    )
    n = int((end - start).total_seconds() * traffic.rate)
    ids, ms = _ids(start, n, 1000 / traffic.rate, seed=999)
    flush_every = max(1, int(FLUSH_S * traffic.rate)) * PODS
    for i, (pid, t) in enumerate(zip(ids, ms.tolist(), strict=True)):
        ts = datetime.fromtimestamp(t / 1000, UTC)
        answer = int(rng.integers(0, 10))
        probabilities = np.full(10, 0.02, np.float32)
        probabilities[answer] = 0.82
        logs[i % PODS].append(
            PredictionRecord(pid, ts, "1", "stable", traffic.images[i % len(traffic.images)],
                             probabilities, answer, 2.0)
        )  # fmt: skip
        if rng.random() < traffic.labelled:
            writer.write(FeedbackRecord(pid, answer, ts + timedelta(seconds=5)))
        if (i + 1) % flush_every == 0:
            for log in logs:
                log.flush()
    for log in logs:
        log.flush()
    return n


# -- one loop run -------------------------------------------------------------------------


class _Registry:
    """What the steps read of the registry: one champion, fine-tuned a day before the run."""

    def __init__(self, cutoff: datetime) -> None:
        from model.network import DigitNet
        from model.registry import ModelVersionInfo

        tags = {"training_data": json.dumps({"feedback_until": cutoff.isoformat()})}
        self.info = ModelVersionInfo("digitloop-mnist", "1", [], tags, "run-1")
        self.net = DigitNet().eval()

    def get(self, ref):
        return self.info

    def load(self, ref=None):
        return self.net, self.info

    def novelty(self, info):
        return None  # registered without a scorer: the drift step runs Evidently alone


class _Rollout:
    def current(self):
        from contracts.routing import RoutingState

        return RoutingState("1")


def _context(store: ObjectStore, data_dir: Path, run_at: datetime, registry, mnist):
    from model.settings import ModelSettings
    from pipelines.drift.detect import DriftSettings
    from pipelines.settings import DecisionSettings, LoopSettings
    from pipelines.steps import LoopContext
    from services.store.backends import StoreSettings

    ctx = LoopContext(
        run_id="bench",
        loop=LoopSettings(_env_file=None, prometheus_url=None, webhook_url=None),
        decisions=DecisionSettings(_env_file=None),
        drift=DriftSettings(_env_file=None, drift_adapted_reference_size=0),
        model=ModelSettings(_env_file=None, data_dir=data_dir),
        store_settings=StoreSettings(_env_file=None, data_dir=data_dir),
        now=run_at,
    )
    ctx.store, ctx.registry, ctx.rollout, ctx.mnist = store, registry, _Rollout(), mnist
    return ctx


def run_loop_steps(make_store, data_dir: Path, run_at: datetime, mark) -> dict[str, float]:
    """collect, quality and drift, each in a fresh context; seconds per step."""
    from model.data import load_mnist
    from pipelines.drift.detect import model_reference
    from pipelines.steps.collect import step_collect
    from pipelines.steps.drift import step_drift
    from pipelines.steps.quality import step_quality

    registry = _Registry(run_at - CHAMPION_AGE)
    mnist = load_mnist()
    warm = _context(make_store(), data_dir, run_at, registry, mnist)
    # The champion's reference is built once per version and cached: not the run's cost.
    model_reference(registry.net, registry.info, mnist.x_test, data_dir, warm.drift)
    seconds = {}
    mark("start")
    started = time.perf_counter()
    ctx = _context(make_store(), data_dir, run_at, registry, mnist)
    collect = step_collect(ctx)
    seconds["collect"] = time.perf_counter() - started
    for name, step in (("quality", step_quality), ("drift", step_drift)):
        t = time.perf_counter()
        step(_context(make_store(), data_dir, run_at, registry, mnist), collect)
        seconds[name] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    mark("end")
    seconds["labelled_in_window"] = collect.counts.joined
    seconds["predictions_in_window"] = collect.counts.predictions
    return seconds


# -- the S3 server and its request log ----------------------------------------------------


_REQUEST = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP')
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours lines by status


def count_requests(log_text: str) -> Counter:
    """S3 requests in moto's log text by kind: LIST (ListObjectsV2), GET and HEAD of an
    object, BUCKET (a request on the bucket itself), PUT, DELETE, POST."""
    counts: Counter = Counter()
    for method, path in _REQUEST.findall(_COLOUR.sub("", log_text)):
        if path.startswith(("/moto-api", "/bench-mark")):
            continue
        on_bucket = path.split("?")[0].strip("/").count("/") == 0
        if method == "GET" and "list-type=2" in path:
            counts["LIST"] += 1
        elif on_bucket:
            counts["BUCKET"] += 1
        else:
            counts[method] += 1
    return counts


class MotoServer:
    """moto's S3 server on loopback, its log in a file."""

    def __init__(self, log_path: Path) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log_path = log_path
        moto = Path(sys.executable).parent / "moto_server"
        self.process = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log_path.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        import urllib.request

        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start; see {log_path}") from None
                time.sleep(0.2)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def s3_store(endpoint: str) -> S3Store:
    return S3Store(endpoint, ACCESS_KEY, SECRET_KEY, BUCKET)


# -- a measurement in its own process ------------------------------------------------------


def measure(backend: str, location: str, data_dir: Path, log_path: Path | None) -> dict:
    """One loop run against a built store; runs in its own process (peak RSS is the run's)."""
    import urllib.request

    def make_store() -> ObjectStore:
        return s3_store(location) if backend == "s3" else LocalStore(Path(location))

    offsets: dict[str, int] = {}

    def mark(name: str) -> None:
        if backend == "s3":
            # A request the log shows, and the log's size at that point.
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://{location}/bench-mark-{name}", timeout=2)
            time.sleep(0.3)
            offsets[name] = log_path.stat().st_size if log_path else 0

    seconds = run_loop_steps(make_store, data_dir, RUN_AT, mark)
    result = {
        "seconds": seconds,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if backend == "s3" and log_path is not None:
        with log_path.open("rb") as f:
            f.seek(offsets["start"])
            text = f.read(offsets["end"] - offsets["start"]).decode(errors="replace")
        result["s3_requests"] = dict(count_requests(text))
    return result


def _measure_in_process(backend: str, location: str, data_dir: Path, log_path: Path | None) -> dict:
    command = [
        sys.executable, "-m", "digitloop_bench.loop", "measure", backend, location, str(data_dir),
        str(log_path or ""),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measurement failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the benchmark ------------------------------------------------------------------------


def run_bench(
    history_days: tuple[float, ...] = (1, 30),
    backends: tuple[str, ...] = ("local", "s3"),
    rate: float = 1.0,
    labelled: float = 0.05,
    repeats: int = 3,
    work: Path = Path(".digitloop/bench-loop"),
    say=print,
) -> dict:
    """Build each history on each backend, measure ``repeats`` loop runs of each (a fresh
    copy of the history's state each time), and report medians."""
    from model.data import load_mnist

    traffic = Traffic(rate, labelled, load_mnist().x_test[:5000])
    rows = []
    for backend in backends:
        for days in history_days:
            say(f"{backend}: building {days} days of history at {rate}/s, {labelled:.0%} labelled")
            case = work / f"{backend}-{days:g}d"
            shutil.rmtree(case, ignore_errors=True)
            case.mkdir(parents=True)
            server = MotoServer(case / "moto.log") if backend == "s3" else None
            try:
                location = server.endpoint if server else str(case / "store")
                store = s3_store(location) if server else LocalStore(Path(location))
                store.ping()
                built = time.perf_counter()
                stored = build_history(store, days, traffic)
                say(f"  {stored} predictions stored in {time.perf_counter() - built:.0f} s")
                runs = []
                for r in range(repeats):
                    state = _snapshot(store)
                    runs.append(
                        _measure_in_process(backend, location, case / "data",
                                            server.log_path if server else None)
                    )  # fmt: skip
                    _restore(store, state)
                    say(f"  run {r + 1}: {runs[-1]['seconds']['total']:.2f} s "
                        f"{runs[-1].get('s3_requests', '')}")  # fmt: skip
            finally:
                if server:
                    server.stop()
            rows.append(_summary(backend, days, stored, runs))
    return _result(rows)


def _snapshot(store: ObjectStore) -> tuple[set[str], bytes]:
    from pipelines.steps.labelling import STATE_KEY

    return set(store.list(LABELLED_PREFIX)), store.get(STATE_KEY)


def _restore(store: ObjectStore, state: tuple[set[str], bytes]) -> None:
    """Undo a run: the labelled files it appended and its watermark."""
    from pipelines.steps.labelling import STATE_KEY

    keys, watermark = state
    for key in set(store.list(LABELLED_PREFIX)) - keys:
        store.delete(key)
    store.put(STATE_KEY, watermark, "application/json")


def _summary(backend: str, days: float, stored: int, runs: list[dict]) -> dict:
    def median(path: str) -> float:
        values = []
        for run in runs:
            value = run
            for part in path.split("."):
                value = value.get(part, 0) if isinstance(value, dict) else 0
            values.append(float(value))
        return statistics.median(values)

    steps = {s: round(median(f"seconds.{s}"), 3) for s in ("collect", "quality", "drift", "total")}
    requests = {}
    if backend == "s3":
        kinds = sorted({k for run in runs for k in run.get("s3_requests", {})})
        requests = {k: median(f"s3_requests.{k}") for k in kinds}
    return {
        "backend": backend,
        "history_days": days,
        "predictions_stored": stored,
        "window_predictions": int(median("seconds.predictions_in_window")),
        "window_labelled": int(median("seconds.labelled_in_window")),
        "seconds": steps,
        "runs_seconds": [round(r["seconds"]["total"], 3) for r in runs],
        "s3_requests": requests,
        "s3_calls": int(sum(requests.values())) if requests else None,
        "peak_mb": round(median("peak_mb"), 1),
    }


def _result(rows: list[dict]) -> dict:
    """The issue's JSON (lists in the order of ``cases``) and the detail of each case."""
    seconds = [r["seconds"]["total"] for r in rows]

    def ratio(backend: str, key) -> float | None:
        by_days = {r["history_days"]: key(r) for r in rows if r["backend"] == backend}
        if 1 in by_days and 30 in by_days and by_days[1]:
            return round(by_days[30] / by_days[1], 3)
        return None

    backends = sorted({r["backend"] for r in rows})
    ratios = {b: ratio(b, lambda r: r["seconds"]["total"]) for b in backends}
    # Without Evidently's check, whose cost is the window's, not the store's: the reads.
    reads = {
        b: ratio(b, lambda r: r["seconds"]["collect"] + r["seconds"]["quality"]) for b in backends
    }
    calls = ratio("s3", lambda r: r["s3_calls"] or 0)
    known = [v for v in ratios.values() if v is not None]
    return {
        "history_days": [r["history_days"] for r in rows],
        "backends": [r["backend"] for r in rows],
        "seconds": seconds,
        "s3_calls": [r["s3_calls"] for r in rows],
        "peak_mb": [r["peak_mb"] for r in rows],
        "ratio_30_vs_1": max(known) if known else None,
        "ratio_30_vs_1_by_backend": ratios,
        "ratio_30_vs_1_collect_quality_by_backend": reads,
        "s3_calls_ratio_30_vs_1": calls,
        "goal": {
            "time_ratio_at_most_1.2": bool(known) and max(known) <= 1.2,
            "s3_calls_within_20_percent": calls is not None and abs(calls - 1) <= 0.2,
        },
        "cases": rows,
    }


def _main(argv: list[str]) -> None:
    if argv[:1] == ["measure"]:
        backend, location, data_dir, log_path = argv[1:5]
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        result = measure(backend, location, Path(data_dir), Path(log_path) if log_path else None)
        sys.stdout.write(json.dumps(result) + "\n")
        return
    raise SystemExit("usage: python -m digitloop_bench.loop measure BACKEND LOCATION DATA_DIR LOG")


if __name__ == "__main__":
    _main(sys.argv[1:])
