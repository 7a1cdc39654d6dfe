"""The sketchpad: a Gradio 6 Blocks app in front of the prediction service.

The handlers (:func:`predict_drawing`, :func:`send_feedback`, :func:`clear_drawing`,
:func:`predict_files`, :func:`service_status`) are plain functions of a
:class:`~services.client.DigitloopClient` and the session; they return small dataclasses and never
raise for anything the service or the person does, so tests call them without a browser.
:func:`build_app` only lays out the components and maps those results onto them.

Predictions made as the pen lifts are drafts: answered but not logged (a digit drawn in
three strokes would otherwise be logged three times, partial strokes included, and read as
drift). The drawing a person ends with is logged once, when they press Predict, give their
answer, or clear the pad (:func:`logged_session`). When the model is unsure of the answer
on screen, the app asks the person to check it (:mod:`ui.asking`).

Gradio 6 notes: theme and css go to ``launch()`` (see :func:`launch`); a new 6.31 Sketchpad
ignores strokes until its Brush tool is clicked, so a small script selects it on load and
after each reset (``ui/assets/select_brush.js``); setting the pad's value from Python
leaves the editor unable to draw, so the canvas is emptied by its own clear button.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import html
import io
import os
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from contracts.api import Prediction
from model.preprocess import ink_crop, to_grey
from services.client import DigitloopClient, ServiceError, ServiceUnavailable
from ui.asking import ASKED_SOURCE, ask_text, should_ask

if TYPE_CHECKING:
    import gradio as gr

ASSETS = Path(__file__).resolve().parent / "assets"
CANVAS_SIZE = 280
# Brush radius in canvas pixels: a 24 px marker line on the 280 px pad. A digit drawn 200 px
# tall then has about MNIST's stroke-to-height ratio (2-3 px strokes in a 20 px box).
BRUSH_RADIUS = 12
TOP_K = 3
BATCH_COLUMNS = ["file", "digit", "confidence", "model_version", "track", "prediction_id", "error"]
IMAGE_SUFFIXES = [".png", ".jpg", ".jpeg"]

NoticeKind = Literal["ok", "hint", "error", "info"]


# -- state and results --------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """One person's visit: counts, and the prediction on screen (if any).

    Attributes:
        drawn: drawings predicted at least once (a digit re-predicted counts once).
        confirmed: answers the person said were right.
        corrected: answers the person corrected with the true digit.
        current: the prediction on screen that feedback would refer to; a draft until the
            drawing is logged.
        digest: fingerprint of the drawing ``current`` was made from.
        drawing: that drawing as PNG, sent again to log it when ``current`` is a draft.
        logged: the logged prediction of this digit's drawing ``logged_digest``, if any.
        logged_digest: fingerprint of the drawing ``logged`` was made from.
        asked: whether the app asks the person to check ``current`` (the model is unsure).
        counted: whether the drawing on the pad is already counted in ``drawn``.
    """

    drawn: int = 0
    confirmed: int = 0
    corrected: int = 0
    current: Prediction | None = None
    digest: str | None = None
    drawing: bytes | None = None
    logged: Prediction | None = None
    logged_digest: str | None = None
    asked: bool = False
    counted: bool = False

    @property
    def checked(self) -> int:
        return self.confirmed + self.corrected

    @property
    def accuracy(self) -> float | None:
        """Share of checked answers that were right; None before any feedback."""
        return self.confirmed / self.checked if self.checked else None


@dataclass(frozen=True)
class Notice:
    """A message for the person: what happened, in plain words."""

    kind: NoticeKind
    text: str

    def html(self) -> str:
        role = "alert" if self.kind == "error" else "status"
        text = html.escape(self.text)
        return f'<div class="dl-notice dl-{self.kind}" role="{role}">{text}</div>'


@dataclass(frozen=True)
class DrawResult:
    """What a predict or clear did: the new session and what to show.

    ``skipped`` means nothing changes on screen (a stroke-end event on an empty pad).
    """

    session: Session
    notice: Notice | None = None
    skipped: bool = False

    @property
    def prediction(self) -> Prediction | None:
        return self.session.current


@dataclass(frozen=True)
class FeedbackResult:
    """What sending feedback did; ``reset_canvas`` when the pad should be emptied."""

    session: Session
    notice: Notice
    reset_canvas: bool = False


@dataclass(frozen=True)
class BatchRow:
    file: str
    digit: int | None = None
    confidence: float | None = None
    model_version: str = ""
    track: str = ""
    prediction_id: str = ""
    error: str = ""

    def values(self) -> list[Any]:
        confidence = None if self.confidence is None else round(self.confidence, 4)
        return [
            self.file,
            self.digit,
            confidence,
            self.model_version,
            self.track,
            self.prediction_id,
            self.error,
        ]


@dataclass(frozen=True)
class BatchResult:
    rows: list[BatchRow] = field(default_factory=list)
    csv_path: Path | None = None
    notice: Notice | None = None

    def table(self) -> list[list[Any]]:
        return [row.values() for row in self.rows]


# -- drawing -> image ---------------------------------------------------------------------


def editor_image(value: dict[str, Any] | np.ndarray | None) -> np.ndarray | None:
    """The drawing as a grey HxW uint8 image (dark ink on white), or None if there is none.

    Accepts the Sketchpad's value (a dict whose ``composite`` is HxWx4 uint8, or None for an
    untouched pad) or an 8-bit image array. Transparent pixels count as white paper. The
    image is turned grey here, once (:func:`model.preprocess.to_grey`): the service takes
    the grey PNG as it is, cropped to the ink (:func:`model.preprocess.ink_crop`).
    """
    image = value.get("composite") if isinstance(value, dict) else value
    if image is None:
        return None
    array = np.asarray(image, dtype=np.uint8)
    if array.size == 0 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        return None
    grey = to_grey(array)
    if not (grey < 128).any():
        return None
    return grey


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a grey or RGB(A) uint8 array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def drawing_png(grey: np.ndarray) -> bytes:
    """What the sketchpad sends of a grey drawing: the PNG of the part the service reads, in
    a frame of paper (:func:`model.preprocess.ink_crop`); the same 28x28 digit as the whole
    pad, from a third of its pixels on a typical drawing."""
    return png_bytes(ink_crop(grey))


def _digest(image: np.ndarray) -> str:
    return hashlib.blake2b(image.tobytes() + str(image.shape).encode(), digest_size=16).hexdigest()


# -- handlers -----------------------------------------------------------------------------

EMPTY_HINT = "The pad is empty: draw a digit (0-9) with the mouse or a finger, then press Predict."


def predict_drawing(
    client: DigitloopClient,
    value: dict[str, Any] | np.ndarray | None,
    session: Session,
    *,
    auto: bool = False,
    ask_below: float | None = None,
) -> DrawResult:
    """Predict the digit on the pad.

    Args:
        client: the service's client.
        value: the Sketchpad's value.
        session: the person's session.
        auto: True when a stroke just ended rather than Predict being pressed: the answer
            is a draft (not logged), and an empty pad changes nothing (or moves on from the
            answer on screen, as :func:`clear_drawing`) instead of showing a hint.
        ask_below: ask the person to check an answer less sure than this
            (:func:`ui.asking.should_ask`); None never asks.
    """
    image = editor_image(value)
    if image is None:
        if not auto:
            return DrawResult(session, Notice("hint", EMPTY_HINT))
        if session.current is not None:
            # The person emptied the pad with its own tools: they moved on from that drawing.
            return clear_drawing(client, session)
        return DrawResult(session, skipped=True)
    digest = _digest(image)
    try:
        if session.current is not None and session.digest == digest:
            if auto or not session.current.draft:
                # The same drawing again (Predict after Predict, a stroke-end event without
                # a change): the same answer, and no second record of it in the log.
                return DrawResult(session, skipped=auto)
            # Predict pressed on a draft: this drawing is final, log it once.
            return DrawResult(_asking(logged_session(client, session), ask_below))
        drawing = drawing_png(image)
        if session.logged is not None and session.logged_digest == digest:
            prediction = session.logged  # back to a drawing already logged (a stroke undone)
        else:
            prediction = client.predict(drawing, draft=auto)
    except ServiceError as exc:
        return DrawResult(session, _predict_problem(exc))
    drawn = session.drawn if session.counted else session.drawn + 1
    new = replace(
        session, drawn=drawn, current=prediction, digest=digest, drawing=drawing, counted=True
    )
    if not prediction.draft:
        new = replace(new, logged=prediction, logged_digest=digest)
    return DrawResult(_asking(new, ask_below))


def _asking(session: Session, ask_below: float | None) -> Session:
    """The session, asking about its answer on screen when the model is unsure of it."""
    current = session.current
    asked = current is not None and ask_below is not None and should_ask(current, ask_below)
    return replace(session, asked=asked)


def logged_session(client: DigitloopClient, session: Session) -> Session:
    """The session with the answer on screen logged: a draft's drawing is sent once more,
    without draft, unless that very drawing was logged already.

    The final request is pinned to the draft's track, so the model that answered on screen
    answers again (the draft's track was the split's choice, so the log still follows the
    split); if that track is gone (a canary removed meanwhile), the split chooses.

    Raises:
        ServiceError: the drawing could not be logged; the session is unchanged.
    """
    current = session.current
    if current is None or not current.draft or session.drawing is None:
        return session
    if session.logged is not None and session.logged_digest == session.digest:
        final = session.logged
    else:
        try:
            final = client.predict(session.drawing, track=current.track)
        except ServiceError as exc:
            if exc.status != 400:
                raise
            final = client.predict(session.drawing)
    return replace(session, current=final, logged=final, logged_digest=session.digest)


def _predict_problem(exc: ServiceError) -> Notice:
    if isinstance(exc, ServiceUnavailable):
        return Notice("error", f"{exc.message} Nothing was predicted; your drawing stays here.")
    if exc.status == 422:  # empty or too small a drawing: the person can fix it
        return Notice("hint", _sentence(exc.message))
    if exc.status == 503:
        return Notice(
            "error",
            f"The prediction service is not ready yet ({exc.message}). Try again in a moment.",
        )
    return Notice("error", f"The service could not predict this drawing: {exc.message}")


def send_feedback(client: DigitloopClient, session: Session, label: int | None) -> FeedbackResult:
    """Tell the service the true digit of the answer on screen.

    A draft on screen is logged first (:func:`logged_session`) and the feedback is given on
    the logged prediction; feedback given while the app asks carries source
    :data:`~ui.asking.ASKED_SOURCE`, other feedback the client's (``ui``).

    Args:
        client: the service's client.
        session: the person's session; its ``current`` prediction is the one judged.
        label: the true digit, or None for "the answer is correct".
    """
    shown = session.current
    if shown is None:
        return FeedbackResult(session, Notice("hint", "Draw a digit and press Predict first."))
    # The service checks the label (the contract's bounds): a bad one answers 400, shown below.
    true_label = shown.label if label is None else int(label)
    source = ASKED_SOURCE if session.asked else None
    try:
        # Rebound first: should the feedback fail, a retry does not log the drawing again.
        session = logged_session(client, session)
        prediction = session.current or shown
        ack = client.feedback(prediction.prediction_id, true_label, source=source)
    except ServiceUnavailable as exc:
        return FeedbackResult(
            session,
            Notice("error", f"{exc.message} Your answer was not recorded; press it again."),
        )
    except ServiceError as exc:
        if exc.status == 409:  # recorded already (a double click): done, nothing to count
            return FeedbackResult(
                _next_digit(session),
                Notice("ok", "That answer was already recorded. Draw the next digit."),
                reset_canvas=True,
            )
        if exc.status == 404:
            return FeedbackResult(
                _next_digit(session, counted=session.counted),
                Notice(
                    "error",
                    f"The service does not know this prediction ({exc.message}). "
                    "Press Predict again, then give your answer.",
                ),
            )
        return FeedbackResult(
            session, Notice("error", f"Your answer was not recorded: {exc.message}")
        )
    if ack.correct:
        counts = replace(session, confirmed=session.confirmed + 1)
        text = f"Thanks! Recorded that {true_label} was right."
    else:
        counts = replace(session, corrected=session.corrected + 1)
        text = f"Thanks! Recorded the true digit {true_label} (the model said {prediction.label})."
    if ack.durable == "spooled":
        text += " The service keeps it locally until its store is back."
    return FeedbackResult(
        _next_digit(counts), Notice("ok", f"{text} Draw the next digit."), reset_canvas=True
    )


def _next_digit(session: Session, counted: bool = False) -> Session:
    """The session with no answer on screen nor drawing; ``counted`` keeps the pad's count."""
    return replace(
        session,
        current=None,
        digest=None,
        drawing=None,
        logged=None,
        logged_digest=None,
        asked=False,
        counted=counted,
    )


