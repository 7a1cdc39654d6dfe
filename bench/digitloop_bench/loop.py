"""``digitloop bench loop``: does one loop run cost the same over 1 and 30 days of history?

It builds a stored history at ``rate`` predictions per second with ``labelled`` of them
labelled, for each of ``history_days``, in a local folder and in the S3 test server (moto,
as the integration tests use), then times one loop run's collect, quality, drift and
compact steps (the real step functions, each with a fresh context as each Argo step is its
own pod),
counts the S3 requests the run makes, and reports the run's peak memory.

The history is what a month looks like after compaction, written directly by this
module's own writer: one compacted parquet file per hour for predictions, feedback and the
labelled dataset, with the same schemas the product writes (2.6 M predictions for 30 days
at 1/s are not sent through the service). The run's own 10 minutes are written as pods
write them: small predictions files every 5 s from 2 pods and one JSON object per label,
through the product's writers. The champion's age is a parameter: by default it has served
the whole history (its training cutoff is the history's first hour, so the loop's window is
the whole history: a month-old champion in the 30-day case), or it was fine-tuned
``champion_age_days`` before the run (the window is then the same in every history and
only the stored history differs).

Each measurement runs in a process of its own (:func:`measure`), so its peak RSS is the
run's (torch, Evidently and pyarrow imported: a baseline of a few hundred MB is included).
S3 requests are counted from the S3 server's request log, between two marks.

Measured (issue 15, 2 shared cores under other jobs' load, so seconds are noisy; medians;
``digitloop bench loop --json``, 1/s with 5 % labelled, the champion serving the whole
history), before and after collect and quality read running totals
(:mod:`pipelines.steps.totals`):

=========  ====  =============  ====================  =========  =======
backend    days  seconds        collect + quality     S3 calls   peak MB
=========  ====  =============  ====================  =========  =======
before
local      1     28.6           3.1                   -          692
local      30    60.8           50.8                  -          3,860
s3         1     22.3           6.8                   1,245      698
s3         30    105.5          92.6                  9,749      3,869
after
local      1     14.6           0.9                   -          625
local      30    7.9            0.5                   -          644
s3         1     13.7           3.5                   1,011      637
s3         30    12.6           3.4                   1,011      638
=========  ====  =============  ====================  =========  =======

(before: 2 runs each; after: 3 runs in a local folder, 5 on S3, ``--backends s3 --repeats
5``). ratio_30_vs_1 (time, the worse backend): 4.73 before; after 0.54 in a local folder
and 0.92 on S3 (0.97 in a first run of 3 on S3, whose collect + quality ratio was 1.29
under load; 0.96 in the run of 5). S3 calls 7.83 before, 1.00 after. The rest
of a run's seconds is the drift step's Evidently check of the newest 400 answers, the same
in every history, and most of the noise: a second local run of 5 gave 1.22 (drift 6.7 s
against 8.1, collect + quality 0.50 s against 0.59), and the two cases run alternately 5
times 1.18 (collect + quality 0.89); in a warm process the drift step took 2.78 s and
2.76 s (4 alternating calls each), the rest of its 7-10 s being its first call's imports.
The measured run is the one of six an hour that adds a closed hour to the totals; the
other five read only the open tail.

Since then the run includes the compact step (16 more S3 calls: 1,027 for both histories,
0.14-0.23 s), pays Evidently's first-report set-up before it is timed, and the histories
take turns run by run. ``digitloop bench loop --json --repeats 3`` then gave, on the same
shared machine: local 2.17 s and 2.23 s (ratio 1.03; collect + quality 0.33 s and 0.34 s),
S3 5.56 s and 6.53 s (ratio 1.17; collect + quality 1.05), peak 689-697 MB in every case.
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
from dataclasses import dataclass, field
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
    store: ObjectStore,
    days: float,
    traffic: Traffic,
    run_at: datetime = RUN_AT,
    cutoff: datetime | None = None,
) -> int:
    """Compacted hours from ``days`` before the last run up to it; the last run's watermark;
    then the 10 minutes since, as the pods write them. Returns the predictions stored.

    With the champion's ``cutoff``, also the running totals of its window as the runs
    before left them (:mod:`pipelines.steps.totals`), up to the hour before the one the
    measured run closes: of the six runs an hour, it is the one that adds an hour to them.
    """
    from pipelines.steps.labelling import STATE_KEY, LabellingState
    from pipelines.steps.window import GRACE, TOTALS_SETTLE

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
    if cutoff is not None:
        from pipelines.steps.totals import window_totals

        window_totals(store, cutoff, run_at - 2 * RUN_INTERVAL, TOTALS_SETTLE, GRACE)
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


def champion_cutoff(days: float, champion_age_days: float | None, run_at: datetime = RUN_AT):
    """The champion's training cutoff: ``champion_age_days`` before the run, or (None) the
    first hour of a history of ``days``."""
    if champion_age_days is not None:
        return run_at - timedelta(days=champion_age_days)
    return (run_at - RUN_INTERVAL - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)


def run_loop_steps(
    make_store, data_dir: Path, run_at: datetime, mark, cutoff: datetime
) -> dict[str, float]:
    """collect, quality, drift and compact, each in a fresh context, for a champion
    trained on feedback up to ``cutoff``; seconds per step."""
    from model.data import load_mnist
    from pipelines.drift.detect import detect_drift, model_reference
    from pipelines.steps.collect import step_collect
    from pipelines.steps.compact import step_compact
    from pipelines.steps.drift import step_drift
    from pipelines.steps.quality import step_quality

    registry = _Registry(cutoff)
    mnist = load_mnist()
    warm = _context(make_store(), data_dir, run_at, registry, mnist)
    # The champion's reference is built once per version and cached: not the run's cost.
    reference = model_reference(registry.net, registry.info, mnist.x_test, data_dir, warm.drift)
    # A process's first Evidently report pays 4-8 s of imports and set-up, varying with the
    # machine's load more than anything compared here, and the same for every history: paid
    # before the measured run, as a long-lived worker would have.
    window = mnist.x_test[: warm.loop.drift_window]
    detect_drift(registry.net, window, reference, warm.drift)
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
    t = time.perf_counter()
    step_compact(_context(make_store(), data_dir, run_at, registry, mnist))
    seconds["compact"] = time.perf_counter() - t
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


def measure(
    backend: str, location: str, data_dir: Path, log_path: Path | None, cutoff: datetime
) -> dict:
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

    seconds = run_loop_steps(make_store, data_dir, RUN_AT, mark, cutoff)
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


def _measure_in_process(
    backend: str, location: str, data_dir: Path, log_path: Path | None, cutoff: datetime
) -> dict:
    command = [
        sys.executable, "-m", "digitloop_bench.loop", "measure", backend, location, str(data_dir),
        str(log_path or ""), cutoff.isoformat(),
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
    champion_age_days: float | None = None,
) -> dict:
    """Build each history on each backend, measure ``repeats`` loop runs of each, the
    histories in turn (a fresh copy of the history's state each time), and report medians.
    The champion has served the whole history, or (``champion_age_days``) was trained that
    long before the run."""
    from model.data import load_mnist

    traffic = Traffic(rate, labelled, load_mnist().x_test[:5000])
    rows = []
    for backend in backends:
        cases: list[_Case] = []
        try:
            for days in history_days:
                say(f"{backend}: {days} days of history at {rate}/s, {labelled:.0%} labelled")
                folder = work / f"{backend}-{days:g}d"
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                server = MotoServer(folder / "moto.log") if backend == "s3" else None
                location = server.endpoint if server else str(folder / "store")
                case = _Case(
                    days, folder, server, location, champion_cutoff(days, champion_age_days)
                )
                cases.append(case)
                store = case.store()
                store.ping()
                built = time.perf_counter()
                case.stored = build_history(store, days, traffic, cutoff=case.cutoff)
                say(f"  {case.stored} predictions stored in {time.perf_counter() - built:.0f} s")
            # The histories take turns, run by run: a shared machine's load of the moment then
            # falls on each alike, and the ratio compares the histories, not two minutes.
            for r in range(repeats):
                for case in cases:
                    store = case.store()
                    state = _snapshot(store)
                    case.runs.append(
                        _measure_in_process(backend, case.location, case.folder / "data",
                                            case.server.log_path if case.server else None,
                                            case.cutoff)
                    )  # fmt: skip
                    _restore(store, state)
                    say(f"  {case.days:g} days, run {r + 1}: "
                        f"{case.runs[-1]['seconds']['total']:.2f} s "
                        f"{case.runs[-1].get('s3_requests', '')}")  # fmt: skip
        finally:
            for case in cases:
                if case.server:
                    case.server.stop()
        for case in cases:
            rows.append(_summary(backend, case.days, case.stored, case.runs, RUN_AT - case.cutoff))
    return _result(rows)


@dataclass
class _Case:
    """One history on one backend, and the runs measured on it."""

    days: float
    folder: Path
    server: MotoServer | None
    location: str
    cutoff: datetime
    stored: int = 0
    runs: list[dict] = field(default_factory=list)

    def store(self) -> ObjectStore:
        return s3_store(self.location) if self.server else LocalStore(Path(self.location))


def _states() -> tuple[str, ...]:
    from pipelines.steps import labelling, totals

    return labelling.STATE_KEY, totals.WINDOW_STATE_KEY


def _snapshot(store: ObjectStore) -> tuple[set[str], dict[str, bytes]]:
    states = {key: store.get(key) for key in _states() if store.exists(key)}
    return set(store.list(LABELLED_PREFIX)), states


def _restore(store: ObjectStore, state: tuple[set[str], dict[str, bytes]]) -> None:
    """Undo a run: the labelled files it appended, its watermark and window totals."""
    keys, states = state
    for key in set(store.list(LABELLED_PREFIX)) - keys:
        store.delete(key)
    for key in _states():
        if key in states:
            store.put(key, states[key], "application/json")
        else:
            store.delete(key)


def _summary(
    backend: str, days: float, stored: int, runs: list[dict], champion_age: timedelta
) -> dict:
    def median(path: str) -> float:
        values = []
        for run in runs:
            value = run
            for part in path.split("."):
                value = value.get(part, 0) if isinstance(value, dict) else 0
            values.append(float(value))
        return statistics.median(values)

    steps = {
        s: round(median(f"seconds.{s}"), 3)
        for s in ("collect", "quality", "drift", "compact", "total")
    }
    requests = {}
    if backend == "s3":
        kinds = sorted({k for run in runs for k in run.get("s3_requests", {})})
        requests = {k: median(f"s3_requests.{k}") for k in kinds}
    return {
        "backend": backend,
        "history_days": days,
        "champion_age_days": round(champion_age / timedelta(days=1), 3),
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
        "champion_age_days": [r["champion_age_days"] for r in rows],
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
        backend, location, data_dir, log_path, cutoff = argv[1:6]
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        result = measure(
            backend,
            location,
            Path(data_dir),
            Path(log_path) if log_path else None,
            datetime.fromisoformat(cutoff),
        )
        sys.stdout.write(json.dumps(result) + "\n")
        return
    raise SystemExit(
        "usage: python -m digitloop_bench.loop measure BACKEND LOCATION DATA_DIR LOG CUTOFF"
    )


if __name__ == "__main__":
    _main(sys.argv[1:])
