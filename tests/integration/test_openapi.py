"""The OpenAPI document the service serves at /docs.json is the API it answers.

schemathesis reads the document and sends what it describes, and more, to `bentoml serve`
on 127.0.0.1, with every check it has (`--checks all`): no 5xx, every status and body as
documented, every request the schemas allow accepted and every one they refuse refused,
auth enforced, 405 for other methods, each answer within seconds. All its phases run:
the document's examples, the coverage of every bound, fuzzing, and stateful sequences
through the document's links (a prediction, then feedback on its id). Bounded: a few
examples per operation, a time limit per request and per answer, and a deadline for the
run. It runs as its CLI, `schemathesis run` (its pytest loader for a served schema,
``schemathesis.pytest.from_fixture``, does not run under pytest 9).

Two statuses are configured, not defaults: 422 is how this API refuses a request its schema
allows but whose content it cannot use (bytes that are not an image, a drawing without
ink), so positive data may get it; and 413 is how it refuses a list over its bound (more
images than a batch takes), so negative data may get it.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from services.inputs import EXAMPLE_DRAWING
from tests.conftest import VENV_BIN
from tests.serving import ADMIN_TOKEN, Service, register_models, sketch_png

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 12
RESPONSE_TIME_S = 5
REQUEST_TIMEOUT_S = 10
RUN_DEADLINE_S = 90  # each run takes 5-15 s on 2 cores

CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "409", "413", "422"]
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory, mnist) -> Service:
    """A tiny model on both tracks, so a request pinned to either is answered."""
    root = tmp_path_factory.mktemp("openapi")
    env = {
        "DIGITLOOP_DATA_DIR": str(root / "data"),
        "DIGITLOOP_WORKERS": "1",
        "DIGITLOOP_CANARY_MODEL": "1",
        "DIGITLOOP_CANARY_WEIGHT": "50",
    }
    assert register_models(mnist, env, count=1, n_train=500) == ["1"]
    svc = Service(env, root / "serve.log").start()
    yield svc
    svc.stop()


def schemathesis(service: Service, workdir: Path, *options: str) -> dict:
    """`schemathesis run` against the service with every check; its JSON report."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "schemathesis.toml").write_text(CONFIG)
    command = [
        str(VENV_BIN / "schemathesis"),
        "--config-file",
        "schemathesis.toml",
        "run",
        f"{service.url}/docs.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--request-timeout",
        str(REQUEST_TIMEOUT_S),
        "--max-response-time",
        str(RESPONSE_TIME_S),
        "--generation-database",
        "none",
        "--report",
        "json,har",
        "--report-dir",
        "reports",
        "--no-color",
        *options,
    ]
    run = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=RUN_DEADLINE_S
    )
    print(run.stdout[-3000:])
    assert run.returncode == 0, f"{' '.join(command)}\n{run.stdout}\n{run.stderr}"
    report = json.loads(next((workdir / "reports").glob("json-*.json")).read_text())
    har = json.loads(next((workdir / "reports").glob("har-*.json")).read_text())
    report["requests"] = len(har["log"]["entries"])
    print(f"schemathesis: {report['requests']} requests, {report['running_time']:.1f} s")
    return report


def test_every_operation_answers_as_its_document_says(service: Service, tmp_path: Path):
    report = schemathesis(service, tmp_path)
    assert report["failures"] == [] and report["errors"] == []
    assert report["operations"]["tested"] == report["operations"]["total"] == 9
    assert {name: phase["status"] for name, phase in report["phases"].items()} == {
        "examples": "success",
        "coverage": "success",
        "fuzzing": "success",
        "stateful": "success",
    }
    assert report["requests"] >= 200


def test_admin_reload_with_the_token_answers_as_its_document_says(service: Service, tmp_path: Path):
    """The reload itself, token given (it changes what serves: after the run above)."""
    report = schemathesis(
        service,
        tmp_path,
        "--include-path",
        "/admin/reload",
        "--phases",
        "examples,coverage,fuzzing",
        "--header",
        f"Authorization: Bearer {ADMIN_TOKEN}",
    )
    assert report["failures"] == [] and report["errors"] == []
    assert report["operations"]["tested"] == 1 and report["requests"] >= 20


# -- the document itself ------------------------------------------------------------------


