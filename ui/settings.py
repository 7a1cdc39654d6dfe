"""Settings of the sketchpad app, read from ``DIGITLOOP_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from contracts.settings import DigitloopEnv


class UISettings(DigitloopEnv):
    """Where the app listens and which prediction service it talks to.

    Every field reads ``DIGITLOOP_<FIELD>`` from the environment (or a ``.env`` file).
    """

    service_url: str = Field(
        default="http://127.0.0.1:3000",
        description="Base URL of the prediction service (http or https, no trailing path).",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="Sent as `Authorization: Bearer <token>` on every request when set "
        "(a gateway in front of the service may ask for it); unset: no header.",
    )
    ui_host: str = Field(
        default="127.0.0.1",
        description="Address the app listens on; 0.0.0.0 accepts other machines.",
    )
    ui_port: int = Field(default=7860, ge=1, le=65535, description="Port the app listens on.")
    request_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds to wait for the service before telling the person it is slow.",
    )

    @field_validator("service_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"service_url must start with http:// or https://, got {value!r}")
        return value

    def token(self) -> str | None:
        """The API token in force, or None."""
        return self.api_token.get_secret_value() if self.api_token else None