def clear_drawing(client: DigitloopClient, session: Session) -> DrawResult:
    """Forget the answer on screen: the pad is about to be emptied for a new digit.

    A draft on screen is logged first: it answered the drawing the person ended with.
    """
    # Should that fail, the pad empties all the same: one drawing missing from the log.
    with contextlib.suppress(ServiceError):
        logged_session(client, session)
    return DrawResult(_next_digit(session))


def predict_files(
    client: DigitloopClient,
    paths: Sequence[str | Path] | None,
    out_dir: Path | None = None,
) -> BatchResult:
    """Predict uploaded PNG/JPEG files; a table row per file and a CSV of the table.

    The files go in one batch request (64 per request); if the service refuses the batch
    (one unreadable or empty image fails it whole), each file is sent alone so that every
    row gets its own answer or error.
    """
    paths = [Path(p) for p in paths or []]
    if not paths:
        return BatchResult(notice=Notice("hint", "Choose one or more PNG or JPEG images first."))
    rows: dict[int, BatchRow] = {}
    images: dict[int, bytes] = {}
    for index, path in enumerate(paths):
        try:
            data = path.read_bytes()
        except OSError as exc:
            rows[index] = BatchRow(path.name, error=f"could not read the file ({exc.strerror})")
            continue
        if not data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
            rows[index] = BatchRow(path.name, error="not a PNG or JPEG image")
            continue
        images[index] = data
    if images:
        try:
            answers = _predict_each(client, images)
        except ServiceError as exc:
            return BatchResult(notice=Notice("error", f"{exc.message} Nothing was predicted."))
        for index, answer in answers.items():
            name = paths[index].name
            if isinstance(answer, Prediction):
                rows[index] = BatchRow(
                    name,
                    answer.label,
                    answer.confidence,
                    answer.model_version,
                    answer.track,
                    answer.prediction_id,
                )
            else:
                rows[index] = BatchRow(name, error=answer)
    ordered = [rows[i] for i in range(len(paths))]
    csv_path = _write_csv(ordered, out_dir)
    failed = sum(1 for row in ordered if row.error)
    done = len(ordered) - failed
    text = f"Predicted {done} of {len(ordered)} image{'s' if len(ordered) != 1 else ''}."
    if failed:
        text += f" {failed} could not be predicted: see the error column."
    return BatchResult(ordered, csv_path, Notice("ok" if not failed else "hint", text))


