"""What BentoML's stack and the service's own bookkeeping cost per answer, in-process.

    .venv/bin/python -m digitloop_bench.serving.stack [--answers 3000] [--rounds 5] [--json]

The serving bench measures whole servers over HTTP, where a difference of a tenth of a
millisecond per answer is within the spread of two runs. This drives three ASGI apps in
one process, on one thread, with the same sketchpad PNGs and no network, so that the
layers between them are priced one at a time:

- ``floor``: the bench's bare ASGI app (:mod:`digitloop_bench.serving.asgi_server`): the
  work alone (decode, preprocess, forward, novelty) and a JSON answer.
- ``service``: :class:`services.service.DirectPredict` with nothing around it, calling the
  service instance: the work plus what the service adds to each answer (parsing the body
  against the contract, the signed prediction id, the predictions log and its parquet
  encoding, the Prometheus metrics, the answer's model).
- ``bentoml``: the service's whole BentoML app as its worker builds it, with every
  middleware BentoML 1.4 puts around ``DirectPredict`` (its HTTP metrics, OpenTelemetry
  with /predict excluded, the request timeout, Starlette's error handling).

``service - floor`` is the service's bookkeeping, ``bentoml - service`` BentoML's stack.
What none of them has is uvicorn and the socket, which every server shares.

The ``bentoml`` app is built the way BentoML's worker builds it
(``_bentoml_impl.server.app.ServiceAppFactory``, not a public API: pinned with bentoml).
Rounds take the three apps in turn; each figure is the median over rounds of the main
thread's CPU per answer (``time.thread_time``) and of the process's (which adds the
predictions log's flush thread). Every app must answer every PNG with the same label.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from contracts.cli import JsonOption, cli_errors, emit, setup_logging, stderr
from digitloop_bench.serving.run import BenchConfig, BenchError, prepare_model, server_env

APPS = ("floor", "service", "bentoml")
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@dataclass(frozen=True)
class StackPrice:
    """Median CPU milliseconds per answer of each app, over ``rounds`` of ``answers``."""

    thread_ms: dict[str, float]
    process_ms: dict[str, float]
    answers: int
    rounds: int

    def as_dict(self) -> dict[str, object]:
        thread = self.thread_ms
        return {
            "thread_ms": {k: round(v, 4) for k, v in thread.items()},
            "process_ms": {k: round(v, 4) for k, v in self.process_ms.items()},
            "service_over_floor_ms": round(thread["service"] - thread["floor"], 4),
            "bentoml_over_service_ms": round(thread["bentoml"] - thread["service"], 4),
            "answers": self.answers,
            "rounds": self.rounds,
        }


def _request(body: bytes) -> tuple[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]]]:
    """The ASGI scope and receive of ``POST /predict`` with a PNG body, as uvicorn makes them."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:3000"),
            (b"content-type", b"image/png"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 3000),
        "state": {},
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # a client that stays connected, as a real one does
        return {"type": "http.disconnect"}

    return scope, receive


async def answer(app: App, body: bytes) -> int:
    """The label ``app`` answers for one PNG; BenchError for any other status than 200."""
    scope, receive = _request(body)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = sent[0]["status"]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    if status != 200:
        raise BenchError(f"an app answered {status}: {payload[:200]!r}")
    return int(json.loads(payload)["label"])


async def cpu_per_answer(app: App, pngs: Sequence[bytes], answers: int) -> tuple[float, float]:
    """Main-thread and process CPU milliseconds per answer over ``answers`` requests."""
    thread, process = time.thread_time(), time.process_time()
    for i in range(answers):
        await answer(app, pngs[i % len(pngs)])
    return (
        (time.thread_time() - thread) * 1000 / answers,
        (time.process_time() - process) * 1000 / answers,
    )


async def service_apps() -> tuple[App, App, Any]:
    """The service's whole BentoML app and DirectPredict alone, sharing one instance.

    The environment must already name the registry and version (``server_env``).
    """
    from _bentoml_impl.server.app import ServiceAppFactory
    from bentoml import get_current_service
    from bentoml._internal.context import server_context

    from services.service import DigitService, DirectPredict

    server_context.service_type = "entry_service"
    server_context.service_name = DigitService.name
    server_context.service_routes = ["/predict"]
    server_context.bento_name, server_context.bento_version = DigitService.name, "bench"
    DigitService.inject_config()
    factory = ServiceAppFactory(DigitService, is_main=True)
    full = factory()
    await factory.create_instance(full)
    instance = get_current_service()
    started = time.monotonic()
    while not instance.slots.ready:
        if time.monotonic() - started > 120:
            raise BenchError("the service did not load its model within 120 s")
        await asyncio.sleep(0.1)
    return full, DirectPredict(None), instance


