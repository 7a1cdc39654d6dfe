"""``digitloop bench``: the serving benchmark, and ``digitloop bench loop``, the loop's data path.

``digitloop bench`` with no sub-command runs the serving benchmark as before
(:mod:`digitloop_bench.serving.cli`); ``digitloop bench loop`` times one loop run over
stored histories of different lengths (:mod:`digitloop_bench.loop`).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated, get_type_hints

import typer

from contracts.cli import JsonOption, VerboseOption, cli_errors, emit, setup_logging, stderr
from digitloop_bench.serving.cli import bench as serving_bench

bench = typer.Typer(
    help="Benchmarks: serving (no sub-command) and the loop's data path (loop).",
    invoke_without_command=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@bench.callback(invoke_without_command=True)
def serving(ctx: typer.Context, **options) -> None:  # the serving benchmark's own options
    if ctx.invoked_subcommand is None:
        serving_bench(**options)


# The callback takes the serving benchmark's options, declared once there (annotations
# resolved: that module's are strings).
_hints = get_type_hints(serving_bench, include_extras=True)
serving.__signature__ = inspect.Signature(
    [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        *(
            p.replace(annotation=_hints[name])
            for name, p in inspect.signature(serving_bench).parameters.items()
        ),
    ]
)
serving.__doc__ = serving_bench.__doc__


@bench.command()
def loop(
    days: Annotated[
        str, typer.Option(help="Comma-separated days of stored history to compare.")
    ] = "1,30",
    backends: Annotated[str, typer.Option(help="Comma-separated: local,s3.")] = "local,s3",
    rate: Annotated[float, typer.Option(help="Predictions per second in the history.")] = 1.0,
    labelled: Annotated[float, typer.Option(help="Share of predictions labelled.")] = 0.05,
    repeats: Annotated[int, typer.Option(min=1, help="Loop runs measured per case.")] = 3,
    champion_age_days: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Days since the champion's training cutoff (its window); default: it has "
            "served the whole history.",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Work folder (histories, S3 logs) and loop.json.", file_okay=False)
    ] = Path(".digitloop/bench-loop"),
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Time one loop run's collect, quality, drift and compact over 1 and 30 days of history."""
    setup_logging(verbose)
    with cli_errors():
        from digitloop_bench.loop import run_bench

        result = run_bench(
            history_days=tuple(float(d) for d in days.split(",") if d.strip()),
            backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
            rate=rate,
            labelled=labelled,
            repeats=repeats,
            work=out,
            champion_age_days=champion_age_days,
            say=lambda message: stderr.print(message, highlight=False),
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "loop.json").write_text(json.dumps(result, indent=2) + "\n")
    emit(result, as_json)
    if not as_json:
        stderr.print_json(json.dumps({k: v for k, v in result.items() if k != "cases"}))


if __name__ == "__main__":
    bench()
