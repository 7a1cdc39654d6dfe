"""Why the bench keeps its own load generator: where wrk's connections land.

    .venv/bin/python -m digitloop_bench.serving.wrk_check [--servers bentoml,fastapi]
        [--connections 32] [--trials 6] [--json]

Issue 17 asked for a kept load generator (wrk, oha, k6 or locust) if one measures what the
bench needs: connections spread evenly over the server's worker processes, a process of its
own, a bounded run. wrk (Debian's package, 4.1.0) is the cheapest of them per request and
runs bounded in its own process, but it opens its connections once, at the start, and the
server's workers take them from one shared listening socket as they happen to wake up. The
split is luck, and at c=32 on two workers a worker with 24 connections queues three times
as many requests as one with 8: p99 then measures the split, not the server.

This runs wrk against each server ``--trials`` times (a fresh wrk each time, the
``ui`` request set, :file:`wrk_post.lua`) and counts, halfway through each run, the
connections each worker process holds. The bench's own client
(:mod:`digitloop_bench.serving.loadgen`) looks up the worker behind every new connection
and reopens it until each worker holds its share; it also checks every answer's label
against the in-process model, which wrk does not.

Measured with this command on 2 cores shared with other jobs (6 trials per server):

- ``--connections 32``: BentoML 16/16 twice, 17/15 three times, 19/13; FastAPI 16/16 five
  times, 17/15; KServe 16/16 twice, 17/15 twice, 18/14 twice. An earlier run of the same
  wrk command saw 21/11 (BentoML) and 24/8 (FastAPI).
- ``--connections 8 --seconds 4``: BentoML 4/4 three times, 5/3 twice, 6/2; FastAPI 4/4
  five times, 5/3; KServe 4/4 four times, 5/3, 6/2.

Even in 21 of the 36 runs, 3:1 in 2 of the 18 at c=8: too often for a p99 compared across
servers, hence the bench's own client.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from contracts.cli import JsonOption, cli_errors, emit, setup_logging, stderr
from contracts.errors import DigitloopError
from digitloop_bench.serving.loadgen import (
    PATHS,
    encode_body,
    server_processes,
    tcp_connections,
)

SCRIPT = Path(__file__).with_name("wrk_post.lua")


class WrkError(DigitloopError):
    """wrk is missing, or printed no report."""


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run printed that the check needs, and the placement it saw."""

    rps: float
    requests: int
    non_2xx: int
    socket_errors: int
    connections_per_worker: tuple[int, ...] = ()


def parse_wrk(text: str) -> WrkRun:
    """The figures of wrk 4.1's report (``tests/fixtures/wrk``); WrkError if absent."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    done = re.search(r"^\s+(\d+) requests in ", text, re.MULTILINE)
    if rps is None or done is None:
        raise WrkError(f"not a wrk report:\n{text[-500:]}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return WrkRun(
        rps=float(rps.group(1)),
        requests=int(done.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def wrk_command(
    port: int, connections: int, seconds: int, bodies: Path, count: int, kind: str
) -> list[str]:
    _, content_type = encode_body(kind, b"")
    return [
        "wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s",
        "-s", str(SCRIPT), f"http://127.0.0.1:{port}",
        "--", str(bodies), str(count), content_type, PATHS[kind],
    ]  # fmt: skip


def write_bodies(kind: str, pngs: list[bytes], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, png in enumerate(pngs):
        (folder / f"{i:05d}.body").write_bytes(encode_body(kind, png)[0])
    return folder


def connections_per_worker(pids: list[int], port: int) -> tuple[int, ...]:
    """Established connections on ``port`` held by each of ``pids``, most first."""
    held = Counter(
        pid
        for pid in pids
        for conn in tcp_connections(pid)
        if conn.laddr and conn.laddr.port == port and conn.status == "ESTABLISHED"
    )
    return tuple(sorted(held.values(), reverse=True))


def check(servers: list[str], connections: int, trials: int, seconds: int, say) -> dict:
    from digitloop_bench.serving.loadgen import make_request_set, ui_request_set
    from digitloop_bench.serving.run import (
        BenchConfig,
        Processes,
        prepare_model,
        server_env,
        start_server,
    )

    if shutil.which("wrk") is None:
        raise WrkError("wrk is not installed: `apt-get install wrk` (Debian) or see wrk's README")
    config = BenchConfig.make(quick=True)
    run_dir = Path(tempfile.mkdtemp(prefix="digitloop-wrk-"))
    processes = Processes()
    results: dict[str, list[dict]] = {}
    try:
        version, x_test, _ = prepare_model(run_dir / "data", config, say)
        pngs = ui_request_set(make_request_set(x_test, config.n_requests))
        env = server_env(config, run_dir / "data", version)
        for kind in servers:
            server = start_server(kind, config, env, run_dir, processes)
            bodies = write_bodies(kind, pngs, run_dir / "bodies" / kind)
            pids = server_processes(server.process.pid)
            runs = []
            for trial in range(trials):
                command = wrk_command(server.port, connections, seconds, bodies, len(pngs), kind)
                wrk = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
                time.sleep(seconds / 2)
                placed = connections_per_worker(pids, server.port)
                out, _ = wrk.communicate(timeout=seconds + 30)
                run = replace(parse_wrk(out), connections_per_worker=placed)
                say(f"{kind} trial {trial + 1}: connections per worker {list(placed)}, "
                    f"{run.rps:.0f} req/s, {run.non_2xx + run.socket_errors} errors")  # fmt: skip
                runs.append(asdict(run))
            results[kind] = runs
            processes.stop(server.process)
    finally:
        processes.stop_all()
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"connections": connections, "workers": config.workers, "runs": results}


def main(
    servers: Annotated[str, typer.Option(help="Comma-separated: bentoml,fastapi,kserve,asgi.")] = (
        "bentoml,fastapi"
    ),
    connections: Annotated[int, typer.Option(min=1)] = 32,
    trials: Annotated[int, typer.Option(min=1)] = 6,
    seconds: Annotated[int, typer.Option(min=2, help="Length of each wrk run.")] = 5,
    as_json: JsonOption = False,
) -> None:
    """Run wrk against each server and show where its connections land."""
    setup_logging(False)
    with cli_errors():
        result = check(servers.split(","), connections, trials, seconds, stderr.print)
    emit(result, as_json, table(result))


def table(result: dict) -> Table:
    shown = Table(title=f"wrk -c{result['connections']}: connections per worker process")
    for column in ("server", "trial", "connections per worker", "req/s", "errors"):
        shown.add_column(column)
    for kind, runs in result["runs"].items():
        for trial, run in enumerate(runs, 1):
            placed = "/".join(str(n) for n in run["connections_per_worker"])
            errors = run["non_2xx"] + run["socket_errors"]
            shown.add_row(kind, str(trial), placed, f"{run['rps']:.0f}", str(errors))
    return shown


if __name__ == "__main__":
    typer.run(main)
