"""The ``digitloop`` command: one Typer app whose sub-commands come from each component.

Contract for every command: with ``--json`` it prints exactly one JSON object on stdout;
logs and progress go to stderr; a ``DigitloopError`` becomes a one-line ``error: ...`` on
stderr and exit code 2.

Commands that ship outside the product (the benchmarks and the simulator of ``bench/``,
installed from a source checkout) join through the ``digitloop.commands`` entry points.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import typer

from digitloop import commands
from model import cli as model_cli
from pipelines import cli as pipelines_cli
from services import cli as services_cli
from ui import cli as ui_cli

PLUGIN_GROUP = "digitloop.commands"

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
app.add_typer(services_cli.store_app, name="store")
app.command(help=ui_cli.ui.__doc__)(ui_cli.ui)
app.add_typer(pipelines_cli.drift_app, name="drift")
app.add_typer(pipelines_cli.loop_app, name="loop")
app.add_typer(pipelines_cli.rollout_app, name="rollout")
app.add_typer(pipelines_cli.workflow_app, name="workflow")
app.command(help=commands.dev.__doc__)(commands.dev)


def add_plugins(root: typer.Typer) -> None:
    """Each ``digitloop.commands`` entry point is a Typer app or a command function."""
    for entry in entry_points(group=PLUGIN_GROUP):
        command = entry.load()
        if isinstance(command, typer.Typer):
            root.add_typer(command, name=entry.name)
        else:
            root.command(name=entry.name, help=command.__doc__)(command)


add_plugins(app)


if __name__ == "__main__":
    app()
