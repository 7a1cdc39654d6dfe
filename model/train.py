"""Training and fine-tuning of :class:`~model.network.DigitNet` on a 2-core CPU.

Pure compute: arrays in, a trained network and its history out. Logging to MLflow and
registering versions is :mod:`model.registry`'s job, so tests can train without a store.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from model.augment import AugmentConfig, augment
from model.network import DigitNet, predict_proba, to_tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run; every default is the one ``digitloop train`` uses."""

    epochs: int = 8
    batch_size: int = 128
    max_lr: float = 4e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    augment: bool = True
    seed: int = 42
    # Torch threads for training; None uses torch's default (all cores).
    threads: int | None = None
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)

    def as_params(self) -> dict[str, object]:
        """Flat parameters for MLflow."""
        params = {k: v for k, v in asdict(self).items() if k != "augmentation"}
        params.update({f"augment_{k}": v for k, v in asdict(self.augmentation).items()})
        return params


@dataclass
class TrainResult:
    net: DigitNet
    history: list[dict[str, float]]
    seconds: float


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy; returns the generator that draws batches and augmentations."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


def train(
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig = TrainConfig(),
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    console: Console | None = None,
) -> TrainResult:
    """Train a new network from scratch on (N, 28, 28) uint8 images ``x`` and labels ``y``."""
    seed_everything(config.seed)
    return fit(DigitNet(), x, y, config, x_val=x_val, y_val=y_val, console=console)


def fine_tune(
    parent: nn.Module,
    x_base: np.ndarray,
    y_base: np.ndarray,
    x_extra: np.ndarray,
    y_extra: np.ndarray,
    config: TrainConfig,
    extra_share: float = 0.3,
    console: Console | None = None,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    pseudo: tuple[np.ndarray, np.ndarray] | None = None,
    pseudo_share: float = 0.0,
) -> TrainResult:
    """Fine-tune a copy of ``parent`` on base data (MNIST) plus extra labelled samples.

    The extra samples are few next to MNIST, so each epoch draws them with replacement to
    make up ``extra_share`` of what the network sees; the rest is MNIST, which keeps the
    network from forgetting the digits it already knew. ``pseudo`` images, labelled by a
    model rather than by people, make up ``pseudo_share`` on their own: however many there
    are, they never dilute the people's labels.
    """
    x_pseudo, y_pseudo = pseudo if pseudo is not None else (x_extra[:0], y_extra[:0])
    weights = mixture_weights(
        (len(x_base), len(x_extra), len(x_pseudo)), (extra_share, pseudo_share)
    )
    x = np.concatenate([x_base, x_extra, x_pseudo])
    y = np.concatenate([y_base, y_extra, y_pseudo]).astype(np.int64)
    seed_everything(config.seed)
    net = copy.deepcopy(parent)
    return fit(net, x, y, config, sample_weights=weights, x_val=x_val, y_val=y_val, console=console)


def mixture_weights(sizes: tuple[int, ...], shares: tuple[float, ...]) -> np.ndarray:
    """Sampling weights, one per sample, of groups concatenated in order: group ``i + 1``
    makes up ``shares[i]`` of what an epoch draws, the first group (the base data) the rest.
    An empty group's share goes to the base data."""
    if len(shares) != len(sizes) - 1:
        raise ValueError("one share per group after the first")
    for name, share in zip(("extra_share", "pseudo_share"), shares, strict=False):
        if not 0.0 <= share < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {share}")
    if sum(shares) >= 1.0:
        raise ValueError(f"the shares leave nothing for the base data: {shares}")
    if sizes[0] == 0:
        raise ValueError("no base samples")
    taken = [share if size else 0.0 for size, share in zip(sizes[1:], shares, strict=True)]
    per_group = [1.0 - sum(taken), *taken]
    return np.concatenate(
        [np.full(size, share / size) for size, share in zip(sizes, per_group, strict=True) if size]
    )


def fit(
    net: DigitNet,
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    sample_weights: np.ndarray | None = None,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    console: Console | None = None,
) -> TrainResult:
    """The training loop shared by :func:`train` and :func:`fine_tune`."""
    if len(x) == 0:
        raise ValueError("no training samples")
    if config.threads:
        torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    images, labels = to_tensor(x), torch.from_numpy(np.asarray(y, dtype=np.int64))
    weights = None if sample_weights is None else torch.from_numpy(sample_weights)
    steps_per_epoch = max(1, -(-len(x) // config.batch_size))
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=config.max_lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    history: list[dict[str, float]] = []
    started = time.perf_counter()

    with _progress(console) as progress:
        task = progress.add_task(
            "training", total=config.epochs * steps_per_epoch, loss=float("nan"), acc=float("nan")
        )
        for epoch in range(1, config.epochs + 1):
            net.train()
            if weights is None:
                order = torch.randperm(len(x), generator=generator)
            else:
                order = torch.multinomial(weights, len(x), replacement=True, generator=generator)
            seen = correct = 0
            loss_sum = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * config.batch_size : (step + 1) * config.batch_size]
                batch, target = images[idx], labels[idx]
                if config.augment:
                    batch = augment(batch, generator, config.augmentation)
                logits = net(batch)
                loss = loss_fn(logits, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                seen += len(idx)
                correct += int((logits.argmax(1) == target).sum())
                loss_sum += loss.item() * len(idx)
                progress.update(
                    task,
                    advance=1,
                    loss=loss_sum / seen,
                    acc=correct / seen,
                    description=f"epoch {epoch}/{config.epochs}",
                )
            record = {"epoch": epoch, "loss": loss_sum / seen, "train_accuracy": correct / seen}
            if x_val is not None and y_val is not None and len(x_val):
                record["val_accuracy"] = float(
                    (predict_proba(net, x_val).argmax(1) == y_val).mean()
                )
            history.append(record)
            log.debug("epoch %d: %s", epoch, record)
    net.eval()
    return TrainResult(net=net, history=history, seconds=time.perf_counter() - started)


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.3f}"),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=False,
    )
