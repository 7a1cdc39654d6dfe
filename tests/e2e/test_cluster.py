"""End to end on a real kind cluster: `make up`, a prediction through the gateway, feedback in
MinIO, a loop run that succeeds, a canary set by Helm values taking about its share of the
traffic, `make down`.

Needs Docker, network and about 4 CPUs / 8 GB for Docker: run it with `make e2e` (it sets
DIGITLOOP_E2E=1). Set DIGITLOOP_E2E_KEEP=1 to keep the cluster afterwards, and
DIGITLOOP_E2E_REUSE=1 to skip `make up` against a cluster that is already up.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
API = "http://localhost:8081"
UI = "http://localhost:8080"
MLFLOW = "http://localhost:8082"
NAMESPACE = "digitloop"
CONTEXT = "kind-digitloop"
BIN = ROOT / "bin"

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(7200),
    pytest.mark.skipif(
        os.environ.get("DIGITLOOP_E2E") != "1" or shutil.which("docker") is None,
        reason="needs Docker and a kind cluster: run `make e2e` on a machine with Docker "
        "(this machine has no Docker engine)",
    ),
]


def run(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=check
    )


def kubectl(*args: str, timeout: float = 120) -> str:
    return run(str(BIN / "kubectl"), "--context", CONTEXT, *args, timeout=timeout).stdout


def digit_png(label: int = 1) -> bytes:
    """A hand-drawn-looking digit: a thick stroke on a 280x280 white canvas (as the sketchpad)."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (280, 280), 255)
    draw = ImageDraw.Draw(image)
    if label == 1:
        draw.line([(150, 40), (140, 240)], fill=0, width=22)
    else:
        draw.ellipse([(70, 40), (210, 240)], outline=0, width=22)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def predict(client: httpx.Client, track: str | None = None) -> dict:
    headers = {"X-Digitloop-Track": track} if track else {}
    answer = client.post(
        f"{API}/predict",
        files={"image": ("d.png", digit_png(), "image/png")},
        headers=headers,
        timeout=30,
    )
    answer.raise_for_status()
    return answer.json()


def wait_until(check, what: str, timeout: float = 900, every: float = 5) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(every)
    pytest.fail(f"{what} not reached in {timeout:.0f} s (last error: {last})")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    if os.environ.get("DIGITLOOP_E2E_REUSE") != "1":
        result = subprocess.run(["make", "up"], cwd=ROOT, timeout=5400)
        assert result.returncode == 0, "make up failed"
        # Safe to run twice: a second `make up` changes nothing and succeeds.
        again = subprocess.run(["make", "up"], cwd=ROOT, timeout=3600)
        assert again.returncode == 0, "a second make up failed"
    yield
    if os.environ.get("DIGITLOOP_E2E_KEEP") != "1":
        subprocess.run(["make", "down"], cwd=ROOT, timeout=600, check=False)


@pytest.fixture(scope="module")
def client(cluster: None) -> Iterator[httpx.Client]:
    with httpx.Client() as http:
        wait_until(
            lambda: http.get(f"{API}/readyz", timeout=5).status_code == 200,
            "serving ready through the gateway",
        )
        yield http


def test_the_published_uis_answer(client: httpx.Client) -> None:
    assert client.get(UI, timeout=30).status_code == 200
    assert client.get(f"{MLFLOW}/health", timeout=30).status_code == 200


def test_prediction_and_feedback_land_in_minio(client: httpx.Client) -> None:
    answer = predict(client)
    assert 0 <= answer["label"] <= 9 and len(answer["probabilities"]) == 10
    assert answer["track"] == "stable"
    feedback = client.post(
        f"{API}/feedback",
        json={"prediction_id": answer["prediction_id"], "label": 1, "source": "e2e"},
        timeout=30,
    )
    assert feedback.status_code < 300, feedback.text

    secret = json.loads(kubectl("-n", NAMESPACE, "get", "secret", "digitloop-minio", "-o", "json"))
    access, key = (base64.b64decode(secret["data"][k]).decode() for k in ("accessKey", "secretKey"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    forward = subprocess.Popen(
        [
            str(BIN / "kubectl"),
            "--context",
            CONTEXT,
            "-n",
            NAMESPACE,
            "port-forward",
            "svc/digitloop-minio",
            f"{port}:9000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        from minio import Minio

        store = Minio(f"127.0.0.1:{port}", access_key=access, secret_key=key, secure=False)

        def stored() -> bool:
            names = [
                o.object_name for o in store.list_objects("digitloop", "feedback/", recursive=True)
            ]
            return any(answer["prediction_id"] in name for name in names)

        wait_until(stored, "the feedback object in MinIO", timeout=120, every=2)
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def test_a_loop_run_succeeds(client: httpx.Client) -> None:
    result = run(
        str(BIN / "argo"),
        "--context",
        CONTEXT,
        "-n",
        NAMESPACE,
        "submit",
        "--from",
        "workflowtemplate/digitloop-loop",
        "--wait",
        "-o",
        "json",
        timeout=3600,
    )
    workflow = json.loads(result.stdout)
    assert workflow["status"]["phase"] == "Succeeded", workflow["status"].get("message")


def test_a_canary_by_helm_values_takes_its_share(client: httpx.Client) -> None:
    weight, count = 30, 300
    # Version 1 on both tracks: what is measured is the split, not the model.
    subprocess.run(
        ["make", "canary", "VERSION=1", f"WEIGHT={weight}"], cwd=ROOT, timeout=900, check=True
    )
    try:
        wait_until(
            lambda: predict(client, track="canary")["track"] == "canary",
            "the canary answering",
            timeout=600,
        )
        tracks = [predict(client)["track"] for _ in range(count)]
        share = tracks.count("canary") / count
        sigma = math.sqrt(weight / 100 * (1 - weight / 100) / count)
        assert abs(share - weight / 100) < 4 * sigma, (share, weight)
        assert predict(client, track="stable")["track"] == "stable"
    finally:
        subprocess.run(["make", "rollback"], cwd=ROOT, timeout=900, check=True)
