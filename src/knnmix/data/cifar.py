"""``cifar10`` and ``cifar100``: 32x32 colour images from the python-pickle release torchvision downloads.

Layout below ``root`` (default ``~/.cache/knnmix/data``; ``root`` may also be the batch folder itself)::

    cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/train, test, meta

``download=True`` fetches missing files with torchvision first. The pickles are parsed here, not by torchvision's
readers, which ``pickle.load`` them (a doctored file could run code), insist on the release's MD5 sums and drop
CIFAR-100's coarse labels: a restricted unpickler resolves only the numpy globals an array needs. The training images
keep CIFAR's order (``data_batch_1 .. 5`` concatenated), which the CIFAR-N noisy-label files index; each batch's
``data`` is ``uint8 (N, 3072)`` of row-major R, G and B planes, i.e. ``(N, 3, 32, 32)`` after a reshape.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from knnmix.data._common import as_path, cache_root, one_line
from knnmix.data.base import DATASETS, Augment, DatasetBundle, TensorSource
from knnmix.errors import DataError

AUGMENT = Augment(crop_padding=4, hflip=True)


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant keeps its files and what its pickles call things."""

    name: str
    folder: str  # below the root
    train_files: tuple[str, ...]  # concatenated in this order
    test_file: str
    meta_file: str
    label_key: str
    names_key: str  # class names in the meta file
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    coarse_key: str | None = None  # super-class labels (CIFAR-100)

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


CIFAR10 = CifarSpec(
    name="cifar10", folder="cifar-10-batches-py", train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch", meta_file="batches.meta", label_key="labels", names_key="label_names", num_classes=10,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
)
CIFAR100 = CifarSpec(
    name="cifar100", folder="cifar-100-python", train_files=("train",), test_file="test", meta_file="meta",
    label_key="fine_labels", names_key="fine_label_names", num_classes=100, mean=(0.507, 0.487, 0.441),
    std=(0.267, 0.256, 0.276), coarse_key="coarse_labels",
)

