"""The helm CLI, run so that rollouts take turns and a killed helm cannot wedge the release.

What Helm 4 does, from its source (file:line in tests/fixtures/helm/SOURCES.md):

- ``helm upgrade`` refuses while the release's last revision is ``pending-*``, with "another
  operation (install/upgrade/rollback) is in progress"; the loser of an exact race gets
  "release: already exists". Both mean: someone else is changing the release, try again later.
- ``helm upgrade`` catches SIGTERM/SIGINT, cancels and records the revision ``failed``; a
  SIGKILLed helm leaves it ``pending-upgrade`` for ever. So our deadline sends SIGTERM first.
- ``helm rollback`` does not check for a pending revision: rolling back to the last deployed
  revision is how a stuck release is recovered without touching Helm's storage.

I/O stays in :class:`Helm` and :func:`upgrade_serialised`; every decision is a pure function.
"""

from __future__ import annotations

import enum
import json
import logging
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from contracts.errors import DigitloopError

log = logging.getLogger(__name__)

IN_PROGRESS = (
    "another operation (install/upgrade/rollback) is in progress",  # action.errPending
    "release: already exists",  # driver.ErrReleaseExists: lost the race to write the revision
)
PENDING = frozenset({"pending-install", "pending-upgrade", "pending-rollback"})


class HelmError(DigitloopError, RuntimeError):
    """helm failed or could not run; ``stderr`` holds what it said."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


class HelmTimeoutError(HelmError):
    """helm outlived our deadline and was stopped: SIGTERM, then SIGKILL after the grace."""


@dataclass(frozen=True)
class ReleaseStatus:
    """``helm status -o json``: the release's last revision."""

    status: str
    revision: int
    last_deployed: datetime | None  # when that revision's operation started

    @property
    def pending(self) -> bool:
        return self.status in PENDING


@dataclass(frozen=True)
class Revision:
    """One row of ``helm history -o json``."""

    revision: int
    status: str
    updated: datetime | None
    chart: str
    app_version: str
    description: str


class Step(enum.Enum):
    """What to do after helm said another operation is in progress."""

    RETRY = "retry"  # the other operation may still be running: wait, then upgrade again
    RECOVER = "recover"  # pending for longer than any operation can run: its helm is gone
    GIVE_UP = "give up"  # we waited as long as we may


def _time(text: str | None) -> datetime | None:
    """A Go time.Time in JSON (RFC 3339, nanoseconds, any zone); absent when zero."""
    return datetime.fromisoformat(text) if text else None


def release_status(json_text: str) -> ReleaseStatus:
    release = json.loads(json_text)
    info = release.get("info") or {}
    return ReleaseStatus(
        info.get("status", "unknown"),
        int(release.get("version", 0)),
        _time(info.get("last_deployed")),
    )


def history(json_text: str) -> list[Revision]:
    """Oldest first, as helm prints it (``helm history`` keeps the newest ``--max`` rows)."""
    revisions = [
        Revision(
            int(row["revision"]),
            row["status"],
            _time(row.get("updated")),
            row.get("chart", ""),
            row.get("app_version", ""),
            row.get("description", ""),
        )
        for row in json.loads(json_text) or []
    ]
    return sorted(revisions, key=lambda row: row.revision)


def is_in_progress(stderr: str) -> bool:
    return any(marker in stderr for marker in IN_PROGRESS)


def next_step(
    status: ReleaseStatus, now: datetime, waited: float, *, stuck_after: float, max_wait: float
) -> Step:
    """Recover a revision pending for over ``stuck_after`` s, else retry until ``max_wait`` s."""
    age = (now - status.last_deployed).total_seconds() if status.last_deployed else None
    if status.pending and age is not None and age > stuck_after:
        return Step.RECOVER
    return Step.GIVE_UP if waited >= max_wait else Step.RETRY


def backoff(attempt: int, *, base: float = 2.0, cap: float = 30.0) -> float:
    """Seconds before retry ``attempt`` (0, 1, ...): doubling from ``base``, at most ``cap``."""
    return min(cap, base * 2**attempt)


def recovery_revision(revisions: Sequence[Revision]) -> int | None:
    """The revision to roll a stuck release back to: the last deployed (what runs), else the last
    superseded, like --rollback-on-failure's choice; None when no revision ever succeeded."""
    for wanted in ("deployed", "superseded"):
        found = [row.revision for row in revisions if row.status == wanted]
        if found:
            return max(found)
    return None


