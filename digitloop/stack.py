"""The embedded stack on one machine: MLflow server, prediction service, sketchpad UI.

Used by ``digitloop dev`` (everything, until SIGINT, SIGTERM or SIGHUP) and ``digitloop
simulate`` (a stack of its own for one run). Every process listens on 127.0.0.1 and runs
in a session of its own, so a terminal's Ctrl-C or hang-up reaches only the parent, which
stops them: in reverse order, SIGTERM to the process group, a grace period, then SIGKILL.

What the children spawn: MLflow's server runs uvicorn in its own process group (its job
runner and huey consumers are off: nothing here submits MLflow jobs, and they were 8 of
the stack's 13 processes and half of MLflow's start-up CPU); BentoML's arbiter (circus)
starts each worker in a session of its own and stops them itself on SIGTERM, waiting for
their shutdown hooks (the service flushes its predictions log there). So
:meth:`EmbeddedStack.stop` also collects every descendant while it waits, and kills
whatever outlives its group leader.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from rich.console import Console

from contracts.settings import AdminTokenSettings, DigitloopSettings, ServiceUrlSettings
from model.settings import ModelSettings

BIN = Path(sys.executable).parent

# The signals that stop ``digitloop dev``: Ctrl-C, kill and process managers, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Seconds from SIGTERM to SIGKILL, per process; the service flushes its predictions log and
# tries its feedback spool once more (store timeouts: 2 s connect, 5 s read), as Kubernetes'
# default 30 s would let it.
GRACE_S = {"serving": 20.0}
DEFAULT_GRACE_S = 10.0
# The stack's own account of stopping, beside each process's log in ``<data dir>/logs``.
STACK_LOG = "stack.log"


class StopSignal(KeyboardInterrupt):
    """Raised in the main thread by the first stop signal (``handle_signals=True``).

    A KeyboardInterrupt, so whatever cleans up on Ctrl-C cleans up on SIGTERM and SIGHUP too.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class StackConfig:
    data_dir: Path = Path(".digitloop")
    host: str = "127.0.0.1"
    mlflow_port: int = 5000
    serve_port: int = 3000
    ui_port: int = 7860
    workers: int | None = None  # serving worker processes; None: ServingSettings' default
    with_ui: bool = True
    train_epochs: int = 8


