"""The model versions a service process serves, per track, and how they change.

Models load in the background (``/readyz`` stays false until the stable one is in, and a
registry that is still empty, say before the cluster's bootstrap job has trained version
1, is retried rather than fatal). ``apply`` swaps versions with no restart; the other
worker processes follow through the shared :class:`~services.state.StateFile`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from contracts.api import ModelInfo, Track
from contracts.routing import RoutingState
from model.registry import Registry
from services.errors import NotReady
from services.inference import Classifier
from services.routing import TrafficSplit
from services.settings import ServingSettings
from services.state import StateFile

log = logging.getLogger("digitloop.slots")

POLL_S = 0.5
RETRY_S = 3.0


class ModelSlots:
    def __init__(
        self,
        settings: ServingSettings,
        registry_factory: Callable[[], Registry],
        split: TrafficSplit,
        metrics: Any,
    ) -> None:
        self.settings = settings
        self._registry_factory = registry_factory
        self._registry: Registry | None = None
        self.split = split
        self.metrics = metrics
        self.state_file = StateFile(settings.data_dir / "serving-state.json")
        self._lock = threading.Lock()
        # One load at a time, and the watcher's view of the state file changes only with it:
        # see ``_watch``.
        self._loading = threading.Lock()
        self._slots: dict[str, Classifier] = {}
        self._loaded: RoutingState | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.initial = RoutingState(
            stable_model=settings.stable_model,
            canary_model=settings.canary_model,
            canary_weight=settings.canary_weight if settings.canary_model else 0,
        )
        self._wanted = self.initial

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="model-slots", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def ready(self) -> bool:
        wanted = self.settings.only_track or "stable"
        return wanted in self._slots

    def _watch(self) -> None:
        """Load the wanted state, then follow the state file that ``apply`` writes.

        Reading the file and loading happen under ``_loading``, the lock ``apply`` holds
        from its load to its write. Without it, a poll between ``apply``'s load and its
        write saw a state it did not want yet and loaded the old one back: the canary a
        reload had just answered with vanished for the seconds of a second load (a CI run
        of ``test_loop`` read ``/model`` in that gap).
        """
        # A state file older than this server run is a previous run's: settings win at
        # start-up, reloads of this run win after.
        seen_mtime = -1
        run_started_ns = _server_started_ns()
        while not self._stop.is_set():
            failed = False
            with self._loading:
                mtime = self.state_file.mtime_ns()
                if mtime != seen_mtime:
                    seen_mtime = mtime
                    if mtime > run_started_ns:
                        self._wanted = self.state_file.read() or self.initial
                if self._wanted != self._loaded:
                    try:
                        self._load(self._wanted)
                    except Exception as exc:  # keep serving what is loaded
                        log.warning(
                            "could not load %s (%s); retrying in %.0fs",
                            self._wanted,
                            exc,
                            RETRY_S,
                        )
                        failed = True
            self._stop.wait(RETRY_S if failed else POLL_S)

    # -- changes -------------------------------------------------------------------------

    def apply(self, **changes: object) -> RoutingState:
        """Load the changed versions here, then publish them to the other workers."""
        with self._loading:
            wanted = (self._loaded or self.initial).with_changes(**changes)
            self._load(wanted)
            self._wanted = wanted
            self.state_file.write(wanted)  # the watcher reads it back: already loaded
        return wanted

    def _load(self, wanted: RoutingState) -> None:
        registry = self._registry or self._registry_factory()
        self._registry = registry
        refs: dict[str, str | None] = {"stable": wanted.stable_model, "canary": wanted.canary_model}
        if self.settings.only_track:
            refs = {self.settings.only_track: refs[self.settings.only_track]}
        loaded: dict[str, Classifier] = {}
        for track, ref in refs.items():
            if ref is None:
                continue
            current = self._slots.get(track)
            info = registry.get(ref)
            if current is not None and current.version == info.version:
                loaded[track] = current
            else:
                loaded[track] = Classifier.from_registry(
                    info.version, registry, runtime=self.settings.inference_runtime
                )
                log.info("track %s now serves version %s", track, info.version)
        with self._lock:
            for track, old in self._slots.items():
                self.metrics.model_info.labels(model_version=old.version, track=track).set(0)
            self._slots = loaded
            self._loaded = wanted
            self.split.weight = wanted.canary_weight if "canary" in loaded else 0
            for track, classifier in loaded.items():
                self.metrics.model_info.labels(model_version=classifier.version, track=track).set(1)
        freeze_long_lived()

    # -- per request ---------------------------------------------------------------------

    def pick(self, pinned: str | None) -> tuple[Track, Classifier]:
        """The track and model that answer this request."""
        slots = self._slots  # one read: a concurrent reload swaps the whole dict
        if self.settings.only_track:
            track: Track = self.settings.only_track
        else:
            track = self.split.choose(pinned, canary_available="canary" in slots)
        classifier = slots.get(track)
        if classifier is None:
            raise NotReady("no model loaded yet; see /readyz")
        return track, classifier

    def describe(self) -> ModelInfo:
        slots = self._slots
        return ModelInfo(
            tracks={track: c.describe() for track, c in slots.items()},
            canary_weight=self.split.weight if "canary" in slots else 0,
            only_track=self.settings.only_track,
        )


def freeze_long_lived() -> None:
    """Keep what is loaded now (modules, the models) out of the garbage collector's scans.

    A worker holds about 340,000 objects once BentoML, MLflow, torch and ONNX Runtime are
    imported; each full collection scanned them all, 100-250 ms with the worker's GIL held,
    while requests waited (a p99 of 500-800 ms at 32 connections, issue 17). Frozen, a
    full collection scans only what was made since. Garbage is collected first, so none is
    frozen; a model replaced later is still freed by reference counting (only a cycle
    among frozen objects would stay, which a reload now and then can afford).
    """
    import gc

    gc.collect()
    gc.freeze()


def _server_started_ns() -> int:
    """When the server run began: its parent (BentoML's arbiter) started, or this process."""
    import os

    import psutil

    try:
        return int(psutil.Process(os.getppid()).create_time() * 1e9)
    except psutil.Error:
        return int(psutil.Process().create_time() * 1e9)
