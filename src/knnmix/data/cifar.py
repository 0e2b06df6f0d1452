"""``cifar10`` and ``cifar100``: 32x32 colour images from the python-pickle release torchvision downloads.

Layout below ``root`` (default ``~/.cache/knnmix/data``, or the batch folder itself): ``cifar-10-batches-py/`` or
``cifar-100-python/``; ``download=True`` fetches it with torchvision. The pickles are read here with a restricted
unpickler, not by torchvision's readers (which could run code, and drop CIFAR-100's coarse labels); the training
images keep CIFAR's order, which the CIFAR-N noisy-label files index. Details: ``docs/data.md``.
"""

from __future__ import annotations

import functools
import math
import pickle
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from knnmix.data.base import DATASETS, Augment, DatasetBundle, TensorSource, cache_root, check_labels
from knnmix.data.base import torchvision_download
from knnmix.errors import DataError, one_line

AUGMENT = Augment(crop_padding=4, hflip=True)


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant keeps its files and what its pickles call things."""

    name: str
    folder: str  # below the root
    files: tuple[str, ...]  # the training batches (concatenated in this order), then the test batch and the meta file
    label_key: str
    names_key: str  # class names in the meta file
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    coarse_key: str | None = None  # super-class labels (CIFAR-100)


CIFAR10 = CifarSpec(
    name="cifar10", folder="cifar-10-batches-py",
    files=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
    label_key="labels", names_key="label_names", num_classes=10,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
)  # fmt: skip
CIFAR100 = CifarSpec(
    name="cifar100", folder="cifar-100-python", files=("train", "test", "meta"),
    label_key="fine_labels", names_key="fine_label_names", num_classes=100,
    mean=(0.507, 0.487, 0.441), std=(0.267, 0.256, 0.276), coarse_key="coarse_labels",
)  # fmt: skip

# The only globals a CIFAR pickle (Python 2 or 3, any protocol) needs to rebuild its numpy arrays; numpy >= 2
# renamed numpy.core to numpy._core. ``_codecs.encode`` makes bytes in protocol-2 pickles written by Python 3.
_ALLOWED_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name)
    for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`_ALLOWED_GLOBALS` (numpy arrays, dtypes, scalars)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core."):
            with suppress(ImportError, AttributeError):
                return super().find_class(module.replace("numpy.core.", "numpy._core.", 1), name)
        return super().find_class(module, name)


def unpickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle as a dict with ``str`` keys (strings decoded as latin-1, as in the Python 2 release);
    anything unreadable is a :class:`DataError`."""
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


def read_batch(path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One batch file as ``(images uint8 (N, 3, S, S), labels (N,), coarse labels (N,) or None)``.

    A batch's ``data`` is ``uint8 (N, 3*S*S)``: per image the row-major R, G and B planes, i.e. channels first.
    """
    entry = unpickle(path)
    data = _field(entry, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' is a {desc}, expected a uint8 (N, 3*S*S) array")
    n, side = data.shape[0], math.isqrt(data.shape[1] // 3)
    if 3 * side * side != data.shape[1] or side == 0:
        raise DataError(f"{path}: 'data' rows have {data.shape[1]} values, expected 3 square colour planes")

    def labels(key: str, num_classes: int) -> np.ndarray:
        return check_labels(_field(entry, key, path), n, num_classes, f"{path}: {key!r}")

    fine = labels(spec.label_key, spec.num_classes)
    coarse = labels(spec.coarse_key, 20) if spec.coarse_key else None
    return np.ascontiguousarray(data).reshape(n, 3, side, side), fine, coarse


def read_class_names(path: Path, spec: CifarSpec) -> list[str]:
    """The class names of the meta file (``label_names`` / ``fine_label_names``)."""
    names = _field(unpickle(path), spec.names_key, path)
    if not isinstance(names, list | tuple) or len(names) != spec.num_classes:
        count = len(names) if isinstance(names, list | tuple) else type(names).__name__
        raise DataError(f"{path}: {spec.names_key!r} has {count} entries, expected {spec.num_classes} class names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _missing(directory: Path, spec: CifarSpec) -> str | None:
    return next((name for name in spec.files if not (directory / name).is_file()), None)


def load_cifar(spec: CifarSpec, root: str | None, download: bool) -> DatasetBundle:
    """Load a CIFAR variant from ``root`` (default ``~/.cache/knnmix/data``), downloading first if asked."""
    base = Path(root).expanduser() if root else cache_root()
    directory = base / spec.folder
    if _missing(directory, spec) is not None and any((base / name).is_file() for name in spec.files):
        directory = base  # the root is the batch folder itself (its missing files are named there)
    if _missing(directory, spec) is not None and download:
        torchvision_download(spec.name, spec.name.upper(), base)  # CIFAR10 / CIFAR100
        directory = base / spec.folder
    if (missing := _missing(directory, spec)) is not None:
        rel = directory.relative_to(base) / missing
        raise DataError(f"{spec.name} data not found under {base} (expected {rel.as_posix()}); "
                        "pass --set data.root=DIR or --set data.download=true")
    *train_files, test_file, meta_file = spec.files
    parts = [read_batch(directory / name, spec) for name in train_files]
    test_images, test_labels, _ = read_batch(directory / test_file, spec)
    sides = {name: images.shape[-1] for name, images in zip(spec.files, [*(p[0] for p in parts), test_images])}
    if len(set(sides.values())) > 1:
        raise DataError(f"{spec.name} under {directory}: the batches hold images of different sizes ("
                        f"{', '.join(f'{name}: {side}x{side}' for name, side in sides.items())}); all must be equal")
    train_images = np.concatenate([p[0] for p in parts])
    return DatasetBundle(
        name=spec.name, family=spec.name, classes=read_class_names(directory / meta_file, spec),
        train=TensorSource(torch.from_numpy(train_images), spec.mean, spec.std, AUGMENT),
        train_labels=np.concatenate([p[1] for p in parts]),
        train_coarse_labels=np.concatenate([p[2] for p in parts]) if spec.coarse_key else None,
        test=TensorSource(torch.from_numpy(test_images), spec.mean, spec.std, AUGMENT), test_labels=test_labels,
        default_model="preact_resnet18",
    )


# CIFAR-10: 10 classes; CIFAR-100: 100 fine classes in 20 super-classes; each 50,000 train / 10,000 test images.
DATASETS.register("cifar10")(functools.partial(load_cifar, CIFAR10))
DATASETS.register("cifar100")(functools.partial(load_cifar, CIFAR100))
