"""The HTTP contract's models hold the API's bounds, and the service's parsing adds none.

The service validates with these models (tests/integration/test_service.py sends the same
bodies over HTTP); here each bound is checked on the model itself, at its edge.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contracts.api import (
    FEEDBACK_SOURCE_MAX,
    MAX_BATCH,
    MAX_SIDE,
    TRACKS,
    BatchAnswer,
    ErrorAnswer,
    FeedbackInput,
    ImageError,
    ModelInfo,
    PredictBatchInput,
    PredictInput,
    Prediction,
    ReloadInput,
)
from services.errors import DraftTakesNoFeedback, UnknownPrediction, status_of
from services.ids import PredictionIds

IDS = PredictionIds(b"a key of sixteen bytes or more")
PREDICTION_ID = IDS.new("canary", "12", 7)
PNG = b"\x89PNG\r\n\x1a\n"


def error_type(model: type, body: dict) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return caught.value.errors()[0]["type"]


# -- requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("label", [0, 9, 4.0])
def test_feedback_takes_a_digit(label):
    body = FeedbackInput.model_validate({"prediction_id": PREDICTION_ID, "label": label})
    assert body.label == int(label) and body.source == "user"


@pytest.mark.parametrize(
    ("label", "kind"),
    [(-1, "greater_than_equal"), (10, "less_than_equal"), ("7", "int_type"), (True, "int_type")],
)
def test_feedback_refuses_what_is_not_a_digit(label, kind):
    assert error_type(FeedbackInput, {"prediction_id": PREDICTION_ID, "label": label}) == kind


def test_feedback_takes_the_ids_the_service_issues_and_no_other_form():
    for track in TRACKS:
        issued = IDS.new(track, "3", 0)
        assert FeedbackInput(prediction_id=issued, label=1).prediction_id == issued
    for malformed in ("", "abc", PREDICTION_ID.replace("canary", "beta"), PREDICTION_ID + "0"):
        body = {"prediction_id": malformed, "label": 1}
        assert error_type(FeedbackInput, body) == "string_pattern_mismatch"


def test_a_drafts_id_is_of_the_form_but_takes_no_feedback():
    draft = IDS.new("stable", "3", 4, draft=True)
    assert draft.startswith("draft.") and not PREDICTION_ID.startswith("draft.")
    # The contract lets it through, so the service can say why it refuses it (422).
    assert FeedbackInput(prediction_id=draft, label=4).prediction_id == draft
    ref = IDS.parse(draft)
    assert (ref.draft, ref.track, ref.model_version, ref.label) == (True, "stable", "3", 4)
    assert IDS.parse_for_feedback(PREDICTION_ID).draft is False
    with pytest.raises(DraftTakesNoFeedback, match="drafts take no feedback: send the final"):
        IDS.parse_for_feedback(draft)
    assert status_of(DraftTakesNoFeedback("x")) == 422
    # The prefix is signed: dropping it, or adding it to a logged prediction's id, forges one.
    for forged in (draft.removeprefix("draft."), "draft." + PREDICTION_ID):
        assert FeedbackInput(prediction_id=forged, label=4)
        with pytest.raises(UnknownPrediction):
            IDS.parse_for_feedback(forged)


def test_feedback_source_is_one_to_its_maximum_characters():
    longest = "s" * FEEDBACK_SOURCE_MAX
    assert FeedbackInput(prediction_id=PREDICTION_ID, label=1, source=longest).source == longest
    for source, kind in (("", "string_too_short"), (longest + "s", "string_too_long")):
        body = {"prediction_id": PREDICTION_ID, "label": 1, "source": source}
        assert error_type(FeedbackInput, body) == kind
    assert error_type(FeedbackInput, {"prediction_id": PREDICTION_ID, "label": 1, "x": 1}) == (
        "extra_forbidden"
    )


def test_reload_bounds_and_the_empty_canary():
    assert ReloadInput.model_validate({"canary_model": "", "canary_weight": 100.0}).canary_weight
    assert ReloadInput.model_validate({}).model_dump() == dict.fromkeys(
        ("stable_model", "canary_model", "canary_weight")
    )
    assert error_type(ReloadInput, {"canary_weight": 101}) == "less_than_equal"
    assert error_type(ReloadInput, {"stable_model": ""}) == "string_pattern_mismatch"
    assert error_type(ReloadInput, {"stable_model": "v/3"}) == "string_pattern_mismatch"


def test_predict_takes_a_draft_flag_that_is_a_boolean():
    assert PredictInput.model_validate({"image": PNG}).draft is False
    assert PredictInput.model_validate({"pixels": [[1.0]], "draft": True}).draft is True
    assert error_type(PredictInput, {"pixels": [[1.0]], "draft": "true"}) == "bool_type"
    assert error_type(PredictInput, {"pixels": [[1.0]], "draft": 1}) == "bool_type"
    assert PredictInput.model_json_schema()["properties"]["draft"]["type"] == "boolean"


def test_predict_takes_exactly_one_drawing_of_bounded_size():
    assert PredictInput.model_validate({"image": PNG}).image == PNG
    assert PredictInput.model_validate_json('{"image": "iVBORw0KGgo="}').image == PNG
    assert PredictInput.model_validate({"pixels": [[0.0, 1.0]]}).pixels == [[0.0, 1.0]]
    assert error_type(PredictInput, {}) == "value_error"
    assert error_type(PredictInput, {"image": PNG, "pixels": [[1.0]]}) == "value_error"
    assert error_type(PredictInput, {"pixels": [[0.0] * (MAX_SIDE + 1)]}) == "too_long"
    assert error_type(PredictInput, {"pixels": [[0.0]] * (MAX_SIDE + 1)}) == "too_long"


def test_a_batch_is_one_to_max_batch_drawings():
    assert len(PredictBatchInput.model_validate({"images": [PNG] * MAX_BATCH}).images) == MAX_BATCH
    assert error_type(PredictBatchInput, {"images": [PNG] * (MAX_BATCH + 1)}) == "too_long"
    assert error_type(PredictBatchInput, {"pixels": [[[0.0]]] * (MAX_BATCH + 1)}) == "too_long"
    assert error_type(PredictBatchInput, {"images": []}) == "too_short"
    assert error_type(PredictBatchInput, {"images": [PNG], "pixels": [[[0.0]]]}) == "value_error"


def test_the_document_states_the_bounds_the_models_check():
    feedback = FeedbackInput.model_json_schema()["properties"]
    assert (feedback["label"]["minimum"], feedback["label"]["maximum"]) == (0, 9)
    assert feedback["source"]["maxLength"] == FEEDBACK_SOURCE_MAX
    batch = PredictBatchInput.model_json_schema()["properties"]
    assert batch["images"]["anyOf"][0]["maxItems"] == MAX_BATCH


# -- the service's parsing adds no bound -------------------------------------------------------


def test_the_services_bodies_are_the_contracts_models(monkeypatch: pytest.MonkeyPatch):
    from services import inputs

    samples = {
        (inputs.PredictBody, PredictInput): [{"pixels": [[0.0] * (MAX_SIDE + 1)]}, {}],
        (inputs.PredictBatchBody, PredictBatchInput): [{"images": [PNG] * (MAX_BATCH + 1)}],
        (inputs.FeedbackBody, FeedbackInput): [{"prediction_id": "x", "label": 1}, {"x": 1}],
        (inputs.ReloadBody, ReloadInput): [{"canary_weight": 101}, {"canary_weight": "5"}],
    }
    for (body, contract), bodies in samples.items():
        assert (
            issubclass(body, contract) and body.model_fields.keys() == contract.model_fields.keys()
        )
        for sample in bodies:
            assert error_type(body, sample) == error_type(contract, sample), (body, sample)
    # A service may take fewer images than the contract (its setting), and says so as 413 does.
    monkeypatch.setattr(inputs, "BATCH_LIMIT", 2)
    assert error_type(inputs.PredictBatchBody, {"images": [PNG] * 3}) == "too_long"
    assert inputs.PredictBatchBody.model_validate({"images": [PNG] * 2}).images == [PNG] * 2


@pytest.mark.parametrize(
    ("query", "draft"), [(b"", False), (b"draft=true", True), (b"draft=false", False)]
)
def test_the_draft_query_parameter_reads_json_booleans(query: bytes, draft: bool):
    from starlette.requests import Request

    from services.inputs import draft_query

    assert draft_query(Request({"type": "http", "query_string": query, "headers": []})) is draft


@pytest.mark.parametrize("query", [b"draft=1", b"draft=True", b"draft=", b"draft=true&draft=true"])
def test_the_draft_query_parameter_refuses_anything_else(query: bytes):
    from starlette.requests import Request

    from services import inputs

    with pytest.raises(inputs._Problem, match="takes true or false, once") as caught:
        inputs.draft_query(Request({"type": "http", "query_string": query, "headers": []}))
    assert caught.value.status == 400


# -- answers ----------------------------------------------------------------------------------


def prediction(**changes: object) -> dict[str, object]:
    return {
        "prediction_id": PREDICTION_ID,
        "label": 7,
        "probabilities": [0.0] * 7 + [1.0, 0.0, 0.0],
        "model_version": "12",
        "track": "canary",
        **changes,
    }


def test_a_prediction_has_ten_probabilities_a_digit_and_a_track():
    assert Prediction.model_validate(prediction()).confidence == 1.0
    # An older service sends no `draft`: its answers were all logged predictions.
    assert Prediction.model_validate(prediction()).draft is False
    assert Prediction.model_validate(prediction(draft=True)).draft is True
    assert "draft" in Prediction.model_json_schema(mode="serialization")["required"]
    for changes in ({"probabilities": [0.1] * 9}, {"label": 10}, {"track": "beta"}):
        with pytest.raises(ValidationError):
            Prediction.model_validate(prediction(**changes))


def test_a_prediction_says_how_unusual_the_drawing_was():
    # An older service (or a version registered without a scorer) sends no score.
    old = Prediction.model_validate(prediction())
    assert old.novelty is None and old.unusual is False
    scored = Prediction.model_validate(prediction(novelty=42.5, unusual=True))
    assert scored.novelty == 42.5 and scored.unusual is True
    schema = Prediction.model_json_schema(mode="serialization")
    assert {"novelty", "unusual"} <= set(schema["required"])
    assert "threshold" in schema["properties"]["unusual"]["description"]
    with pytest.raises(ValidationError):
        Prediction.model_validate(prediction(novelty="high"))


def test_a_batch_answer_tells_predictions_from_image_errors():
    answers = BatchAnswer.model_validate(
        [prediction(), {"index": 1, "status": 422, "error": "not a readable image"}]
    ).root
    assert [type(answer) for answer in answers] == [Prediction, ImageError]
    with pytest.raises(ValidationError):
        BatchAnswer.model_validate([])
    with pytest.raises(ValidationError):
        BatchAnswer.model_validate([{"label": 3}])


def test_answers_read_an_older_service_and_ignore_newer_fields():
    info = ModelInfo.model_validate(
        {"tracks": {"stable": {"model_version": "3", "since": "today"}}, "region": "eu"}
    )
    assert (info.canary_weight, info.only_track, info.tracks["stable"].aliases) == (0, None, [])
    # What the service sends is complete: the document marks every field required.
    schema = ModelInfo.model_json_schema(mode="serialization")
    assert set(schema["required"]) == set(ModelInfo.model_fields)
    with pytest.raises(ValidationError):
        ModelInfo.model_validate({"tracks": {"blue": {"model_version": "3"}}})


def test_an_error_answer_carries_a_message():
    assert ErrorAnswer.model_validate_json('{"error": "wrong admin token"}').error
    with pytest.raises(ValidationError):
        ErrorAnswer.model_validate({"error": ""})
