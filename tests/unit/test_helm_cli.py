"""pipelines.rollout.helm_cli: parsers on recorded helm output, decisions, a fake helm process."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from contracts.errors import DigitloopError
from pipelines.rollout.helm_cli import (
    Helm,
    HelmError,
    HelmTimeoutError,
    ReleaseStatus,
    Revision,
    Step,
    backoff,
    history,
    is_in_progress,
    next_step,
    recovery_revision,
    release_status,
    upgrade_serialised,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "helm"
PENDING_SINCE = datetime(2026, 8, 20, 14, 3, 11, 482913, tzinfo=UTC)  # status-pending-upgrade
UPGRADED = 'Release "digitloop" has been upgraded. Happy Helming!\n'


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# -- parsers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "status-deployed.json",
            ReleaseStatus("deployed", 3, datetime(2026, 8, 20, 3, 0, 31, 904120, tzinfo=UTC)),
        ),
        ("status-pending-upgrade.json", ReleaseStatus("pending-upgrade", 4, PENDING_SINCE)),
        ("status-failed-cancelled.json", ReleaseStatus("failed", 4, PENDING_SINCE)),
    ],
)
def test_release_status(name: str, expected: ReleaseStatus) -> None:
    assert release_status(fixture(name)) == expected


def test_pending_is_helms_three_pending_states() -> None:
    pending = {
        s
        for s in (
            "pending-install",
            "pending-upgrade",
            "pending-rollback",
            "deployed",
            "failed",
            "superseded",
            "uninstalling",
            "unknown",
        )
        if ReleaseStatus(s, 1, None).pending
    }
    assert pending == {"pending-install", "pending-upgrade", "pending-rollback"}


def test_history_from_the_recorded_output() -> None:
    rows = history(fixture("history.json"))
    assert [(r.revision, r.status) for r in rows] == [
        (1, "superseded"),
        (2, "superseded"),
        (3, "deployed"),
        (4, "pending-upgrade"),
    ]
    # revision 2 was written by a helm on a laptop at UTC+2: the same instant in UTC
    assert rows[1].updated == datetime(2026, 8, 19, 14, 40, 2, 500000, tzinfo=UTC)
    assert rows[3].updated == PENDING_SINCE
    assert (rows[0].chart, rows[0].app_version) == ("digitloop-0.1.0", "0.1.0")
    assert rows[3].description == "Preparing upgrade"


def test_history_is_sorted_and_tolerates_unknown_fields_and_no_time() -> None:
    # Helm's main line adds "rollback_revision" (omitempty); a zero time has no "updated"
    text = json.dumps(
        [
            {
                "revision": 5,
                "status": "deployed",
                "chart": "c-1",
                "app_version": "1",
                "rollback_revision": 3,
                "description": "Rollback to 3",
            },
            {
                "revision": 4,
                "updated": "2026-08-20T14:03:11Z",
                "status": "failed",
                "chart": "c-1",
                "app_version": "1",
                "description": "x",
            },
        ]
    )
    rows = history(text)
    assert [r.revision for r in rows] == [4, 5]
    assert rows[1].updated is None
    assert history("[]\n") == []


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        (fixture("stderr-another-operation.txt"), True),
        (fixture("stderr-already-exists.txt"), True),
        (fixture("stderr-sigterm.txt"), False),
        ('Error: UPGRADE FAILED: "digitloop" has no deployed releases\n', False),
        ("Error: UPGRADE FAILED: another operation\n", False),
        ("", False),
    ],
)
def test_is_in_progress(stderr: str, expected: bool) -> None:
    assert is_in_progress(stderr) is expected


# -- decisions ----------------------------------------------------------------------------------

STUCK_AFTER, MAX_WAIT = 750.0, 810.0


def pending_for(seconds: float, status: str = "pending-upgrade") -> tuple[ReleaseStatus, datetime]:
    return ReleaseStatus(status, 4, PENDING_SINCE), PENDING_SINCE + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("status", "age", "waited", "expected"),
    [
        ("pending-upgrade", 10, 0, Step.RETRY),  # someone's upgrade is running: take turns
        ("pending-upgrade", STUCK_AFTER, 0, Step.RETRY),  # boundary: not longer than allowed
        ("pending-upgrade", STUCK_AFTER + 0.001, 0, Step.RECOVER),
        ("pending-rollback", 3600, 0, Step.RECOVER),
        ("pending-install", 3600, 0, Step.RECOVER),
        ("pending-upgrade", -30, 0, Step.RETRY),  # the writer's clock is ahead of ours
        ("deployed", 3600, 0, Step.RETRY),  # lost an exact race ("already exists"): again
        ("failed", 3600, 0, Step.RETRY),
        ("pending-upgrade", 10, MAX_WAIT - 0.001, Step.RETRY),
        ("pending-upgrade", 10, MAX_WAIT, Step.GIVE_UP),  # boundary: waited as long as we may
        ("deployed", 10, MAX_WAIT + 100, Step.GIVE_UP),
        ("pending-upgrade", STUCK_AFTER + 1, MAX_WAIT + 100, Step.RECOVER),  # stuck wins
    ],
)
def test_next_step(status: str, age: float, waited: float, expected: Step) -> None:
    release, now = pending_for(age, status)
    assert next_step(release, now, waited, stuck_after=STUCK_AFTER, max_wait=MAX_WAIT) is expected


def test_a_pending_revision_without_a_time_is_never_judged_stuck() -> None:
    release = ReleaseStatus("pending-upgrade", 4, None)
    now = PENDING_SINCE + timedelta(days=30)
    assert next_step(release, now, 0, stuck_after=1, max_wait=10) is Step.RETRY
    assert next_step(release, now, 10, stuck_after=1, max_wait=10) is Step.GIVE_UP


@pytest.mark.parametrize(
    ("attempt", "seconds"), [(0, 2.0), (1, 4.0), (2, 8.0), (3, 16.0), (4, 30.0), (9, 30.0)]
)
def test_backoff_doubles_up_to_the_cap(attempt: int, seconds: float) -> None:
    assert backoff(attempt) == seconds


def rows(*statuses: str) -> list[Revision]:
    return [Revision(i, s, None, "c", "1", "") for i, s in enumerate(statuses, start=1)]


@pytest.mark.parametrize(
    ("revisions", "expected"),
    [
        (history(fixture("history.json")), 3),  # the last deployed, not the newest superseded
        (rows("superseded", "failed", "pending-upgrade"), 1),  # no deployed: last that worked
        (rows("superseded", "superseded", "failed", "pending-rollback"), 2),
        (rows("deployed", "superseded", "deployed", "pending-upgrade"), 3),
        (rows("failed", "pending-upgrade"), None),  # the install never worked
        (rows("pending-install"), None),
        ([], None),
    ],
)
def test_recovery_revision(revisions: list[Revision], expected: int | None) -> None:
    assert recovery_revision(revisions) == expected


# -- the process: a fake helm -------------------------------------------------------------------

FAKE_HELM = """\
import json, signal, sys, time
from pathlib import Path

