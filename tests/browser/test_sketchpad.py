"""The sketchpad in real Chromium: draw digits with the mouse, predict, correct, see errors."""

from __future__ import annotations

import csv
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.store.backends import LocalStore
from services.store.readers import read_predictions
from tests.serving import Service
from ui.asking import ASKED_SOURCE

pytestmark = pytest.mark.browser

CANVAS = 280
# Mouse strokes in canvas pixels (0-280): each stroke is a polyline drawn with the button down.
ONE = [[(148, 45), (138, 235)]]
SEVEN = [[(78, 62), (200, 58), (122, 236)]]
# A dense zigzag filling a square: ink, but like no digit the model learnt.
SCRIBBLE = [[(60 + 160 * (i % 2), 60 + 10 * i) for i in range(17)]]


def pad_geometry(page) -> tuple[float, float, float]:
    """Screen position of the canvas centre, and screen pixels per canvas pixel."""
    box = page.locator("#sketchpad canvas").first.bounding_box()
    assert box is not None, "the sketchpad has no canvas"
    scale = 1.0
    zoom = page.locator("#sketchpad .zoom-number")
    if zoom.count():
        match = re.search(r"(\d+)%", zoom.first.inner_text())
        scale = int(match.group(1)) / 100 if match else 1.0
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, scale


def draw(page, strokes: list[list[tuple[int, int]]]) -> None:
    """Draw each stroke with the mouse: press, move along the polyline, release."""
    cx, cy, scale = pad_geometry(page)

    def screen(point: tuple[int, int]) -> tuple[float, float]:
        return cx + (point[0] - CANVAS / 2) * scale, cy + (point[1] - CANVAS / 2) * scale

    for stroke in strokes:
        page.mouse.move(*screen(stroke[0]))
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*screen(point), steps=4)
        page.mouse.up()


def prediction_id(page) -> str:
    ids = page.locator("#dl-prediction-id")
    return ids.first.inner_text().strip() if ids.count() else ""


def settled_answer(
    page, not_ids: tuple[str, ...] = (), quiet: float = 1.0, timeout: float = 30
) -> tuple[str, str]:
    """(digit shown, prediction id) once an answer is on screen and stays for ``quiet`` s.

    ``not_ids``: answers already seen, to wait past when a new one is expected.
    """
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        current = prediction_id(page)
        if current != last:
            last, since = current, time.monotonic()
        elif current and current not in not_ids and time.monotonic() - since >= quiet:
            return page.locator("#digit .dl-digit").inner_text().strip(), current
        time.sleep(0.1)
    raise AssertionError(f"no settled answer on the page; message: {message(page)!r}")


def message(page) -> str:
    return page.locator("#message").inner_text().strip()


def wait_for_message(page, pattern: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = message(page)
        if re.search(pattern, text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"message {message(page)!r} never matched {pattern!r}")


def wait_idle(page, timeout: float = 20) -> None:
    """Until no Gradio event is running (every status tracker hidden)."""
    time.sleep(0.2)  # let a click's event start
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="status-tracker"]')]
                  .every((tracker) => tracker.classList.contains("hide"))""",
        timeout=timeout * 1000,
    )


def logged(served: Service, since: datetime | None = None) -> set[str]:
    """The ids in the service's predictions log (flushed every second in the tests)."""
    return set(read_predictions(LocalStore(served.store_dir), since=since)["prediction_id"])


def wait_logged(served: Service, prediction_id: str, timeout: float = 20) -> set[str]:
    """Every logged id, once ``prediction_id`` is among them (the log is flushed in order)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = logged(served)
        if prediction_id in ids:
            return ids
        time.sleep(0.2)
    raise AssertionError(f"{prediction_id} never reached the predictions log")


def new_feedback(served: Service, before: set[str], timeout: float = 10) -> dict[str, dict]:
    """The feedback records that are not among ``before``, once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = {pid: r for pid, r in served.feedback_records().items() if pid not in before}
        if new:
            return new
        time.sleep(0.1)
    raise AssertionError("no new feedback record in the store")


def asking(page) -> bool:
    """Whether the app asks the person to check the answer on screen."""
    return page.locator("#ask .dl-ask").count() > 0


def open_app(page, url: str) -> None:
    page.goto(url)
    page.locator("#sketchpad canvas").first.wait_for(state="visible")
    page.locator("#service-status .dl-notice").wait_for()


