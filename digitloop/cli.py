"""The ``digitloop`` command: one Typer app whose sub-commands come from each component.

Contract for every command: with ``--json`` it prints exactly one JSON object on stdout;
logs and progress go to stderr; a ``DigitloopError`` becomes a one-line ``error: ...`` on
stderr and exit code 2.
"""

from __future__ import annotations

import typer

from digitloop import commands
from model import cli as model_cli
from pipelines import loop_cli
from pipelines.cli import drift_app
from pipelines.rollout_cli import rollout_app
from pipelines.workflows.cli import workflow_app
from services import cli as services_cli
from services.bench.cli import bench
from ui import cli as ui_cli

app = typer.Typer(
    name="digitloop",
    help="A small, Kubernetes-native, closed-loop ML platform for hand-drawn digits.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command(help=model_cli.train.__doc__)(model_cli.train)
app.command(help=model_cli.evaluate.__doc__)(model_cli.evaluate)
app.command(help=model_cli.models.__doc__)(model_cli.models)
app.add_typer(model_cli.data_app, name="data")
app.command(help=services_cli.serve.__doc__)(services_cli.serve)
app.command(help=bench.__doc__)(bench)
app.command(help=ui_cli.ui.__doc__)(ui_cli.ui)
app.add_typer(drift_app, name="drift")
app.add_typer(loop_cli.loop_app, name="loop")
app.add_typer(rollout_app, name="rollout")
app.add_typer(workflow_app, name="workflow")
app.command(help=commands.dev.__doc__)(commands.dev)
app.command(help=commands.simulate.__doc__)(commands.simulate)


if __name__ == "__main__":
    app()
