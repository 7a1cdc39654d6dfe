"""``digitloop train``, ``evaluate``, ``models`` and ``data``: the model component's commands.

Heavy imports (torch, MLflow) wait inside the commands so ``digitloop --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from contracts.cli import (
    JsonOption,
    MnistOption,
    VerboseOption,
    cli_errors,
    emit,
    setup_logging,
    stderr,
)
from contracts.registry import CHAMPION_ALIAS

if TYPE_CHECKING:
    import numpy as np

    from model.registry import Registry
    from model.train import TrainConfig, TrainResult


def train(
    epochs: Annotated[
        int,
        typer.Option(
            min=1, help="Passes over the training data; with --trials, the most a trial makes."
        ),
    ] = 8,
    limit: Annotated[
        int | None, typer.Option(min=100, help="Train on the first N images only.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=8, help="Images per step.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed for weights, batches and augmentation.")] = 42,
    no_augment: Annotated[
        bool, typer.Option("--no-augment", help="Train on MNIST as it is.")
    ] = False,
    trials: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Search learning rate, epochs and weight decay with Optuna over N trials, "
            "each scored on a validation split of MNIST train (a nested MLflow run each); "
            "the best is registered.",
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=1,
            help="With --trials: seconds the search may take; no trial starts that would end "
            "after it.",
        ),
    ] = None,
    mnist: MnistOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Train a model on MNIST, log the run to MLflow and register a new version."""
    setup_logging(verbose)
    if timeout is not None and trials is None:
        raise typer.BadParameter(
            "--timeout limits a search: give --trials too", param_hint="--timeout"
        )
    if trials is not None:
        _require_optuna()
    with cli_errors():
        from model.data import load_mnist
        from model.evaluate import evaluate as evaluate_net
        from model.export import calibration_digits
        from model.novelty import fit_for_version
        from model.registry import Registry, TrainingRecord
        from model.train import TrainConfig
        from model.train import train as train_net

        config = TrainConfig(
            epochs=epochs, batch_size=batch_size, seed=seed, augment=not no_augment
        )
        data = load_mnist(mnist).limit(n_train=limit)
        registry = Registry()
        if trials is None:
            stderr.print(f"training on {len(data.x_train)} MNIST images for {epochs} epoch(s)")
            trained = _Trained(
                config,
                train_net(data.x_train, data.y_train, config, console=stderr),
                {"mnist_train": len(data.x_train), "feedback": 0},
                run_name=f"train-e{epochs}",
            )
        else:
            trained = _search(data.x_train, data.y_train, config, trials, timeout, registry)
        test = evaluate_net(trained.result.net, data.x_test, data.y_test)
        novelty = fit_for_version(
            trained.result.net,
            (data.x_train, data.y_train),
            (data.x_test, data.y_test),
            registry.settings.novelty_share,
        )
        record = TrainingRecord.of(
            trained.config,
            trained.result,
            test,
            trained.training_data,
            extra_params={"limit": limit, **trained.params},
            run_name=trained.run_name,
            novelty=novelty,
            int8_calibration=calibration_digits(data.x_train),
        )
        info = registry.log_and_register(trained.result.net, record)
        if trained.search_run_id:
            registry.client.set_tag(trained.search_run_id, "registered_version", info.version)

    summary = {
        "version": info.version,
        "aliases": info.aliases,
        "mnist_test_accuracy": test.accuracy,
        # The share of MNIST test its novelty threshold flags (model.novelty), and the threshold.
        "novelty_share": novelty.share,
        "novelty_threshold": novelty.threshold,
        "train_seconds": round(trained.result.seconds, 1),
        "run_id": info.run_id,
        "tracking_uri": registry.settings.tracking_uri,
        **trained.summary,
    }
    table = Table(title=f"registered {info.name} version {info.version}", show_header=False)
    for key, value in summary.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    emit(summary, as_json, table)


@dataclass(frozen=True)
class _Trained:
    """A trained network and what its registered run records about how it was found."""

    config: TrainConfig
    result: TrainResult
    training_data: dict[str, object]
    run_name: str
    params: dict[str, object] = field(default_factory=dict)
    summary: dict[str, object] = field(default_factory=dict)
    search_run_id: str | None = None


