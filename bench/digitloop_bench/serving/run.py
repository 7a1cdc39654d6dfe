"""One benchmark run: model set-up, each server in turn under the same load, the report.

The steps, all in one run so every number compares with the others:

1. a temporary data directory with one registered model version: a copy of the champion
   of an existing registry (``--model``), or a quick model trained here;
2. the request sets (:mod:`.loadgen`): sketch PNGs made from MNIST test digits, as a
   280x280 canvas (``canvas``) and as the sketchpad sends them, grey and cropped to the
   ink (``ui``, the headline: what the product really sends);
3. the machine's limit: the in-process, single-threaded cost of one request's work
   (:mod:`.cost`), and the label the model gives each image in-process;
4. every server (BentoML service, FastAPI baseline, KServe baseline, the bare ASGI floor)
   started on a free loopback port in its own process group and waited for until every
   worker answers;
   then, server after server, the load generator at each concurrency on the headline set
   and at the highest on the others, recording throughput, latency, errors and the
   server's CPU time per answer, for ``rounds`` rounds (figures are medians over rounds);
   the process groups stopped at the end, on errors and Ctrl-C too;
5. the table, the plot and the JSON, with the goal of issue 17: BentoML's CPU per answer
   against KServe's and FastAPI's, the in-process work, errors and p99.

Every server gets the same environment (:func:`server_env`): the caller's ``DIGITLOOP_*``
settings are replaced by the run's own; anything else passes through, so a BentoML
setting to try can be given as ``BENTOML_CONFIG_OVERRIDES`` without touching the code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from contracts.errors import DigitloopError
from contracts.registry import CHAMPION_ALIAS
from digitloop_bench.serving.loadgen import KSERVE_MODEL_NAME, REQUEST_SETS, SERVER_KINDS, merge

log = logging.getLogger("digitloop.bench")

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[3]
# The goal the BentoML service is reported against (issue 17, at the highest concurrency,
# on the headline request set): server CPU per answer at most KServe's and at most 0.8x
# FastAPI's, the in-process work at most 1 ms, no errors, p99 no worse than FastAPI's.
GOAL = {"cpu_vs_kserve": 1.0, "cpu_vs_fastapi": 0.8, "work_ms": 1.0, "p99_vs_fastapi": 1.0}
READY_PATHS = {
    "bentoml": "/readyz",
    "fastapi": "/readyz",
    "kserve": f"/v1/models/{KSERVE_MODEL_NAME}",
    "asgi": "/readyz",
}
STOP_TIMEOUT_S = 15.0


class BenchError(DigitloopError):
    """The benchmark could not run (a server did not start, no model, ...)."""


@dataclass(frozen=True)
class BenchConfig:
    """What one run measures and for how long; ``make(quick=True)`` is the short variant."""

    model: str | None = None
    servers: tuple[str, ...] = SERVER_KINDS
    concurrencies: tuple[int, ...] = (1, 8, 32)
    workers: int = 2
    torch_threads: int = 1
    # What runs the network in every server and in-process (DIGITLOOP_INFERENCE_RUNTIME).
    runtime: str = "onnxruntime_int8"
    # The first is the headline, measured at every concurrency; the others at the highest.
    request_sets: tuple[str, ...] = REQUEST_SETS
    warmup_s: float = 2.0
    duration_s: float = 8.0
    n_requests: int = 300
    train_images: int = 10_000
    loadgen_processes: int = 2
    # Rounds of the whole plan, the servers taken in turn; each figure is their median.
    rounds: int = 2
    # The baselines freeze their loaded workers out of the garbage collector's scans, as
    # the service does (services.slots.freeze_long_lived): the same GC treatment for all.
    freeze_baselines: bool = False
    start_timeout_s: float = 180.0
    request_timeout_s: float = 10.0
    quick: bool = False

    @classmethod
    def make(cls, quick: bool = False, **overrides: object) -> BenchConfig:
        base = cls()
        if quick:
            base = replace(
                base,
                warmup_s=1.0,
                duration_s=2.5,
                n_requests=64,
                train_images=4000,
                quick=True,
                rounds=1,
            )
        return replace(base, **overrides)  # type: ignore[arg-type]

    def validate(self) -> None:
        unknown = [s for s in self.servers if s not in SERVER_KINDS]
        if unknown or not self.servers:
            raise BenchError(
                f"unknown server(s) {', '.join(unknown) or '(none)'}; "
                f"choose from {', '.join(SERVER_KINDS)}"
            )
        if not self.concurrencies or min(self.concurrencies) < 1:
            raise BenchError("concurrencies must be positive integers")
        bad_sets = [s for s in self.request_sets if s not in REQUEST_SETS]
        if bad_sets or not self.request_sets:
            raise BenchError(
                f"unknown request set(s) {', '.join(bad_sets) or '(none)'}; "
                f"choose from {', '.join(REQUEST_SETS)}"
            )
        if self.rounds < 1:
            raise BenchError("rounds must be at least 1")
        from typing import get_args

        from services.settings import Runtime

        if self.runtime not in get_args(Runtime):
            choices = ", ".join(get_args(Runtime))
            raise BenchError(f"unknown runtime {self.runtime!r}; choose from {choices}")


# --- processes -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def stop_group(
    process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S, known: Sequence[int] = ()
) -> None:
    """Stop a process we started, its process group and every process it started.

    SIGTERM to the group first (a graceful stop: BentoML flushes its predictions log),
    then SIGKILL to what is left after ``timeout``. Descendants are tracked by pid as
    well as by group: BentoML's process manager starts each worker in a session of its
    own, out of reach of the group's signals. ``known`` adds pids seen earlier.
    """
    import psutil

    tree = {p.pid: p for p in _descendants(process.pid)}
    for pid in known:
        if pid not in tree and pid != process.pid:
            with contextlib.suppress(psutil.Error):
                tree[pid] = psutil.Process(pid)
    # Started with start_new_session=True: the process leads its own group, pgid == pid.
    pgid = process.pid
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("pid %s did not stop in %.0fs; killing it", process.pid, timeout)
    _, alive = psutil.wait_procs(list(tree.values()), timeout=max(1.0, timeout / 3))
    # What is left of the group (workers that ignored SIGTERM), then strays by pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    if process.poll() is None:
        process.kill()
    process.wait()


class Processes:
    """Every process a run starts, stopped at the end whatever happens."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen] = []
        self._known: dict[int, set[int]] = {}

    def start(self, command: Sequence[str], **kwargs: object) -> subprocess.Popen:
        process = subprocess.Popen(list(command), start_new_session=True, **kwargs)  # type: ignore[call-overload]
        self._running.append(process)
        return process

    def remember_tree(self, process: subprocess.Popen) -> list[int]:
        """Note the process's current descendants, to stop them even if it dies first."""
        pids = [p.pid for p in _descendants(process.pid)]
        self._known.setdefault(process.pid, set()).update(pids)
        return pids

    def stop(self, process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
        stop_group(process, timeout, known=sorted(self._known.pop(process.pid, set())))
        if process in self._running:
            self._running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self._running)):
            self.stop(process)


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """A SIGTERM ends the run like Ctrl-C does, so the servers are stopped."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- the three servers -----------------------------------------------------------------


@dataclass
class Server:
    kind: str
    port: int
    process: subprocess.Popen
    log_path: Path


def server_env(config: BenchConfig, data_dir: Path, version: str) -> dict[str, str]:
    """One environment for every server: the same model, threads and a private data dir.

    ``DIGITLOOP_*`` settings of the caller (a tracking server, an S3 endpoint, a canary)
    are dropped, and those a ``.env`` file could set are overridden, so that every server
    loads the temporary registry's version and the service writes only into the
    temporary directory.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITLOOP_")}
    threads = str(config.torch_threads)
    env.update(
        DIGITLOOP_DATA_DIR=str(data_dir),
        DIGITLOOP_MLFLOW_TRACKING_URI="",
        DIGITLOOP_S3_ENDPOINT="",
        DIGITLOOP_STABLE_MODEL=version,
        DIGITLOOP_CANARY_MODEL="",
        DIGITLOOP_CANARY_WEIGHT="0",
        DIGITLOOP_ONLY_TRACK="stable",
        DIGITLOOP_BENCH_MODEL=version,
        DIGITLOOP_PREDICTION_ID_SECRET=secrets.token_hex(32),
        DIGITLOOP_WORKERS=str(config.workers),
        DIGITLOOP_TORCH_THREADS=threads,
        DIGITLOOP_INFERENCE_RUNTIME=config.runtime,
        DIGITLOOP_BENCH_GC_FREEZE="1" if config.freeze_baselines else "0",
        # Per worker process, in the environment: a setting made in a parent process does
        # not reach spawned workers.
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        OPENBLAS_NUM_THREADS="1",
        BENTOML_HOME=str(data_dir / "bentoml"),
        BENTOML_DO_NOT_TRACK="True",
        KSERVE_LOGLEVEL="WARNING",
        MLFLOW_LOGGING_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    return env


def server_command(kind: str, port: int, config: BenchConfig, run_dir: Path) -> list[str]:
    python = sys.executable
    if kind == "bentoml":
        bentoml = Path(python).with_name("bentoml")
        launcher = [str(bentoml)] if bentoml.exists() else [python, "-m", "bentoml"]
        return [*launcher, "serve", "services.service:DigitService",
                "--host", HOST, "--port", str(port)]  # fmt: skip
    if kind == "fastapi":
        return [python, "-m", "digitloop_bench.serving.fastapi_server",
                "--host", HOST, "--port", str(port), "--workers", str(config.workers)]  # fmt: skip
    if kind == "asgi":
        return [python, "-m", "digitloop_bench.serving.asgi_server",
                "--host", HOST, "--port", str(port), "--workers", str(config.workers)]  # fmt: skip
    if kind == "kserve":
        log_config = write_kserve_log_config(run_dir / "kserve-logging.json")
        return [python, "-m", "digitloop_bench.serving.kserve_server",
                "--http_port", str(port), "--workers", str(config.workers),
                "--enable_grpc", "false", "--enable_latency_logging", "false",
                "--log_config_file", str(log_config)]  # fmt: skip
    raise BenchError(f"unknown server {kind!r}")


def write_kserve_log_config(path: Path) -> Path:
    """KServe's logging layout (``--log_config_file``) with per-request logs at WARNING.

    KServe logs every request twice at INFO (uvicorn's access log and its own timing
    middleware); a production deployment turns both down, and so does the benchmark.
    """
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
               "formatter": "plain"}  # fmt: skip
    quiet = {"handlers": ["stderr"], "level": "WARNING", "propagate": False}
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(process)s %(name)s %(message)s"}},
        "handlers": {"stderr": handler},
        "loggers": {
            name: dict(quiet)
            for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


def start_server(
    kind: str, config: BenchConfig, env: dict[str, str], run_dir: Path, processes: Processes
) -> Server:
    port = free_port()
    log_path = run_dir / "logs" / f"{kind}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as handle:
        process = processes.start(
            server_command(kind, port, config, run_dir),
            cwd=REPO_ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server(kind, port, process, log_path)
    processes.remember_tree(process)
    wait_ready(server, config.workers, config.start_timeout_s)
    processes.remember_tree(process)
    return server


def _probe(port: int, path: str, pids: Sequence[int]) -> tuple[int | None, int | None]:
    """(status, owner pid) of one GET on a fresh connection; (None, None) if it fails."""
    from digitloop_bench.serving.loadgen import owner_pid

    try:
        with socket.create_connection((HOST, port), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
            head = sock.recv(65536)
            status = int(head[9:12])
            owner = owner_pid(pids, port, sock.getsockname()[1]) if pids else None
            return status, owner
    except (OSError, ValueError):
        return None, None


def wait_ready(server: Server, workers: int, timeout: float) -> None:
    """Wait until ``workers`` distinct processes answer the readiness route with 200.

    One worker's 200 is not enough: a worker still loading its model does not accept
    connections (uvicorn) or answers 503 (BentoML), and a load started then would meet
    one worker instead of two. The owner of each probe connection tells which one answered.
    """
    from digitloop_bench.serving.loadgen import server_processes

    deadline = time.monotonic() + timeout
    path = READY_PATHS[server.kind]
    ready: set[int] = set()
    consecutive = 0
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(
                f"{server.kind} exited with code {server.process.returncode} before it was "
                f"ready; its log:\n{tail(server.log_path)}"
            )
        try:
            pids = server_processes(server.process.pid)
        except Exception:
            pids = []
        status, owner = _probe(server.port, path, pids)
        if status == 200:
            consecutive += 1
            if owner is not None:
                ready.add(owner)
            if len(ready) >= workers or (workers <= 1 and consecutive >= 1):
                return
            # If owners cannot be seen (no permission), many successes in a row will do.
            if owner is None and consecutive >= 10 * workers:
                return
        else:
            consecutive = 0
        time.sleep(0.2 if status == 200 else 0.5)
    raise BenchError(
        f"{server.kind} was not ready on port {server.port} after {timeout:.0f}s "
        f"({len(ready)} of {workers} workers answered); its log:\n{tail(server.log_path)}"
    )


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- one measurement --------------------------------------------------------------------


def split_connections(concurrency: int, processes: int) -> list[int]:
    """Connections per load generator process, as even as possible, none empty."""
    processes = max(1, min(processes, concurrency))
    base, extra = divmod(concurrency, processes)
    return [base + (1 if i < extra else 0) for i in range(processes)]


def _cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    import psutil

    seconds = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            seconds[pid] = times.user + times.system
    return seconds


def _sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        time.sleep(delay)


def measure(
    server: Server, concurrency: int, config: BenchConfig, requests_dir: Path,
    processes: Processes,
) -> dict[str, object]:  # fmt: skip
    """Run the load generator at one concurrency against a running server."""
    from digitloop_bench.serving.loadgen import server_processes

    shares = split_connections(concurrency, config.loadgen_processes)
    # Time for the client processes to start and place their connections before the load.
    lead = 2.5 + 0.05 * concurrency
    start_at = time.time() + lead
    n = config.n_requests
    clients = []
    for i, connections in enumerate(shares):
        command = [
            sys.executable, "-m", "digitloop_bench.serving.loadgen",
            "--kind", server.kind, "--host", HOST, "--port", str(server.port),
            "--requests", str(requests_dir), "--connections", str(connections),
            "--start-at", f"{start_at:.3f}", "--warmup", str(config.warmup_s),
            "--duration", str(config.duration_s), "--timeout", str(config.request_timeout_s),
            "--server-pid", str(server.process.pid), "--workers", str(config.workers),
            "--offset", str(i * n // len(shares)),
        ]  # fmt: skip
        clients.append(
            processes.start(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    try:
        server_pids = server_processes(server.process.pid)
        client_pids = [c.pid for c in clients]
        window_start = start_at + config.warmup_s
        _sleep_until(window_start)
        before = _cpu_seconds(server_pids + client_pids)
        wall_before = time.monotonic()
        _sleep_until(window_start + config.duration_s)
        after = _cpu_seconds(server_pids + client_pids)
        wall = time.monotonic() - wall_before
        results = []
        for client in clients:
            remaining = max(5.0, config.request_timeout_s + 20.0)
            try:
                stdout, stderr = client.communicate(timeout=remaining)
            except subprocess.TimeoutExpired as exc:
                raise BenchError(f"a load generator did not finish within {remaining}s") from exc
            if client.returncode != 0 or not stdout.strip():
                raise BenchError(
                    f"the load generator failed (exit {client.returncode}): "
                    f"{stderr.decode(errors='replace')[-2000:]}"
                )
            results.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    finally:
        for client in clients:
            processes.stop(client, timeout=2.0)
    summary = merge(results)
    used = {pid: after[pid] - before[pid] for pid in after if pid in before}
    workers_cpu = sorted(
        (round(used[pid] / wall, 3) for pid in server_pids if pid in used), reverse=True
    )
    server_cpu = sum(used.get(pid, 0.0) for pid in server_pids)
    answers = int(summary["answers"])  # type: ignore[arg-type]
    summary["cpu"] = {
        # CPU the server spent per answer: the work plus its stack's overhead. Unlike
        # throughput it holds up on a busy machine, so it shows where a stack's time goes.
        "server_ms_per_request": round(server_cpu * 1000 / answers, 3) if answers else None,
        "server_cores": round(server_cpu / wall, 3),
        "server_processes_cores": [c for c in workers_cpu if c >= 0.01],
        "client_cores": round(sum(used.get(pid, 0.0) for pid in client_pids) / wall, 3),
    }
    summary["clients"] = len(clients)
    summary["cpu_ms_per_answer"] = summary["cpu"]["server_ms_per_request"]  # type: ignore[index]
    return summary


# --- the whole run ------------------------------------------------------------------------


def prepare_model(data_dir: Path, config: BenchConfig, say: Callable[[str], None]) -> tuple:
    """Register one model version in a fresh registry under ``data_dir``.

    Returns (version, MNIST test images, description of where the model came from).
    """
    from model.data import load_mnist
    from model.evaluate import evaluate
    from model.export import calibration_digits
    from model.registry import Registry, TrainingRecord
    from model.settings import ModelSettings

    mnist = load_mnist()
    x_eval, y_eval = mnist.x_test[:2000], mnist.y_test[:2000].astype("int64")
    if config.model:
        source = config.model
        if "://" in source:
            settings = ModelSettings(mlflow_tracking_uri=source)
        else:
            if not (Path(source) / "mlflow.db").exists():
                raise BenchError(
                    f"--model {source}: no registry there (no mlflow.db); pass a data "
                    "directory holding one or an MLflow tracking URI"
                )
            settings = ModelSettings(data_dir=Path(source), mlflow_tracking_uri=None)
        # Read the source before the target registry points MLflow at the new store.
        source_registry = Registry(settings)
        net, info = source_registry.load(CHAMPION_ALIAS)
        say(f"copying champion version {info.version} from {source}")
        record = TrainingRecord(
            params={"copied_from": source, "source_version": info.version},
            history=[],
            mnist_test=evaluate(net, x_eval, y_eval),
            seconds=0.0,
            training_data=json.loads(info.tags.get("training_data") or "{}"),
            run_name=f"bench-copy-v{info.version}",
            novelty=source_registry.novelty(info),
            # Quantised again as it registers here, as `digitloop train` does.
            int8_calibration=calibration_digits(mnist.x_train),
        )
        described = f"champion v{info.version} of {source}"
    else:
        from model.novelty import fit_for_version
        from model.train import TrainConfig, train

        n = min(config.train_images, len(mnist.x_train))
        say(f"training a quick model: 1 epoch on {n} MNIST images")
        train_config = TrainConfig(epochs=1)
        result = train(mnist.x_train[:n], mnist.y_train[:n], train_config)
        net = result.net
        record = TrainingRecord(
            params={**train_config.as_params(), "limit": n},
            history=result.history,
            mnist_test=evaluate(net, x_eval, y_eval),
            seconds=result.seconds,
            training_data={"mnist_train": n, "feedback": 0},
            run_name="bench-quick",
            # Served with a novelty score like a version `digitloop train` registers.
            novelty=fit_for_version(
                net,
                (mnist.x_train[:n], mnist.y_train[:n]),
                (x_eval, y_eval),
                ModelSettings().novelty_share,
            ),
            int8_calibration=calibration_digits(mnist.x_train[:n]),
        )
        described = f"quick model (1 epoch, {n} images)"
    target = Registry(ModelSettings(data_dir=data_dir, mlflow_tracking_uri=None))
    registered = target.log_and_register(net, record)
    return registered.version, mnist.x_test, described


SUMMARY_KEYS = ("rps", "p50_ms", "p99_ms", "errors", "cpu_ms_per_answer")


def measure_once(
    server: Server,
    request_set: str,
    concurrency: int,
    config: BenchConfig,
    requests_dir: Path,
    work_ms: float,
    processes: Processes,
    say: Callable[[str], None],
) -> dict[str, object]:
    """One measurement of a running server, with its warnings; BenchError if it died."""
    kind = server.kind
    measured = measure(server, concurrency, config, requests_dir, processes)
    cpu: dict = measured["cpu"]  # type: ignore[assignment]
    if cpu["server_ms_per_request"] is not None:
        cpu["overhead_ms"] = round(cpu["server_ms_per_request"] - work_ms, 3)
    say(
        f"{kind} {request_set} c={concurrency}: {measured['rps']:.0f} req/s, p50 "
        f"{_fmt(measured['p50_ms'])} ms, p99 {_fmt(measured['p99_ms'])} ms, "
        f"{measured['errors']} errors; server {cpu['server_cores']:.2f} cores, "
        f"{_fmt2(cpu['server_ms_per_request'])} CPU ms per answer"
    )
    busiest = cpu["server_processes_cores"][: config.workers]
    if (
        concurrency >= 2 * config.workers
        and len(busiest) == config.workers
        and (busiest[-1] < 0.5 * busiest[0])
    ):
        say(
            f"[yellow]warning:[/] {kind} c={concurrency}: the workers did not share "
            f"the load (cores per process {busiest}); see connections_per_worker"
        )
    if measured["late_s"]:
        say(
            f"[yellow]warning:[/] the load started {measured['late_s']}s into the "
            f"measured window of {kind} c={concurrency}: the machine is busy"
        )
    if server.process.poll() is not None:
        raise BenchError(
            f"{kind} exited with code {server.process.returncode} during the run; "
            f"its log:\n{tail(server.log_path)}"
        )
    return measured


def combine_rounds(rounds: Sequence[dict[str, object]]) -> dict[str, object]:
    """One measurement from several rounds of it: the median of each figure, the sum of
    errors and mismatches, the last round's details, and every round's summary."""
    import statistics

    def median(key: str, within: str | None = None) -> float | None:
        values = [
            (r[within] if within else r).get(key)  # type: ignore[union-attr]
            for r in rounds
        ]
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 3) if values else None

    combined = dict(rounds[-1])
    for key in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_answer"):
        combined[key] = median(key)
    for key in ("errors", "mismatches", "answers"):
        combined[key] = sum(int(r.get(key, 0)) for r in rounds)  # type: ignore[arg-type]
    combined["cpu"] = {
        **rounds[-1]["cpu"],  # type: ignore[dict-item]
        "server_ms_per_request": combined["cpu_ms_per_answer"],
        "server_cores": median("server_cores", "cpu"),
        "client_cores": max(r["cpu"]["client_cores"] for r in rounds),  # type: ignore[index]
    }
    combined["rounds"] = [{k: r[k] for k in SUMMARY_KEYS} for r in rounds]
    return combined


def bench_servers(
    config: BenchConfig,
    env: dict[str, str],
    run_dir: Path,
    requests_dirs: dict[str, Path],
    work_ms: dict[str, float],
    processes: Processes,
    say: Callable[[str], None],
) -> tuple[dict[str, dict], dict[str, dict], dict[str, dict], dict[str, str]]:
    """Start every server, measure them in turn, stop them: (summaries, details, other
    request sets, failures), keyed by server.

    The servers wait side by side, idle, and are measured one after the other at each
    step (the headline set at each concurrency, then the other sets at the highest), for
    ``config.rounds`` rounds; each figure is the median of its rounds. On a machine
    shared with other jobs the load changes by the minute: taking the servers in turn,
    again and again, lets each meet the same machine, where one server after the other
    compared a quiet minute with a busy one.
    """
    servers: dict[str, Server] = {}
    failures: dict[str, str] = {}
    for kind in config.servers:
        say(f"starting {kind}")
        try:
            servers[kind] = start_server(kind, config, env, run_dir, processes)
        except BenchError as exc:
            failures[kind] = str(exc)
            say(f"[red]{kind} failed[/]: {str(exc).splitlines()[0]}")
    headline, *rest = config.request_sets
    plan = [(headline, c) for c in config.concurrencies]
    plan += [(name, max(config.concurrencies)) for name in rest]
    measured: dict[tuple[str, str, int], list[dict[str, object]]] = {}
    try:
        for round_ in range(config.rounds):
            if config.rounds > 1:
                say(f"round {round_ + 1} of {config.rounds}")
            for request_set, concurrency in plan:
                for kind, server in list(servers.items()):
                    try:
                        one = measure_once(
                            server, request_set, concurrency, config,
                            requests_dirs[request_set], work_ms[request_set], processes, say,
                        )  # fmt: skip
                    except BenchError as exc:
                        failures[kind] = str(exc)
                        say(f"[red]{kind} failed[/]: {str(exc).splitlines()[0]}")
                        processes.stop(servers.pop(kind).process)
                        continue
                    measured.setdefault((kind, request_set, concurrency), []).append(one)
    finally:
        for kind, server in servers.items():
            say(f"stopping {kind}")
            processes.stop(server.process)
    summaries: dict[str, dict] = {}
    details: dict[str, dict] = {}
    others: dict[str, dict] = {}
    for (kind, request_set, concurrency), rounds in measured.items():
        if kind in failures:
            continue
        one = combine_rounds(rounds)
        key = f"c{concurrency}"
        summary = {k: one[k] for k in SUMMARY_KEYS}
        detail = {k: v for k, v in one.items() if k not in SUMMARY_KEYS}
        if request_set == headline:
            summaries.setdefault(kind, {})[key] = summary
            details.setdefault(kind, {})[key] = detail
        else:
            others.setdefault(request_set, {}).setdefault(kind, {})[key] = {
                **summary,
                "details": detail,
            }
    return summaries, details, others, failures


def run_bench(
    config: BenchConfig, say: Callable[[str], None] = lambda message: None
) -> dict[str, object]:
    """Run the benchmark and return the result object (see :func:`result_object`)."""
    config.validate()
    from digitloop_bench.serving import cost as cost_module
    from digitloop_bench.serving.loadgen import (
        make_request_set,
        ui_request_set,
        write_expected,
        write_request_set,
    )

    run_dir = Path(tempfile.mkdtemp(prefix="digitloop-bench-"))
    processes = Processes()
    try:
        with terminate_on_sigterm():
            data_dir = run_dir / "data"
            version, x_test, described = prepare_model(data_dir, config, say)

            say(f"making {config.n_requests} sketch PNGs from MNIST test digits")
            canvases = make_request_set(x_test, config.n_requests, seed=0)
            request_sets = {"canvas": canvases, "ui": ui_request_set(canvases)}

            from model.registry import Registry
            from model.settings import ModelSettings
            from services.inference import Classifier

            classifier = Classifier.from_registry(
                version,
                Registry(ModelSettings(data_dir=data_dir, mlflow_tracking_uri=None)),
                runtime=config.runtime,  # type: ignore[arg-type]
            )
            costs: dict[str, cost_module.Cost] = {}
            requests_dirs: dict[str, Path] = {}
            for name in config.request_sets:
                pngs = request_sets[name]
                say(f"measuring one request's work in-process on one thread ({name} set)")
                costs[name] = cost_module.measure(classifier, pngs, rounds=1 if config.quick else 3)
                requests_dirs[name] = write_request_set(pngs, run_dir / "requests" / name)
                write_expected(costs[name].labels, requests_dirs[name])
                say(
                    f"{name}: cost {costs[name].total:.3f} ms/request (decode "
                    f"{costs[name].decode:.3f}, preprocess {costs[name].preprocess:.3f}, "
                    f"forward {costs[name].forward:.3f}, novelty {costs[name].novelty:.3f}), "
                    f"{_mean_bytes(pngs):.0f} bytes per PNG"
                )
            headline = config.request_sets[0]
            cost = costs[headline]
            cores = cost_module.machine_cores()
            limit = cost_module.limit_rps(cost.total, cores)
            say(f"limit {limit:.0f} req/s on {cores} cores ({headline} set)")

            env = server_env(config, data_dir, version)
            work_ms = {name: c.total for name, c in costs.items()}
            servers, details, others, failures = bench_servers(
                config, env, run_dir, requests_dirs, work_ms, processes, say
            )
    finally:
        processes.stop_all()
        shutil.rmtree(run_dir, ignore_errors=True)

    result = result_object(
        cost=cost.as_dict(), limit=limit, servers=servers, concurrencies=config.concurrencies
    )
    result.update(
        cores=cores,
        model={"version": version, "source": described},
        requests=len(canvases),
        request_sets={
            name: {
                "headline": name == headline,
                "cost_ms": costs[name].as_dict(),
                "mean_png_bytes": round(_mean_bytes(request_sets[name])),
                **({"servers": others[name]} if name in others else {}),
            }
            for name in config.request_sets
        },
        config={
            "workers": config.workers, "torch_threads": config.torch_threads,
            "runtime": config.runtime, "request_sets": list(config.request_sets),
            "warmup_s": config.warmup_s, "duration_s": config.duration_s,
            "loadgen_processes": config.loadgen_processes, "rounds": config.rounds,
            "freeze_baselines": config.freeze_baselines,
            "quick": config.quick,
        },
        details=details,
        failures=failures,
    )  # fmt: skip
    return result


def _mean_bytes(pngs: Sequence[bytes]) -> float:
    return sum(len(png) for png in pngs) / max(1, len(pngs))


def _fmt(value: object) -> str:
    return "-" if value is None else f"{float(value):.1f}"  # type: ignore[arg-type]


def _ratio(a: object, b: object) -> float | None:
    if a is None or b is None or not isinstance(a, int | float) or not isinstance(b, int | float):
        return None
    if b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 3)


def result_object(
    cost: dict[str, float],
    limit: float,
    servers: dict[str, dict[str, dict[str, object]]],
    concurrencies: Sequence[int],
) -> dict[str, object]:
    """The JSON object: limit, cost per stage, per-server results, ratios and the goal.

    Ratios are taken at the highest concurrency: BentoML over FastAPI (throughput, p99 and
    server CPU per answer), BentoML over KServe (throughput, CPU per answer), and each
    server over the machine's limit. The goal (:data:`GOAL`) is issue 17's.
    """
    top = f"c{max(concurrencies)}"

    def at(kind: str, key: str) -> object:
        return servers.get(kind, {}).get(top, {}).get(key)

    ratios: dict[str, float | None] = {
        "bentoml_vs_fastapi_rps": _ratio(at("bentoml", "rps"), at("fastapi", "rps")),
        "bentoml_vs_fastapi_p99": _ratio(at("bentoml", "p99_ms"), at("fastapi", "p99_ms")),
        "bentoml_vs_kserve_rps": _ratio(at("bentoml", "rps"), at("kserve", "rps")),
        "bentoml_vs_fastapi_cpu": _ratio(
            at("bentoml", "cpu_ms_per_answer"), at("fastapi", "cpu_ms_per_answer")
        ),
        "bentoml_vs_kserve_cpu": _ratio(
            at("bentoml", "cpu_ms_per_answer"), at("kserve", "cpu_ms_per_answer")
        ),
    }
    for kind in SERVER_KINDS:
        ratios[f"{kind}_vs_limit"] = _ratio(at(kind, "rps"), limit)
    # Each stack's cost: its CPU per answer over the floor's, the same work on bare ASGI.
    for kind in ("bentoml", "fastapi", "kserve"):
        ratios[f"{kind}_vs_asgi_cpu"] = _ratio(
            at(kind, "cpu_ms_per_answer"), at("asgi", "cpu_ms_per_answer")
        )
    errors = at("bentoml", "errors")
    work = cost.get("total")
    checks = {
        "cpu_at_most_kserve": _at_most(ratios["bentoml_vs_kserve_cpu"], GOAL["cpu_vs_kserve"]),
        "cpu_at_most_0.8x_fastapi": _at_most(
            ratios["bentoml_vs_fastapi_cpu"], GOAL["cpu_vs_fastapi"]
        ),
        "work_at_most_1ms": None if work is None else work <= GOAL["work_ms"],
        "no_errors": None if errors is None else errors == 0,
        "p99_at_most_fastapi": _at_most(ratios["bentoml_vs_fastapi_p99"], GOAL["p99_vs_fastapi"]),
    }
    return {
        "limit_rps": round(limit, 2),
        "cost_ms": cost,
        "servers": servers,
        "ratios": {**ratios, "at": top},
        "goal": {"met": all(v is True for v in checks.values()), "checks": checks},
    }


def _at_most(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound


# --- the report ----------------------------------------------------------------------------


def table(result: dict[str, object]):
    """A rich table: server x concurrency, with ratios to FastAPI and to the limit."""
    from rich import box
    from rich.table import Table

    cost = result["cost_ms"]
    limit = float(result["limit_rps"])  # type: ignore[arg-type]
    servers: dict = result["servers"]  # type: ignore[assignment]
    details: dict = result.get("details", {})  # type: ignore[assignment]
    title = (
        f"serving benchmark: limit {limit:.0f} req/s = {result.get('cores', '?')} cores / "
        f"{cost['total']:.3f} ms (decode {cost['decode']:.3f} + preprocess "  # type: ignore[index]
        f"{cost['preprocess']:.3f} + forward {cost['forward']:.3f})"  # type: ignore[index]
    )
    out = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False
    )
    headers = ("server", "c", "req/s", "p50\nms", "p99\nms", "err", "vs\nfastapi",
               "vs\nlimit", "server\ncores", "CPU ms\n/req")  # fmt: skip
    for header in headers:
        out.add_column(header, justify="left" if header == "server" else "right")
    client_cores = 0.0
    differing: list[str] = []
    sections = [(kind, by_conc, details.get(kind, {})) for kind, by_conc in servers.items()]
    for name, described in result.get("request_sets", {}).items():  # type: ignore[union-attr]
        for kind, rows in described.get("servers", {}).items():
            extras = {key: row.get("details", {}) for key, row in rows.items()}
            sections.append((f"{kind} ({name})", rows, extras))
    for kind, by_conc, kind_details in sections:
        for key, row in by_conc.items():
            extra = kind_details.get(key, {})
            cpu = extra.get("cpu", {})
            client_cores = max(client_cores, cpu.get("client_cores", 0.0))
            fastapi = servers.get("fastapi", {}).get(key, {}) if kind in servers else {}
            vs_fastapi = _ratio(row.get("rps"), fastapi.get("rps"))
            errors = row.get("errors")
            mismatches = extra.get("mismatches", 0)
            out.add_row(
                kind,
                key[1:],
                f"{row['rps']:.0f}",
                _fmt(row.get("p50_ms")),
                _fmt(row.get("p99_ms")),
                f"[red]{errors}[/]" if errors else "0",
                "" if vs_fastapi is None or kind == "fastapi" else f"{vs_fastapi:.2f}",
                f"{row['rps'] / limit:.0%}",
                f"{cpu.get('server_cores', 0):.2f}",
                _fmt2(row.get("cpu_ms_per_answer", cpu.get("server_ms_per_request"))),
            )
            if mismatches:
                differing.append(f"{kind} c={key[1:]}: {mismatches}")
        out.add_section()
    out.caption = (
        f"CPU ms/req: server CPU time per answer (the work alone is {cost['total']:.2f} ms); "  # type: ignore[index]
        f"load generator CPU at most {client_cores:.2f} cores"
    )
    if differing:
        out.caption += (
            "\n[red]answers whose label differs from the in-process model's:[/] "
            + ", ".join(differing)
        )
    return out


def _fmt2(value: object) -> str:
    return "-" if value is None else f"{float(value):.2f}"  # type: ignore[arg-type]


def plot(result: dict[str, object], path: Path) -> Path:
    """Throughput and latency per server and concurrency, with the machine's limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers: dict = result["servers"]  # type: ignore[assignment]
    limit = float(result["limit_rps"])  # type: ignore[arg-type]
    concurrencies = sorted({int(key[1:]) for rows in servers.values() for key in rows})
    fig, (ax_rps, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    width = 0.8 / max(1, len(servers))
    colours = {
        "bentoml": "tab:blue",
        "fastapi": "tab:orange",
        "kserve": "tab:green",
        "asgi": "tab:grey",
    }
    for i, (kind, rows) in enumerate(servers.items()):
        xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(concurrencies))]
        rps = [rows.get(f"c{c}", {}).get("rps", 0) for c in concurrencies]
        ax_rps.bar(xs, rps, width, label=kind, color=colours.get(kind))
        for x, value in zip(xs, rps, strict=True):
            ax_rps.text(x, value, f"{value:.0f}", ha="center", va="bottom", fontsize=8)
        p50 = [rows.get(f"c{c}", {}).get("p50_ms") for c in concurrencies]
        p99 = [rows.get(f"c{c}", {}).get("p99_ms") for c in concurrencies]
        ax_lat.plot(concurrencies, p50, "o-", color=colours.get(kind), label=f"{kind} p50")
        ax_lat.plot(concurrencies, p99, "s--", color=colours.get(kind), label=f"{kind} p99")
    ax_rps.axhline(limit, color="black", linestyle=":", label=f"limit {limit:.0f}")
    ax_rps.axhline(0.75 * limit, color="grey", linestyle=":", label="75 % of limit")
    ax_rps.set(
        xticks=range(len(concurrencies)),
        xticklabels=[str(c) for c in concurrencies],
        xlabel="concurrent connections",
        ylabel="good answers per second",
        title="throughput",
    )
    ax_rps.legend(fontsize=8)
    ax_lat.set(
        xscale="log", yscale="log", xlabel="concurrent connections", ylabel="ms",
        title="latency (p50 solid, p99 dashed)",
    )  # fmt: skip
    ax_lat.set_xticks(concurrencies, [str(c) for c in concurrencies])
    ax_lat.legend(fontsize=7, ncol=2)
    model = result.get("model", {})
    fig.suptitle(
        f"digitloop serving benchmark, {result.get('cores', '?')} cores, model "
        f"{model.get('source', '')}"  # type: ignore[union-attr]
        + (" (quick run)" if result.get("config", {}).get("quick") else ""),  # type: ignore[union-attr]
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