def _predict_each(client: DigitloopClient, images: dict[int, bytes]) -> dict[int, Prediction | str]:
    """Predictions by index, or the service's message for an image it refused.

    Raises:
        ServiceError: no answer, or a server-side error (nothing in the batch can succeed).
    """
    indices = list(images)
    try:
        predictions = client.predict_batch([images[i] for i in indices])
    except ServiceError as exc:
        if not _refused_input(exc):
            raise
    else:
        return dict(zip(indices, predictions, strict=True))
    # One bad image fails the whole batch: send each alone to tell which.
    answers: dict[int, Prediction | str] = {}
    for index in indices:
        try:
            answers[index] = client.predict(images[index])
        except ServiceError as exc:
            if not _refused_input(exc):
                raise
            answers[index] = _sentence(exc.message)
    return answers


def _refused_input(exc: ServiceError) -> bool:
    """A 4xx about the input (not an outage, not a server fault)."""
    return exc.status is not None and 400 <= exc.status < 500


def _write_csv(rows: list[BatchRow], out_dir: Path | None) -> Path:
    directory = out_dir or Path(tempfile.mkdtemp(prefix="digitloop-batch-"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "digitloop-predictions.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(BATCH_COLUMNS)
        writer.writerows(row.values() for row in rows)
    return path


def service_status(client: DigitloopClient) -> Notice:
    """One line on what the service serves, or why it cannot be used right now."""
    try:
        info = client.model_info()
    except ServiceError as exc:
        if exc.status == 503:
            return Notice(
                "error", f"The prediction service is starting and has no model yet: {exc.message}"
            )
        return Notice("error", exc.message)
    parts = []
    for track in ("stable", "canary"):
        described = info.tracks.get(track)
        if described is None:
            continue
        accuracy = described.mnist_test_accuracy
        detail = f" (MNIST test accuracy {accuracy:.1%})" if accuracy is not None else ""
        share = ""
        if track == "canary" and info.only_track is None:
            share = f", answering {info.canary_weight}% of drawings"
        parts.append(f"model version {described.model_version} on the {track} track{detail}{share}")
    if not parts:
        return Notice("hint", "The prediction service is up but reports no model.")
    return Notice("info", "Connected to the prediction service: " + "; ".join(parts) + ".")


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


# -- rendering ----------------------------------------------------------------------------


def digit_html(prediction: Prediction | None) -> str:
    if prediction is None:
        return '<div class="dl-digit dl-none" aria-label="no prediction yet">?</div>'
    return (
        f'<div class="dl-digit" data-digit="{prediction.label}">{prediction.label}</div>'
        f'<div class="dl-confidence">{prediction.confidence:.0%} sure</div>'
    )


def top_probabilities(prediction: Prediction | None) -> dict[str, float] | None:
    if prediction is None:
        return None
    return {str(digit): round(p, 4) for digit, p in prediction.top(TOP_K)}


def ask_html(session: Session) -> str:
    """The question when the app asks about the answer on screen; empty otherwise."""
    if not session.asked or session.current is None:
        return ""
    text = html.escape(ask_text(session.current))
    return f'<div class="dl-ask" role="status" aria-live="polite">{text}</div>'


def answered_by_html(prediction: Prediction | None) -> str:
    if prediction is None:
        return '<div class="dl-small">Draw a digit: the answer appears here.</div>'
    pid = html.escape(prediction.prediction_id)
    return (
        f'<div class="dl-small">Answered by model version '
        f"<b>{html.escape(prediction.model_version)}</b> on the "
        f"<b>{html.escape(prediction.track)}</b> track · "
        f'prediction <code id="dl-prediction-id">{pid}</code></div>'
    )


def session_html(session: Session) -> str:
    accuracy = "n/a" if session.accuracy is None else f"{session.accuracy:.0%}"
    stats = [
        ("drawn", "Drawn", session.drawn),
        ("corrected", "Corrected", session.corrected),
        ("accuracy", "Accuracy so far", accuracy),
    ]
    cells = "".join(
        f'<div class="dl-stat">{label}<b id="dl-{key}">{value}</b></div>'
        for key, label, value in stats
    )
    checked = (
        f'<div class="dl-small">{session.confirmed} right of {session.checked} checked</div>'
        if session.checked
        else ""
    )
    return f'<div class="dl-stats">{cells}</div>{checked}'


# -- the app ------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return (ASSETS / name).read_text()


def build_app(client: DigitloopClient, ask_below: float | None = None) -> gr.Blocks:
    """The Blocks app: a Draw tab (sketchpad, answer, correction row, session) and a Batch tab.

    ``ask_below``: ask the person to check answers less sure than this
    (:attr:`ui.settings.UISettings.ask_below_confidence`); None never asks. Launch the app
    with :func:`launch`, which adds the theme and css (Gradio 6 takes them there).
    """
    import gradio as gr  # here, not at the top: the handlers are used without Gradio

    with gr.Blocks(title="digitloop sketchpad", analytics_enabled=False) as app:
        session = gr.State(Session())
        # Carries a fresh token when the pad should be emptied (after feedback, Clear).
        reset_signal = gr.Textbox(visible="hidden", elem_id="reset-signal")

        gr.Markdown("# digitloop\nDraw a digit, see what the model thinks, tell it the truth.")
        with gr.Row():
            status = gr.HTML(elem_id="service-status", scale=5)
            recheck = gr.Button(
                "Check service", size="sm", scale=0, min_width=140, elem_id="check-service"
            )

        with gr.Tab("Draw", id="draw"), gr.Row():
            with gr.Column(scale=3, min_width=320):
                pad = gr.Sketchpad(
                    label="Draw one digit",
                    elem_id="sketchpad",
                    type="numpy",
                    image_mode="RGBA",
                    canvas_size=(CANVAS_SIZE, CANVAS_SIZE),
                    fixed_canvas=True,
                    height=CANVAS_SIZE + 140,
                    brush=gr.Brush(
                        default_size=BRUSH_RADIUS, colors=["#000000"], color_mode="fixed"
                    ),
                    eraser=gr.Eraser(default_size=BRUSH_RADIUS * 2),
                    layers=False,
                    transforms=(),
                    buttons=[],
                    format="png",
                )
                with gr.Row():
                    predict = gr.Button("Predict", variant="primary", elem_id="predict")
                    undo = gr.Button("Undo stroke", elem_id="undo")
                    clear = gr.Button("Clear", elem_id="clear")
                auto = gr.Checkbox(
                    value=True, label="Predict when I lift the pen", elem_id="auto-predict"
                )
            with gr.Column(scale=2, min_width=280):
                message = gr.HTML(elem_id="message")
                digit = gr.HTML(digit_html(None), elem_id="digit")
                ask = gr.HTML(elem_id="ask")
                probabilities = gr.Label(
                    num_top_classes=TOP_K,
                    label="Top probabilities",
                    show_heading=False,
                    elem_id="probabilities",
                )
                answered = gr.HTML(answered_by_html(None), elem_id="answered-by")
                gr.Markdown("**Was it right?** Confirm, or click the digit you meant.")
                correct = gr.Button(
                    "✓ Correct", variant="primary", interactive=False, elem_id="correct"
                )
                labels: list[gr.Button] = []
                for first in (0, 5):
                    with gr.Row(elem_classes="dl-label-row"):
                        labels += [
                            gr.Button(
                                str(d),
                                size="sm",
                                min_width=40,
                                interactive=False,
                                elem_id=f"label-{d}",
                            )
                            for d in range(first, first + 5)
                        ]
                with gr.Group():
                    gr.Markdown("**This session**")
                    panel = gr.HTML(session_html(Session()), elem_id="session")

        with gr.Tab("Batch", id="batch"):
            gr.Markdown("Upload several PNG or JPEG images of single digits.")
            files = gr.File(
                file_count="multiple",
                file_types=IMAGE_SUFFIXES,
                label="Images",
                elem_id="batch-files",
            )
            run_batch = gr.Button("Predict all", variant="primary", elem_id="batch-predict")
            batch_message = gr.HTML(elem_id="batch-message")
            table = gr.Dataframe(
                headers=BATCH_COLUMNS,
                interactive=False,
                wrap=True,
                column_widths=["16%", "7%", "10%", "10%", "8%", "34%", "15%"],
                label="Predictions",
                elem_id="batch-table",
            )
            download = gr.DownloadButton(
                "Download CSV", visible=False, elem_id="batch-csv", variant="secondary"
            )

        feedback_buttons = [correct, *labels]
        draw_outputs = [
            session,
            message,
            digit,
            ask,
            probabilities,
            answered,
            panel,
            *feedback_buttons,
        ]

        def show(result: DrawResult) -> tuple[Any, ...]:
            if result.skipped:
                return tuple(gr.skip() for _ in draw_outputs)
            current = result.session.current
            return (
                result.session,
                result.notice.html() if result.notice else "",
                digit_html(current),
                ask_html(result.session),
                top_probabilities(current),
                answered_by_html(current),
                session_html(result.session),
                *(gr.update(interactive=current is not None) for _ in feedback_buttons),
            )

        def on_predict(value: Any, state: Session) -> tuple[Any, ...]:
            return show(predict_drawing(client, value, state, ask_below=ask_below))

        def on_stroke(value: Any, state: Session, enabled: bool) -> tuple[Any, ...]:
            if not enabled:
                return tuple(gr.skip() for _ in draw_outputs)
            return show(predict_drawing(client, value, state, auto=True, ask_below=ask_below))

        def on_clear(state: Session) -> tuple[Any, ...]:
            return (*show(clear_drawing(client, state)), uuid.uuid4().hex)

        def on_feedback(label: int | None):
            def handler(state: Session) -> tuple[Any, ...]:
                result = send_feedback(client, state, label)
                shown = show(DrawResult(result.session, result.notice))
                # Not recorded: the drawing and its answer stay so the person can retry.
                return (*shown, uuid.uuid4().hex if result.reset_canvas else "")

            return handler

        def on_batch(paths: list[str] | None) -> tuple[Any, ...]:
            result = predict_files(client, paths)
            notice = result.notice.html() if result.notice else ""
            csv_update = (
                gr.update(value=str(result.csv_path), visible=True)
                if result.csv_path
                else gr.update(value=None, visible=False)
            )
            return result.table(), notice, csv_update

        def on_status() -> str:
            return service_status(client).html()

        predict_events = {"concurrency_id": "predict", "concurrency_limit": 8}
        predict.click(
            on_predict, [pad, session], draw_outputs, show_progress="minimal", **predict_events
        )
        pad.change(
            on_stroke,
            [pad, session, auto],
            draw_outputs,
            trigger_mode="always_last",
            show_progress="hidden",
            **predict_events,
        )
        undo.click(None, js=_asset("undo.js"))
        reset_js = _asset("reset_canvas.js")
        clear.click(on_clear, [session], [*draw_outputs, reset_signal]).then(
            None, [reset_signal], None, js=reset_js
        )
        for button, label in [(correct, None), *zip(labels, range(10), strict=True)]:
            button.click(
                on_feedback(label),
                [session],
                [*draw_outputs, reset_signal],
                show_progress="minimal",
                concurrency_id="feedback",
                concurrency_limit=8,
            ).then(None, [reset_signal], None, js=reset_js)
        run_batch.click(on_batch, [files], [table, batch_message, download], concurrency_limit=4)
        recheck.click(on_status, None, status)
        app.load(on_status, None, status)
        app.load(None, js=_asset("select_brush.js"))
    return app


def launch(
    app: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    share: bool = False,
    block: bool = True,
    quiet: bool = False,
) -> None:
    """Serve the app with its theme and css (Gradio 6 takes them in ``launch``).

    Args:
        app: from :func:`build_app`.
        host: address to listen on; 127.0.0.1 unless told otherwise.
        port: port to listen on.
        share: also open a public gradio.live tunnel (needs internet access).
        block: serve until interrupted; False returns at once (tests, notebooks).
        quiet: do not print the URLs.
    """
    import gradio as gr

    # Gradio reads this at launch for its usage report; nothing leaves the machine.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app.queue(default_concurrency_limit=8)
    app.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=not block,
        quiet=quiet,
        ssr_mode=False,
        show_error=False,
        max_file_size="10mb",
        footer_links=["gradio", "settings"],
        theme=gr.themes.Default(primary_hue="indigo"),
        css=_asset("app.css"),
    )