def test_draw_predict_and_correct(page, ui_url: str, served: Service, artifacts: Path):
    open_app(page, ui_url)
    assert "Connected to the prediction service" in page.locator("#service-status").inner_text()

    # A 1, drawn on a page never touched before: the first drag must leave ink, and the
    # stroke's end predicts it without any button.
    draw(page, ONE)
    _, auto_id = settled_answer(page)
    page.click("#predict")
    # The stroke's end answered a draft; Predict logs the drawing and shows that answer.
    digit, one_id = settled_answer(page, not_ids=(auto_id,))
    assert digit == "1"
    assert auto_id.startswith("draft.") and not one_id.startswith("draft.")
    page.click("#predict")  # the same drawing again: the same answer, no second record
    wait_idle(page)
    assert prediction_id(page) == one_id
    assert "model version 1 on the stable track" in page.locator("#answered-by").inner_text()
    page.locator("#probabilities").get_by_text("1", exact=True).first.wait_for()

    source = ASKED_SOURCE if asking(page) else "ui"  # the model may be unsure of a mouse's 1
    page.click("#correct")
    wait_for_message(page, r"^Thanks! Recorded that 1 was right\. Draw the next digit\.$")
    record = served.wait_for_feedback(one_id)
    assert (record["prediction_id"], record["label"], record["source"]) == (one_id, 1, source)
    assert auto_id not in wait_logged(served, one_id)  # the draft never reached the log
    assert page.locator("#digit .dl-digit").inner_text() == "?"
    assert page.locator("#correct").is_disabled()

    # The pad is empty again: Predict gives the hint, not an exception.
    page.click("#predict")
    wait_for_message(page, r"^The pad is empty: draw a digit")

    # A 7 with predict-on-stroke-end turned off: nothing happens until Predict.
    page.locator("#auto-predict input").uncheck()
    draw(page, SEVEN)
    time.sleep(1.0)
    assert prediction_id(page) == ""
    page.click("#predict")
    digit, seven_id = settled_answer(page)
    assert digit == "7"
    wait_idle(page)
    page.screenshot(path=str(artifacts / "sketchpad-seven.png"), full_page=True)

    # The correction row: the true digit in one click.
    page.click("#label-7")
    wait_for_message(page, r"^Thanks! Recorded that 7 was right\.")
    record = served.wait_for_feedback(seven_id)
    assert (record["prediction_id"], record["label"]) == (seven_id, 7)

    session = page.locator("#session")
    assert session.locator("#dl-drawn").inner_text() == "2"
    assert session.locator("#dl-corrected").inner_text() == "0"
    assert session.locator("#dl-accuracy").inner_text() == "100%"
    wait_idle(page)
    page.screenshot(path=str(artifacts / "sketchpad-after-feedback.png"), full_page=True)
    assert page.errors == []  # type: ignore[attr-defined]


def test_undo_and_clear(page, ui_url: str, served: Service):
    open_app(page, ui_url)
    started = datetime.now(UTC)
    draw(page, SEVEN)
    _, plain = settled_answer(page)
    draw(page, [[(100, 150), (180, 150)]])  # a crossbar: a new answer for the new drawing
    _, crossed = settled_answer(page, not_ids=(plain,))

    page.click("#undo")  # back to the plain 7, predicted again when the stroke is undone
    digit, undone = settled_answer(page, not_ids=(plain, crossed))
    assert digit == "7"
    assert all(pid.startswith("draft.") for pid in (plain, crossed, undone))

    page.click("#clear")
    page.locator("#digit .dl-digit", has_text="?").wait_for()
    wait_idle(page)
    page.click("#predict")
    wait_for_message(page, r"^The pad is empty")
    assert page.errors == []  # type: ignore[attr-defined]

    # Three drafts, one drawing ended with: Clear logged it once, and no draft.
    deadline = time.monotonic() + 20
    while not logged(served, since=started) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.5)  # two more flushes: a second record would be there by now
    (final,) = logged(served, since=started)
    assert not final.startswith("draft.")


def test_an_unsure_answer_is_asked_about_and_its_label_counted_as_asked(
    page, ui_always_asks: str, served: Service, artifacts: Path
):
    open_app(page, ui_always_asks)
    labelled = set(served.feedback_records())
    draw(page, SEVEN)
    digit, draft_id = settled_answer(page)
    prompt = page.locator("#ask .dl-ask")
    prompt.wait_for()
    assert prompt.inner_text().strip() == (
        f"I'm not sure about this one. Is it a {digit}? Press ✓ if it is, or pick the right digit."
    )
    assert prompt.get_attribute("role") == "status" and prompt.is_visible()
    wait_idle(page)
    page.screenshot(path=str(artifacts / "sketchpad-asking.png"), full_page=True)

    page.click("#label-7")  # the answer: it is a 7
    wait_for_message(page, r"^Thanks! Recorded")
    prompt.wait_for(state="detached")  # the question goes with the answer it asked about
    ((final_id, record),) = new_feedback(served, labelled).items()
    assert (record["label"], record["source"]) == (7, ASKED_SOURCE)
    # The feedback is on the logged drawing, not on the draft on screen.
    assert draft_id.startswith("draft.") and not final_id.startswith("draft.")
    assert draft_id not in wait_logged(served, final_id)
    assert page.errors == []  # type: ignore[attr-defined]