answer = {}
here = Path(sys.argv[0]).resolve().parent


def on_term(signum, frame):
    with open(here / "signals.log", "a") as log:
        log.write("TERM\\n")
    if not answer.get("ignore_term"):
        sys.stderr.write(answer.get("stderr_on_term", ""))
        sys.exit(1)


signal.signal(signal.SIGTERM, on_term)
with open(here / "argv.log", "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
verb = sys.argv[1]
answers = json.loads((here / "plan.json").read_text())[verb]
counter = here / f"count-{verb}"
count = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(count + 1))
answer = answers[min(count, len(answers) - 1)]
time.sleep(answer.get("sleep", 0))
sys.stdout.write(answer.get("stdout", ""))
sys.stderr.write(answer.get("stderr", ""))
sys.exit(answer.get("code", 0))
"""


class FakeHelm:
    """A helm executable in a folder: it answers each verb from a plan and logs its argv."""

    def __init__(self, folder: Path, plan: dict[str, list[dict[str, Any]]]) -> None:
        self.folder = folder
        self.binary = folder / "helm"
        self.binary.write_text(f"#!{sys.executable} -S\n{FAKE_HELM}")
        self.binary.chmod(0o755)
        (folder / "plan.json").write_text(json.dumps(plan))

    def calls(self) -> list[list[str]]:
        log = self.folder / "argv.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def signals(self) -> list[str]:
        log = self.folder / "signals.log"
        return log.read_text().splitlines() if log.exists() else []


BUSY = {"stderr": fixture("stderr-another-operation.txt"), "code": 1}
OK = {"stdout": UPGRADED}


def test_run_prints_the_fixture_with_our_namespace_and_context(tmp_path: Path) -> None:
    fake = FakeHelm(tmp_path, {"status": [{"stdout": fixture("status-deployed.json")}]})
    helm = Helm(str(fake.binary), namespace="digitloop", kube_context="kind-digitloop")
    out = helm.run("status", "digitloop", "--output", "json")
    assert release_status(out).status == "deployed"
    assert fake.calls() == [
        [
            "status",
            "digitloop",
            "--output",
            "json",
            "--namespace",
            "digitloop",
            "--kube-context",
            "kind-digitloop",
        ],
    ]


def test_a_failing_helm_raises_with_its_stderr(tmp_path: Path) -> None:
    fake = FakeHelm(tmp_path, {"upgrade": [BUSY]})
    with pytest.raises(HelmError) as raised:
        Helm(str(fake.binary)).run("upgrade", "digitloop", "charts/digitloop")
    assert isinstance(raised.value, DigitloopError) and isinstance(raised.value, RuntimeError)
    assert raised.value.stderr == fixture("stderr-another-operation.txt")
    assert "another operation" in str(raised.value)


def test_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HelmError, match="not found: install helm"):
        Helm(str(tmp_path / "no-helm")).run("version")


def test_retries_while_another_operation_is_in_progress(tmp_path: Path) -> None:
    fake = FakeHelm(
        tmp_path,
        {
            "upgrade": [BUSY, BUSY, OK],
            "status": [{"stdout": fixture("status-pending-upgrade.json")}],
        },
    )
    slept: list[float] = []
    out = upgrade_serialised(
        Helm(str(fake.binary)),
        "digitloop",
        "charts/digitloop",
        ["--reuse-values"],
        stuck_after=STUCK_AFTER,
        now=lambda: PENDING_SINCE + timedelta(seconds=20),
        sleep=slept.append,
    )
    assert out == UPGRADED
    assert slept == [2.0, 4.0]
    assert [call[0] for call in fake.calls()] == [
        "upgrade",
        "status",
        "upgrade",
        "status",
        "upgrade",
    ]


def test_gives_up_after_max_wait(tmp_path: Path) -> None:
    fake = FakeHelm(
        tmp_path,
        {"upgrade": [BUSY], "status": [{"stdout": fixture("status-pending-upgrade.json")}]},
    )
    clock = iter(range(0, 10_000, 100))  # each look at the clock: 100 s later
    with pytest.raises(HelmError, match="still busy after 300 s") as raised:
        upgrade_serialised(
            Helm(str(fake.binary)),
            "digitloop",
            "charts/digitloop",
            stuck_after=STUCK_AFTER,
            max_wait=300,
            now=lambda: PENDING_SINCE,
            monotonic=lambda: float(next(clock)),
            sleep=lambda _: None,
        )
    assert raised.value.stderr == fixture("stderr-another-operation.txt")
    assert [call[0] for call in fake.calls()].count("upgrade") == 3


def test_other_failures_are_not_retried(tmp_path: Path) -> None:
    failed = {"stderr": 'Error: UPGRADE FAILED: "digitloop" has no deployed releases\n', "code": 1}
    fake = FakeHelm(tmp_path, {"upgrade": [failed, OK]})
    with pytest.raises(HelmError, match="has no deployed releases"):
        upgrade_serialised(
            Helm(str(fake.binary)), "digitloop", "c", stuck_after=1, sleep=lambda _: None
        )
    assert fake.calls() == [["upgrade", "digitloop", "c"]]


@pytest.mark.parametrize("ignore_term", [False, True])
def test_our_deadline_sends_sigterm_first(tmp_path: Path, ignore_term: bool) -> None:
    term = {
        "sleep": 30,
        "ignore_term": ignore_term,
        "stderr_on_term": fixture("stderr-sigterm.txt"),
    }
    fake = FakeHelm(tmp_path, {"upgrade": [term]})
    timeout, grace = 1.0, 0.5
    started = time.monotonic()
    with pytest.raises(HelmTimeoutError, match=r"ran past 1 s; sent SIGTERM") as raised:
        Helm(str(fake.binary), timeout=timeout, grace=grace).run("upgrade", "digitloop", "c")
    elapsed = time.monotonic() - started
    assert fake.signals() == ["TERM"]
    if ignore_term:  # then, and only then, SIGKILL after the grace
        assert "ignored SIGTERM for 0.5 s and was killed (SIGKILL)" in str(raised.value)
        assert timeout + grace <= elapsed < timeout + grace + 5
    else:  # helm 4 cancels, records the revision failed and exits: we keep what it said
        assert "it stopped" in str(raised.value)
        assert raised.value.stderr == fixture("stderr-sigterm.txt")
        assert timeout <= elapsed < timeout + grace


def test_a_stuck_release_is_rolled_back_to_the_last_deployed_then_upgraded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeHelm(
        tmp_path,
        {
            "upgrade": [BUSY, OK],
            "status": [{"stdout": fixture("status-pending-upgrade.json")}],
            "history": [{"stdout": fixture("history.json")}],
            "rollback": [{"stdout": "Rollback was a success! Happy Helming!\n"}],
        },
    )
    slept: list[float] = []
    with caplog.at_level(logging.WARNING, logger="pipelines.rollout.helm_cli"):
        out = upgrade_serialised(
            Helm(str(fake.binary), namespace="digitloop"),
            "digitloop",
            "charts/digitloop",
            stuck_after=STUCK_AFTER,
            now=lambda: PENDING_SINCE + timedelta(hours=3),
            sleep=slept.append,
        )
    assert out == UPGRADED
    assert slept == []
    assert [call[:3] for call in fake.calls()] == [
        ["upgrade", "digitloop", "charts/digitloop"],
        ["status", "digitloop", "--output"],
        ["history", "digitloop", "--output"],
        ["rollback", "digitloop", "3"],
        ["upgrade", "digitloop", "charts/digitloop"],
    ]
    said = caplog.text
    assert "is stuck: revision 4 has been pending-upgrade" in said
    assert "Rolling back to revision 3" in said


def test_a_stuck_release_that_never_deployed_asks_for_an_uninstall(tmp_path: Path) -> None:
    never = json.dumps(
        [
            {
                "revision": 1,
                "updated": "2026-08-20T14:03:11Z",
                "status": "failed",
                "chart": "c",
                "app_version": "1",
                "description": "x",
            },
            {
                "revision": 4,
                "updated": "2026-08-20T14:03:11Z",
                "status": "pending-upgrade",
                "chart": "c",
                "app_version": "1",
                "description": "Preparing upgrade",
            },
        ]
    )
    fake = FakeHelm(
        tmp_path,
        {
            "upgrade": [BUSY],
            "status": [{"stdout": fixture("status-pending-upgrade.json")}],
            "history": [{"stdout": never}],
        },
    )
    with pytest.raises(HelmError, match="helm uninstall digitloop"):
        upgrade_serialised(
            Helm(str(fake.binary)),
            "digitloop",
            "c",
            stuck_after=STUCK_AFTER,
            now=lambda: PENDING_SINCE + timedelta(hours=3),
            sleep=lambda _: None,
        )
    assert "rollback" not in [call[0] for call in fake.calls()]
