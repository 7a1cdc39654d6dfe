"""Settings of the model component, read from ``DIGITLOOP_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from contracts.registry import REGISTERED_MODEL_NAME
from contracts.settings import DigitloopSettings


class ModelSettings(DigitloopSettings):
    """Where data, models and runs live.

    Every field reads ``DIGITLOOP_<FIELD>`` from the environment (or a ``.env`` file).
    Nothing here touches the disk: folders are made by whoever writes into them.
    """

    mnist_path: Path | None = Field(
        default=None,
        description="An .npz with x_train/y_train/x_test/y_test; when set, nothing is downloaded.",
    )
    mnist_base_url: str = Field(
        default="https://ossci-datasets.s3.amazonaws.com/mnist/",
        description="Where the four official MNIST .gz files are downloaded from.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking server URL; default an embedded SQLite store in data_dir.",
    )
    mlflow_experiment: str = Field(
        default="digitloop",
        description="MLflow experiment name (loop runs go to `<name>-loop`).",
    )
    registered_model: str = Field(
        default=REGISTERED_MODEL_NAME, description="Name of the registered model in MLflow."
    )
    novelty_share: float = Field(
        default=0.05,
        gt=0.0,
        lt=0.5,
        description="Share of held-out in-distribution drawings a version's novelty threshold "
        "flags (fitted at registration; model.novelty). 0.05, not 0.01: the window test then "
        "caught 36/50 instead of 21/50 windows with 25 % small off-centre digits, with no more "
        "false alarms (python -m digitloop_bench.drift novelty).",
    )

    @property
    def mnist_cache_dir(self) -> Path:
        return self.data_dir / "mnist"

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI in force: the configured server or the embedded store."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        """Where the embedded store keeps run artefacts (unused with a tracking server)."""
        return (self.data_dir / "mlartifacts").resolve()
