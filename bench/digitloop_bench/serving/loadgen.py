"""The request set and the load generator, one closed-loop HTTP/1.1 client process.

Run as ``python -m digitloop_bench.serving.loadgen ...`` by
:mod:`digitloop_bench.serving.run`, one or more processes per measurement. Each process
keeps ``--connections`` keep-alive connections busy, one request in flight per connection,
from ``--start-at`` (a wall-clock time shared by every process) through a warm-up to the
end of the measured window, and prints one JSON object: the latency of every good answer
that completed inside the window, and the errors. It stops at the window's end, after
``--max-requests``, or at its deadline, whichever comes first.

The client is a few lines of asyncio over raw sockets, with every request pre-encoded, so
that a request costs the client some tens of microseconds: on a 2-core machine the load
generator shares the cores with the server, and an expensive client would be measured too.

Multi-process servers (uvicorn, KServe and BentoML workers) accept from one shared socket,
and connections opened at once tend to all land on one worker. With ``--server-pid`` the
client looks up which worker process owns the server side of each new connection and
keeps opening connections until they are spread evenly over ``--workers`` processes.

Why not a kept load generator: wrk, the cheapest of them per request (Debian's package),
opens its connections once and leaves their placement to the server's accept loop. In 36
runs of :mod:`digitloop_bench.serving.wrk_check` they were even in 21, and as uneven as 6/2
(c=8) and 19/13 (c=32); an earlier run saw 24/8. A p99 compared across servers would then
compare their luck. wrk also does not check the answers' labels.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The product, two baselines, and the floor (bare ASGI doing the same work).
SERVER_KINDS = ("bentoml", "fastapi", "kserve", "asgi")
# What the sketchpad sends (the headline) and the whole 280x280 canvas.
REQUEST_SETS = ("ui", "canvas")
KSERVE_MODEL_NAME = "digits"
PATHS = {
    "bentoml": "/predict",
    "fastapi": "/predict",
    "kserve": f"/v1/models/{KSERVE_MODEL_NAME}:predict",
    "asgi": "/predict",
}
BOUNDARY = "digitloopbenchboundary7MA4YWxk"
CANVAS = 280
EXPECTED_FILE = "expected.json"
# Sent once on each new connection before it is used: the request that places it.
PLACEMENT_ATTEMPTS_PER_CONNECTION = 8
ERROR_SAMPLES = 5


# --- the request set ------------------------------------------------------------------


def render_sketch(digit: np.ndarray, canvas: int = CANVAS) -> bytes:
    """A 28x28 MNIST digit drawn large, dark ink on a white 280x280 canvas, as RGBA PNG.

    What a sketchpad hands over: an opaque RGBA composite with a white background.
    """
    from PIL import Image

    if digit.shape != (28, 28):
        raise ValueError(f"expected a 28x28 digit, got {digit.shape}")
    big = Image.fromarray(np.asarray(digit, np.uint8)).resize(
        (canvas, canvas), Image.Resampling.BILINEAR
    )
    # Crisp strokes with anti-aliased edges, like a round brush.
    ink = np.clip((np.asarray(big, np.float32) - 60.0) * 2.5, 0, 255)
    grey = (255.0 - ink).astype(np.uint8)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def make_request_set(x_test: np.ndarray, n: int, seed: int = 0) -> list[bytes]:
    """``n`` sketch PNGs made from MNIST test digits picked at random (reproducible)."""
    if n < 1:
        raise ValueError("the request set needs at least one image")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(x_test), size=min(n, len(x_test)), replace=False)
    return [render_sketch(x_test[i]) for i in picks]


def ui_request_set(canvases: Sequence[bytes]) -> list[bytes]:
    """What the sketchpad sends for each of these canvas PNGs: the UI's own encoding
    (:func:`ui.app.editor_image`, then :func:`ui.app.drawing_png`), a grey PNG cropped to
    the ink, the same digit to the network."""
    from PIL import Image

    from ui.app import drawing_png, editor_image

    sent = []
    for png in canvases:
        with Image.open(io.BytesIO(png)) as image:
            grey = editor_image({"composite": np.asarray(image)})
        if grey is None:
            raise ValueError("a sketch of the request set holds no ink")
        sent.append(drawing_png(grey))
    return sent


def write_request_set(pngs: Sequence[bytes], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, png in enumerate(pngs):
        (directory / f"{i:05d}.png").write_bytes(png)
    return directory


def write_expected(labels: Sequence[int], directory: Path) -> None:
    """The label the in-process model gives each image: every server must answer it."""
    (directory / EXPECTED_FILE).write_text(json.dumps([int(label) for label in labels]))


def read_request_set(directory: Path) -> tuple[list[bytes], list[int] | None]:
    pngs = [path.read_bytes() for path in sorted(directory.glob("*.png"))]
    if not pngs:
        raise FileNotFoundError(f"no .png files in {directory}")
    expected_path = directory / EXPECTED_FILE
    expected = json.loads(expected_path.read_text()) if expected_path.exists() else None
    return pngs, expected


# --- what each server is sent, and what counts as an answer ----------------------------


def encode_body(kind: str, png: bytes) -> tuple[bytes, str]:
    """The body and content type each server takes for one PNG, as its docs show."""
    if kind in ("bentoml", "asgi"):
        # The PNG as the body, as the product's client (services.client) sends it.
        return png, "image/png"
    if kind == "fastapi":
        # Multipart form data, the file in field `image`: FastAPI's `UploadFile` parameter.
        head = (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="image"; filename="digit.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        return head + png + f"\r\n--{BOUNDARY}--\r\n".encode(), (
            f"multipart/form-data; boundary={BOUNDARY}"
        )
    if kind == "kserve":
        # KServe's v1 protocol, the image base64 in `{"b64": ...}` as its image examples do.
        payload = {"instances": [{"image": {"b64": base64.b64encode(png).decode()}}]}
        return json.dumps(payload).encode(), "application/json"
    raise ValueError(f"unknown server kind {kind!r}; expected one of {SERVER_KINDS}")


def encode_request(kind: str, png: bytes, host: str, port: int) -> bytes:
    """One complete HTTP/1.1 keep-alive request, ready to write on a socket."""
    body, content_type = encode_body(kind, png)
    head = (
        f"POST {PATHS[kind]} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode()
    return head + body


def parse_label(kind: str, body: bytes) -> int:
    """The predicted digit in an answer body; ValueError when there is none."""
    try:
        answer = json.loads(body)
        if kind == "kserve":
            answer = answer["predictions"][0]
        label = answer["label"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"no label in the answer: {body[:120]!r}") from exc
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label <= 9:
        raise ValueError(f"label {label!r} is not a digit")
    return label


# --- a minimal HTTP/1.1 client ---------------------------------------------------------


class HttpError(Exception):
    """The server's answer could not be read as HTTP/1.1."""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body, and whether the server will close the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    try:
        status = int(head[9:12])
    except ValueError as exc:
        raise HttpError(f"not an HTTP status line: {head[:40]!r}") from exc
    length = None
    chunked = closing = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            closing = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, b"".join(parts), closing
    if length is None:
        return status, await reader.read(), True
    return status, await reader.readexactly(length), closing


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def local_port(self) -> int:
        return self.writer.get_extra_info("sockname")[1]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


