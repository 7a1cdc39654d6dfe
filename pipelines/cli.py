"""``digitloop drift check``: the drift step on any set of digits, from the command line.

Heavy imports (torch, MLflow, Evidently) wait inside the command so ``--help`` stays fast.
The command follows the ``digitloop`` contract: one JSON object on stdout with ``--json``,
logs on stderr, a ``DigitloopError`` as one ``error:`` line and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from model.cli import JsonOption, MnistOption, VerboseOption, cli_errors, emit, setup_logging
from model.cli import stderr as console

if TYPE_CHECKING:
    import numpy as np

drift_app = typer.Typer(
    help="Drift: compare a set of digits with the model's reference population.",
    no_args_is_help=True,
)


@drift_app.callback()
def drift() -> None:
    """Drift: compare a set of digits with the model's reference population."""
    # A callback keeps ``check`` a sub-command even while it is the only one.


def read_images(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` (N, 28, 28 uint8, white ink on black) from an ``.npz``; ``y`` is optional.

    Raises:
        DatasetError: no such file, not an ``.npz``, no ``x``, or ``x``/``y`` malformed.
    """
    import numpy as np

    from model.data import validate_images
    from model.errors import DatasetError

    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path}: a single array, not an .npz archive with x (and y)")
    try:
        with archive:
            if "x" not in archive:
                raise DatasetError(f"{path}: missing key x (N, 28, 28 uint8 images)")
            x = archive["x"]
            y = archive.get("y")
    except (OSError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from exc
    # Labels are optional here: check the images against placeholder labels when absent.
    placeholder = np.zeros(x.shape[0] if x.ndim else 0, np.int64)
    validate_images(x, y if y is not None else placeholder, source=str(path))
    return x, y


@drift_app.command("check")
def check(
    data: Annotated[
        Path,
        typer.Option(
            help="An .npz with x (N, 28, 28 uint8, white ink on black, as the service logs "
            "them); y is optional.",
            dir_okay=False,
        ),
    ],
    model: Annotated[str, typer.Option(help="A version number or alias.")] = "champion",
    preprocess: Annotated[
        bool,
        typer.Option(
            "--preprocess",
            help="Apply the service's sketch preprocessing first (for drawings not taken "
            "from the predictions log).",
        ),
    ] = False,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            help="Also write Evidently's report (HTML + JSON) into this folder.", file_okay=False
        ),
    ] = None,
    mnist: MnistOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Check a set of digits for drift against the model's MNIST reference."""
    setup_logging(verbose)
    with cli_errors():
        from model.data import load_mnist
        from model.preprocess import preprocess_batch
        from model.registry import Registry
        from pipelines.drift import DriftSettings, detect_drift, model_reference

        settings = DriftSettings()
        x, _ = read_images(data)
        if preprocess:
            x, accepted = preprocess_batch(x)
            if not accepted.all():
                console.print(f"{int((~accepted).sum())} empty drawing(s) left out")
            x = x[accepted]
        registry = Registry()
        net, info = registry.load(model)
        reference = model_reference(
            net, info, load_mnist(mnist).x_test, registry.settings.data_dir, settings
        )
        result = detect_drift(net, x, reference, settings)
        written = {}
        if report_dir is not None:
            report_dir.mkdir(parents=True, exist_ok=True)
            for name, payload in result.report_files().items():
                (report_dir / name).write_bytes(payload)
                written[name] = str(report_dir / name)

    summary = {**result.as_dict(), "model_version": info.version, "data": str(data)}
    if written:
        summary["report_files"] = written
    table = Table(
        title=f"{data} vs version {info.version}'s reference: drift "
        f"{'DETECTED' if result.drift_detected else 'not detected'} "
        f"(share of drifted columns {result.drift_score:.3f}, threshold {result.threshold})"
    )
    for column in ("feature", "method", "score", "threshold", "drifted", "ref mean", "cur mean"):
        table.add_column(column, justify="left" if column == "feature" else "right")
    for name, feature in result.features.items():
        table.add_row(
            name,
            feature.method,
            f"{feature.score:.3g}",
            f"{feature.threshold:g}",
            "yes" if feature.drifted else "",
            "" if feature.reference_mean is None else f"{feature.reference_mean:.3f}",
            "" if feature.current_mean is None else f"{feature.current_mean:.3f}",
        )
    emit(summary, as_json, table)