def test_the_document_tells_every_status_and_bound(service: Service):
    spec = httpx.get(f"{service.url}/docs.json", timeout=30).json()
    # Served by the service's own route in place of BentoML's document.
    assert spec["openapi"] == "3.1.0" and "InvalidArgument" not in spec["components"]["schemas"]
    paths = spec["paths"]
    statuses = {
        path: set(operation["responses"])
        for path, item in paths.items()
        for operation in item.values()
    }
    assert statuses["/predict"] == {"200", "400", "413", "422", "500", "503"}
    assert statuses["/predict_batch"] == {"200", "400", "413", "500", "503"}
    assert statuses["/feedback"] == {"200", "400", "404", "409", "413", "422", "500", "503"}
    assert statuses["/admin/reload"] == {"200", "400", "401", "403", "404", "413", "500"}
    assert statuses["/model"] == {"200", "500", "503"}
    schemas = spec["components"]["schemas"]
    feedback = schemas["FeedbackInput"]["properties"]
    assert (feedback["label"]["minimum"], feedback["label"]["maximum"]) == (0, 9)
    assert feedback["prediction_id"]["pattern"].startswith(r"^(draft\.)?([0-9a-f]{32})")
    # A draft: the JSON field, the query parameter for any body, and the answer's flag.
    predict = paths["/predict"]["post"]
    assert schemas["PredictInput"]["properties"]["draft"]["type"] == "boolean"
    (draft,) = [p for p in predict["parameters"] if p["name"] == "draft"]
    assert (draft["in"], draft["required"], draft["schema"]) == (
        "query",
        False,
        {"type": "boolean", "default": False},
    )
    assert "draft" in schemas["Prediction"]["required"]
    assert "query parameter `draft`" in predict["responses"]["400"]["description"]
    assert "draft" in paths["/feedback"]["post"]["responses"]["422"]["description"]
    batch = schemas["PredictBatchInput"]["properties"]
    assert batch["pixels"]["anyOf"][0]["maxItems"] == 64
    assert batch["images"]["anyOf"][0]["maxItems"] == 64
    multipart = paths["/predict_batch"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert multipart["schema"]["properties"]["images"]["maxItems"] == 64
    pixels = schemas["PredictInput"]["properties"]["pixels"]["anyOf"][0]
    assert pixels["maxItems"] == pixels["items"]["maxItems"] == 4096
    assert set(paths["/predict"]["post"]["requestBody"]["content"]) == {
        "application/json",
        "multipart/form-data",
        "image/png",
        "image/jpeg",
        "application/octet-stream",
    }
    for path in ("/predict", "/predict_batch", "/feedback", "/admin/reload", "/model"):
        for status, response in next(iter(paths[path].values()))["responses"].items():
            if status != "200":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)


# -- /predict_batch answers per image -----------------------------------------------------


def test_a_bad_image_in_a_batch_gets_its_own_error_and_the_rest_are_answered(
    service: Service, mnist
):
    good = [sketch_png(mnist.x_test[i]) for i in range(3)]
    blank = io.BytesIO()
    Image.new("L", (64, 64), 255).save(blank, format="PNG")
    images = [good[0], b"not an image", good[1], blank.getvalue(), good[2]]
    files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    with service.client() as client:
        response = client.post("/predict_batch", files=files)
        alone = [
            client.post("/predict", content=data, headers={"content-type": "image/png"})
            for data in images
        ]
        as_json = client.post(
            "/predict_batch",
            json={"images": [base64.b64encode(data).decode() for data in images]},
        )
        ragged = client.post(
            "/predict_batch", json={"pixels": [EXAMPLE_DRAWING, [[0, 255], [255]], EXAMPLE_DRAWING]}
        )
    assert response.status_code == 200, response.text
    answers = response.json()
    assert len(answers) == 5
    for index in (0, 2, 4):
        assert answers[index]["label"] == alone[index].json()["label"]
        assert "prediction_id" in answers[index]
    assert answers[1] == {
        "index": 1,
        "status": 422,
        "error": alone[1].json()["error"],
    }
    assert alone[1].status_code == 422 and "not a readable image" in answers[1]["error"]
    assert answers[3]["index"] == 3 and answers[3]["status"] == 422 == alone[3].status_code
    assert "ink" in answers[3]["error"] or "empty" in answers[3]["error"]
    # JSON with base64 images answers the same, image by image.
    assert as_json.status_code == 200, as_json.text
    assert [("label" in a, a.get("status")) for a in as_json.json()] == [
        (True, None),
        (False, 422),
        (True, None),
        (False, 422),
        (True, None),
    ]
    # A drawing whose rows differ in length is one more image that cannot be read.
    assert ragged.status_code == 200, ragged.text
    first, bad, last = ragged.json()
    assert first["label"] == last["label"] and bad["index"] == 1 and bad["status"] == 422
    assert "differ in length" in bad["error"]


def test_the_client_keeps_batches_all_or_nothing_or_answers_each(service: Service, mnist):
    from contracts.api import ImageError, Prediction
    from services.client import DigitloopClient, ServiceError

    good = sketch_png(mnist.x_test[0])
    with DigitloopClient(service.url) as client:
        each = client.predict_batch_each([good, b"nope", good])
        assert [type(a) for a in each] == [Prediction, ImageError, Prediction]
        assert each[1].index == 1 and each[1].status == 422
        with pytest.raises(ServiceError) as refused:
            client.predict_batch([good, b"nope", good])
        assert refused.value.status == 422 and "image 1" in refused.value.message
        drawings = np.stack([mnist.x_test[i] for i in range(3)])
        assert len(client.predict_batch_pixels(drawings)) == 3
        # Longer lists go in several requests; an index counts from the start of the list.
        many = client.predict_batch_each([good] * 64 + [b"nope"])
        assert len(many) == 65 and isinstance(many[63], Prediction)
        assert isinstance(many[64], ImageError) and many[64].index == 64
