"""Baseline for the benchmark: plain FastAPI + uvicorn calling the model per request.

Not part of the product. It is what a competent user would write instead of a BentoML
service, configured as well as FastAPI's and uvicorn's docs allow:

- the upload as FastAPI's docs suggest for files: multipart form data into an
  ``UploadFile`` parameter (field ``image``), answered by a Pydantic response model;
- uvicorn with 2 worker processes, uvloop and httptools, no access log, log level warning;
- one torch thread per worker (set in each worker's lifespan, and ``OMP_NUM_THREADS=1``
  in the environment), the forward under ``torch.inference_mode()`` (in
  :meth:`Classifier.predict`);
- the per-request work runs in the event loop (``async def``): it is CPU-bound and takes
  about a millisecond and a half, so handing it to FastAPI's thread pool (a plain ``def``
  endpoint) would only add a thread hop per request under the GIL. Set
  ``DIGITLOOP_BENCH_FASTAPI_HANDLER=thread`` to measure that variant.

The same model version and the same preprocessing as the service:
:meth:`Classifier.from_registry` and :func:`image_bytes_to_pixels`.

Run: ``python -m digitloop_bench.serving.fastapi_server --port 8000`` from the repository root,
with ``DIGITLOOP_DATA_DIR`` pointing at the registry and ``DIGITLOOP_BENCH_MODEL`` at a
version or alias (default ``champion``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, UploadFile
from pydantic import BaseModel

from contracts.registry import CHAMPION_ALIAS
from digitloop_bench.serving.uvicorn_main import serve
from services.errors import status_of
from services.inference import Classifier, image_bytes_to_pixels
from services.settings import ServingSettings

HANDLER = os.environ.get("DIGITLOOP_BENCH_FASTAPI_HANDLER", "async")
# "1": freeze what a worker holds once its model is loaded, as the service does
# (services.slots.freeze_long_lived); off by default, as FastAPI's docs do not say it.
GC_FREEZE = os.environ.get("DIGITLOOP_BENCH_GC_FREEZE") == "1"


class Prediction(BaseModel):
    label: int
    probabilities: list[float]
    model_version: str
    unusual: bool = False


class Ready(BaseModel):
    ready: bool
    model_version: str


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model once per worker process, with one torch thread."""
    import torch

    from model.registry import Registry

    settings = ServingSettings()
    torch.set_num_threads(settings.torch_threads)
    ref = os.environ.get("DIGITLOOP_BENCH_MODEL", CHAMPION_ALIAS)
    app.state.classifier = Classifier.from_registry(
        ref, Registry(), runtime=settings.inference_runtime
    )
    app.state.max_bytes = settings.max_image_bytes
    if GC_FREEZE:
        from services.slots import freeze_long_lived

        freeze_long_lived()
    yield


app = FastAPI(
    title="digitloop bench baseline (FastAPI)",
    lifespan=lifespan,
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


def _predict(data: bytes) -> Prediction:
    classifier: Classifier = app.state.classifier
    try:
        digit = image_bytes_to_pixels(data, app.state.max_bytes)
    except Exception as exc:
        status = status_of(exc)
        if status is None:
            raise
        raise HTTPException(status_code=int(status), detail=str(exc)) from exc
    # The service's own work per answer, novelty flag included: only the stacks differ.
    answered = classifier.answer(digit[None])
    probabilities = answered.probabilities[0]
    return Prediction(
        label=int(probabilities.argmax()),
        probabilities=[round(float(p), 6) for p in probabilities],
        model_version=classifier.version,
        unusual=bool(answered.unusual[0]),
    )


if HANDLER == "thread":

    @app.post("/predict")
    def predict(image: UploadFile) -> Prediction:
        return _predict(image.file.read())

else:

    @app.post("/predict")
    async def predict(image: UploadFile) -> Prediction:
        return _predict(await image.read())


@app.get("/readyz")
async def readyz() -> Ready:
    return Ready(ready=True, model_version=app.state.classifier.version)


def main() -> None:
    serve(
        "digitloop_bench.serving.fastapi_server:app", "FastAPI + uvicorn baseline of the benchmark."
    )


if __name__ == "__main__":
    main()
