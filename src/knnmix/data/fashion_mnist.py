"""``fashion-mnist``: Zalando's 28x28 grey-scale clothing images (60,000 train / 10,000 test), from the idx files.

The four original files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each plain or ``.gz``) are read either directly from ``root`` (Debian's
``dataset-fashion-mnist`` layout) or from ``root/FashionMNIST/raw`` (torchvision's layout). Without a ``root``
the loader looks in :data:`DEBIAN_ROOT`, then in the knnmix cache (``~/.cache/knnmix/data``), which is also where
``download=True`` fetches the files (through torchvision) when no ``root`` is given. The files are parsed here:
torchvision's ``read_image_file`` cannot read the ``.gz`` files Debian ships and checks the format with ``assert``.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from knnmix.data._common import as_path, cache_root, one_line
from knnmix.data.base import DATASETS, Augment, DatasetBundle, TensorSource
from knnmix.errors import DataError

#: Where Debian's ``dataset-fashion-mnist`` package installs the gzipped idx files.
DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
#: torchvision's layout below a root.
TORCHVISION_SUBDIR = Path("FashionMNIST", "raw")

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN = (0.2860,)
STD = (0.3530,)
AUGMENT = Augment(crop_padding=2, hflip=True)

_IDX_UBYTE = 0x08  # the idx type code of unsigned bytes, the only one Fashion-MNIST uses


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an idx file of unsigned bytes (plain or ``.gz``) with ``ndim`` dimensions as a writable uint8 array.

    The header is ``0x00 0x00 <type> <ndim>`` then ``ndim`` big-endian uint32 sizes. A wrong magic number, a
    truncated or over-long body, or an unreadable gzip stream is a :class:`DataError` naming ``path``.
    """
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                buf = f.read()
        else:
            buf = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read idx file {path}: {one_line(e)}") from None
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"idx file {path} is truncated: {len(buf)} bytes, shorter than its {header}-byte header")
    magic = int.from_bytes(buf[:4], "big")
    expected = (_IDX_UBYTE << 8) | ndim
    if magic != expected:
        raise DataError(f"idx file {path} has magic number 0x{magic:08x}, expected 0x{expected:08x}")
    dims = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims, dtype=np.int64))
    if len(buf) - header != size:
        raise DataError(
            f"idx file {path} is truncated or corrupt: header says {'x'.join(map(str, dims))} = {size} bytes "
            f"of data, found {len(buf) - header}"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims).copy()


def _files_in(directory: Path) -> dict[str, Path]:
    """The idx files present in ``directory``, by base name; the plain file wins over the ``.gz``."""
    found: dict[str, Path] = {}
    for name in FILES:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
    return found


def find_files(roots: list[Path]) -> dict[str, Path]:
    """The four idx files from the first complete directory among ``roots`` and their torchvision sub-folders.

    Raises a :class:`DataError` that names the searched roots and the first file missing from the most
    complete directory.
    """
    best: dict[str, Path] = {}
    for root in roots:
        for directory in (root, root / TORCHVISION_SUBDIR):
            found = _files_in(directory)
            if len(found) == len(FILES):
                return found
            if len(found) > len(best):
                best = found
    missing = next(name for name in FILES if name not in best)
    where = " or ".join(str(r) for r in roots)
    raise DataError(
        f"fashion-mnist data not found at {where} (missing {missing}[.gz]); install Debian's dataset-fashion-mnist "
        "(apt-get install -y dataset-fashion-mnist), pass --set data.root=DIR, or --set data.download=true to fetch it"
    )


def fetch(root: Path) -> None:
    """Fetch the idx files into ``root/FashionMNIST/raw`` with torchvision (needs internet)."""
    from torchvision import datasets

    try:
        datasets.FashionMNIST(str(root), train=True, download=True)
    except (RuntimeError, OSError) as e:
        raise DataError(f"could not download fashion-mnist into {root}: {one_line(e)}") from None


def _read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if len(labels) and labels.max() >= len(CLASSES):
        raise DataError(f"{labels_path} has label {labels.max()}, expected 0..{len(CLASSES) - 1}")
    return images[:, None, :, :], labels.astype(np.int64)


@DATASETS.register("fashion-mnist")
def load_fashion_mnist(root: str | None, download: bool) -> DatasetBundle:
    """Load Fashion-MNIST as uint8 ``(N, 1, 28, 28)`` images from ``root`` (default: see the module docstring)."""
    roots = [as_path(root)] if root else [Path(DEBIAN_ROOT), cache_root()]
    try:
        files = find_files(roots)
    except DataError:
        if not download:
            raise
        fetch(roots[-1])
        files = find_files(roots[-1:])
    train_images, train_labels = _read_split(files[TRAIN_IMAGES], files[TRAIN_LABELS])
    test_images, test_labels = _read_split(files[TEST_IMAGES], files[TEST_LABELS])
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"{files[TRAIN_IMAGES]} holds {train_images.shape[2]}x{train_images.shape[3]} images but "
            f"{files[TEST_IMAGES]} holds {test_images.shape[2]}x{test_images.shape[3]}"
        )
    return DatasetBundle(
        name="fashion-mnist",
        family="fashion-mnist",
        classes=list(CLASSES),
        train=TensorSource(torch.from_numpy(train_images), MEAN, STD, AUGMENT),
        train_labels=train_labels,
        test=TensorSource(torch.from_numpy(test_images), MEAN, STD, AUGMENT),
        test_labels=test_labels,
        default_model="small_cnn",
    )
