"""The MLflow side of the model: log training runs, register versions, load them back.

MLflow is the single source of truth for model versions (registered model
``digitloop-mnist``); the ``champion`` alias is what the stable track serves and
``challenger`` the canary. Nothing here runs at import time: :func:`connect` points
MLflow at the configured store when a caller needs it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from contracts.errors import ModelNotFoundError
from contracts.registry import CHAMPION_ALIAS
from model.evaluate import Evaluation, plot_confusion
from model.export import OPSET as ONNX_OPSET
from model.export import export_onnx, quantize_int8
from model.novelty import NoveltyScorer
from model.settings import ModelSettings
from model.train import TrainConfig, TrainResult

log = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent

TEMPERATURE_TAG = "temperature"
# The novelty scorer's summary (JSON) as a version tag; its arrays are the run's artefact.
NOVELTY_TAG = "novelty"
NOVELTY_ARTIFACT = "novelty/novelty.npz"
# The version's ONNX export (model.export), what the servers run; the tag names its opset.
ONNX_TAG = "onnx_opset"
ONNX_ARTIFACT = "onnx/model.onnx"
# That export quantised to int8 (model.export.quantize_int8), what the servers run by
# default; the tag holds how many digits calibrated it.
ONNX_INT8_TAG = "onnx_int8_calibration"
ONNX_INT8_ARTIFACT = "onnx/model_int8.onnx"


@dataclass(frozen=True)
class ModelVersionInfo:
    """What the registry knows of one version."""

    name: str
    version: str
    aliases: list[str]
    tags: dict[str, str]
    run_id: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def temperature(self) -> float:
        """What this version's logits are divided by before the softmax it serves: fitted on
        MNIST test at registration; 1.0 (the network as it is) for versions registered
        before calibration was."""
        return float(self.tags.get(TEMPERATURE_TAG) or 1.0)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "aliases": self.aliases,
            "tags": self.tags,
            "run_id": self.run_id,
        }


@dataclass
class TrainingRecord:
    """Everything one training run logs next to the model itself."""

    params: dict[str, object]
    history: list[dict[str, float]]
    mnist_test: Evaluation
    seconds: float
    # What the network was trained on: {"mnist_train": 60000, "feedback_window": ..., ...}
    training_data: dict[str, object]
    parent_version: str | None = None
    extra_metrics: dict[str, float] = field(default_factory=dict)
    run_name: str | None = None
    # Fitted on this version's own training data (model.novelty); None: served without.
    novelty: NoveltyScorer | None = None
    # (N, 28, 28) uint8 training digits as the service sees them
    # (model.export.calibration_digits), which the int8 export is calibrated on; None:
    # registered without one, and served by its fp32 export.
    int8_calibration: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(
        cls,
        config: TrainConfig,
        result: TrainResult,
        mnist_test: Evaluation,
        training_data: dict[str, object],
        extra_params: dict[str, object] | None = None,
        **fields: object,
    ) -> TrainingRecord:
        """The record of a :func:`model.train.train` or ``fine_tune`` result."""
        return cls(
            params={**config.as_params(), **(extra_params or {})},
            history=result.history,
            mnist_test=mnist_test,
            seconds=result.seconds,
            training_data=training_data,
            **fields,
        )  # type: ignore[arg-type]


class Registry:
    """MLflow tracking and model registry for ``digitloop-mnist``."""

    def __init__(self, settings: ModelSettings | None = None) -> None:
        import mlflow
        from mlflow import MlflowClient

        self.settings = settings or ModelSettings()
        # MLflow draws a progress bar per artefact download: noise in logs and CI output.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.name = self.settings.registered_model
        uri = self.settings.tracking_uri
        if self.settings.mlflow_tracking_uri is None:
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.experiment_id = self._ensure_experiment()

    def _ensure_experiment(self) -> str:
        experiment = self.client.get_experiment_by_name(self.settings.mlflow_experiment)
        if experiment is not None:
            return experiment.experiment_id
        # A tracking server stores artefacts where it is configured to; the embedded store
        # keeps them in the data directory, never in the current working directory.
        location = None
        if self.settings.mlflow_tracking_uri is None:
            location = self.settings.artifact_root.as_uri()
        return self.client.create_experiment(
            self.settings.mlflow_experiment, artifact_location=location
        )

    # -- writing -------------------------------------------------------------------------

    def log_and_register(self, net: nn.Module, record: TrainingRecord) -> ModelVersionInfo:
        """Log a training run with its model and register it as a new version.

        The first version of the registered model becomes ``champion``.
        """
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        metrics = {
            "mnist_test_accuracy": record.mnist_test.accuracy,
            "train_seconds": record.seconds,
            **record.extra_metrics,
        }
        metrics.update(
            {f"mnist_test_accuracy_class_{c}": v for c, v in record.mnist_test.per_class.items()}
        )
        calibration = record.mnist_test.calibration
        if calibration is not None:
            metrics.update(
                {
                    "temperature": calibration.temperature,
                    "mnist_test_ece": calibration.ece,
                    "mnist_test_ece_calibrated": calibration.ece_calibrated,
                    "mnist_test_expected_accuracy": calibration.expected_accuracy,
                }
            )
        example = np.zeros((1, 1, 28, 28), np.float32)
        with torch.inference_mode():
            signature = infer_signature(example, net(torch.from_numpy(example)).numpy())

        with mlflow.start_run(experiment_id=self.experiment_id, run_name=record.run_name) as run:
            mlflow.log_params(record.params)
            for entry in record.history:
                step = int(entry["epoch"])
                mlflow.log_metrics({k: v for k, v in entry.items() if k != "epoch"}, step=step)
            mlflow.log_metrics(metrics)
            mlflow.log_dict(record.training_data, "training_data.json")
            mlflow.log_dict(record.mnist_test.as_dict(), "mnist_test_evaluation.json")
            with tempfile.TemporaryDirectory() as tmp:
                png = plot_confusion(
                    record.mnist_test.confusion,
                    Path(tmp) / "confusion.png",
                    title="MNIST test: confusion matrix",
                )
                mlflow.log_artifact(str(png))
            # Pickle plus our package as code keeps the loaded object a plain nn.Module
            # (MLflow 3 would otherwise export a pt2 program). MLflow warns about pickle at
            # every save; the pickled class is our own, so that warning is silenced here.
            logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
            logged = mlflow.pytorch.log_model(
                net,
                name="model",
                serialization_format="pickle",
                code_paths=[str(_PACKAGE_DIR)],
                signature=signature,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pillow"],
                registered_model_name=self.name,
                await_registration_for=60,
            )
            version = str(logged.registered_model_version)
            tags = {
                "parent_version": record.parent_version or "",
                "training_data": json.dumps(record.training_data, sort_keys=True),
                "mnist_test_accuracy": f"{record.mnist_test.accuracy:.6f}",
                "run_id": run.info.run_id,
            }
            if calibration is not None:
                tags[TEMPERATURE_TAG] = f"{calibration.temperature:.6f}"
            exported = export_onnx(net)
            _log_bytes(exported, ONNX_ARTIFACT)
            tags[ONNX_TAG] = str(ONNX_OPSET)
            if record.int8_calibration is not None:
                _log_bytes(quantize_int8(exported, record.int8_calibration), ONNX_INT8_ARTIFACT)
                tags[ONNX_INT8_TAG] = str(len(record.int8_calibration))
            if record.novelty is not None:
                _log_bytes(record.novelty.to_bytes(), NOVELTY_ARTIFACT)
                mlflow.log_metrics(
                    {
                        "novelty_threshold": record.novelty.threshold,
                        "novelty_share": record.novelty.share,
                    }
                )
                tags[NOVELTY_TAG] = json.dumps(record.novelty.summary(), sort_keys=True)
            if "feedback_holdout_accuracy" in record.extra_metrics:
                tags["feedback_holdout_accuracy"] = (
                    f"{record.extra_metrics['feedback_holdout_accuracy']:.6f}"
                )
            for key, value in tags.items():
                self.client.set_model_version_tag(self.name, version, key, value)
        if self.alias_version(CHAMPION_ALIAS) is None:
            self.set_alias(CHAMPION_ALIAS, version)
        log.info("registered %s version %s", self.name, version)
        return self.get(version)

    def set_alias(self, alias: str, version: str) -> None:
        self.get(version)  # raises a clear error for an unknown version
        self.client.set_registered_model_alias(self.name, alias, version)

    def delete_alias(self, alias: str) -> None:
        """Remove ``alias``; removing an alias that is not set is not an error."""
        if self.alias_version(alias) is not None:
            self.client.delete_registered_model_alias(self.name, alias)

    # -- reading -------------------------------------------------------------------------

    def alias_version(self, alias: str) -> str | None:
        """The version ``alias`` points at, or None when it is not set."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def get(self, ref: str | int) -> ModelVersionInfo:
        """Look a version up by number (``"3"``) or alias (``"champion"``).

        Raises:
            ModelNotFoundError: no such version or alias.
        """
        from mlflow.exceptions import MlflowException

        ref = str(ref)
        try:
            if ref.isdigit():
                mv = self.client.get_model_version(self.name, ref)
            else:
                mv = self.client.get_model_version_by_alias(self.name, ref)
        except MlflowException as exc:
            known = ", ".join(v.version for v in self.versions()) or "none"
            raise ModelNotFoundError(
                f"no version or alias {ref!r} of model {self.name!r} "
                f"(registered versions: {known}); train one with `digitloop train`"
            ) from exc
        return ModelVersionInfo(
            name=self.name,
            version=str(mv.version),
            aliases=list(mv.aliases or []),
            tags=dict(mv.tags or {}),
            run_id=mv.run_id,
        )

    def versions(self) -> list[ModelVersionInfo]:
        """Every registered version, oldest first."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{self.name}'")
            # Version search leaves aliases out; the registered model has them all.
            alias_map = self.client.get_registered_model(self.name).aliases or {}
        except MlflowException:
            return []
        aliases: dict[str, list[str]] = {}
        for alias, version in alias_map.items():
            aliases.setdefault(str(version), []).append(alias)
        infos = [
            ModelVersionInfo(
                name=self.name,
                version=str(mv.version),
                aliases=sorted(aliases.get(str(mv.version), [])),
                tags=dict(mv.tags or {}),
                run_id=mv.run_id,
            )
            for mv in found
        ]
        return sorted(infos, key=lambda info: int(info.version))

    def novelty(self, info: ModelVersionInfo) -> NoveltyScorer | None:
        """A version's novelty scorer; None for one registered without (older versions),
        or when its artefact cannot be read (logged: the version still serves)."""
        if not info.tags.get(NOVELTY_TAG):
            return None
        data = self._artifact(info, NOVELTY_ARTIFACT)
        return NoveltyScorer.from_bytes(data) if data is not None else None

    def onnx(self, info: ModelVersionInfo) -> bytes | None:
        """A version's ONNX export as registered; None for one registered before the
        export was logged, or when it cannot be read (logged: the caller exports it)."""
        if not info.tags.get(ONNX_TAG):
            return None
        return self._artifact(info, ONNX_ARTIFACT)

    def onnx_int8(self, info: ModelVersionInfo) -> bytes | None:
        """A version's int8 export as registered; None for one registered without it, or
        when it cannot be read (logged: the caller serves the fp32 export)."""
        if not info.tags.get(ONNX_INT8_TAG):
            return None
        return self._artifact(info, ONNX_INT8_ARTIFACT)

    def _artifact(self, info: ModelVersionInfo, artifact_path: str) -> bytes | None:
        if not info.run_id:
            return None
        import mlflow

        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = mlflow.artifacts.download_artifacts(
                    run_id=info.run_id,
                    artifact_path=artifact_path,
                    dst_path=tmp,
                    tracking_uri=self.settings.tracking_uri,
                )
                return Path(path).read_bytes()
        except Exception as exc:
            log.warning("version %s: cannot read %s (%s)", info.version, artifact_path, exc)
            return None

    def load(self, ref: str | int = CHAMPION_ALIAS) -> tuple[nn.Module, ModelVersionInfo]:
        """Load a version (number or alias) as an ``nn.Module`` in eval mode on the CPU."""
        import mlflow.pytorch

        info = self.get(ref)
        # MLflow prepends the logged code to sys.path; our package is already importable,
        # and a stale copy ahead of it would shadow modules imported later.
        saved_path = list(sys.path)
        try:
            net = mlflow.pytorch.load_model(info.uri, map_location="cpu")
        finally:
            sys.path[:] = saved_path
        net.eval()
        return net, info


def _log_bytes(data: bytes, artifact_path: str) -> None:
    """``data`` as the active run's artefact ``artifact_path`` ("folder/name")."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_path).name
        path.write_bytes(data)
        mlflow.log_artifact(str(path), str(Path(artifact_path).parent))
