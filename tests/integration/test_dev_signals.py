"""How the embedded stack stops, in seconds, without starting its servers.

The signal handling of ``EmbeddedStack(handle_signals=True)`` (what ``digitloop dev``
uses) and ``stop_tree`` (how every process of the stack is stopped) on small Python
processes; tests/integration/test_dev.py runs the real stack through the same signals.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import suppress

import psutil
import pytest

from digitloop.stack import EmbeddedStack, StackConfig, StopSignal, stop_tree
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

IGNORE = ["bash", "-c", 'trap "" INT HUP; exec "$@"', "bash"]  # `nohup cmd &` in a script


def test_the_first_signal_unwinds_a_later_one_only_hurries():
    stack = EmbeddedStack(StackConfig(), handle_signals=True)
    with pytest.raises(StopSignal) as raised:
        stack._on_signal(signal.SIGTERM, None)
    assert raised.value.signum == signal.SIGTERM and isinstance(raised.value, KeyboardInterrupt)
    assert stack.signalled == signal.SIGTERM
    stack._on_signal(signal.SIGHUP, None)  # a closed terminal may hang up twice: no hurry
    assert not stack._hurry.is_set()
    stack._on_signal(signal.SIGINT, None)  # no second unwind, but no more waiting
    assert stack._hurry.is_set()


def test_a_signal_while_stopping_lets_the_stop_finish():
    stack = EmbeddedStack(StackConfig(), handle_signals=True)
    stack.stop()  # nothing started; the stack is stopping from now on
    stack._on_signal(signal.SIGTERM, None)  # no exception
    assert stack.signalled == signal.SIGTERM and not stack._hurry.is_set()


def test_a_signal_while_spawning_is_raised_once_the_child_is_recorded():
    stack = EmbeddedStack(StackConfig(), handle_signals=True)
    recorded = []
    with pytest.raises(StopSignal), stack._signals_deferred():
        stack._on_signal(signal.SIGINT, None)  # between fork and bookkeeping
        recorded.append("child")
    assert recorded == ["child"]


SLEEPER = """
import signal, sys, time
from digitloop.stack import EmbeddedStack, StackConfig, StopSignal

stack = EmbeddedStack(StackConfig(), handle_signals=True)
stack._install_signal_handlers()
import subprocess
probe = "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"
ignored = subprocess.check_output([sys.executable, "-c", probe], text=True).strip()
try:
    print(f"a child ignores SIGINT: {ignored}", flush=True)
    time.sleep(60)
except StopSignal as exc:
    print(f"stopped by {exc}", flush=True)
"""


def run_sleeper() -> subprocess.Popen:
    process = subprocess.Popen(
        [*IGNORE, sys.executable, "-c", SLEEPER],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "a child ignores SIGINT: False\n"  # handled, not ignored
    return process


def test_sigint_stops_it_even_when_ignored_at_start():
    process = run_sleeper()
    try:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
        assert out == "stopped by SIGINT\n"
        assert process.returncode == 0
    finally:
        process.kill()
        process.wait()


def test_sighup_stays_ignored_under_nohup():
    process = run_sleeper()
    try:
        process.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=1)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        assert out == "stopped by SIGTERM\n"
    finally:
        process.kill()
        process.wait()


# A group leader and a child in a session of its own (as BentoML's arbiter and workers);
# the child always ignores SIGTERM, the leader when told to.
FAMILY = """
import signal, subprocess, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(
    [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
     "print('up', flush=True); time.sleep(120)"],
    start_new_session=True, stdout=subprocess.PIPE, text=True,
)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(120)
"""


@pytest.fixture
def family(request) -> Iterator[tuple[subprocess.Popen, psutil.Process]]:
    leader = subprocess.Popen(
        [sys.executable, "-c", FAMILY, request.param],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert leader.stdout is not None
    escaped = psutil.Process(int(leader.stdout.readline()))
    try:
        yield leader, escaped
    finally:
        for process in (leader, escaped):
            with suppress(psutil.Error, ProcessLookupError):
                process.kill()
        leader.wait()


def gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


@pytest.mark.parametrize("family", ["obedient"], indirect=True)
def test_what_escaped_the_group_is_stopped_too(family):
    leader, escaped = family
    started = time.monotonic()
    how = stop_tree(leader, grace=2)
    assert leader.returncode == -signal.SIGTERM  # the leader went on SIGTERM
    assert how == " (1 left behind, stopped)"
    assert gone(escaped)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("family", ["stubborn"], indirect=True)
def test_the_group_is_killed_after_its_grace(family):
    leader, escaped = family
    started = time.monotonic()
    how = stop_tree(leader, grace=1)
    assert leader.returncode == -signal.SIGKILL
    assert how.startswith(" (killed)")
    assert gone(escaped)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("family", ["stubborn"], indirect=True)
def test_a_second_signal_skips_the_grace(family):
    leader, escaped = family
    hurry = threading.Event()
    threading.Timer(0.5, hurry.set).start()
    started = time.monotonic()
    how = stop_tree(leader, grace=60, hurry=hurry)
    assert how.startswith(" (killed)")
    assert gone(escaped)
    assert time.monotonic() - started < 5
