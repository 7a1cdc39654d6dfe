"""Pure parts of the serving component: ids, the traffic split, routing state, errors."""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest

from contracts.errors import EmptyDrawingError, InvalidImageError
from contracts.routing import RoutingState
from services.errors import BadRequest, PayloadTooLarge, UnknownPrediction, status_of
from services.ids import PredictionIds
from services.inference import array_to_pixels, image_bytes_to_pixels
from services.routing import TrafficSplit
from services.settings import ServingSettings
from services.state import StateFile

SECRET = b"0123456789abcdef0123456789abcdef"


def test_prediction_ids_round_trip_and_refuse_forgeries():
    ids = PredictionIds(SECRET)
    pid = ids.new("canary", "12", 7)
    ref = ids.parse(pid)
    assert (ref.track, ref.model_version, ref.label) == ("canary", "12", 7)
    forged = pid.replace(".canary.12.7.", ".canary.12.3.")
    for bad in (forged, pid[:-1] + ("0" if pid[-1] != "0" else "1"), "", "x" * 70, "../etc"):
        with pytest.raises(UnknownPrediction):
            ids.parse(bad)
    with pytest.raises(UnknownPrediction):  # another deployment's key
        PredictionIds(b"f" * 32).parse(pid)
    assert len({ids.new("stable", "1", 1) for _ in range(1000)}) == 1000


@pytest.mark.parametrize("weight", [0, 1, 20, 33, 50, 99, 100])
def test_split_is_exact_over_every_hundred_requests(weight: int):
    split = TrafficSplit(weight)
    tracks = [split.choose() for _ in range(1000)]
    for start in range(0, 1000, 100):
        assert tracks[start : start + 100].count("canary") == weight


def test_split_spreads_the_canary_evenly():
    assert TrafficSplit(20).choose() == "stable"  # a fresh split starts on stable
    split = TrafficSplit(20)
    gaps = np.diff([i for i, t in enumerate(split.choose() for _ in range(200)) if t == "canary"])
    assert set(gaps.tolist()) == {5}


def test_header_pins_a_track_and_bad_pins_are_refused():
    split = TrafficSplit(0)
    assert split.choose("canary") == "canary"
    assert split.choose(" Stable ") == "stable"
    with pytest.raises(BadRequest, match="stable' or 'canary"):
        split.choose("blue")
    with pytest.raises(BadRequest, match="no canary"):
        split.choose("canary", canary_available=False)
    assert TrafficSplit(100).choose(canary_available=False) == "stable"
    with pytest.raises(BadRequest):
        TrafficSplit(101)


def test_routing_state_changes_and_file_round_trip(tmp_path: Path):
    state = RoutingState("3").with_changes(canary_model="4", canary_weight=20)
    assert state == RoutingState("3", "4", 20)
    assert state.with_changes(stable_model="4") == RoutingState("4", "4", 20)
    assert state.with_changes(canary_model="") == RoutingState("3", None, 0)
    file = StateFile(tmp_path / "s" / "state.json")
    assert file.read() is None and file.mtime_ns() == 0
    file.write(state)
    assert file.read() == state and file.mtime_ns() > 0