def _search(
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    trials: int,
    timeout: float | None,
    registry: Registry,
) -> _Trained:
    """``train --trials``: the best of an Optuna search, trials logged as nested runs."""
    from model.tune import Budget, TrialRuns, search_train

    within = f" within {timeout:.0f} s" if timeout else ""
    stderr.print(f"searching {trials} trial(s) on {len(x)} MNIST images{within}")
    runs = TrialRuns(registry.client, registry.experiment_id, f"tune-train-{trials}")
    search = search_train(
        x, y.astype("int64"), config, Budget(trials, timeout, config.seed), runs, stderr
    )
    return _Trained(
        search.config,
        search.result,
        {**search.sizes, "feedback": 0},
        run_name=f"train-tuned-{len(search.trials)}of{trials}",
        params={"search_run_id": search.parent_run_id, "search_trials": len(search.trials)},
        summary={
            "trials_run": len(search.trials),
            "best_trial": search.best.number,
            "best_params": search.best.params,
            "mnist_validation_accuracy": search.best.accuracy,
            "search_seconds": round(search.seconds, 1),
            "search_run_id": search.parent_run_id,
        },
        search_run_id=search.parent_run_id,
    )


def _require_optuna() -> None:
    """Exit with one line naming the extra to install when Optuna is missing."""
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        stderr.print(
            "[bold red]error:[/] --trials searches with Optuna, which is not installed; "
            "install it with `pip install 'digitloop[pipelines]'`",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=2)


def evaluate(
    data: Annotated[
        Path | None,
        typer.Option(
            help="An .npz with x (N,28,28 uint8, white ink on black) and y (N labels); "
            "default the MNIST test set.",
            dir_okay=False,
        ),
    ] = None,
    model: Annotated[str, typer.Option(help="A version number or alias.")] = CHAMPION_ALIAS,
    preprocess: Annotated[
        bool, typer.Option("--preprocess", help="Apply the service's sketch preprocessing first.")
    ] = False,
    mnist: MnistOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Evaluate a registered model on a labelled .npz (accuracy, per-class accuracy)."""
    setup_logging(verbose)
    with cli_errors():
        import numpy as np

        from contracts.errors import DatasetError
        from model.data import load_labelled_npz, load_mnist
        from model.evaluate import score
        from model.network import predict_proba
        from model.preprocess import preprocess_batch
        from model.registry import Registry

        if data is not None:
            if not data.is_file():
                raise DatasetError(f"{data}: no such file")
            x, y = load_labelled_npz(data)
        else:
            mnist_data = load_mnist(mnist)
            x, y = mnist_data.x_test, mnist_data.y_test.astype("int64")
        accepted = np.ones(len(x), bool)
        if preprocess:
            x, accepted = preprocess_batch(x)
        net, info = Registry().load(model)
        predicted = predict_proba(net, x).argmax(axis=1)
        # A digit the preprocessing rejects as empty counts as a wrong answer.
        predicted[~accepted] = -1
        result = score(y, predicted)

    summary = {
        **result.as_dict(),
        "model_version": info.version,
        "rejected": int((~accepted).sum()),
    }
    table = Table(
        title=f"version {info.version} on {data or 'MNIST test'}: "
        f"accuracy {result.accuracy:.4f} (n={result.n})"
    )
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for label, acc in result.per_class.items():
        table.add_row(label, f"{acc:.4f}")
    emit(summary, as_json, table)


def models(as_json: JsonOption = False, verbose: VerboseOption = False) -> None:
    """List the registered model versions with their aliases and MNIST accuracy."""
    setup_logging(verbose)
    with cli_errors():
        from model.registry import Registry

        registry = Registry()
        versions = registry.versions()
    table = Table(title=f"{registry.name} in {registry.settings.tracking_uri}")
    for column in ("version", "aliases", "parent", "mnist_test_accuracy"):
        table.add_column(column)
    for info in versions:
        table.add_row(
            info.version,
            ",".join(info.aliases),
            info.tags.get("parent_version", ""),
            info.tags.get("mnist_test_accuracy", ""),
        )
    emit({"versions": [info.as_dict() for info in versions]}, as_json, table)


data_app = typer.Typer(
    help="Data sets: drawn-style test sets made from MNIST.", no_args_is_help=True
)


@data_app.command("styles")
def styles(
    out: Annotated[
        Path, typer.Option(help="Folder to write <style>.npz files into.", file_okay=False)
    ] = Path(".digitloop/styles"),
    n: Annotated[
        int, typer.Option(min=1, help="Digits per style, from the MNIST test set.")
    ] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the random styling.")] = 0,
    mnist: MnistOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write MNIST test digits restyled as people draw them (thick, thin, rotated, ...)."""
    setup_logging()
    with cli_errors():
        import numpy as np

        from model.data import load_mnist
        from model.styles import STYLES, restyle

        test = load_mnist(mnist).limit(n_test=n)
        out.mkdir(parents=True, exist_ok=True)
        written = {}
        for style in STYLES:
            path = out / f"{style}.npz"
            np.savez_compressed(path, x=restyle(test.x_test, style, seed), y=test.y_test)
            written[style] = str(path)
    table = Table("style", "file", title=f"{n} digits per style")
    for style, path in written.items():
        table.add_row(style, path)
    emit({"files": written, "n": n}, as_json, table)
