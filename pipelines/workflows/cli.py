"""``digitloop workflow``: render the loop's Argo objects to YAML, or check they are current."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from model.cli import JsonOption, emit, stderr

workflow_app = typer.Typer(
    help="The loop's Argo WorkflowTemplate and CronWorkflow, rendered from Hera.",
    no_args_is_help=True,
)


@workflow_app.callback()
def workflow() -> None:
    """The loop's Argo WorkflowTemplate and CronWorkflow, rendered from Hera."""


@workflow_app.command("render")
def render_command(
    out: Annotated[
        Path, typer.Option("--out", help="Folder the YAML files are written to.", file_okay=False)
    ] = Path("manifests"),
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 if the files differ from a render."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Render the WorkflowTemplate and CronWorkflow (settings from DIGITLOOP_* variables)."""
    from pipelines.workflows.loop import WorkflowSettings, render

    try:
        files = render(WorkflowSettings())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        stderr.print(f"[bold red]error:[/] {problems}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    if check:
        stale = {name: diff for name, text in files.items() if (diff := _diff(out / name, text))}
        for name, diff in stale.items():
            added = sum(1 for line in diff if line.startswith("+") and not line.startswith("+++"))
            removed = sum(1 for line in diff if line.startswith("-") and not line.startswith("---"))
            stderr.print(
                f"{out / name}: +{added} -{removed} lines against a fresh render", style="red"
            )
            stderr.out("\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else ""), highlight=False)
        if stale:
            stderr.print("run `digitloop workflow render` and commit the result", style="bold")
        emit({"out": str(out), "stale": sorted(stale), "checked": sorted(files)}, as_json)
        if not as_json and not stale:
            stderr.print(f"{', '.join(str(out / n) for n in files)}: up to date", soft_wrap=True)
        raise typer.Exit(code=1 if stale else 0)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
        if not as_json:
            stderr.print(f"wrote {out / name}")
    emit({"out": str(out), "written": sorted(files)}, as_json)


def _diff(path: Path, text: str) -> list[str]:
    """The unified diff from the file on disk (or nothing) to ``text``; empty when equal."""
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if current == text:
        return []
    return list(
        difflib.unified_diff(
            current.splitlines(),
            text.splitlines(),
            fromfile=f"{path} (on disk)",
            tofile=f"{path} (rendered)",
            lineterm="",
        )
    )
