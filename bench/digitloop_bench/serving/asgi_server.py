"""The floor of the benchmark: the per-answer work behind a bare ASGI app on uvicorn.

Not a server anyone would ship: no framework, no routing, no validation, no log, no
metrics. It reads a PNG body, does exactly the work every server does per answer
(:func:`image_bytes_to_pixels`, :meth:`Classifier.answer` and the novelty flag) and writes
the JSON answer, on uvicorn configured as the FastAPI baseline is (2 workers, uvloop,
httptools, no access log), with the service's garbage-collector setting (``gc.freeze``).
Its CPU per answer is about the least a Python server spends on this work here, so each
server's CPU per answer over it is what that server's stack costs (``*_vs_asgi_cpu`` in
the bench's ratios).

Run: ``python -m digitloop_bench.serving.asgi_server --port 8000`` from the repository root,
with ``DIGITLOOP_DATA_DIR`` pointing at the registry and ``DIGITLOOP_BENCH_MODEL`` at a
version or alias (default ``champion``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from contracts.registry import CHAMPION_ALIAS
from digitloop_bench.serving.uvicorn_main import serve
from services.errors import status_of
from services.inference import Classifier, image_bytes_to_pixels
from services.slots import freeze_long_lived

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def make_app(classifier: Classifier, max_bytes: int):
    """The ASGI app answering ``POST /predict`` (a PNG body) and ``GET /readyz``."""

    def answer(body: bytes) -> tuple[int, dict[str, object]]:
        try:
            digit = image_bytes_to_pixels(body, max_bytes)
        except Exception as exc:
            status = status_of(exc)
            if status is None:
                raise
            return int(status), {"error": str(exc)}
        answered = classifier.answer(digit[None])
        probabilities = answered.probabilities[0]
        return 200, {
            "label": int(probabilities.argmax()),
            "probabilities": probabilities.round(6).tolist(),
            "model_version": classifier.version,
            "unusual": bool(answered.unusual[0]),
        }

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan and websockets: nothing to do
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        route = (scope["method"], scope["path"])
        if route == ("POST", "/predict"):
            status, payload = answer(b"".join(chunks))
        elif route == ("GET", "/readyz"):
            status, payload = 200, {"ready": True, "model_version": classifier.version}
        else:
            status, payload = 404, {"error": f"no route {scope['method']} {scope['path']}"}
        body = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def create_app():
    """Each uvicorn worker's app: the bench's model version, one thread, as the others."""
    import torch

    from model.registry import Registry
    from services.settings import ServingSettings

    settings = ServingSettings()
    torch.set_num_threads(settings.torch_threads)
    ref = os.environ.get("DIGITLOOP_BENCH_MODEL", CHAMPION_ALIAS)
    classifier = Classifier.from_registry(ref, Registry(), runtime=settings.inference_runtime)
    # Always, unlike the baselines (--freeze-baselines): the floor gets every saving the
    # service has, or a full collection's scan of the loaded worker would be counted in it.
    freeze_long_lived()
    return make_app(classifier, settings.max_image_bytes)


def main() -> None:
    serve(
        "digitloop_bench.serving.asgi_server:create_app",
        "The benchmark's floor: bare ASGI + the work.",
        factory=True,
    )


if __name__ == "__main__":
    main()
