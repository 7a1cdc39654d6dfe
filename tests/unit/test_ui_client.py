"""The UI's client, settings, command and service-free handler paths.

The client talks to real sockets on 127.0.0.1: nothing listening (a stopped service), a
listener that never answers (a hung one), and a small scripted HTTP server for the answers
a service may give (errors with and without a JSON body, garbage, a GET-less /model).
The handlers against the real service are in tests/integration/test_ui_handlers.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from contracts.api import Prediction
from model.preprocess import decode_image, ink_crop, to_mnist
from services.client import (
    DigitloopClient,
    ServiceError,
    ServiceUnavailable,
    image_media_type,
)
from tests.conftest import free_port
from ui.app import (
    Session,
    ask_html,
    clear_drawing,
    editor_image,
    png_bytes,
    predict_drawing,
    predict_files,
    send_feedback,
)
from ui.asking import ASKED_SOURCE, ask_text, should_ask
from ui.settings import UISettings

PROBS = [0.01, 0.02, 0.0, 0.05, 0.0, 0.0, 0.0, 0.9, 0.02, 0.0]
PREDICTION = {
    "prediction_id": "abc.stable.3.7.0123456789abcdef",
    "label": 7,
    "probabilities": PROBS,
    "model_version": "3",
    "track": "stable",
}
# What the service answers a draft (pen lift) and the final drawing (no draft), on canary.
DRAFT = {**PREDICTION, "prediction_id": "draft.d.canary.3.7.0123456789abcdef", "draft": True}
LOGGED = {**PREDICTION, "prediction_id": "f.canary.3.7.0123456789abcdef", "track": "canary"}
DRAFT["track"] = "canary"


# -- a scripted HTTP server ------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Script:
    """Answers by (method, path): (status, content type, body bytes)."""

    answers: dict[tuple[str, str], tuple[int, str, bytes]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    # Answer 400 to a request pinned to a track, as a service without that track does.
    refuse_pins: bool = False

    def json(self, method: str, path: str, status: int, body: object) -> None:
        self.answers[(method, path)] = (status, "application/json", json.dumps(body).encode())

    def raw(self, method: str, path: str, status: int, content_type: str, body: bytes) -> None:
        self.answers[(method, path)] = (status, content_type, body)


@pytest.fixture
def scripted() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            script.seen.append(Seen(self.command, self.path, dict(self.headers), body))
            status, kind, payload = script.answers.get(
                (self.command, self.path), (404, "application/json", b'{"error": "no route"}')
            )
            if script.refuse_pins and self.headers.get("X-Digitloop-Track"):
                status, payload = 400, b'{"error": "no canary is set"}'
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers, like a hung service."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


@pytest.fixture
def stopped_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def sketch(ink: bool = True, transparent: bool = False) -> dict[str, object]:
    """A Sketchpad value: 280x280 RGBA, white paper (or transparent), a black bar of ink."""
    composite = np.zeros((280, 280, 4), np.uint8)
    if not transparent:
        composite[...] = 255
    if ink:
        composite[60:220, 130:150] = (0, 0, 0, 255)
    return {"background": None, "layers": [composite], "composite": composite}


# -- answers and errors ------------------------------------------------------------------------


def test_prediction_model_top_and_confidence():
    prediction = Prediction.model_validate(PREDICTION)
    assert prediction.confidence == pytest.approx(0.9)
    assert prediction.top(3) == [(7, 0.9), (3, 0.05), (1, 0.02)]
    with pytest.raises(ValidationError):
        Prediction.model_validate({**PREDICTION, "probabilities": PROBS[:9]})
    with pytest.raises(ValidationError):
        Prediction.model_validate({**PREDICTION, "label": 10})


def test_media_type_from_signature():
    assert image_media_type(png_bytes(np.zeros((2, 2), np.uint8))) == "image/png"
    assert image_media_type(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    assert image_media_type(b"GIF89a") == "application/octet-stream"


def test_stopped_service_is_unavailable_in_plain_words(stopped_url: str):
    with DigitloopClient(stopped_url, timeout=2) as client:
        assert client.ready() is False
        with pytest.raises(ServiceUnavailable) as caught:
            client.predict(b"\x89PNG\r\n\x1a\n")
    assert caught.value.status is None
    assert caught.value.message == (
        f"The prediction service at {stopped_url} cannot be reached (connection refused). "
        "Is it running?"
    )
    assert isinstance(caught.value, ServiceError)  # one type to catch for every failure


def test_hung_service_times_out_in_plain_words(silent_server: str):
    started = time.monotonic()
    with (
        DigitloopClient(silent_server, timeout=0.4) as client,
        pytest.raises(ServiceUnavailable, match=r"did not answer within 0\.4 s\. It may be busy"),
    ):
        client.feedback("some-id", 3)
    assert time.monotonic() - started < 3


def test_error_answers_keep_the_service_message(scripted):
    url, script = scripted
    script.json("POST", "/predict", 422, {"error": "the drawing is empty: draw a digit first"})
    script.json("POST", "/feedback", 409, {"error": "feedback for x was already recorded"})
    with DigitloopClient(url) as client:
        with pytest.raises(ServiceError) as empty:
            client.predict(b"\x89PNG\r\n\x1a\n...")
        with pytest.raises(ServiceError) as duplicate:
            client.feedback("x", 1)
    assert (empty.value.status, empty.value.message) == (
        422,
        "the drawing is empty: draw a digit first",
    )
    assert duplicate.value.status == 409 and not isinstance(duplicate.value, ServiceUnavailable)


def test_errors_without_a_json_body_become_sentences(scripted):
    url, script = scripted
    script.raw("POST", "/predict", 502, "text/html", b"<html>bad gateway</html>")
    script.raw("POST", "/feedback", 200, "text/plain", b"ok")
    script.json("POST", "/predict_batch", 200, [{"label": 3}])
    with DigitloopClient(url) as client:
        with pytest.raises(ServiceError, match=r"had a problem \(HTTP 502 Bad Gateway\)"):
            client.predict(b"png")
        with pytest.raises(ServiceError, match="not JSON"):
            client.feedback("x", 1)
        with pytest.raises(ServiceError, match="does not understand"):
            client.predict_batch([b"png"])


def test_requests_carry_the_image_track_token_and_feedback_body(scripted):
    url, script = scripted
    script.json("POST", "/predict", 200, PREDICTION)
    script.json(
        "POST",
        "/feedback",
        200,
        {"prediction_id": "p", "label": 4, "correct": False, "durable": "stored"},
    )
    png = png_bytes(np.full((8, 8), 255, np.uint8))
    with DigitloopClient(url, token="s3cret") as client:
        answer = client.predict(png, track="canary")
        ack = client.feedback("p", 4)
        with pytest.raises(ValueError, match="track"):
            client.predict(png, track="beta")  # type: ignore[arg-type]
    assert answer.label == 7 and answer.model_version == "3"
    assert ack.correct is False and ack.durable == "stored"
    predict, feedback = script.seen
    assert predict.headers["Authorization"] == "Bearer s3cret"
    assert predict.headers["X-Digitloop-Track"] == "canary"
    # The image is the body, as it is: no form for the service to parse.
    assert predict.headers["Content-Type"] == "image/png"
    assert predict.body == png
    assert json.loads(feedback.body) == {"prediction_id": "p", "label": 4, "source": "ui"}
    assert "X-Digitloop-Track" not in feedback.headers


def test_batches_are_split_at_64_images(scripted):
    url, script = scripted
    # The scripted server answers every batch with 64 items; the client checks the count.
    script.json("POST", "/predict_batch", 200, [PREDICTION] * 64)
    with DigitloopClient(url) as client:
        answers = client.predict_batch([b"\x89PNG\r\n\x1a\nx"] * 64)
        with pytest.raises(ServiceError, match="64 predictions for 6 images"):
            client.predict_batch([b"\x89PNG\r\n\x1a\nx"] * 70)
    assert len(answers) == 64
    first, second, third = script.seen
    assert first.body.count(b'name="images"') == 64
    assert second.body.count(b'name="images"') == 64 and third.body.count(b'name="images"') == 6


def test_model_info_falls_back_to_post_on_a_get_less_service(scripted):
    url, script = scripted
    info = {
        "tracks": {"stable": {"model_version": "3", "aliases": ["champion"]}},
        "canary_weight": 0,
        "only_track": None,
    }
    script.json("GET", "/model", 405, {"error": "method not allowed"})
    script.json("POST", "/model", 200, info)
    with DigitloopClient(url) as client:
        answer = client.model_info()
    assert answer.tracks["stable"].model_version == "3"
    assert [(s.method, s.body) for s in script.seen] == [("GET", b""), ("POST", b"{}")]


# -- settings and the command -----------------------------------------------------------------


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch):
    for name in ("SERVICE_URL", "API_TOKEN", "UI_HOST", "UI_PORT", "REQUEST_TIMEOUT_S"):
        monkeypatch.delenv(f"DIGITLOOP_{name}", raising=False)
    defaults = UISettings(_env_file=None)
    assert defaults.service_url == "http://127.0.0.1:3000"
    assert (defaults.ui_host, defaults.ui_port, defaults.token()) == ("127.0.0.1", 7860, None)

    monkeypatch.setenv("DIGITLOOP_SERVICE_URL", "http://serving:3000/")
    monkeypatch.setenv("DIGITLOOP_API_TOKEN", "hunter2")
    monkeypatch.setenv("DIGITLOOP_REQUEST_TIMEOUT_S", "2.5")
    settings = UISettings(_env_file=None)
    assert settings.service_url == "http://serving:3000"
    assert settings.token() == "hunter2" and "hunter2" not in repr(settings)
    client = DigitloopClient.from_settings(settings)
    assert client.timeout == 2.5 and client.base_url == "http://serving:3000"
    client.close()

    monkeypatch.setenv("DIGITLOOP_SERVICE_URL", "serving:3000")
    with pytest.raises(ValidationError, match="http:// or https://"):
        UISettings(_env_file=None)


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """Record what `digitloop ui` would serve instead of serving it."""
    import ui.app

    calls: list[dict[str, object]] = []

    def fake_launch(app, host, port, *, share=False, **_):
        calls.append({"host": host, "port": port, "share": share, "blocks": type(app).__name__})

    monkeypatch.setattr(ui.app, "launch", fake_launch)
    for name in ("SERVICE_URL", "UI_HOST", "UI_PORT"):
        monkeypatch.delenv(f"DIGITLOOP_{name}", raising=False)
    return calls


def test_command_binds_loopback_unless_told(launched, stopped_url: str):
    import typer

    from ui.cli import ui

    app = typer.Typer()
    app.command()(ui)
    runner = CliRunner()
    first = runner.invoke(app, ["--service-url", stopped_url])
    second = runner.invoke(
        app, ["--host", "0.0.0.0", "--port", "8123", "--service-url", stopped_url]
    )
    bad = runner.invoke(app, ["--service-url", "nope"])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert launched == [
        {"host": "127.0.0.1", "port": 7860, "share": False, "blocks": "Blocks"},
        {"host": "0.0.0.0", "port": 8123, "share": False, "blocks": "Blocks"},
    ]
    assert bad.exit_code == 2 and "http:// or https://" in bad.output


# -- handlers that need no service -----------------------------------------------------------


def test_editor_image_sees_ink_on_paper_and_on_transparency():
    assert editor_image(None) is None
    assert editor_image({"background": None, "layers": [], "composite": None}) is None
    assert editor_image(sketch(ink=False)) is None
    assert editor_image(sketch(ink=False, transparent=True)) is None
    for value in (sketch(), sketch(transparent=True)):
        grey = editor_image(value)
        assert grey is not None and grey.shape == (280, 280) and grey.dtype == np.uint8
        assert grey[100, 140] == 0 and grey[10, 10] == 255


def test_the_drawing_is_turned_grey_once_and_reaches_the_network_as_drawn():
    for value in (sketch(), sketch(transparent=True)):
        grey = editor_image(value)
        assert grey is not None
        sent = decode_image(png_bytes(grey))
        # The service takes the UI's grey PNG as it is: no second conversion.
        np.testing.assert_array_equal(sent, grey)
        # And the network sees what it would of the drawing sent as drawn.
        as_drawn = decode_image(png_bytes(value["composite"]))  # type: ignore[arg-type]
        np.testing.assert_array_equal(to_mnist(sent), to_mnist(as_drawn))


def test_empty_pad_gets_a_hint_without_asking_the_service(stopped_url: str):
    with DigitloopClient(stopped_url) as client:
        pressed = predict_drawing(client, sketch(ink=False), Session())
        stroke_end = predict_drawing(client, None, Session(), auto=True)
        feedback = send_feedback(client, Session(), None)
        batch = predict_files(client, [])
    assert pressed.notice is not None and pressed.notice.kind == "hint"
    assert "The pad is empty: draw a digit" in pressed.notice.text
    assert pressed.session == Session()
    assert stroke_end.skipped  # a stroke-end event on an empty pad changes nothing
    assert feedback.notice.kind == "hint" and "Predict first" in feedback.notice.text
    assert batch.notice is not None and batch.notice.kind == "hint" and not batch.rows


def test_down_service_is_a_message_and_the_drawing_stays(stopped_url: str, tmp_path: Path):
    image = tmp_path / "seven.png"
    image.write_bytes(png_bytes(255 - np.eye(28, dtype=np.uint8) * 255))
    with DigitloopClient(stopped_url) as client:
        result = predict_drawing(client, sketch(), Session())
        batch = predict_files(client, [image], out_dir=tmp_path)
    assert result.notice is not None and result.notice.kind == "error"
    assert "cannot be reached (connection refused)" in result.notice.text
    assert "your drawing stays here" in result.notice.text
    assert result.session == Session() and result.prediction is None
    assert batch.notice is not None and batch.notice.kind == "error" and batch.csv_path is None


def test_slow_service_is_a_message(silent_server: str):
    with DigitloopClient(silent_server, timeout=0.3) as client:
        result = predict_drawing(client, sketch(), Session())
        feedback = send_feedback(client, Session(current=Prediction(**PREDICTION)), 3)
    assert result.notice is not None and result.notice.kind == "error"
    assert "did not answer within 0.3 s" in result.notice.text
    assert feedback.notice.kind == "error" and not feedback.reset_canvas
    assert feedback.notice.text.endswith("Your answer was not recorded; press it again.")
    assert feedback.session.current is not None  # the answer stays for a retry


def test_session_accuracy():
    assert Session().accuracy is None
    assert Session(drawn=4, confirmed=3, corrected=1).accuracy == pytest.approx(0.75)


# -- drafts and asking -----------------------------------------------------------------------


def test_drafts_go_as_a_query_parameter_or_a_json_field(scripted):
    url, script = scripted
    script.json("POST", "/predict?draft=true", 200, DRAFT)
    script.json("POST", "/predict", 200, LOGGED)
    png = png_bytes(np.full((8, 8), 255, np.uint8))
    with DigitloopClient(url) as client:
        assert client.predict(png, draft=True).draft is True
        assert client.predict(png).draft is False
        client.predict_pixels(np.eye(4), draft=True)
        client.predict_pixels(np.eye(4))
    image_draft, image, pixels_draft, pixels = script.seen
    assert (image_draft.path, image.path) == ("/predict?draft=true", "/predict")
    assert image_draft.headers["Content-Type"] == "image/png" and image_draft.body == png
    assert (pixels_draft.path, pixels.path) == ("/predict", "/predict")
    assert json.loads(pixels_draft.body)["draft"] is True
    assert "draft" not in json.loads(pixels.body)


def test_the_app_asks_when_the_model_is_unsure():
    sure = Prediction(**PREDICTION)  # 0.9 on the 7
    unsure = Prediction(**{**PREDICTION, "probabilities": [0.1] * 10})
    certain = Prediction(**{**PREDICTION, "probabilities": [0.0] * 7 + [1.0, 0.0, 0.0]})
    assert (should_ask(sure, 0.8), should_ask(unsure, 0.8)) == (False, True)
    assert should_ask(sure, 0.9) is False and should_ask(sure, 0.9001) is True  # below, not at
    assert should_ask(unsure, 0.0) is False  # 0 never asks
    assert should_ask(certain, 1.01) is True  # above 1 always asks
    assert ask_text(sure) == (
        "I'm not sure about this one. Is it a 7? Press ✓ if it is, or pick the right digit."
    )
    assert ask_html(Session(current=sure, asked=False)) == ""
    shown = ask_html(Session(current=sure, asked=True))
    assert 'role="status"' in shown and "Is it a 7?" in shown


def test_the_app_asks_when_the_drawing_is_unusual_however_sure_the_model_is():
    sure = Prediction(**PREDICTION)  # 0.9 on the 7
    unusual = Prediction(**{**PREDICTION, "novelty": 80.0, "unusual": True})
    assert should_ask(sure, 0.5) is False and should_ask(unusual, 0.5) is True
    assert should_ask(unusual, 0.0) is False  # 0 never asks, unusual or not
    assert ask_text(unusual) == (
        "This one looks unlike the digits I learnt from. Is it a 7? Press ✓ if it is, or "
        "pick the right digit."
    )


@pytest.fixture
def drafting(scripted) -> Iterator[tuple[DigitloopClient, Script]]:
    """A client of a scripted service that answers drafts, predictions and feedback."""
    url, script = scripted
    script.json("POST", "/predict?draft=true", 200, DRAFT)
    script.json("POST", "/predict", 200, LOGGED)
    ack = {"prediction_id": LOGGED["prediction_id"], "label": 7, "correct": True}
    script.json("POST", "/feedback", 200, {**ack, "durable": "stored"})
    with DigitloopClient(url) as client:
        yield client, script


def stroke(value: dict[str, object], row: int) -> dict[str, object]:
    """The pad after one more stroke: a short bar of ink at ``row``."""
    composite = np.array(value["composite"])
    composite[row : row + 10, 40:80] = (0, 0, 0, 255)
    return {**value, "composite": composite}


def requests(script: Script) -> list[str]:
    return [f"{seen.method} {seen.path}" for seen in script.seen]


def test_pen_lifts_are_drafts_and_the_confirmed_drawing_is_logged_once(drafting):
    client, script = drafting
    first = sketch()
    second = stroke(first, 240)
    session = predict_drawing(client, first, Session(), auto=True).session
    session = predict_drawing(client, second, session, auto=True).session
    assert session.current is not None and session.current.draft and session.drawn == 1
    assert session.logged is None
    result = send_feedback(client, session, None)
    assert result.notice.text == "Thanks! Recorded that 7 was right. Draw the next digit."
    assert requests(script) == [
        "POST /predict?draft=true",
        "POST /predict?draft=true",
        "POST /predict",
        "POST /feedback",
    ]
    final, feedback = script.seen[2], script.seen[3]
    # The final drawing is the last one drawn, pinned to the track that answered its draft.
    drawn = editor_image(second)
    assert drawn is not None
    # Sent cropped to the ink, in a frame of paper: fewer pixels, the same digit.
    assert final.body == png_bytes(ink_crop(drawn))
    sent = decode_image(final.body)
    assert sent.size < drawn.size / 2
    np.testing.assert_array_equal(to_mnist(sent), to_mnist(drawn))
    assert final.headers["X-Digitloop-Track"] == "canary"
    assert json.loads(feedback.body) == {
        "prediction_id": LOGGED["prediction_id"],
        "label": 7,
        "source": "ui",
    }
    assert result.session.confirmed == 1 and result.session.current is None


def test_predict_pressed_on_a_draft_logs_it_and_again_asks_nothing(drafting):
    client, script = drafting
    value = sketch()
    drafted = predict_drawing(client, value, Session(), auto=True).session
    pressed = predict_drawing(client, value, drafted)
    assert pressed.prediction is not None and not pressed.prediction.draft
    assert pressed.prediction.prediction_id == LOGGED["prediction_id"]
    again = predict_drawing(client, value, pressed.session)
    assert predict_drawing(client, value, pressed.session, auto=True).skipped
    send_feedback(client, again.session, 3)
    assert requests(script) == ["POST /predict?draft=true", "POST /predict", "POST /feedback"]
    assert json.loads(script.seen[-1].body)["prediction_id"] == LOGGED["prediction_id"]


def test_a_stroke_undone_back_to_a_logged_drawing_asks_nothing(drafting):
    client, script = drafting
    value = sketch()
    logged = predict_drawing(client, value, Session()).session
    drafted = predict_drawing(client, stroke(value, 240), logged, auto=True).session
    undone = predict_drawing(client, value, drafted, auto=True)
    assert undone.prediction == logged.current and not undone.skipped
    send_feedback(client, undone.session, None)
    assert requests(script) == ["POST /predict", "POST /predict?draft=true", "POST /feedback"]


def test_clearing_a_draft_logs_the_final_drawing_once(drafting):
    client, script = drafting
    value = sketch()
    drafted = predict_drawing(client, value, Session(), auto=True).session
    cleared = clear_drawing(client, drafted)
    assert cleared.session.current is None and cleared.session.logged is None
    assert cleared.session.drawn == 1 and not cleared.session.counted
    clear_drawing(client, cleared.session)  # nothing on screen: nothing to log
    # Emptied with the pad's own tools: moved on, as with Clear.
    emptied = predict_drawing(client, None, drafted, auto=True)
    assert emptied.session.current is None and not emptied.skipped
    # A logged answer on screen is in the log already.
    clear_drawing(client, predict_drawing(client, value, Session()).session)
    assert requests(script) == [
        "POST /predict?draft=true",
        "POST /predict",
        "POST /predict",
        "POST /predict",
    ]


def test_feedback_while_asked_carries_the_asked_source(drafting):
    client, script = drafting
    unsure = predict_drawing(client, sketch(), Session(), auto=True, ask_below=0.95)
    assert unsure.session.asked and "Is it a 7?" in ask_html(unsure.session)
    send_feedback(client, unsure.session, 1)
    sure = predict_drawing(client, sketch(), Session(), auto=True, ask_below=0.9)
    assert not sure.session.asked and ask_html(sure.session) == ""
    send_feedback(client, sure.session, 1)
    never = predict_drawing(client, sketch(), Session(), ask_below=None)
    assert not never.session.asked
    sources = [json.loads(s.body)["source"] for s in script.seen if s.path == "/feedback"]
    assert sources == [ASKED_SOURCE, "ui"]


def test_a_failed_feedback_keeps_the_logged_drawing_for_the_retry(drafting):
    client, script = drafting
    drafted = predict_drawing(client, sketch(), Session(), auto=True).session
    script.json("POST", "/feedback", 503, {"error": "the store is down and the spool is full"})
    failed = send_feedback(client, drafted, None)
    assert failed.notice.kind == "error" and not failed.reset_canvas
    assert failed.session.current is not None and not failed.session.current.draft
    ack = {"prediction_id": LOGGED["prediction_id"], "label": 7, "correct": True}
    script.json("POST", "/feedback", 200, {**ack, "durable": "stored"})
    assert send_feedback(client, failed.session, None).session.confirmed == 1
    assert requests(script) == [
        "POST /predict?draft=true",
        "POST /predict",
        "POST /feedback",
        "POST /feedback",
    ]


def test_a_gone_canary_logs_the_final_drawing_where_the_split_says(drafting):
    client, script = drafting
    drafted = predict_drawing(client, sketch(), Session(), auto=True).session
    script.refuse_pins = True  # as a service whose canary was removed meanwhile
    result = predict_drawing(client, sketch(), drafted)
    assert result.prediction is not None and not result.prediction.draft
    pinned, unpinned = script.seen[1:]
    assert pinned.headers["X-Digitloop-Track"] == "canary" and pinned.path == "/predict"
    assert "X-Digitloop-Track" not in unpinned.headers and unpinned.path == "/predict"
