"""The base of every component's settings: ``DIGITLOOP_*`` variables or a ``.env`` file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DigitloopEnv(BaseSettings):
    """Base of every component's settings: ``DIGITLOOP_<FIELD>`` variables or a ``.env`` file."""

    model_config = SettingsConfigDict(env_prefix="DIGITLOOP_", env_file=".env", extra="ignore")


class DigitloopSettings(DigitloopEnv):
    """Base of every component's settings that lives in the project data directory."""

    data_dir: Path = Field(
        default=Path(".digitloop"),
        description="Project data directory: MNIST cache, embedded MLflow store, local store "
        "and spool, generated secrets.",
    )
