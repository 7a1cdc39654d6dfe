"""Settings of the serving component, read from ``DIGITLOOP_*`` environment variables."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from contracts.api import MAX_BATCH, Track
from contracts.registry import CHAMPION_ALIAS
from contracts.settings import AdminTokenSettings, DigitloopSettings
from services.ids import new_secret

# The largest image accepted by default: max_image_bytes, and max_body_bytes for a full batch.
_IMAGE_BYTES = 2_000_000
# What can run the network (services.inference.Classifier).
Runtime = Literal["torch", "onnxruntime", "onnxruntime_int8"]


class ServingSettings(AdminTokenSettings, DigitloopSettings):
    """How the prediction service runs.

    Locally one process serves both tracks and splits the traffic itself; on the cluster
    each Deployment serves one track (``only_track``) and the Gateway splits the traffic.
    """

    stable_model: str = Field(
        default=CHAMPION_ALIAS, description="Version number or alias the stable track serves."
    )
    canary_model: str | None = Field(
        default=None, description="Version or alias of the canary; unset: none."
    )
    canary_weight: int = Field(
        default=0, ge=0, le=100, description="Percent of requests the canary answers (0-100)."
    )
    only_track: Track | None = Field(
        default=None, description="Serve one track only (a cluster pod); unset: both, split here."
    )
    prediction_id_secret: SecretStr | None = Field(
        default=None,
        description="Key signing prediction ids; shared by every replica. "
        "Unset: a key generated once in the data directory.",
    )
    max_image_bytes: int = Field(
        default=_IMAGE_BYTES, gt=0, description="Largest accepted upload per image (413 above)."
    )
    max_batch: int = Field(
        default=MAX_BATCH,
        gt=0,
        le=MAX_BATCH,
        description="Most images in one /predict_batch (413 above); at most the API's bound.",
    )
    max_body_bytes: int = Field(
        default=MAX_BATCH * _IMAGE_BYTES,
        gt=0,
        description="Largest request body either image route reads (413 above): a full batch "
        "of the largest images; each image is bounded again by max_image_bytes.",
    )
    workers: int = Field(
        default=2,
        ge=1,
        description="Serving worker processes, each with torch_threads threads: one per core "
        "(the chart runs 1 per pod and scales with replicas).",
    )
    torch_threads: int = Field(
        default=1, gt=0, description="Torch (and ONNX Runtime) threads per worker process."
    )
    inference_runtime: Runtime = Field(
        default="onnxruntime_int8",
        description="What runs the network: `onnxruntime_int8` (the version's int8 ONNX "
        "export, registered with it; 0.57-0.68x the fp32 export's time per image, MNIST "
        "accuracy within 0.02 point; a version without one runs its fp32 export), "
        "`onnxruntime` (the fp32 export; a third of torch's time) or `torch`.",
    )

    @field_validator("canary_model", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _canary_needs_a_model(self) -> ServingSettings:
        if self.only_track == "canary" and not self.canary_model:
            only, canary = self.env_name("only_track"), self.env_name("canary_model")
            raise ValueError(f"{only}=canary needs {canary}")
        return self

    def id_secret(self) -> bytes:
        """The prediction id key: configured, or made once in the data directory.

        Every worker process reads the same file, so ids issued by one verify in another.
        """
        if self.prediction_id_secret is not None:
            return self.prediction_id_secret.get_secret_value().encode()
        path = self.data_dir / "prediction-id.secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another worker made it first
            else:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(new_secret())
        return path.read_bytes().strip()
