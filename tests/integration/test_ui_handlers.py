"""The sketchpad's handlers against a real ``bentoml serve`` of the service (no stubs).

Drawings are MNIST test digits enlarged onto a 280x280 pad as the Sketchpad sends them
(RGBA, black ink on white paper); feedback is checked in the service's local store.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contracts.api import Prediction
from services.client import DigitloopClient, ServiceError
from services.store.backends import LocalStore
from services.store.readers import read_predictions
from tests.serving import Service
from ui.app import (
    BATCH_COLUMNS,
    Session,
    clear_drawing,
    png_bytes,
    predict_drawing,
    predict_files,
    send_feedback,
    service_status,
)
from ui.asking import ASKED_SOURCE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def served(sketch_service: Service) -> Service:
    return sketch_service


@pytest.fixture
def client(served: Service) -> Iterator[DigitloopClient]:
    with DigitloopClient(served.url, timeout=20) as client:
        yield client


def pad_value(digit: np.ndarray) -> dict[str, object]:
    """An MNIST digit (28x28, white on black) as the Sketchpad's value of a drawing of it."""
    ink = np.asarray(Image.fromarray(digit).resize((280, 280), Image.Resampling.BILINEAR))
    composite = np.full((280, 280, 4), 255, np.uint8)
    composite[..., :3] = (255 - ink)[..., None]
    return {"background": None, "layers": [composite], "composite": composite}


def test_a_drawing_is_predicted_and_counted_once(client: DigitloopClient, mnist):
    value = pad_value(mnist.x_test[0])  # a 7
    first = predict_drawing(client, value, Session())
    assert first.notice is None and first.prediction is not None
    prediction = first.prediction
    assert prediction.label == int(mnist.y_test[0])
    assert (prediction.model_version, prediction.track) == ("1", "stable")
    assert sum(prediction.probabilities) == pytest.approx(1, abs=1e-3)
    assert first.session.drawn == 1 and first.session.counted

    # Predict pressed after the stroke-end prediction: the same answer, no second request.
    again = predict_drawing(client, value, first.session)
    assert again.prediction == prediction and again.session.drawn == 1
    assert predict_drawing(client, value, first.session, auto=True).skipped

    # Another stroke on the same pad: a new prediction, still one drawing.
    more = pad_value(mnist.x_test[0])
    more["composite"][250:260, 20:60, :3] = 0  # type: ignore[index]
    extended = predict_drawing(client, more, first.session, auto=True)
    assert extended.prediction is not None
    assert extended.prediction.prediction_id != prediction.prediction_id
    assert extended.session.drawn == 1
    # A stroke's end answers a draft; Predict answered the logged prediction.
    assert extended.prediction.draft and not prediction.draft


def strokes(digit: np.ndarray) -> list[dict[str, object]]:
    """The pad as a digit is drawn: its top half first, then the whole digit."""
    whole = pad_value(digit)
    top = pad_value(digit)
    top["composite"][140:, :, :3] = 255  # type: ignore[index]
    return [top, whole]


def logged_since(served: Service, since: datetime, prediction_id: str) -> set[str]:
    """Every id logged since ``since`` once ``prediction_id`` is among them.

    The service has one worker and its log is flushed in order, so whatever was appended
    before ``prediction_id`` is in the store by then.
    """
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ids = set(read_predictions(LocalStore(served.store_dir), since=since)["prediction_id"])
        if prediction_id in ids:
            return ids
        time.sleep(0.2)
    raise AssertionError(f"{prediction_id} never reached the predictions log")


def test_pen_lift_drafts_and_a_confirm_log_the_drawing_once(
    client: DigitloopClient, served: Service, mnist
):
    started = datetime.now(UTC)
    labelled = set(served.feedback_records())
    session = Session()
    drafts = []
    for value in strokes(mnist.x_test[4]):
        session = predict_drawing(client, value, session, auto=True, ask_below=1.01).session
        assert session.current is not None and session.current.draft and session.asked
        drafts.append(session.current.prediction_id)
    assert session.drawn == 1

    confirmed = send_feedback(client, session, None)
    assert confirmed.notice.kind == "ok" and confirmed.session.confirmed == 1

    new = {pid: r for pid, r in served.feedback_records().items() if pid not in labelled}
    assert len(new) == 1, new
    ((final_id, record),) = new.items()
    assert not final_id.startswith("draft.") and final_id not in drafts
    assert (record["label"], record["source"]) == (session.current.label, ASKED_SOURCE)
    assert logged_since(served, started, final_id) == {final_id}


def test_clear_after_drafts_logs_the_final_drawing_once(
    client: DigitloopClient, served: Service, mnist
):
    started = datetime.now(UTC)
    session = Session()
    for value in strokes(mnist.x_test[5]):
        session = predict_drawing(client, value, session, auto=True).session
    last = session.current
    assert last is not None and last.draft

    cleared = clear_drawing(client, session)
    assert cleared.session.current is None and cleared.notice is None
    clear_drawing(client, cleared.session)  # a second Clear has nothing to log

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = read_predictions(LocalStore(served.store_dir), since=started)
        if len(rows):
            break
        time.sleep(0.2)
    time.sleep(2.5)  # two more flushes: a second record would be in the store by now
    rows = read_predictions(LocalStore(served.store_dir), since=started)
    assert len(rows) == 1
    assert not rows["prediction_id"][0].startswith("draft.")
    assert (rows["label"][0], rows["track"][0]) == (last.label, last.track)


