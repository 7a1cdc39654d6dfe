"""The service rollout driver talks to the service through its one client.

httpx's MockTransport plays the service: what the driver reads from ``GET /model``, what it
sends to ``POST /admin/reload`` (the body and the admin token), and how each way the service
can fail becomes a RolloutError. tests/integration/test_loop.py drives a real service.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

import httpx
import pytest

from contracts.routing import RoutingState
from pipelines.rollout import RolloutError
from pipelines.rollout import service as service_rollout
from pipelines.rollout.service import ServiceRollout
from services.client import DigitloopClient

URL = "http://digitloop.test:3000"
TOKEN = "admin-s3cret"


def model_answer(canary: str | None, weight: int = 0) -> dict[str, object]:
    tracks: dict[str, object] = {"stable": {"model_version": "3", "aliases": ["champion"]}}
    if canary is not None:
        tracks["canary"] = {"model_version": canary, "aliases": ["challenger"]}
    return {"tracks": tracks, "canary_weight": weight, "only_track": None}


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[httpx.Request]]:
    """Route the driver's client to ``handler``; returns the requests it sends."""

    def install(handler: Callable[[httpx.Request], httpx.Response]) -> list[httpx.Request]:
        seen: list[httpx.Request] = []

        def record(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return handler(request)

        client = functools.partial(DigitloopClient, transport=httpx.MockTransport(record))
        monkeypatch.setattr(service_rollout, "DigitloopClient", client)
        return seen

    return install


def test_current_is_what_model_says_serves(serve):
    answers = iter([model_answer("4", 20), model_answer(None, 0)])
    seen = serve(lambda request: httpx.Response(200, json=next(answers)))
    rollout = ServiceRollout(URL, TOKEN)
    assert rollout.current() == RoutingState("3", "4", 20)
    assert rollout.current() == RoutingState("3", None, 0)
    assert [(r.method, r.url.path) for r in seen] == [("GET", "/model")] * 2


def test_apply_reloads_with_the_admin_token(serve):
    seen = serve(lambda request: httpx.Response(200, json=model_answer("4", 20)))
    rollout = ServiceRollout(URL + "/", TOKEN)
    rollout.apply(RoutingState("3", "4", 20))
    rollout.apply(RoutingState("3", None, 0))
    canary, rolled_back = seen
    assert (canary.method, str(canary.url)) == ("POST", f"{URL}/admin/reload")
    assert canary.headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(canary.content) == {
        "stable_model": "3",
        "canary_model": "4",
        "canary_weight": 20,
    }
    # No canary is an empty canary_model: the service removes it.
    assert json.loads(rolled_back.content) == {
        "stable_model": "3",
        "canary_model": "",
        "canary_weight": 0,
    }


def test_refusals_become_rollout_errors_with_the_services_message(serve):
    serve(lambda request: httpx.Response(403, json={"error": "wrong admin token"}))
    with pytest.raises(RolloutError, match=r"^/admin/reload answered 403: wrong admin token$"):
        ServiceRollout(URL, "nope").apply(RoutingState("3"))
    serve(lambda request: httpx.Response(503, json={"error": "no model loaded yet"}))
    with pytest.raises(RolloutError, match=r"cannot read the service's models.*no model loaded"):
        ServiceRollout(URL, TOKEN).current()


def test_no_answer_is_a_rollout_error(serve):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    serve(refuse)
    with pytest.raises(RolloutError, match=r"cannot reach .*/admin/reload: .*connection refused"):
        ServiceRollout(URL, TOKEN).apply(RoutingState("3"))
    with pytest.raises(RolloutError, match="cannot read the service's models"):
        ServiceRollout(URL, TOKEN).current()


def test_an_answer_without_a_stable_track_is_a_rollout_error(serve):
    only_canary = {"tracks": {"canary": {"model_version": "4"}}, "only_track": "canary"}
    serve(lambda request: httpx.Response(200, json=only_canary))
    with pytest.raises(RolloutError, match="serves no stable track"):
        ServiceRollout(URL, TOKEN).current()
    serve(lambda request: httpx.Response(200, json={"tracks": "none"}))
    with pytest.raises(RolloutError, match="does not understand"):
        ServiceRollout(URL, TOKEN).current()
