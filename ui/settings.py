"""Settings of the sketchpad app, read from ``DIGITLOOP_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr

from contracts.api import DEFAULT_TIMEOUT_S
from contracts.settings import ServiceUrlSettings


class UISettings(ServiceUrlSettings):
    """Where the app listens and which prediction service it talks to (``service_url``).

    Every field reads ``DIGITLOOP_<FIELD>`` from the environment (or a ``.env`` file).
    """

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
    ask_below_confidence: float = Field(
        default=0.8,
        ge=0,
        description="Ask the person to check an answer whose top probability is below this, "
        "or whose drawing the model flagged unusual (0 never asks; above 1 always asks): the "
        "sketchpad says so and asks for the right digit, and feedback given then carries "
        "source `sketchpad-asked`.",
    )
    request_timeout_s: float = Field(
        default=DEFAULT_TIMEOUT_S,
        gt=0,
        description="Seconds to wait for the service before telling the person it is slow.",
    )

    def token(self) -> str | None:
        """The API token in force, or None."""
        return self.api_token.get_secret_value() if self.api_token else None
