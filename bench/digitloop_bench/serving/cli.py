"""``digitloop bench``: the serving benchmark (BentoML against FastAPI and KServe baselines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from contracts.cli import JsonOption, VerboseOption, cli_errors, emit, setup_logging, stderr


def bench(
    as_json: JsonOption = False,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Short runs and a small request set (tests, a busy machine)."),
    ] = False,
    out: Annotated[
        Path,
        typer.Option(
            help="Folder for the plot (bench.png) and the result (bench.json).", file_okay=False
        ),
    ] = Path(".digitloop/bench"),
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Serve the champion of this registry (a data directory holding mlflow.db, "
            "or an MLflow tracking URI); default: train a quick model for the run.",
        ),
    ] = None,
    servers: Annotated[
        str,
        typer.Option(
            help="Comma-separated servers to run, in order: bentoml,fastapi,kserve and asgi "
            "(the floor: the same work on a bare ASGI app)."
        ),
    ] = "bentoml,fastapi,kserve,asgi",
    concurrency: Annotated[
        str, typer.Option(help="Comma-separated numbers of concurrent connections.")
    ] = "1,8,32",
    runtime: Annotated[
        str,
        typer.Option(
            help="What runs the network in every server and in-process: onnxruntime_int8 "
            "(the int8 export), onnxruntime (fp32) or torch (DIGITLOOP_INFERENCE_RUNTIME)."
        ),
    ] = "onnxruntime_int8",
    request_sets: Annotated[
        str,
        typer.Option(
            "--request-sets",
            help="Comma-separated request sets, the headline first (at every concurrency; "
            "the others at the highest): ui (what the sketchpad sends) and canvas (280x280).",
        ),
    ] = "ui,canvas",
    rounds: Annotated[
        int,
        typer.Option(
            help="Rounds of the whole plan, the servers measured in turn; each figure is the "
            "median of its rounds (default 2, 1 with --quick)."
        ),
    ] = 0,
    freeze_baselines: Annotated[
        bool,
        typer.Option(
            "--freeze-baselines",
            help="Give FastAPI and KServe the service's garbage-collector setting too (gc.freeze "
            "once the model is loaded).",
        ),
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Benchmark the BentoML service against FastAPI and KServe baselines on this machine."""
    setup_logging(verbose)
    with cli_errors():
        from digitloop_bench.serving.run import BenchConfig, BenchError, plot, run_bench, table

        try:
            levels = tuple(int(c) for c in concurrency.split(",") if c.strip())
        except ValueError as exc:
            raise BenchError(f"--concurrency must be integers like 1,8,32 ({exc})") from exc
        config = BenchConfig.make(
            quick=quick,
            model=model,
            servers=tuple(s.strip() for s in servers.split(",") if s.strip()),
            concurrencies=levels,
            runtime=runtime,
            freeze_baselines=freeze_baselines,
            **({"rounds": rounds} if rounds else {}),
            request_sets=tuple(s.strip() for s in request_sets.split(",") if s.strip()),
        )
        config.validate()
        result = run_bench(config, say=lambda message: stderr.print(message, highlight=False))
        out.mkdir(parents=True, exist_ok=True)
        png = plot(result, out / "bench.png")
        result["plot"] = str(png)
        (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    emit(result, as_json, table(result))
    if not as_json:
        stderr.print(f"plot: {png}; result: {out / 'bench.json'}", highlight=False)
        _goal_line(result)
    failures = result.get("failures") or {}
    if failures:
        for kind, message in failures.items():
            stderr.print(f"[bold red]error:[/] {kind}: {message}", highlight=False)
        raise typer.Exit(code=2)


def _goal_line(result: dict[str, object]) -> None:
    goal = result.get("goal", {})
    checks = goal.get("checks", {})  # type: ignore[union-attr]
    marks = ", ".join(
        f"{name} {'yes' if ok else ('n/a' if ok is None else 'NO')}" for name, ok in checks.items()
    )
    verdict = "[green]met[/]" if goal.get("met") else "[yellow]not met[/]"  # type: ignore[union-attr]
    stderr.print(f"goal at c={result['ratios']['at'][1:]}: {verdict} ({marks})")  # type: ignore[index]