def test_settings_validation_and_secrets(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DIGITLOOP_DATA_DIR", str(tmp_path))
    settings = ServingSettings(canary_model="")
    assert settings.canary_model is None
    assert settings.admin_secret() is None
    secret = settings.id_secret()
    assert len(secret) >= 32 and ServingSettings().id_secret() == secret  # made once
    assert oct((tmp_path / "prediction-id.secret").stat().st_mode & 0o777) == "0o600"
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    assert ServingSettings(admin_token_file=token_file).admin_secret() == "s3cret"
    with pytest.raises(ValueError, match="CANARY_MODEL"):
        ServingSettings(only_track="canary")
    with pytest.raises(ValueError):
        ServingSettings(canary_weight=120)


def test_error_statuses():
    # Not an image: the request is well formed, its content unusable (services/errors.py).
    assert status_of(InvalidImageError("x")) == HTTPStatus.UNPROCESSABLE_ENTITY
    assert status_of(EmptyDrawingError("x")) == HTTPStatus.UNPROCESSABLE_ENTITY
    assert status_of(PayloadTooLarge("x")) == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert status_of(UnknownPrediction("x")) == HTTPStatus.NOT_FOUND
    assert status_of(RuntimeError("x")) is None


def test_request_inputs_to_pixels():
    image = np.zeros((56, 56), np.float32)
    image[10:46, 25:31] = 1.0
    assert array_to_pixels(image.tolist()).shape == (28, 28)
    with pytest.raises(BadRequest, match="2-D"):
        array_to_pixels([1, 2, 3])
    with pytest.raises(BadRequest, match="rectangular"):
        array_to_pixels([[1, 2], [3]])
    with pytest.raises(PayloadTooLarge):
        image_bytes_to_pixels(b"x" * 11, max_bytes=10)
    with pytest.raises(InvalidImageError):
        image_bytes_to_pixels(b"not a png", max_bytes=100)


def test_a_version_with_a_temperature_answers_calibrated_probabilities(mnist):
    """The classifier reads the version's temperature once, when it loads, and every answer
    (one image or a batch) is ``softmax(logits / T)``: the same digit, other confidences."""
    import torch

    from model.calibration import apply_temperature
    from model.network import DigitNet, predict_proba
    from model.registry import ModelVersionInfo
    from services.inference import Classifier

    torch.manual_seed(0)
    net = DigitNet().eval()
    with torch.no_grad():  # an untrained head answers near-uniform; spread its logits
        net.head[-1].weight.mul_(10)
    images = mnist.x_test[:64]
    raw = predict_proba(net, images)

    def version(tags: dict[str, str]) -> ModelVersionInfo:
        return ModelVersionInfo("digitloop-mnist", "7", [], tags, "run")

    calibrated = Classifier.from_net(net, version({"temperature": "0.25"}))
    assert calibrated.temperature == 0.25
    batch = calibrated.predict(images)
    np.testing.assert_allclose(batch, apply_temperature(raw, 0.25), atol=1e-5)
    np.testing.assert_array_equal(batch.argmax(axis=1), raw.argmax(axis=1))
    assert batch.max(axis=1).mean() > raw.max(axis=1).mean() + 0.05  # visibly sharper
    np.testing.assert_allclose(calibrated.predict(images[5:6])[0], batch[5], atol=1e-6)
    # A version registered before calibration serves the network's own probabilities.
    np.testing.assert_allclose(
        Classifier.from_net(net, version({})).predict(images), raw, atol=1e-6
    )


def test_onnx_runtime_gives_torchs_embeddings_logits_and_labels(mnist):
    """The ONNX Runtime fp32 forward is the torch network's: both outputs, any batch size,
    the same labels, in a classifier that pickles to another process."""
    import pickle

    import torch

    from model.network import DigitNet
    from model.registry import ModelVersionInfo
    from services.inference import Classifier

    torch.manual_seed(0)
    net = DigitNet().eval()
    with torch.no_grad():
        net.head[-1].weight.mul_(10)
    info = ModelVersionInfo("digitloop-mnist", "7", [], {"temperature": "0.5"}, "run")
    torch_path = Classifier.from_net(net, info, runtime="torch")
    onnx_path = Classifier.from_net(net, info, runtime="onnxruntime")
    images = mnist.x_test[:300]
    for batch in (images[:1], images[:7], images):
        expected = torch_path.forward(batch)
        got = onnx_path.forward(batch)
        for want, have in zip(expected, got, strict=True):
            assert isinstance(have, torch.Tensor) and have.shape == want.shape
            np.testing.assert_allclose(have.numpy(), want.numpy(), atol=1e-4)
    np.testing.assert_array_equal(
        onnx_path.predict(images).argmax(axis=1), torch_path.predict(images).argmax(axis=1)
    )
    copied = pickle.loads(pickle.dumps(onnx_path))  # KServe hands its model to its workers
    np.testing.assert_allclose(copied.predict(images[:5]), onnx_path.predict(images[:5]), atol=1e-6)
    with pytest.raises(ValueError, match="runtime"):
        Classifier.from_net(net, info, runtime="tensorrt")  # type: ignore[arg-type]
    # The int8 export is made at registration from training digits; it cannot be at load.
    with pytest.raises(ValueError, match="int8 export"):
        Classifier.from_net(net, info, runtime="onnxruntime_int8")


def test_direct_predict_takes_post_predict_and_passes_everything_else_on(monkeypatch):
    """The middleware answers POST /predict with the service's own handler; any other
    request (other routes, other methods, lifespan) goes on to BentoML's app."""
    import asyncio

    from starlette.responses import Response

    from services import service
    from services.service import SERVER_HEADER, DigitService, DirectPredict

    assert DirectPredict in [cls for cls, _ in DigitService.middlewares]
    handled: list[str] = []

    class FakeService:
        async def predict_request(self, request) -> Response:
            handled.append((await request.body()).decode())
            return Response(b"{}", media_type="application/json")

    monkeypatch.setattr(service, "get_current_service", lambda: FakeService())
    passed: list[str] = []

    async def app(scope, receive, send) -> None:
        passed.append(f"{scope.get('method', scope['type'])} {scope.get('path', '')}")

    async def run(scope: dict) -> list[dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"png", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await DirectPredict(app)(scope, receive, send)
        return sent

    def http(method: str, path: str) -> dict:
        return {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}

    sent = asyncio.run(run(http("POST", "/predict")))
    assert handled == ["png"] and sent[0]["status"] == 200
    assert (b"server", SERVER_HEADER.encode()) in sent[0]["headers"]
    for scope in (http("GET", "/predict"), http("POST", "/predict_batch"), {"type": "lifespan"}):
        asyncio.run(run(scope))
    assert passed == ["GET /predict", "POST /predict_batch", "lifespan "]
    assert handled == ["png"]


def test_onnx_exports_from_several_threads_at_once_all_succeed():
    """Slots load in a thread while an admin reload loads in another: both export."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from model.export import export_onnx
    from model.network import DigitNet

    torch.manual_seed(0)
    nets = [DigitNet().eval() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(export_onnx, nets))
    assert all(model.startswith(b"\x08") and len(model) > 100_000 for model in models)


def test_loaded_models_are_frozen_out_of_the_collectors_scans():
    import gc

    from services.slots import freeze_long_lived

    kept = [object() for _ in range(10)]
    try:
        freeze_long_lived()
        assert gc.get_freeze_count() > 10
    finally:
        gc.unfreeze()
    assert kept


class _Version:
    """What the slots need of a registry entry and of a loaded classifier: the version."""

    def __init__(self, version: str) -> None:
        self.version = version

    def describe(self):
        from contracts.api import TrackInfo

        return TrackInfo(model_version=self.version, aliases=[])


def _slots(tmp_path: Path, monkeypatch, slow_finish_s: float):
    """Model slots over a fake registry whose loads end with ``slow_finish_s`` of work
    after the new versions are in place (as ``freeze_long_lived``'s collection is)."""
    import time
    from unittest.mock import MagicMock

    from services import slots as slots_module
    from services.inference import Classifier

    loads: list[str] = []

    def load(cls, version, registry, runtime="torch"):
        loads.append(version)
        return _Version(version)

    monkeypatch.setattr(Classifier, "from_registry", classmethod(load))
    monkeypatch.setattr(slots_module, "freeze_long_lived", lambda: time.sleep(slow_finish_s))
    registry = MagicMock()
    registry.get.side_effect = _Version
    settings = ServingSettings(data_dir=tmp_path, stable_model="1")
    slots = slots_module.ModelSlots(settings, lambda: registry, TrafficSplit(), MagicMock())
    slots.start()
    deadline = time.monotonic() + 10
    while not slots.ready and time.monotonic() < deadline:
        time.sleep(0.01)
    assert slots.ready
    time.sleep(slow_finish_s + 0.1)  # the start-up load has finished: the watcher polls
    return slots, loads


def test_a_reload_stays_loaded_while_the_workers_watcher_polls(tmp_path: Path, monkeypatch):
    """A CI run of test_loop read /model right after the canary's reload and found no
    canary: the worker's own watcher, polling between the reload's load and its state
    file write, had loaded the start-up state back."""
    import time

    slots, loads = _slots(tmp_path, monkeypatch, slow_finish_s=1.0)  # > two polls
    try:
        slots.apply(canary_model="2", canary_weight=20)
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            info = slots.describe()
            assert info.tracks["canary"].model_version == "2" and info.canary_weight == 20
            time.sleep(0.02)
        assert loads == ["1", "2"]  # each version loaded once
    finally:
        slots.stop()


def test_the_other_workers_follow_a_reload_through_the_state_file(tmp_path: Path, monkeypatch):
    import time

    slots, loads = _slots(tmp_path, monkeypatch, slow_finish_s=0.0)
    try:
        StateFile(tmp_path / "serving-state.json").write(RoutingState("1", "3", 50))
        deadline = time.monotonic() + 5
        while "canary" not in slots.describe().tracks and time.monotonic() < deadline:
            time.sleep(0.02)
        info = slots.describe()
        assert info.tracks["canary"].model_version == "3" and info.canary_weight == 50
        assert loads == ["1", "3"]
    finally:
        slots.stop()