@dataclass
class EmbeddedStack(AbstractContextManager):
    config: StackConfig
    console: Console = field(default_factory=lambda: Console(stderr=True))
    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    # Stop on SIGINT, SIGTERM and SIGHUP (main thread only): the first raises StopSignal in
    # the main thread, which unwinds through stop(); a later SIGINT or SIGTERM makes stop()
    # skip the grace periods (it still stops everything).
    handle_signals: bool = False
    signalled: int | None = field(default=None, init=False)
    _hurry: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _stopping: bool = field(default=False, init=False, repr=False)
    _deferring: bool = field(default=False, init=False, repr=False)
    _deferred: int | None = field(default=None, init=False, repr=False)
    _previous_handlers: dict[int, Any] = field(default_factory=dict, init=False, repr=False)
    _saved_environ: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.config.host}:{self.config.mlflow_port}"

    @property
    def service_url(self) -> str:
        return f"http://{self.config.host}:{self.config.serve_port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.config.host}:{self.config.ui_port}"

    def env(self) -> dict[str, str]:
        """The settings every component of this stack shares."""
        data_dir = self.config.data_dir.resolve()
        return {
            **DigitloopSettings.env_vars(data_dir=data_dir),
            **ModelSettings.env_vars(mlflow_tracking_uri=self.mlflow_url),
            **ServiceUrlSettings.env_vars(service_url=self.service_url),
            **AdminTokenSettings.env_vars(admin_token=admin_token(data_dir)),
            "OMP_NUM_THREADS": "1",
            "BENTOML_DO_NOT_TRACK": "True",
            "GRADIO_ANALYTICS_ENABLED": "False",
        }

    def __enter__(self) -> EmbeddedStack:
        self._stopping = False
        if self.handle_signals:
            self._install_signal_handlers()
        self._saved_environ = dict(os.environ)
        os.environ.update(self.env())  # this process (loop, simulator) shares them too
        logs = self.config.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        try:
            db = (self.config.data_dir / "mlflow.db").resolve()
            self._start(
                "mlflow",
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--host",
                    self.config.host,
                    "--port",
                    str(self.config.mlflow_port),
                    "--backend-store-uri",
                    f"sqlite:///{db}",
                    "--default-artifact-root",
                    (self.config.data_dir / "mlartifacts").resolve().as_uri(),
                    "--workers",
                    "1",
                ],
                f"{self.mlflow_url}/health",
                logs,
                env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )
            self._ensure_model()
            self._start(
                "serving",
                [
                    str(BIN / "digitloop"),
                    "serve",
                    "--host",
                    self.config.host,
                    "--port",
                    str(self.config.serve_port),
                    *self._workers_args(),
                    *self._canary_args(),
                ],
                f"{self.service_url}/readyz",
                logs,
            )
            if self.config.with_ui:
                self._start(
                    "ui",
                    [
                        str(BIN / "digitloop"),
                        "ui",
                        "--host",
                        self.config.host,
                        "--port",
                        str(self.config.ui_port),
                    ],
                    f"{self.ui_url}/",
                    logs,
                )
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        """Stop everything, then give back the environment and signal handlers it changed."""
        try:
            self.stop()
        finally:
            os.environ.clear()
            os.environ.update(self._saved_environ)
            self._restore_signal_handlers()

    # -- signals -----------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        """Handle SIGINT, SIGTERM and SIGHUP, whatever this process inherited.

        SIGINT is handled even when it was ignored at start (``cmd &`` in a script, where
        Python then installs no KeyboardInterrupt): the stack must stop on a Ctrl-C-style
        signal; run it in a session of its own (``setsid``) to keep it away from a
        terminal's Ctrl-C. SIGHUP stays ignored when it was (``nohup``: asked to outlive
        the terminal). The children get the default dispositions back at exec (a handled
        signal is reset there, an ignored one would stay ignored).
        """
        for signum in STOP_SIGNALS:
            previous = signal.getsignal(signum)
            if signum == signal.SIGHUP and previous == signal.SIG_IGN:
                continue
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signalled is not None:
            # A second SIGINT or SIGTERM: no second unwind, but no more waiting. Not SIGHUP:
            # a closed terminal may send it twice (kernel to the foreground group, shell to
            # its jobs) and nobody is there to be impatient.
            if signum != signal.SIGHUP:
                self._hurry.set()
            return
        self.signalled = signum
        if self._stopping:  # stopping already: finish as planned
            return
        if self._deferring:  # between a fork and the bookkeeping that stops the child
            self._deferred = signum
            return
        raise StopSignal(signum)

    @contextmanager
    def _signals_deferred(self) -> Iterator[None]:
        """Raise a stop signal that arrives inside the block only at its end."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._deferred is not None:
            signum, self._deferred = self._deferred, None
            raise StopSignal(signum)

    def _start(
        self,
        name: str,
        command: list[str],
        ready_url: str,
        logs: Path,
        timeout: float = 180,
        env: dict[str, str] | None = None,
    ) -> None:
        with (logs / f"{name}.log").open("a") as log, self._signals_deferred():
            process = subprocess.Popen(
                command,
                env={**os.environ, **self.env(), **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.processes.append((name, process))
        deadline = time.monotonic() + timeout
        with self.console.status(f"starting {name}..."):
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {process.returncode}; see {logs / f'{name}.log'}"
                    )
                try:
                    if httpx.get(ready_url, timeout=2).is_success:
                        self.console.print(f"[green]{name}[/] ready")
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        raise TimeoutError(f"{name} not ready after {timeout:.0f}s; see {logs / f'{name}.log'}")

    def _ensure_model(self) -> None:
        """Train version 1 when the registry is empty (about 3 minutes on 2 cores)."""
        from model.registry import Registry

        if Registry().versions():
            return
        self.console.print("the registry is empty: training version 1")
        from model.cli import train

        train(
            epochs=self.config.train_epochs,
            limit=None,
            batch_size=128,
            seed=42,
            no_augment=False,
            mnist=None,
            as_json=False,
            verbose=False,
        )

    def _workers_args(self) -> list[str]:
        """The serving workers asked for; none: the environment's or the service's default."""
        return [] if self.config.workers is None else ["--workers", str(self.config.workers)]

    def _canary_args(self) -> list[str]:
        """Serve the challenger as the canary when one is set: a restart keeps the canary."""
        from contracts.registry import CHALLENGER_ALIAS
        from model.registry import Registry
        from pipelines.settings import DecisionSettings

        if Registry().alias_version(CHALLENGER_ALIAS) is None:
            return []
        return [
            "--canary-model",
            CHALLENGER_ALIAS,
            "--canary-weight",
            str(DecisionSettings().new_canary_weight),
        ]

    def stop(self) -> None:
        """Stop every process, the last started first; safe to call more than once.

        Each gets SIGTERM on its process group and its grace period (GRACE_S), then
        SIGKILL; descendants outside the group (BentoML's workers) that outlive it are
        stopped the same way. A stop signal meanwhile (``handle_signals``) skips the waits.
        """
        self._stopping = True  # from now on a stop signal does not unwind
        for name, process in reversed(self.processes):
            grace = 0.0 if self._hurry.is_set() else GRACE_S.get(name, DEFAULT_GRACE_S)
            started = time.monotonic()
            how = stop_tree(process, grace, self._hurry)
            self._say(f"[dim]{name} stopped{how} in {time.monotonic() - started:.1f}s[/]")
        self.processes.clear()

    def _say(self, message: str) -> None:
        """Print, but never fail, and keep it in ``logs/stack.log``: after a hangup
        (SIGHUP) the terminal is gone, and the file is the only account of the stop."""
        from rich.text import Text

        with suppress(Exception):
            self.console.print(message)
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {Text.from_markup(message).plain}\n"
        with suppress(OSError), (self.config.data_dir / "logs" / STACK_LOG).open("a") as log:
            log.write(line)


def descendants(pid: int) -> dict[int, Any]:
    """Every living descendant of ``pid`` as psutil processes, by pid (none when it is gone)."""
    import psutil

    try:
        return {child.pid: child for child in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return {}


def stop_tree(process: subprocess.Popen, grace: float, hurry: threading.Event | None = None) -> str:
    """Stop ``process``, its process group and every descendant: SIGTERM, ``grace`` seconds
    (less once ``hurry`` is set), SIGKILL. Returns "" or how it had to be stopped."""
    import psutil

    # Only while ``process`` is not reaped is its pid sure to be its own.
    seen = descendants(process.pid) if process.poll() is None else {}
    how = ""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while process.poll() is None and time.monotonic() < deadline:
            if hurry is not None and hurry.is_set():
                break
            seen.update(descendants(process.pid))  # including any started meanwhile
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.2)
        if process.poll() is None:
            seen.update(descendants(process.pid))
            how = " (killed)"
            _signal_group(process, signal.SIGKILL)
    process.wait()
    # Whatever outlived the group: processes in groups of their own (BentoML's workers)
    # or orphaned grandchildren. psutil checks each is still the process seen (pid reuse).
    left = [child for child in seen.values() if _alive(child)]
    if left:
        for child in left:
            with suppress(psutil.Error):
                child.terminate()
        wait = 0.0 if hurry is not None and hurry.is_set() else min(grace, 5.0)
        _gone, alive = psutil.wait_procs(left, timeout=wait)
        for child in alive:
            with suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(alive, timeout=5)
        how += f" ({len(left)} left behind, stopped)"
    return how


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    """Signal the process group ``process`` leads (start_new_session), else ``process``."""
    with suppress(ProcessLookupError, PermissionError):
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)


def _alive(child: Any) -> bool:
    import psutil

    try:
        return child.is_running() and child.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def admin_token(data_dir: Path) -> str:
    """The admin token: the one configured (AdminTokenSettings), else one made once in the
    data directory."""
    if token := AdminTokenSettings().admin_secret():
        return token
    path = data_dir / "admin.token"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()