async def connect(host: str, port: int) -> Connection:
    reader, writer = await asyncio.open_connection(host, port)
    return Connection(reader, writer)


# --- which worker process holds a connection -------------------------------------------


def server_processes(root_pid: int) -> list[int]:
    """The server's root process and all its descendants."""
    import psutil

    root = psutil.Process(root_pid)
    return [root.pid] + [child.pid for child in root.children(recursive=True)]


def tcp_connections(pid: int) -> list:
    """The TCP connections process ``pid`` holds (psutil's), none if it cannot be read."""
    import psutil

    try:
        process = psutil.Process(pid)
        # psutil >= 6 calls it net_connections; 5.x, which BentoML pins, connections.
        lister = getattr(process, "net_connections", None) or process.connections
        return lister(kind="tcp")
    except psutil.Error:
        return []


def owner_pid(pids: Sequence[int], port: int, local_port: int) -> int | None:
    """The process holding the server side of the client socket ``local_port``, if seen."""
    for pid in pids:
        for conn in tcp_connections(pid):
            if (
                conn.laddr
                and conn.laddr.port == port
                and conn.raddr
                and (conn.raddr.port == local_port)
            ):
                return pid
    return None


# --- the closed loop ---------------------------------------------------------------------


@dataclass
class Plan:
    kind: str
    host: str
    port: int
    connections: int
    start_at: float  # wall clock (time.time()) at which the warm-up starts
    warmup_s: float
    duration_s: float
    timeout_s: float = 10.0
    max_requests: int = 1_000_000
    server_pid: int | None = None
    workers: int = 0
    offset: int = 0  # where in the request set this process starts


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    mismatches: int = 0
    sent: int = 0
    error_samples: Counter = field(default_factory=Counter)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES or message in self.error_samples:
            self.error_samples[message] += 1