@dataclass(frozen=True)
class Helm:
    """The helm CLI against one namespace; ``timeout`` bounds each call, in seconds."""

    binary: str = "helm"
    namespace: str | None = None
    kubeconfig: str | None = None
    kube_context: str | None = None
    timeout: float = 720.0
    grace: float = 30.0  # after SIGTERM, for helm to record the revision failed

    def command(self, *args: str) -> list[str]:
        command = [self.binary, *args]
        for option, value in (
            ("--namespace", self.namespace),
            ("--kubeconfig", self.kubeconfig),
            ("--kube-context", self.kube_context),
        ):
            if value:
                command += [option, value]
        return command

    def run(self, *args: str) -> str:
        """Run helm; its stdout. Raises HelmError (non-zero exit), HelmTimeoutError (deadline)."""
        command = self.command(*args)
        shown = " ".join(command)
        try:
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        except FileNotFoundError:
            raise HelmError(
                f"{self.binary!r} not found: install helm (`make tools` puts the pinned one in "
                "./bin) or set DIGITLOOP_HELM_BINARY"
            ) from None
        try:
            stdout, stderr = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            try:
                _, stderr = process.communicate(timeout=self.grace)
                how = "it stopped (an upgrade records its revision failed on SIGTERM)"
            except subprocess.TimeoutExpired:
                process.kill()
                _, stderr = process.communicate()
                how = f"it ignored SIGTERM for {self.grace:g} s and was killed (SIGKILL)"
            raise HelmTimeoutError(
                f"`{shown}` ran past {self.timeout:g} s; sent SIGTERM, {how}: {stderr.strip()}",
                stderr,
            ) from None
        if process.returncode != 0:
            raise HelmError(f"`{shown}` failed ({process.returncode}): {stderr.strip()}", stderr)
        return stdout


def upgrade_serialised(
    helm: Helm,
    release: str,
    chart: str,
    flags: Sequence[str] = (),
    *,
    stuck_after: float,
    max_wait: float | None = None,
    rollback_flags: Sequence[str] = (),
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """``helm upgrade RELEASE CHART *flags``, taking turns with every other Helm operation.

    While helm answers "another operation is in progress", wait with backoff and try again, for
    at most ``max_wait`` s (default ``stuck_after`` + 60). A revision pending for longer than
    ``stuck_after`` s has lost its helm: roll back to the last deployed revision, say so, then
    upgrade. ``stuck_after`` must exceed the longest Helm operation anyone runs on the release
    (helm's --timeout bounds each hook and the wait separately; ``make deploy`` counts too).
    """
    max_wait = stuck_after + 60 if max_wait is None else max_wait
    started, attempt, recovered = monotonic(), 0, False
    while True:
        try:
            return helm.run("upgrade", release, chart, *flags)
        except HelmTimeoutError:
            raise
        except HelmError as error:
            if not is_in_progress(error.stderr):
                raise
            busy = error
        status = release_status(helm.run("status", release, "--output", "json"))
        waited = monotonic() - started
        step = next_step(status, now(), waited, stuck_after=stuck_after, max_wait=max_wait)
        if step is Step.RECOVER and not recovered:
            recovered = _recover(helm, release, status, stuck_after, rollback_flags)
            continue
        if step is not Step.RETRY:
            raise HelmError(
                f"helm release {release!r} is still busy after {waited:.0f} s (revision "
                f"{status.revision} {status.status}); try again later: {busy}",
                busy.stderr,
            )
        delay = backoff(attempt)
        log.info(
            "release %r is busy (%s); upgrading again in %.0f s", release, status.status, delay
        )
        sleep(delay)
        attempt += 1


def _recover(
    helm: Helm, release: str, stuck: ReleaseStatus, stuck_after: float, flags: Sequence[str]
) -> bool:
    """Roll a stuck release back to its last good revision; False if someone moved it meanwhile."""
    revisions = history(helm.run("history", release, "--output", "json"))
    if not revisions or revisions[-1].revision != stuck.revision:
        return False  # the release changed since we looked: not stuck any more, upgrade again
    target = recovery_revision(revisions)
    since = stuck.last_deployed.isoformat() if stuck.last_deployed else "?"
    what = (
        f"helm release {release!r} is stuck: revision {stuck.revision} has been {stuck.status} "
        f"since {since}, longer than any Helm operation may run ({stuck_after:g} s), so the helm "
        "that started it was killed before it could record the outcome"
    )
    if target is None:
        raise HelmError(
            f"{what}; no revision of it ever deployed, so there is nothing to roll back to: "
            f"`helm uninstall {release}` and install again"
        )
    log.warning("%s. Rolling back to revision %d, the last good one, then upgrading.", what, target)
    try:
        helm.run("rollback", release, str(target), *flags)
    except HelmError as error:
        if isinstance(error, HelmTimeoutError) or not is_in_progress(error.stderr):
            raise
        return False  # someone else is recovering it at this very moment: wait for them
    log.warning("release %r rolled back to revision %d; upgrading", release, target)
    return True