async def price(
    pngs: Sequence[bytes], version: str, answers: int, rounds: int, say: Callable[[str], None]
) -> StackPrice:
    """Build the three apps in this process and measure them in turn, ``rounds`` times."""
    from digitloop_bench.serving.asgi_server import make_app
    from model.registry import Registry
    from services.inference import Classifier
    from services.settings import ServingSettings
    from services.slots import freeze_long_lived

    settings = ServingSettings()
    full, direct, instance = await service_apps()
    try:
        classifier = Classifier.from_registry(version, Registry(), settings.inference_runtime)
        apps: dict[str, App] = {
            "floor": make_app(classifier, settings.max_image_bytes),
            "service": direct,
            "bentoml": full,
        }
        freeze_long_lived()
        labels = {name: [await answer(app, png) for png in pngs] for name, app in apps.items()}
        differing = [name for name in APPS if labels[name] != labels["floor"]]
        if differing:
            raise BenchError(f"{', '.join(differing)} answered other labels than the floor")
        thread: dict[str, list[float]] = {name: [] for name in APPS}
        process: dict[str, list[float]] = {name: [] for name in APPS}
        for round_ in range(rounds):
            for name in APPS:
                t, p = await cpu_per_answer(apps[name], pngs, answers)
                thread[name].append(t)
                process[name].append(p)
            say(
                f"round {round_ + 1}/{rounds}: "
                + ", ".join(f"{name} {thread[name][-1]:.3f}" for name in APPS)
                + " ms per answer"
            )
    finally:
        instance.close()
    return StackPrice(
        thread_ms={k: statistics.median(v) for k, v in thread.items()},
        process_ms={k: statistics.median(v) for k, v in process.items()},
        answers=answers,
        rounds=rounds,
    )


def run(
    answers: int, rounds: int, n_pngs: int, train_images: int, say: Callable[[str], None]
) -> StackPrice:
    """Register a quick model in a temporary registry, point the service at it, price."""
    from digitloop_bench.serving.loadgen import make_request_set, ui_request_set

    config = BenchConfig.make(quick=True, workers=1, n_requests=n_pngs, train_images=train_images)
    with tempfile.TemporaryDirectory(prefix="digitloop-stack-") as tmp:
        data_dir = Path(tmp) / "data"
        version, x_test, described = prepare_model(data_dir, config, say)
        say(f"{described}: {n_pngs} sketchpad PNGs, {rounds} rounds of {answers} answers")
        # Before the service's modules are imported: they read their settings once.
        os.environ.update(server_env(config, data_dir, version))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(Path(tmp) / "metrics")
        (Path(tmp) / "metrics").mkdir()
        pngs = ui_request_set(make_request_set(x_test, n_pngs, seed=0))
        return asyncio.run(price(pngs, version, answers, rounds, say))


def _table(result: StackPrice) -> Table:
    table = Table(title="CPU ms per answer, in-process, one thread (median of rounds)")
    for column in ("app", "main thread", "process", "over the layer below"):
        table.add_column(column, justify="right" if column != "app" else "left")
    below = None
    for name in APPS:
        over = "" if below is None else f"{result.thread_ms[name] - result.thread_ms[below]:+.3f}"
        table.add_row(name, f"{result.thread_ms[name]:.3f}", f"{result.process_ms[name]:.3f}", over)
        below = name
    return table


def main(
    answers: Annotated[int, typer.Option(min=10, help="Answers per app per round.")] = 3000,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds, the apps taken in turn.")] = 5,
    pngs: Annotated[int, typer.Option(min=10, help="Sketchpad PNGs (the ui set).")] = 300,
    train_images: Annotated[
        int, typer.Option(min=500, help="MNIST digits the quick model is trained on.")
    ] = 4000,
    as_json: JsonOption = False,
) -> None:
    """Price the service's bookkeeping and BentoML's stack per answer, in-process."""
    setup_logging()
    with cli_errors():
        result = run(answers, rounds, pngs, train_images, say=lambda line: stderr.print(line))
        emit(result.as_dict(), as_json, _table(result))


if __name__ == "__main__":
    typer.run(main)
