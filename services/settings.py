"""Settings of the serving component, read from ``DIGITLOOP_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from contracts.api import Track
from contracts.settings import DigitloopSettings
from services.ids import new_secret


class ServingSettings(DigitloopSettings):
    """How the prediction service runs.

    Locally one process serves both tracks and splits the traffic itself; on the cluster
    each Deployment serves one track (``only_track``) and the Gateway splits the traffic.
    """

    stable_model: str = Field(
        default="champion", description="Version number or alias the stable track serves."
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
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token of /admin/*; unset and no file: admin is off."
    )
    admin_token_file: Path | None = Field(
        default=None, description="File holding the admin token (a mounted Kubernetes Secret)."
    )
    prediction_id_secret: SecretStr | None = Field(
        default=None,
        description="Key signing prediction ids; shared by every replica. "
        "Unset: a key generated once in the data directory.",
    )
    max_image_bytes: int = Field(
        default=2_000_000, gt=0, description="Largest accepted upload per image (413 above)."
    )
    max_batch: int = Field(default=64, gt=0, description="Most images in one /predict_batch.")
    torch_threads: int = Field(default=1, gt=0, description="Torch threads per worker process.")

    @field_validator("canary_model", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _canary_needs_a_model(self) -> ServingSettings:
        if self.only_track == "canary" and not self.canary_model:
            raise ValueError("DIGITLOOP_ONLY_TRACK=canary needs DIGITLOOP_CANARY_MODEL")
        return self

    def admin_secret(self) -> str | None:
        """The admin token in force, from the file when one is mounted."""
        if self.admin_token_file is not None:
            token = self.admin_token_file.read_text().strip()
            return token or None
        return self.admin_token.get_secret_value() if self.admin_token else None

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
