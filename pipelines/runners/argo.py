"""The loop on Argo, one step per pod: what ``digitloop loop step NAME`` runs.

Each pod reads the outputs its step needs from the store, where the steps before it left
them, runs the step and stores its output; then it writes the fields marked as Argo output
parameters (:class:`pipelines.outputs.ArgoOutput`) to files, one per field, where the
WorkflowTemplate (:mod:`pipelines.workflows.loop`) tells Argo to read them.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.dag import FINISH, OUTPUTS, READS
from pipelines.outputs import RunOutputs, StepOutput
from pipelines.steps import LoopContext, call_step
from pipelines.steps.finish import finish


def stored_outputs(ctx: LoopContext, names: tuple[str, ...]) -> RunOutputs:
    """The outputs of ``names`` the run has stored so far (a step not run stays None)."""
    return RunOutputs(**{name: ctx.read(OUTPUTS[name]) for name in names})


def run_step(ctx: LoopContext, name: str, outputs_dir: Path | None = None) -> StepOutput:
    """One step (or the exit handler, ``finish``) of the run ``ctx.run_id``, as its pod runs
    it; with ``outputs_dir``, also the Argo output parameters as files there."""
    if name == FINISH:
        output: StepOutput = finish(ctx, stored_outputs(ctx, tuple(OUTPUTS)))
    else:
        output = call_step(ctx, name, stored_outputs(ctx, tuple(k.name for k in READS[name])))
        ctx.save(output)
    if outputs_dir is not None:
        write_output_files(output, outputs_dir)
    return output


def write_output_files(output: StepOutput, directory: Path) -> None:
    """One file per Argo output parameter of ``output``, named after its field."""
    directory.mkdir(parents=True, exist_ok=True)
    for field, text in output.argo_values().items():
        (directory / field).write_text(text)