def check_answer(kind: str, status: int, body: bytes, expected: int | None) -> tuple[str, str]:
    """('ok' | 'mismatch' | 'error', message) for one answer."""
    if status != 200:
        return "error", f"HTTP {status}: {body[:100].decode(errors='replace')}"
    try:
        label = parse_label(kind, body)
    except ValueError as exc:
        return "error", str(exc)
    if expected is not None and label != expected:
        return "mismatch", f"label {label}, in-process model says {expected}"
    return "ok", ""


async def place_connections(
    plan: Plan, probe: bytes, expected: int | None
) -> tuple[list[Connection], dict[str, int]]:
    """Open ``plan.connections`` connections spread evenly over the server's workers.

    Each new connection carries one request first (so a worker has accepted it), then its
    owner is looked up; a connection to a worker that already has its share is set aside
    and another one opened, up to a bounded number of attempts.
    """
    pids = server_processes(plan.server_pid) if plan.server_pid and plan.workers > 1 else []
    quota = math.ceil(plan.connections / plan.workers) if pids else plan.connections
    kept: list[Connection] = []
    spare: list[Connection] = []
    owners: Counter = Counter()
    attempts = 0
    max_attempts = plan.connections * PLACEMENT_ATTEMPTS_PER_CONNECTION
    try:
        while len(kept) < plan.connections:
            attempts += 1
            conn = await connect(plan.host, plan.port)
            conn.writer.write(probe)
            async with asyncio.timeout(plan.timeout_s * 3):
                status, body, closing = await read_response(conn.reader)
            verdict, message = check_answer(plan.kind, status, body, expected)
            if verdict == "error" or closing:
                conn.close()
                if attempts >= max_attempts:
                    raise RuntimeError(f"could not open a working connection: {message}")
                await asyncio.sleep(0.05)
                continue
            owner = owner_pid(pids, plan.port, conn.local_port) if pids else None
            if owner is not None and owners[owner] >= quota and attempts < max_attempts:
                spare.append(conn)
                continue
            owners[owner] += 1
            kept.append(conn)
    finally:
        for conn in spare:
            conn.close()
    return kept, {str(pid) if pid is not None else "unknown": n for pid, n in owners.items()}