def test_most_drawn_mnist_digits_are_recognised(client: DigitloopClient, mnist):
    session = Session()
    right = 0
    for index in range(20):
        session = predict_drawing(client, pad_value(mnist.x_test[index]), session).session
        assert session.current is not None
        right += session.current.label == int(mnist.y_test[index])
        session = send_feedback(client, session, int(mnist.y_test[index])).session
    assert right >= 17, f"only {right} of 20 right"
    assert session.drawn == 20 and session.checked == 20
    assert session.confirmed == right and session.corrected == 20 - right


def test_confirming_and_correcting_land_in_the_store(client: DigitloopClient, served, mnist):
    predicted = predict_drawing(client, pad_value(mnist.x_test[1]), Session())
    first = predicted.prediction
    assert first is not None
    confirmed = send_feedback(client, predicted.session, None)
    assert confirmed.reset_canvas and confirmed.notice.kind == "ok"
    assert confirmed.notice.text == (
        f"Thanks! Recorded that {first.label} was right. Draw the next digit."
    )
    assert confirmed.session.confirmed == 1 and confirmed.session.current is None
    assert not confirmed.session.counted  # the next drawing counts anew
    record = served.wait_for_feedback(first.prediction_id)
    assert (record["label"], record["source"]) == (first.label, "ui")
    assert record["_key"].startswith("feedback/dt=")

    second = predict_drawing(client, pad_value(mnist.x_test[2]), confirmed.session)
    prediction = second.prediction
    assert prediction is not None and second.session.drawn == 2
    truth = (prediction.label + 1) % 10  # the person says it was another digit
    corrected = send_feedback(client, second.session, truth)
    assert corrected.reset_canvas
    assert f"true digit {truth} (the model said {prediction.label})" in corrected.notice.text
    assert (corrected.session.confirmed, corrected.session.corrected) == (1, 1)
    assert corrected.session.accuracy == pytest.approx(0.5)
    assert served.wait_for_feedback(prediction.prediction_id)["label"] == truth


def test_a_double_click_is_recorded_once(client: DigitloopClient, served, mnist):
    session = predict_drawing(client, pad_value(mnist.x_test[3]), Session()).session
    first = send_feedback(client, session, None)
    twice = send_feedback(client, session, None)  # the same click, sent again
    assert first.session.confirmed == 1
    assert twice.notice.kind == "ok" and "already recorded" in twice.notice.text
    assert twice.session.confirmed == 0 and twice.reset_canvas
    with pytest.raises(ServiceError) as caught:
        client.feedback(session.current.prediction_id, 5)  # type: ignore[union-attr]
    assert caught.value.status == 409


def test_unknown_prediction_asks_to_predict_again(client: DigitloopClient):
    made_up = Prediction(
        prediction_id="0" * 32 + ".stable.1.7.0123456789abcdef",
        label=7,
        probabilities=[0.1] * 10,
        model_version="1",
        track="stable",
    )
    result = send_feedback(client, Session(drawn=1, current=made_up, counted=True), 7)
    assert result.notice.kind == "error" and "Press Predict again" in result.notice.text
    assert result.session.current is None and not result.reset_canvas


def test_too_little_ink_is_the_services_hint(client: DigitloopClient):
    value = pad_value(np.zeros((28, 28), np.uint8))
    value["composite"][140:142, 140:142, :3] = 0  # type: ignore[index]
    result = predict_drawing(client, value, Session())
    assert result.notice is not None and result.notice.kind == "hint"
    assert result.notice.text.startswith("The drawing has too little ink")
    assert result.session == Session()


def test_batch_table_and_csv(client: DigitloopClient, mnist, tmp_path: Path):
    files = []
    for index in range(3):
        path = tmp_path / f"digit-{index}.png"
        path.write_bytes(png_bytes(255 - mnist.x_test[index]))
        files.append(path)
    jpeg = tmp_path / "digit-3.jpg"
    Image.fromarray(255 - mnist.x_test[3]).resize((112, 112)).save(jpeg, quality=90)
    blank = tmp_path / "blank.png"
    blank.write_bytes(png_bytes(np.full((64, 64), 255, np.uint8)))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    paths = [*files, jpeg, blank, text]

    result = predict_files(client, paths, out_dir=tmp_path / "out")

    assert [row.file for row in result.rows] == [p.name for p in paths]
    for row, index in zip(result.rows[:4], range(4), strict=True):
        assert row.error == "" and row.digit == int(mnist.y_test[index])
        assert 0 < row.confidence <= 1 and row.model_version == "1" and row.track == "stable"
    assert result.rows[4].digit is None and result.rows[4].error.startswith("The drawing is empty")
    assert result.rows[5].error == "not a PNG or JPEG image"
    assert result.notice is not None and result.notice.kind == "hint"
    assert (
        result.notice.text
        == "Predicted 4 of 6 images. 2 could not be predicted: see the error column."
    )

    assert result.csv_path is not None
    rows = list(csv.reader(io.StringIO(result.csv_path.read_text())))
    assert rows[0] == BATCH_COLUMNS and len(rows) == 7
    assert rows[1][:3] == [paths[0].name, str(int(mnist.y_test[0])), str(result.table()[0][2])]


def test_service_status_names_the_model(client: DigitloopClient):
    status = service_status(client)
    assert status.kind == "info"
    assert status.text.startswith(
        "Connected to the prediction service: model version 1 on the stable track "
        "(MNIST test accuracy "
    )
    assert client.ready() is True


def test_pixels_and_a_pinned_track(client: DigitloopClient, mnist):
    assert client.predict_pixels(mnist.x_test[0]).label == int(mnist.y_test[0])
    pinned = client.predict(png_bytes(255 - mnist.x_test[1]), track="stable")
    assert pinned.track == "stable"
    with pytest.raises(ServiceError) as caught:
        client.predict(png_bytes(255 - mnist.x_test[1]), track="canary")
    assert caught.value.status == 400 and "no canary" in caught.value.message