# The only globals a CIFAR pickle (Python 2 or 3, any protocol) needs to rebuild its numpy arrays.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`_ALLOWED_GLOBALS` (numpy arrays, dtypes, scalars)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core."):  # numpy >= 2 renamed numpy.core to numpy._core
            try:
                return super().find_class("numpy._core." + module.removeprefix("numpy.core."), name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def unpickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle as a dict with ``str`` keys; anything unreadable is a :class:`DataError`.

    Strings are decoded as latin-1 (the CIFAR files are Python 2 pickles); ``bytes`` keys are decoded too.
    """
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except OSError as e:
        raise DataError(f"cannot read {path}: {one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 -- a corrupt pickle can raise almost anything
        raise DataError(f"{path} is not a readable CIFAR pickle: {one_line(e)}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR pickle: it holds a {type(obj).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _field(entry: dict[str, Any], key: str, path: Path) -> Any:
    if key not in entry:
        raise DataError(f"{path} has no {key!r} entry (found: {', '.join(sorted(entry))})")
    return entry[key]


def _labels(entry: dict[str, Any], key: str, n: int, num_classes: int, path: Path) -> np.ndarray:
    try:
        labels = np.asarray(_field(entry, key, path), dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: {key!r} is not a list of integers: {one_line(e)}") from None
    if labels.shape != (n,):
        raise DataError(f"{path}: {key!r} has shape {labels.shape}, expected ({n},) to match its images")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: {key!r} must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    return labels


def read_batch(path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One batch file as ``(images uint8 (N, 3, S, S), labels (N,), coarse labels (N,) or None)``."""
    entry = unpickle(path)
    data = _field(entry, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' is a {desc}, expected a uint8 (N, 3*S*S) array")
    side = math.isqrt(data.shape[1] // 3)
    if 3 * side * side != data.shape[1] or side == 0:
        raise DataError(f"{path}: 'data' rows have {data.shape[1]} values, expected 3 square colour planes")
    n = data.shape[0]
    images = np.ascontiguousarray(data).reshape(n, 3, side, side)  # planes R, G, B; each row-major: CHW
    labels = _labels(entry, spec.label_key, n, spec.num_classes, path)
    coarse = None
    if spec.coarse_key is not None:
        coarse = _labels(entry, spec.coarse_key, n, 20, path)
    return images, labels, coarse


def read_class_names(path: Path, spec: CifarSpec) -> list[str]:
    """The class names of the meta file (``label_names`` / ``fine_label_names``)."""
    names = _field(unpickle(path), spec.names_key, path)
    if not isinstance(names, list | tuple) or len(names) != spec.num_classes:
        count = len(names) if isinstance(names, list | tuple) else type(names).__name__
        raise DataError(f"{path}: {spec.names_key!r} has {count} entries, expected {spec.num_classes} class names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _data_dir(root: Path, spec: CifarSpec) -> Path:
    """``root/<folder>``, or ``root`` itself when it is already the batch folder."""
    nested = root / spec.folder
    if not (nested / spec.train_files[0]).is_file() and (root / spec.train_files[0]).is_file():
        return root
    return nested


def _missing(directory: Path, spec: CifarSpec) -> str | None:
    return next((name for name in spec.files if not (directory / name).is_file()), None)


def fetch(root: Path, spec: CifarSpec) -> None:
    """Download and extract the python-pickle release into ``root`` with torchvision (needs internet)."""
    from torchvision import datasets

    try:
        getattr(datasets, spec.name.upper())(str(root), train=True, download=True)  # CIFAR10 / CIFAR100
    except (RuntimeError, OSError) as e:
        raise DataError(f"could not download {spec.name} into {root}: {one_line(e)}") from None


def load_cifar(spec: CifarSpec, root: str | None, download: bool) -> DatasetBundle:
    """Load a CIFAR variant from ``root`` (default ``~/.cache/knnmix/data``), downloading first if asked."""
    base = as_path(root) if root else cache_root()
    directory = _data_dir(base, spec)
    missing = _missing(directory, spec)
    if missing is not None and download:
        fetch(base, spec)
        directory = base / spec.folder
        missing = _missing(directory, spec)
    if missing is not None:
        rel = directory.relative_to(base) / missing if directory != base else Path(missing)
        raise DataError(
            f"{spec.name} data not found under {base} (expected {rel.as_posix()}); "
            "pass --set data.root=DIR or --set data.download=true"
        )
    parts = [read_batch(directory / name, spec) for name in spec.train_files]
    test_images, test_labels, _ = read_batch(directory / spec.test_file, spec)
    classes = read_class_names(directory / spec.meta_file, spec)
    train_images = np.concatenate([p[0] for p in parts])
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"{spec.name} under {directory}: training images are {train_images.shape[1:]}, "
            f"test images {test_images.shape[1:]}"
        )
    coarse = np.concatenate([p[2] for p in parts if p[2] is not None]) if spec.coarse_key else None
    return DatasetBundle(
        name=spec.name,
        family=spec.name,
        classes=classes,
        train=TensorSource(torch.from_numpy(train_images), spec.mean, spec.std, AUGMENT),
        train_labels=np.concatenate([p[1] for p in parts]),
        test=TensorSource(torch.from_numpy(test_images), spec.mean, spec.std, AUGMENT),
        test_labels=test_labels,
        train_coarse_labels=coarse,
        default_model="preact_resnet18",
    )


@DATASETS.register("cifar10")
def load_cifar10(root: str | None, download: bool) -> DatasetBundle:
    """CIFAR-10: 10 classes, 50,000 train / 10,000 test images (``cifar-10-batches-py``)."""
    return load_cifar(CIFAR10, root, download)


@DATASETS.register("cifar100")
def load_cifar100(root: str | None, download: bool) -> DatasetBundle:
    """CIFAR-100: 100 fine classes in 20 super-classes, 50,000 train / 10,000 test (``cifar-100-python``)."""
    return load_cifar(CIFAR100, root, download)
