"""Fashion-MNIST: the idx files (Debian's `dataset-fashion-mnist`, a folder, or the Hub copy when online)."""

from __future__ import annotations

import functools
import gzip
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import LADError

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist/"
FASHION_MNIST_ENV = "LAD_FASHION_MNIST_DIR"
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"

FASHION_MNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
_FASHION_SIZES = {"train": 60000, "test": 10000}

_IDX_STEMS = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _find_idx_file(directory: Path, split: str, kind: str) -> Path | None:
    for stem in _IDX_STEMS[(split, kind)]:
        for name in (stem + ".gz", stem):
            if (directory / name).is_file():
                return directory / name
    return None


def _read_idx(path: Path, kind: str) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise LADError(f"cannot read {path} ({exc}); reinstall it with `apt-get install --reinstall dataset-fashion-mnist`") from exc
    if len(raw) < 16:
        raise LADError(f"{path} is truncated ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if kind == "images":
        if magic != 2051:
            raise LADError(f"{path} is not an idx3 image file (magic {magic}, expected 2051)")
        n, h, w = struct.unpack(">III", raw[4:16])
        return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h, w)
    if magic != 2049:
        raise LADError(f"{path} is not an idx1 label file (magic {magic}, expected 2049)")
    (n,) = struct.unpack(">I", raw[4:8])
    return np.frombuffer(raw, dtype=np.uint8, offset=8).reshape(n)


def _resolve_fashion_dir(fashion_mnist_dir: str | os.PathLike | None) -> tuple[Path, bool]:
    """Return (directory, explicitly_chosen)."""
    if fashion_mnist_dir:
        return Path(fashion_mnist_dir).expanduser(), True
    if os.environ.get(FASHION_MNIST_ENV):
        return Path(os.environ[FASHION_MNIST_ENV]).expanduser(), True
    return Path(DEFAULT_FASHION_MNIST_DIR), False


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _fashion_from_hub() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Optional online fallback: the Hub copy of Fashion-MNIST."""
    import datasets

    ds = datasets.load_dataset(FASHION_MNIST_HUB_ID)
    out = {}
    for split in ("train", "test"):
        images = np.stack([np.asarray(im, dtype=np.uint8) for im in ds[split]["image"]])
        labels = np.asarray(ds[split]["label"], dtype=np.uint8)
        out[split] = (images, labels)
    return out


@functools.lru_cache(maxsize=4)
def _load_fashion_cached(directory: str, explicit: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    path = Path(directory)
    files = {key: _find_idx_file(path, *key) for key in _IDX_STEMS}
    if all(files.values()):
        return {
            split: (_read_idx(files[(split, "images")], "images"), _read_idx(files[(split, "labels")], "labels"))
            for split in ("train", "test")
        }
    missing = ", ".join(stems[0] + ".gz" for key, stems in _IDX_STEMS.items() if files[key] is None)
    message = (
        f"Fashion-MNIST not found in {path} (missing {missing}); install it with "
        f"`apt-get install -y dataset-fashion-mnist`, or pass --fashion_mnist_dir DIR "
        f"(or set {FASHION_MNIST_ENV}) pointing at the idx .gz files"
    )
    if explicit or _offline():
        raise LADError(message)
    try:
        return _fashion_from_hub()
    except Exception as exc:  # network, auth, missing `datasets` cache...
        raise LADError(f"{message}; the Hub fallback {FASHION_MNIST_HUB_ID} failed too ({type(exc).__name__})") from exc


def load_fashion_mnist(fashion_mnist_dir: str | os.PathLike | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Load Fashion-MNIST as `{"train": (images, labels), "test": (images, labels)}` (uint8 arrays).

    Looks in `fashion_mnist_dir`, else `$LAD_FASHION_MNIST_DIR`, else
    `/usr/share/datasets/fashion-mnist/`. Only when none was chosen, the files are missing and
    the Hub is not offline, falls back to the Hub copy. Raises `LADError` otherwise.
    """
    directory, explicit = _resolve_fashion_dir(fashion_mnist_dir)
    data = _load_fashion_cached(str(directory), explicit)
    for split, size in _FASHION_SIZES.items():
        images, labels = data[split]
        if images.shape != (size, 28, 28) or labels.shape != (size,):
            raise LADError(
                f"Fashion-MNIST {split} split in {directory} has shape {images.shape}/{labels.shape}, "
                f"expected ({size}, 28, 28)/({size},)"
            )
    return data
