"""``digitloop ui``: serve the sketchpad in front of the prediction service.

Gradio is imported inside the command so ``digitloop --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from contracts.cli import VerboseOption, setup_logging, stderr


def ui(
    host: Annotated[
        str | None,
        typer.Option(
            help="Address to listen on; default DIGITLOOP_UI_HOST, else 127.0.0.1 (this "
            "machine only). Pass 0.0.0.0 to accept other machines."
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port; default DIGITLOOP_UI_PORT, else 7860."),
    ] = None,
    share: Annotated[
        bool,
        typer.Option("--share", help="Also open a public gradio.live link (needs internet)."),
    ] = False,
    service_url: Annotated[
        str | None,
        typer.Option(
            help="Prediction service URL; default DIGITLOOP_SERVICE_URL, else "
            "http://127.0.0.1:3000."
        ),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Serve the sketchpad: draw digits, see predictions, correct them, batch-predict files."""
    setup_logging(verbose)
    from ui.settings import UISettings

    overrides: dict[str, object] = {
        key: value
        for key, value in {"ui_host": host, "ui_port": port, "service_url": service_url}.items()
        if value is not None
    }
    try:
        settings = UISettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        stderr.print(f"[bold red]error:[/] {problems}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None

    from services.client import DigitloopClient
    from ui.app import build_app, launch

    client = DigitloopClient.from_settings(settings)
    state = "ready" if client.ready() else "not answering yet (the page will say so)"
    stderr.print(
        f"sketchpad on http://{settings.ui_host}:{settings.ui_port}, "
        f"prediction service {settings.service_url}: {state}",
        highlight=False,
    )
    try:
        app = build_app(client, ask_below=settings.ask_below_confidence)
        launch(app, settings.ui_host, settings.ui_port, share=share)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        problem = str(exc)
        if "empty port" in problem:
            problem = (
                f"{settings.ui_host}:{settings.ui_port} is in use; pick another port with "
                "--port or DIGITLOOP_UI_PORT"
            )
        stderr.print(f"[bold red]error:[/] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    finally:
        client.close()


if __name__ == "__main__":  # `python -m ui.cli`, until the command is wired into digitloop
    typer.run(ui)