async def drive(
    plan: Plan, requests: Sequence[bytes], expected: Sequence[int] | None
) -> dict[str, object]:
    """Run the plan and return this process's raw results."""
    clock_offset = time.time() - time.perf_counter()
    start = plan.start_at - clock_offset
    window_start = start + plan.warmup_s
    window_end = window_start + plan.duration_s
    deadline = window_end + plan.timeout_s
    n = len(requests)
    tally = Tally()

    def expected_of(index: int) -> int | None:
        return expected[index] if expected is not None else None

    connections, placement = await place_connections(
        plan, requests[plan.offset % n], expected_of(plan.offset % n)
    )
    ready = time.perf_counter()
    if ready < start:
        await asyncio.sleep(start - ready)

    async def loop(conn: Connection, position: int) -> None:
        while tally.sent < plan.max_requests:
            began = time.perf_counter()
            if began >= window_end or began >= deadline:
                break
            index = position % n
            position += 1
            tally.sent += 1
            try:
                async with asyncio.timeout(plan.timeout_s):
                    conn.writer.write(requests[index])
                    status, body, closing = await read_response(conn.reader)
            except (
                TimeoutError,
                OSError,
                asyncio.IncompleteReadError,
                HttpError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as exc:
                done = time.perf_counter()
                if window_start <= done <= window_end:
                    tally.error(f"{type(exc).__name__}: {exc}"[:160])
                conn.close()
                conn = await reconnect(plan, window_end)
                if conn is None:
                    break
                continue
            done = time.perf_counter()
            if done > window_end:
                break
            if done >= window_start:
                verdict, message = check_answer(plan.kind, status, body, expected_of(index))
                if verdict == "ok":
                    tally.latencies_ms.append((done - began) * 1000.0)
                elif verdict == "mismatch":
                    # Answered, but not what the same model answers in-process: counted.
                    tally.mismatches += 1
                    tally.latencies_ms.append((done - began) * 1000.0)
                else:
                    tally.error(message)
            if closing:
                conn.close()
                conn = await reconnect(plan, window_end)
                if conn is None:
                    break
        conn.close()

    step = max(1, n // max(1, plan.connections))
    await asyncio.gather(
        *(loop(conn, plan.offset + i * step) for i, conn in enumerate(connections))
    )
    return {
        "ok": len(tally.latencies_ms) - tally.mismatches,
        "mismatches": tally.mismatches,
        "errors": tally.errors,
        "latencies_ms": [round(v, 4) for v in tally.latencies_ms],
        "error_samples": dict(tally.error_samples),
        "window_s": plan.duration_s,
        "late_s": round(max(0.0, ready - window_start), 3),
        "placement": placement,
        "sent": tally.sent,
    }


async def reconnect(plan: Plan, until: float) -> Connection | None:
    """A new connection after an error or a close, retried until ``until``."""
    while time.perf_counter() < until:
        try:
            return await connect(plan.host, plan.port)
        except OSError:
            await asyncio.sleep(0.05)
    return None


# --- summaries (used by the orchestrator) -----------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated linearly between ranks like numpy's."""
    if not values:
        return float("nan")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def merge(results: Sequence[dict[str, object]]) -> dict[str, object]:
    """Combine the load generator processes of one measurement into one summary.

    ``rps`` counts good answers (status 200 with a label) completed inside the window.
    """
    if not results:
        raise ValueError("no load generator results to merge")
    latencies: list[float] = []
    errors = ok = mismatches = 0
    samples: Counter = Counter()
    placement: Counter = Counter()
    for result in results:
        latencies.extend(result["latencies_ms"])  # type: ignore[arg-type]
        ok += int(result["ok"])  # type: ignore[arg-type]
        mismatches += int(result.get("mismatches", 0))  # type: ignore[arg-type]
        errors += int(result["errors"])  # type: ignore[arg-type]
        samples.update(result.get("error_samples", {}))  # type: ignore[arg-type]
        placement.update(result.get("placement", {}))  # type: ignore[arg-type]
    window = float(results[0]["window_s"])  # type: ignore[arg-type]
    return {
        "rps": round((ok + mismatches) / window, 2) if window > 0 else 0.0,
        "p50_ms": round(percentile(latencies, 50), 3) if latencies else None,
        "p99_ms": round(percentile(latencies, 99), 3) if latencies else None,
        "errors": errors,
        "mismatches": mismatches,
        "answers": ok + mismatches,
        "error_samples": dict(samples.most_common(ERROR_SAMPLES)),
        "connections_per_worker": dict(placement),
        "late_s": max(float(r.get("late_s", 0.0)) for r in results),  # type: ignore[arg-type]
    }


# --- entry point -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=SERVER_KINDS, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=Path, required=True, help="Request set folder.")
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--start-at", type=float, required=True, help="time.time() to start.")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--offset", type=int, default=0)
    args = parser.parse_args(argv)
    if args.connections < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--connections must be >= 1, --duration > 0, --warmup >= 0")

    pngs, expected = read_request_set(args.requests)
    requests = [encode_request(args.kind, png, args.host, args.port) for png in pngs]
    plan = Plan(
        kind=args.kind, host=args.host, port=args.port, connections=args.connections,
        start_at=args.start_at, warmup_s=args.warmup, duration_s=args.duration,
        timeout_s=args.timeout, max_requests=args.max_requests, server_pid=args.server_pid,
        workers=args.workers, offset=args.offset,
    )  # fmt: skip
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(drive(plan, requests, expected))
    cpu = os.times()
    result["cpu_s"] = round(cpu.user + cpu.system, 3)
    write_result(result)
    return 0


def write_result(result: dict[str, object]) -> None:
    """The result as one JSON line on stdout, all of it.

    After uvloop has run, a write to stdout over a pipe's 64 KiB returns having written
    64 KiB (MagicStack/uvloop#460), and ``sys.stdout.write`` dropped the rest silently: the
    bench reads one client's result while the other waits, and a run of 1,900 answers per
    second makes a longer line (its latencies). So the line goes out in as many writes as
    it takes, on a blocking descriptor.
    """
    fd = sys.stdout.fileno()
    sys.stdout.flush()
    os.set_blocking(fd, True)
    line = memoryview((json.dumps(result) + "\n").encode())
    while line:
        line = line[os.write(fd, line) :]


if __name__ == "__main__":
    sys.exit(main())
