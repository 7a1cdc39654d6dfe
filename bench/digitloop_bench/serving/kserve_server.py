"""Baseline for the benchmark: KServe's ``ModelServer`` serving a ``kserve.Model``.

Not part of the product. A custom KServe predictor written as KServe's docs show for a
Python model (a ``kserve.Model`` subclass with ``load`` and ``predict``, started with
``ModelServer().start([model])``), taking the image as its image examples do: the v1
protocol, ``{"instances": [{"image": {"b64": "<PNG, base64>"}}]}`` on
``POST /v1/models/digits:predict``, answered with ``{"predictions": [{"label": ...}]}``.

Configured as well as KServe's own options allow:

- ``--workers 2``: two uvicorn worker processes (KServe spawns them and hands them the
  listening socket and the loaded model);
- ``--enable_grpc false``: no gRPC server competing for the cores;
- ``--enable_latency_logging false`` and ``--log_config_file`` with the access log and
  KServe's per-request timing log at WARNING (written by
  :func:`digitloop_bench.serving.run.write_kserve_log_config`: importing ``kserve`` parses the
  command line, so the orchestrator keeps it out of its own process), and
  ``KSERVE_LOGLEVEL=WARNING``;
- one torch thread per worker: ``OMP_NUM_THREADS=1`` in the environment (spawned workers
  do not inherit ``torch.set_num_threads``), checked again in each worker;
- a synchronous ``predict``: KServe calls it in the event loop, with no thread hop.

KServe binds its HTTP server to 0.0.0.0 with no option to change it; this module binds it
to 127.0.0.1 (``--host``) instead, as every server of the benchmark listens on loopback only.

The same model version and preprocessing as the service: :meth:`Classifier.from_registry`
(``DIGITLOOP_DATA_DIR``, ``DIGITLOOP_BENCH_MODEL``) and :func:`image_bytes_to_pixels`.

Run: ``python -m digitloop_bench.serving.kserve_server --http_port 8080 --workers 2
--enable_grpc false --enable_latency_logging false --log_config_file quiet.json``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os

import kserve
import numpy as np
from kserve.errors import InvalidInput

from contracts.registry import CHAMPION_ALIAS
from services.errors import status_of
from services.inference import Classifier, image_bytes_to_pixels
from services.settings import ServingSettings

KSERVE_MODEL_NAME = "digits"  # the same name as digitloop_bench.serving.loadgen.KSERVE_MODEL_NAME
HOST = "127.0.0.1"


class DigitModel(kserve.Model):
    """The registry's model behind KServe's v1 protocol, one PNG per instance."""

    def __init__(self, name: str, ref: str) -> None:
        super().__init__(name)
        self.ref = ref
        self.classifier: Classifier | None = None
        self.settings = ServingSettings()
        self._threads_pid: int | None = None
        self.load()

    def load(self) -> bool:
        from model.registry import Registry

        self._ensure_threads()
        self.classifier = Classifier.from_registry(
            self.ref, Registry(), runtime=self.settings.inference_runtime
        )
        self.ready = True
        return self.ready

    def _ensure_threads(self) -> None:
        # The model is loaded in the parent and pickled to each spawned worker.
        if self._threads_pid != os.getpid():
            import torch

            torch.set_num_threads(self.settings.torch_threads)
            self._threads_pid = os.getpid()
            if os.environ.get("DIGITLOOP_BENCH_GC_FREEZE") == "1":  # as the service does
                from services.slots import freeze_long_lived

                freeze_long_lived()

    def predict(self, payload: dict, headers: dict[str, str] | None = None) -> dict:
        self._ensure_threads()
        try:
            instances = payload["instances"]
            blobs = [base64.b64decode(item["image"]["b64"], validate=True)
                     for item in instances]  # fmt: skip
        except (KeyError, TypeError, binascii.Error) as exc:
            raise InvalidInput(
                'expected {"instances": [{"image": {"b64": "<PNG, base64>"}}]}'
            ) from exc
        if not blobs:
            raise InvalidInput("no instances")
        try:
            digits = np.stack(
                [image_bytes_to_pixels(blob, self.settings.max_image_bytes) for blob in blobs]
            )
        except Exception as exc:
            if status_of(exc) is None:
                raise
            raise InvalidInput(str(exc)) from exc
        # The service's own work per answer, novelty flag included: only the stacks differ.
        probabilities, _, unusual = self.classifier.answer(digits)  # type: ignore[union-attr]
        return {
            "predictions": [
                {
                    "label": int(p.argmax()),
                    "probabilities": [round(float(v), 6) for v in p],
                    "unusual": bool(odd),
                }
                for p, odd in zip(probabilities, unusual, strict=True)
            ]
        }


def _bind_loopback(host: str) -> None:
    """Make KServe's REST server listen on ``host`` (it hard-codes 0.0.0.0)."""
    from kserve.protocol.rest import server as rest_server

    original = rest_server.RESTServer.__init__
    if getattr(original, "_digitloop_loopback", False):
        return

    def __init__(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        self.config.host = host

    __init__._digitloop_loopback = True  # type: ignore[attr-defined]
    rest_server.RESTServer.__init__ = __init__  # type: ignore[method-assign]


def main() -> None:
    from kserve import ModelServer
    from kserve.model_server import parser as kserve_parser

    parser = argparse.ArgumentParser(parents=[kserve_parser], description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=HOST, help="Address to listen on (loopback).")
    parser.add_argument(
        "--model_ref",
        default=os.environ.get("DIGITLOOP_BENCH_MODEL", CHAMPION_ALIAS),
        help="Version number or alias in the registry of DIGITLOOP_DATA_DIR.",
    )
    args, _ = parser.parse_known_args()
    _bind_loopback(args.host)
    model = DigitModel(KSERVE_MODEL_NAME, args.model_ref)
    ModelServer().start([model])


if __name__ == "__main__":
    main()
