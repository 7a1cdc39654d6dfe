"""The settings every component builds on: ``DIGITLOOP_*`` variables or a ``.env`` file.

Each variable is declared once, as a field of one class here or in its component; a
setting that several components read is a class of its own here, which their settings
classes inherit. Code that passes a setting to another process derives the variable's name
from the field (:meth:`DigitloopEnv.env_name`, :meth:`DigitloopEnv.env_vars`), so a name is
spelled in one place; ``make docs`` writes the README's table from these classes.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class DigitloopEnv(BaseSettings):
    """Base of every component's settings: ``DIGITLOOP_<FIELD>`` variables or a ``.env`` file."""

    model_config = SettingsConfigDict(env_prefix="DIGITLOOP_", env_file=".env", extra="ignore")

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable ``field`` is read from, e.g. ``DIGITLOOP_WORKERS``.

        Raises:
            KeyError: the class has no such field.
        """
        if field not in cls.model_fields:
            raise KeyError(f"{cls.__name__} has no setting {field!r}")
        return f"{cls.model_config['env_prefix']}{field}".upper()

    @classmethod
    def env_vars(cls, **values: object) -> dict[str, str]:
        """``values`` as the environment variables the fields read; a None value is left out."""
        return {
            cls.env_name(field): _as_env_text(value)
            for field, value in values.items()
            if value is not None
        }


def _as_env_text(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


class DigitloopSettings(DigitloopEnv):
    """Base of every component's settings that lives in the project data directory."""

    data_dir: Path = Field(
        default=Path(".digitloop"),
        description="Project data directory: MNIST cache, embedded MLflow store, local store "
        "and spool, generated secrets.",
    )


class ServiceUrlSettings(DigitloopEnv):
    """Where the prediction service is, for the sketchpad and the loop (one declaration)."""

    service_url: str = Field(
        default="http://127.0.0.1:3000",
        description="Base URL of the prediction service (http or https, no trailing path): "
        "the sketchpad's, the simulator's and the loop's (rollout=service).",
    )

    @field_validator("service_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"service_url must start with http:// or https://, got {value!r}")
        return value


class AdminTokenSettings(DigitloopEnv):
    """The bearer token of the service's ``/admin/*``: the service checks it, the loop sends it."""

    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the service's /admin/* routes (the loop's service "
        "rollout sends it); unset and no file: admin is off.",
    )
    admin_token_file: Path | None = Field(
        default=None,
        description="File holding the admin token (a mounted Kubernetes Secret); wins over "
        "admin_token and is read at each use, so a rotated Secret takes effect.",
    )

    def admin_secret(self) -> str | None:
        """The admin token in force, from the file when one is mounted."""
        if self.admin_token_file is not None:
            token = self.admin_token_file.read_text().strip()
            return token or None
        return self.admin_token.get_secret_value() if self.admin_token else None
