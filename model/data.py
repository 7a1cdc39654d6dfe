"""MNIST: download the official files with checksums, cache them, or read a local ``.npz``.

Where MNIST comes from, first match wins:

1. an explicit ``path`` argument or ``DIGITLOOP_MNIST_PATH`` (an ``.npz``; nothing downloads);
2. the cache ``<data_dir>/mnist/mnist.npz``, built from verified downloads;
3. the four official ``.gz`` files from ``DIGITLOOP_MNIST_BASE_URL``, each checked against
   its published SHA-256 before it is parsed and cached.

Images are ``uint8`` 28x28, white ink (255) on black (0), as MNIST publishes them.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

from contracts.errors import ChecksumError, DatasetError, DownloadError
from model.settings import ModelSettings

log = logging.getLogger(__name__)

# The official files and their SHA-256, as published by the mirrors torchvision and TF use.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_SPLITS = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
CACHE_NAME = "mnist.npz"


@dataclass(frozen=True)
class Mnist:
    """The four MNIST arrays."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def limit(self, n_train: int | None = None, n_test: int | None = None) -> Mnist:
        """The first ``n_train`` training and ``n_test`` test samples (``None`` keeps all)."""
        return Mnist(
            self.x_train[:n_train],
            self.y_train[:n_train],
            self.x_test[:n_test],
            self.y_test[:n_test],
        )


def load_mnist(path: Path | str | None = None, settings: ModelSettings | None = None) -> Mnist:
    """Load MNIST from ``path``, the configured ``.npz``, the cache, or a verified download."""
    settings = settings or ModelSettings()
    source = Path(path) if path is not None else settings.mnist_path
    if source is not None:
        return _read_mnist_npz(source)
    cached = settings.mnist_cache_dir / CACHE_NAME
    if not cached.exists():
        download_mnist(settings.mnist_base_url, cached)
    return _read_mnist_npz(cached)


def download_mnist(
    base_url: str, destination: Path, checksums: dict[str, str] | None = None
) -> Path:
    """Download the official files, verify each SHA-256 and write them as one ``.npz``.

    Raises:
        ChecksumError: a file is corrupt or partial; nothing is cached.
        DownloadError: the mirror cannot be reached or answers an error; nothing is cached.
    """
    checksums = checksums or MNIST_FILES
    arrays: dict[str, np.ndarray] = {}
    with httpx.Client(base_url=base_url, follow_redirects=True, timeout=60.0) as client:
        for key, name in _SPLITS.items():
            try:
                payload = _fetch(client, name)
            except httpx.HTTPError as exc:
                raise DownloadError(
                    f"could not download {name} from {base_url} ({exc}); check the network, "
                    "or point DIGITLOOP_MNIST_PATH (or --mnist) at a local mnist.npz"
                ) from exc
            digest = hashlib.sha256(payload).hexdigest()
            if digest != checksums[name]:
                raise ChecksumError(
                    f"{name} from {base_url} has SHA-256 {digest}, expected {checksums[name]}: "
                    "the download is corrupt or partial and was not cached; run again, or point "
                    "DIGITLOOP_MNIST_PATH at a local mnist.npz"
                )
            arrays[key] = _parse_idx(gzip.decompress(payload), name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the destination and rename, so a crash never leaves a half-written cache.
    with tempfile.NamedTemporaryFile(dir=destination.parent, suffix=".npz", delete=False) as tmp:
        np.savez_compressed(tmp, **arrays)
    os.replace(tmp.name, destination)
    log.info("MNIST cached at %s", destination)
    return destination


def _fetch(client: httpx.Client, name: str) -> bytes:
    with client.stream("GET", name) as response:
        response.raise_for_status()
        total = int(response.headers.get("content-length", 0)) or None
        chunks = []
        with Progress(
            *Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), transient=True
        ) as progress:
            task = progress.add_task(f"downloading {name}", total=total)
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                progress.advance(task, len(chunk))
    return b"".join(chunks)


def _parse_idx(raw: bytes, name: str) -> np.ndarray:
    """Parse an IDX file (big-endian header: magic, then one uint32 per dimension)."""
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{name} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetError(f"{name} holds {data.size} values, its header says {shape}")
    return data.reshape(shape)


def _read_mnist_npz(path: Path) -> Mnist:
    if not path.exists():
        raise DatasetError(f"MNIST file {path} does not exist")
    with np.load(path) as archive:
        missing = [key for key in _SPLITS if key not in archive]
        if missing:
            raise DatasetError(f"{path} is not an MNIST archive: missing {', '.join(missing)}")
        arrays = {key: archive[key] for key in _SPLITS}
    for split in ("train", "test"):
        validate_images(arrays[f"x_{split}"], arrays[f"y_{split}"], source=f"{path} ({split})")
    return Mnist(**arrays)


def load_labelled_npz(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Read an ``.npz`` holding ``x`` (N, 28, 28 uint8, white on black) and ``y`` (N labels)."""
    path = Path(path)
    try:
        archive = np.load(path)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path}: a single array, not an .npz archive with x and y")
        with archive:
            missing = [key for key in ("x", "y") if key not in archive]
            if missing:
                raise DatasetError(f"{path}: missing key(s) {', '.join(missing)}; need x and y")
            x, y = archive["x"], archive["y"]
    except (OSError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from exc
    validate_images(x, y, source=str(path))
    return x, y.astype(np.int64)


def validate_images(x: np.ndarray, y: np.ndarray, source: str) -> None:
    """Check the MNIST format: (N, 28, 28) uint8 images and N integer labels in 0-9."""
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DatasetError(f"{source}: x has shape {x.shape}, expected (N, 28, 28)")
    if x.dtype != np.uint8:
        raise DatasetError(f"{source}: x has dtype {x.dtype}, expected uint8")
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetError(f"{source}: y has shape {y.shape}, expected ({len(x)},)")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{source}: y has dtype {y.dtype}, expected integer labels")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DatasetError(f"{source}: labels must be 0-9, found {int(y.min())}..{int(y.max())}")
