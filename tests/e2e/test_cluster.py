"""End to end on a real kind cluster, in one command (`make e2e`): the closed loop, run by the
cluster's own CronWorkflow.

In order (each test needs the ones before it; a later one skips, saying which, when an
earlier one did not get there):

1. `make up DEPLOY_VALUES=tests/e2e/e2e-values.yaml`, twice (it must be safe to re-run):
   the loop every 2 minutes with small thresholds.
2. The published UIs answer; a drawing is predicted through the gateway, corrected, and the
   feedback object is in MinIO.
3. Simulated users (`digitloop simulate --no-loop`: they only draw and label) bring a
   drifted population until a run of the CronWorkflow retrains a challenger that passes its
   gate and rolls it out as the canary through the step pod's `helm upgrade`; the canary
   track then serves that version, stable the champion, and the canary takes about its
   weight of the unpinned traffic.
4. More traffic, until a later cron run's analyse step promotes it: stable serves it.
5. A deliberately poor model, registered in MLflow and made the canary with `make canary`,
   is rolled back by a cron run once labelled traffic shows it worse.
6. The serving and loop metrics are in Prometheus; `make status` and `make loop` work, and
   a run submitted with `argo submit --wait -o name` is read by its exit status and
   `argo get`.
7. `make down`.

Every wait is bounded and fails saying what did not happen; every process started here
(make, the simulator, port-forwards) is stopped, with its children, also when a test fails.
Results of the loop are read as the pinned Argo CLI (v4.0.6) prints them, through
tests/e2e/argo_cli.py (tested on recorded outputs in test_argo_outputs.py): the exit status
of the command that waited, then `argo get NAME -o json`; never the workflow that
`argo submit --wait -o json` prints, which is the one just created.

Needs Docker, network and about 4 CPUs / 8 GB for Docker. DIGITLOOP_E2E_REUSE=1 skips
`make up` (the cluster must be up with the e2e values), DIGITLOOP_E2E_KEEP=1 keeps the
cluster afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import MNIST_PATH as MNIST
from tests.conftest import VENV_BIN
from tests.e2e.argo_cli import (
    CRON_LABEL,
    Run,
    cron_runs,
    finished_run,
    parse_runs,
    submitted_name,
    watch_result,
)

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "bin"  # make tools: bin/<tool> -> bin/<tool>-<pinned version>
VALUES = "tests/e2e/e2e-values.yaml"
API = "http://localhost:8081"
UI = "http://localhost:8080"
MLFLOW = "http://localhost:8082"
NAMESPACE = "digitloop"
CONTEXT = "kind-digitloop"
CRON = "digitloop-loop"
TRACK_HEADER = "X-Digitloop-Track"

# Bounds of the waits (seconds).
MAKE_UP_S = 5400
LOOP_PHASE_S = 45 * 60  # traffic until the loop retrains, promotes or rolls back
RUN_S = 15 * 60  # a cron run due within 2 minutes, plus a retrain and a helm upgrade --wait
SIMULATE_S = 15 * 60


def _docker_engine() -> bool:
    """Whether a Docker engine answers (a `docker` CLI alone is not enough for kind)."""
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


DOCKER = _docker_engine()
WHY_NOT = (
    "needs a Docker engine for its kind cluster and none answers here (`docker info` fails): "
    "run `make e2e` on a machine with Docker"
    if not DOCKER
    else "runs under `make e2e` only (DIGITLOOP_E2E=1): it creates a kind cluster (1-2 hours)"
)
pytestmark = [
    pytest.mark.cluster,
    # Per test; the first one's includes `make up` twice. Every wait has its own bound.
    pytest.mark.timeout(6 * 3600),
    pytest.mark.skipif(os.environ.get("DIGITLOOP_E2E") != "1" or not DOCKER, reason=WHY_NOT),
]

T = TypeVar("T")


# -- processes: every one is stopped with its children, whatever happens -----------------


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group (make's children, helm, ...), then SIGKILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


def run(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command from the project root; fail the test if it outlasts ``timeout``."""
    process = subprocess.Popen(
        args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(process)
        pytest.fail(f"`{' '.join(args)}` did not finish within {timeout:.0f} s")
    finally:
        _stop(process)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def ok(result: subprocess.CompletedProcess[str], what: str) -> str:
    """The command's stdout, after asserting it exited 0."""
    assert result.returncode == 0, (
        f"{what}: `{' '.join(result.args)}` exited {result.returncode}\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def make(*targets: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return run("make", "--no-print-directory", *targets, timeout=timeout)


def kubectl(*args: str, timeout: float = 120) -> str:
    result = run(str(BIN / "kubectl"), "--context", CONTEXT, *args, timeout=timeout)
    return ok(result, "kubectl")


def helm(*args: str) -> str:
    result = run(str(BIN / "helm"), "--kube-context", CONTEXT, "-n", NAMESPACE, *args)
    return ok(result, "helm")


def argo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run(str(BIN / "argo"), "--context", CONTEXT, "-n", NAMESPACE, *args, timeout=timeout)


@contextlib.contextmanager
def port_forward(namespace: str, target: str, port: int) -> Iterator[str]:
    """``kubectl port-forward`` to a free local port; yields the local base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()[1]
    command = [str(BIN / "kubectl"), "--context", CONTEXT, "-n", namespace, "port-forward"]
    process = subprocess.Popen(
        [*command, target, f"{local}:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def listening() -> bool:
            assert process.poll() is None, f"kubectl port-forward {target} exited"
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", local)) == 0

        wait_for(listening, f"a port-forward to {namespace}/{target}", timeout=60, every=1)
        yield f"127.0.0.1:{local}"
    finally:
        _stop(process)


# -- waiting ----------------------------------------------------------------------------


def wait_for(
    check: Callable[[], T], what: str | Callable[[], str], timeout: float, every: float = 5
) -> T:
    """``check()``'s first truthy value; fail saying ``what`` (or what it returns then) did
    not happen in time."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except AssertionError:
            raise  # something is wrong, not late
        except Exception as exc:  # not there yet: refused, 5xx, no such object, ...
            last = exc
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            pytest.fail(f"{said} did not happen within {timeout:.0f} s (last: {last!r})")
        time.sleep(every)


def now() -> datetime:
    # kind runs on this machine: its API server and this test share the clock (to the
    # second: creation timestamps have no fractions).
    return datetime.now(UTC).replace(microsecond=0)


# -- serving ----------------------------------------------------------------------------


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


def predict(client: httpx.Client, track: str | None = None) -> dict[str, Any]:
    answer = client.post(
        f"{API}/predict",
        files={"image": ("d.png", digit_png(), "image/png")},
        headers={TRACK_HEADER: track} if track else {},
        timeout=30,
    )
    answer.raise_for_status()
    return answer.json()


def serves(client: httpx.Client, track: str, version: str) -> bool:
    """Whether a request pinned to ``track`` is answered by ``version`` on that track."""
    answer = predict(client, track)
    return answer["track"] == track and str(answer["model_version"]) == version


def release_values() -> dict[str, Any]:
    return json.loads(helm("get", "values", "digitloop", "--all", "-o", "json"))["serving"]


def release_revision() -> int:
    return int(json.loads(helm("status", "digitloop", "-o", "json"))["version"])


# -- the loop on the cluster ------------------------------------------------------------


def simulate(tmp: Path, windows_before: int = 1, windows_after: int = 2) -> dict[str, Any]:
    """One batch of simulated users through the gateway; the loop runs elsewhere."""
    env = {"DIGITLOOP_MNIST_PATH": str(MNIST)} if MNIST.exists() else {}
    result = run(
        str(VENV_BIN / "digitloop"),
        "simulate",
        "--url",
        API,
        "--no-loop",
        "--windows-before",
        str(windows_before),
        "--windows-after",
        str(windows_after),
        "--window-size",
        "300",
        "--label-prob",
        "1.0",
        "--drift-data",
        "segments",
        "--out",
        str(tmp / f"simulate-{time.monotonic_ns()}"),
        "--json",
        timeout=SIMULATE_S,
        env=env,
    )
    summary = json.loads(ok(result, "digitloop simulate --no-loop"))
    assert summary["loop"] is False, "simulate --no-loop ran a loop of its own"
    labelled = sum(w["labelled"] for w in summary["windows"])
    assert labelled == 300 * (windows_before + windows_after), "users did not label every answer"
    return summary


def cron_runs_since(since: datetime) -> list[Run]:
    """The CronWorkflow's own runs created since ``since`` (not `make loop`'s), oldest first."""
    listed = ok(argo("list", "-o", "json", "-l", f"{CRON_LABEL}={CRON}"), "argo list")
    return cron_runs(parse_runs(listed), CRON, since)


def drive_loop_until(
    what: str,
    found: Callable[[Run], bool],
    since: datetime,
    tmp: Path,
    wrong: Callable[[Run], str | None] = lambda run: None,
    traffic: tuple[int, int] = (1, 2),
) -> Run:
    """Send traffic, let the cron's runs see it, until one of them is ``found``.

    Each finished cron run since ``since`` is read with ``argo get``: it must have
    succeeded, and ``wrong(run)`` must not name something the loop got wrong. After each
    batch of traffic, the next batch waits until a cron run created after it has finished
    (it has seen the whole batch).
    """
    deadline = time.monotonic() + LOOP_PHASE_S
    seen: dict[str, Run] = {}
    while True:
        simulate(tmp, *traffic)
        batch_end = now()
        waited_from = time.monotonic()
        while True:
            for listed in cron_runs_since(since):
                if not listed.done or listed.name in seen:
                    continue
                result = finished_run(ok(argo("get", listed.name, "-o", "json"), "argo get"))
                seen[result.name] = result
                assert result.phase == "Succeeded", f"a cron run failed: {result.describe()}"
                problem = wrong(result)
                assert problem is None, f"{problem}: {result.describe()}"
                if found(result):
                    return result
            if any(r.created >= batch_end for r in seen.values()):
                break  # the loop has seen this batch and did not get there: more traffic
            if time.monotonic() - waited_from > RUN_S:
                pytest.fail(
                    f"no cron run of {CRON} created after {batch_end:%H:%M:%S} finished "
                    f"within {RUN_S // 60} min (is the CronWorkflow scheduled and not "
                    f"suspended? `make status`); runs so far: {_history(seen)}"
                )
            time.sleep(15)
        if time.monotonic() > deadline:
            pytest.fail(
                f"{what} did not happen within {LOOP_PHASE_S // 60} min of traffic; the "
                f"cron's runs since {since:%H:%M:%S}: {_history(seen)}"
            )


def _history(runs: dict[str, Run]) -> str:
    return "; ".join(r.describe() for r in runs.values()) or "none"


def wait_no_run_going() -> None:
    def idle() -> bool:
        listed = ok(argo("list", "-o", "json"), "argo list")
        return not [r for r in parse_runs(listed) if not r.done]

    wait_for(idle, "every workflow run of the namespace finishing", timeout=RUN_S, every=10)


@contextlib.contextmanager
def cron_suspended() -> Iterator[None]:
    """The CronWorkflow suspended (no run of its own starts), resumed afterwards."""
    ok(argo("cron", "suspend", CRON), "argo cron suspend")
    try:
        yield
    finally:
        ok(argo("cron", "resume", CRON), "argo cron resume")


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    try:
        if os.environ.get("DIGITLOOP_E2E_REUSE") != "1":
            for attempt in ("make up", "a second make up (it must be safe to re-run)"):
                result = make("up", f"DEPLOY_VALUES={VALUES}", timeout=MAKE_UP_S)
                ok(result, attempt)
        _check_e2e_values()
        yield
    finally:
        if os.environ.get("DIGITLOOP_E2E_KEEP") != "1":
            make("down", timeout=600)


def _check_e2e_values() -> None:
    """The release runs with the e2e values (a reused cluster may not)."""
    import yaml

    values = yaml.safe_load((ROOT / VALUES).read_text())["workflow"]
    cron = json.loads(kubectl("-n", NAMESPACE, "get", "cronworkflow", CRON, "-o", "json"))
    config = json.loads(
        kubectl("-n", NAMESPACE, "get", "configmap", "digitloop-config", "-o", "json")
    )
    given = {name: config["data"].get(name) for name in values["env"]}
    assert cron["spec"]["schedules"] == [values["schedule"]] and given == values["env"], (
        f"the release does not run with {VALUES} (schedule {cron['spec']['schedules']}, "
        f"settings {given}): `make up DEPLOY_VALUES={VALUES}`"
    )


@pytest.fixture(scope="module")
def client(cluster: None) -> Iterator[httpx.Client]:
    with httpx.Client() as http:
        wait_for(
            lambda: http.get(f"{API}/readyz", timeout=5).status_code == 200,
            "serving ready through the gateway",
            timeout=900,
        )
        yield http


@pytest.fixture(scope="module")
def loop() -> dict[str, Any]:
    """What the loop did so far, for the tests after it (challenger, promoted, ...)."""
    return {}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


def need(loop: dict[str, Any], key: str, test: str) -> Any:
    if key not in loop:
        pytest.skip(f"needs {test} to have passed")
    return loop[key]


# -- the tests, in order ----------------------------------------------------------------


def test_the_published_uis_answer(client: httpx.Client) -> None:
    assert client.get(UI, timeout=30).status_code == 200, "the sketchpad does not answer"
    assert client.get(f"{MLFLOW}/health", timeout=30).status_code == 200, "MLflow does not answer"


def test_prediction_and_feedback_land_in_minio(client: httpx.Client, loop: dict) -> None:
    answer = predict(client)
    assert 0 <= answer["label"] <= 9 and len(answer["probabilities"]) == 10
    assert answer["track"] == "stable", f"no canary yet, yet answered by {answer['track']}"
    loop["champion"] = str(answer["model_version"])
    feedback = client.post(
        f"{API}/feedback",
        json={"prediction_id": answer["prediction_id"], "label": 1, "source": "e2e"},
        timeout=30,
    )
    assert feedback.status_code < 300, f"feedback refused: {feedback.text}"

    secret = json.loads(kubectl("-n", NAMESPACE, "get", "secret", "digitloop-minio", "-o", "json"))
    access, key = (base64.b64decode(secret["data"][k]).decode() for k in ("accessKey", "secretKey"))
    with port_forward(NAMESPACE, "svc/digitloop-minio", 9000) as endpoint:
        from minio import Minio

        store = Minio(endpoint, access_key=access, secret_key=key, secure=False)

        def stored() -> bool:
            objects = store.list_objects("digitloop", "feedback/", recursive=True)
            return any(answer["prediction_id"] in o.object_name for o in objects)

        wait_for(stored, "the feedback object appearing in MinIO", timeout=120, every=2)


def test_the_cron_retrains_and_rolls_out_a_canary(
    client: httpx.Client, loop: dict, work: Path
) -> None:
    champion = need(loop, "champion", "test_prediction_and_feedback_land_in_minio")
    revision = release_revision()

    def rolled_out(run: Run) -> bool:
        retrain, canary = run.outputs("retrain"), run.outputs("canary")
        return (
            retrain.get("gate_passed") == "true"
            and bool(retrain.get("challenger"))
            and canary.get("canary") == retrain["challenger"]
        )

    run = drive_loop_until(
        "a cron run retraining a challenger that passes its gate and becomes the canary",
        rolled_out,
        since=now(),
        tmp=work,
    )
    challenger = run.outputs("retrain")["challenger"]
    assert run.outputs("collect")["stable_version"] == champion, run.describe()
    assert challenger != champion, f"the retrain registered no new version: {run.describe()}"
    # The canary step's pod changed the release: a new revision with the canary in its values.
    serving = release_values()
    assert release_revision() > revision, "the release has no new revision after the canary step"
    assert serving["canary"]["enabled"] is True, f"no canary in the release's values: {serving}"
    assert str(serving["canary"]["modelVersion"]) == challenger, serving
    loop.update(challenger=challenger, weight=int(run.outputs("canary")["weight"]), run=run)


def test_the_canary_serves_the_challenger(client: httpx.Client, loop: dict) -> None:
    challenger = need(loop, "challenger", "test_the_cron_retrains_and_rolls_out_a_canary")
    wait_for(
        lambda: serves(client, "canary", challenger),
        f"the canary track answering with version {challenger}",
        timeout=300,
    )
    stable = predict(client, "stable")
    assert stable["track"] == "stable" and str(stable["model_version"]) == loop["champion"], (
        f"stable answers with {stable['model_version']}, not the champion {loop['champion']}"
    )
    assert str(stable["model_version"]) != challenger
    # Unpinned requests: about the canary's weight of them go to it (the HTTPRoute's split).
    count, weight = 200, loop["weight"] / 100
    share = [predict(client)["track"] for _ in range(count)].count("canary") / count
    sigma = math.sqrt(weight * (1 - weight) / count)
    assert abs(share - weight) < 4 * sigma, f"canary share {share:.2f}, weight {weight:.2f}"


def test_a_later_cron_run_promotes_it(client: httpx.Client, loop: dict, work: Path) -> None:
    challenger = need(loop, "challenger", "test_the_cron_retrains_and_rolls_out_a_canary")
    since = loop["run"].created + timedelta(seconds=1)

    def judged(run: Run) -> bool:
        return run.outputs("collect").get("canary_version") == challenger and bool(
            run.outputs("analyse")
        )

    def rolled_back(run: Run) -> str | None:
        if judged(run) and run.outputs("analyse")["action"] == "rollback":
            return f"the loop rolled back its own challenger v{challenger}"
        return None

    run = drive_loop_until(
        f"a cron run promoting v{challenger}",
        lambda run: judged(run) and run.outputs("analyse")["action"] == "promote",
        since=since,
        tmp=work,
        wrong=rolled_back,
    )
    wait_for(
        lambda: serves(client, "stable", challenger),
        f"stable answering with the promoted version {challenger}",
        timeout=300,
    )
    serving = release_values()
    assert str(serving["stable"]["modelVersion"]) == challenger, serving
    assert not serving["canary"]["enabled"], f"the canary is still on after promotion: {serving}"
    loop.update(promoted=challenger, promote_run=run)


def test_a_bad_challenger_is_rolled_back(client: httpx.Client, loop: dict, work: Path) -> None:
    promoted = need(loop, "promoted", "test_a_later_cron_run_promotes_it")
    # No cron run may start between clearing the loop's own canary and setting the bad one.
    with cron_suspended():
        wait_no_run_going()
        ok(make("rollback"), "make rollback (ending any canary the loop started since)")
        bad = register_bad_challenger()
        ok(make("canary", f"VERSION={bad}", "WEIGHT=50"), f"make canary VERSION={bad}")
        resumed = now()
    wait_for(
        lambda: serves(client, "canary", bad), f"the canary answering with v{bad}", timeout=300
    )

    def judged(run: Run) -> bool:
        return run.outputs("collect").get("canary_version") == bad and bool(run.outputs("analyse"))

    def promoted_bad(run: Run) -> str | None:
        if judged(run) and run.outputs("analyse")["action"] == "promote":
            return f"the loop promoted the deliberately bad v{bad}"
        return None

    drive_loop_until(
        f"a cron run rolling back the bad v{bad}",
        lambda run: judged(run) and run.outputs("analyse")["action"] == "rollback",
        since=resumed,
        tmp=work,
        wrong=promoted_bad,
        traffic=(1, 1),
    )
    serving = release_values()
    assert not serving["canary"]["enabled"] or str(serving["canary"]["modelVersion"]) != bad, (
        f"v{bad} still serves as the canary after the rollback: {serving}"
    )
    wait_for(
        lambda: serves(client, "stable", promoted),
        f"stable still answering with v{promoted} after the rollback",
        timeout=120,
    )
    loop["rolled_back"] = bad


def register_bad_challenger() -> str:
    """A model trained on shuffled labels, registered in the cluster's MLflow."""
    from digitloop_bench.simulator.population import train_bad_challenger

    from model.data import load_mnist
    from model.registry import Registry
    from model.settings import ModelSettings

    settings = ModelSettings(
        mlflow_tracking_uri=MLFLOW, **({"mnist_path": MNIST} if MNIST.exists() else {})
    )
    return train_bad_challenger(Registry(settings), load_mnist(settings=settings))


def test_the_metrics_are_in_prometheus(client: httpx.Client, loop: dict) -> None:
    need(loop, "promoted", "test_a_later_cron_run_promotes_it")  # both loop metrics emitted
    expected = {
        # the serving pods' (services/metrics.py), scraped by the digitloop-serving job
        "digitloop_requests_total",
        "digitloop_request_duration_seconds_bucket",
        "digitloop_predictions_total",
        "digitloop_feedback_total",
        "digitloop_model_info",
        # the loop's, emitted by Argo's controller (pipelines/workflows/loop.py, prefixed)
        "argo_workflows_digitloop_drift_score",
        "argo_workflows_digitloop_canary_decisions",
    }
    with port_forward("monitoring", "svc/prometheus-server", 80) as endpoint:

        def query(promql: str) -> list[dict[str, Any]]:
            answer = httpx.get(f"http://{endpoint}/api/v1/query", params={"query": promql})
            answer.raise_for_status()
            return answer.json()["data"]["result"]

        present: set[str] = set()

        def complete() -> bool:
            promql = 'count by (__name__) ({__name__=~"digitloop_.+|argo_workflows_digitloop_.+"})'
            present.clear()
            for r in query(promql):
                # An OpenTelemetry exporter may add _total to a counter; either name will do.
                present.add(re.sub(r"(canary_decisions)_total$", r"\1", r["metric"]["__name__"]))
            return expected <= present

        wait_for(
            complete,
            lambda: f"the metrics {sorted(expected - present)} appearing in Prometheus",
            timeout=300,
            every=15,
        )
        tracks = {
            r["metric"].get("track")
            for r in query("count by (track) (digitloop_predictions_total)")
        }
        assert {"stable", "canary"} <= tracks, f"predictions counted by track: {tracks}"
        decisions = '{__name__=~"argo_workflows_digitloop_canary_decisions(_total)?"}'
        actions = {r["metric"].get("action") for r in query(f"count by (action) ({decisions})")}
        decided = {"promote"} | ({"rollback"} if "rolled_back" in loop else set())
        assert decided <= actions, f"canary decisions counted by action: {actions}"


def test_make_status_and_make_loop(client: httpx.Client, loop: dict) -> None:
    with cron_suspended():  # what serves stays put while it is compared
        wait_no_run_going()
        stable = str(predict(client, "stable")["model_version"])
        status = make("status", timeout=600)
        out = ok(status, "make status")
        for expected in (f"== pods ({NAMESPACE})", "== last workflow runs", "== serving"):
            assert expected in out, f"`make status` shows no {expected!r}:\n{out}"
        assert re.search(rf"{CRON}-\d+", out), f"`make status` shows no cron run:\n{out}"
        assert re.search(rf"stable\W+{stable}\b", out), (
            f"`make status` does not show stable serving v{stable}:\n{out}"
        )

        started = now()
        out = ok(make("loop", timeout=RUN_S + 600), "make loop")
        name, status_line = watch_result(out)
        # --watch returns when the run ends, whatever its phase: read the result itself.
        result = finished_run(ok(argo("get", name, "-o", "json"), f"argo get {name}"))
        assert result.created >= started and result.cron is None, result.describe()
        assert status_line == result.phase == "Succeeded", f"make loop: {result.describe()}"


def test_a_loop_run_submitted_and_waited_for(client: httpx.Client) -> None:
    """The way to read a submitted run's result: the exit status of `--wait`, then
    `argo get` (not what `argo submit --wait -o json` prints: the workflow as created)."""
    with cron_suspended():
        submitted = argo(
            "submit", "--from", f"workflowtemplate/{CRON}", "--wait", "-o", "name", timeout=RUN_S
        )
        name = submitted_name(submitted.stdout)
        result = finished_run(ok(argo("get", name, "-o", "json"), f"argo get {name}"))
        assert submitted.returncode == 0, f"`argo submit --wait` exited 1: {result.describe()}"
        assert result.phase == "Succeeded", result.describe()