def test_an_unusual_drawing_is_asked_about_however_sure_the_model_is(
    page, ui_asks_unusual: str, served: Service, artifacts: Path
):
    """The app asks only below a top probability of 1e-6, which no answer has: the question
    comes from the answer's `unusual` flag (the served version's novelty scorer)."""
    open_app(page, ui_asks_unusual)
    labelled = set(served.feedback_records())
    draw(page, SCRIBBLE)
    digit, draft_id = settled_answer(page)  # the stroke's end answers a draft
    prompt = page.locator("#ask .dl-ask")
    prompt.wait_for()
    assert prompt.inner_text().strip() == (
        f"This one looks unlike the digits I learnt from. Is it a {digit}? Press ✓ if it "
        "is, or pick the right digit."
    )
    wait_idle(page)
    page.screenshot(path=str(artifacts / "sketchpad-unusual.png"), full_page=True)

    page.click("#label-3")  # the person's answer: it was meant as a 3
    wait_for_message(page, r"^Thanks! Recorded")
    prompt.wait_for(state="detached")
    ((final_id, record),) = new_feedback(served, labelled).items()
    assert (record["label"], record["source"]) == (3, ASKED_SOURCE)
    assert draft_id.startswith("draft.") and not final_id.startswith("draft.")
    # The logged drawing carries the score that flagged it, from the version that answered.
    wait_logged(served, final_id)
    row = read_predictions(LocalStore(served.store_dir), ids=[final_id]).iloc[0]
    assert row["model_version"] == "1" and row["novelty"] > 0
    assert page.errors == []  # type: ignore[attr-defined]


def test_service_down_says_so_and_stays_usable(page, ui_without_service: str, artifacts: Path):
    open_app(page, ui_without_service)
    status = page.locator("#service-status").inner_text()
    assert "cannot be reached (connection refused). Is it running?" in status

    draw(page, ONE)
    text = wait_for_message(page, r"cannot be reached")
    assert text.startswith("The prediction service at http://127.0.0.1:")
    assert text.endswith("Nothing was predicted; your drawing stays here.")
    page.click("#predict")  # still usable: the same plain message, no error dialog
    wait_idle(page)
    assert message(page) == text
    assert page.locator(".toast-body").count() == 0
    page.screenshot(path=str(artifacts / "sketchpad-service-down.png"), full_page=True)
    assert page.errors == []  # type: ignore[attr-defined]


def test_batch_upload_table_and_csv(page, ui_url: str, mnist, tmp_path: Path):
    from PIL import Image

    paths = []
    for index, suffix in ((0, "png"), (1, "png"), (2, "jpg")):
        path = tmp_path / f"digit-{index}.{suffix}"
        Image.fromarray(255 - mnist.x_test[index]).resize((84, 84)).save(path)
        paths.append(path)
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    paths.append(notes)
    expected = [str(int(mnist.y_test[i])) for i in range(3)]

    open_app(page, ui_url)
    page.get_by_role("tab", name="Batch").click()
    page.locator("#batch-files input[type=file]").set_input_files([str(p) for p in paths])
    page.locator("#batch-files").get_by_text("notes", exact=True).wait_for()  # uploaded
    page.click("#batch-predict")
    page.locator("#batch-message .dl-notice").wait_for()
    assert page.locator("#batch-message").inner_text().strip() == (
        "Predicted 3 of 4 images. 1 could not be predicted: see the error column."
    )

    with page.expect_download() as download:
        page.click("#batch-csv")
    saved = tmp_path / "downloaded.csv"
    download.value.save_as(saved)
    rows = list(csv.DictReader(saved.open()))
    assert [row["file"] for row in rows] == [p.name for p in paths]
    assert [row["digit"] for row in rows[:3]] == expected
    assert rows[3]["error"] == "not a PNG or JPEG image"
    assert all(0 < float(row["confidence"]) <= 1 for row in rows[:3])
    table = page.locator("#batch-table").inner_text()
    assert "digit-2.jpg" in table and "not a PNG or JPEG image" in table
    assert page.errors == []  # type: ignore[attr-defined]
