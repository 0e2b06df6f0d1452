"""``fashion-mnist``: Zalando's 28x28 grey-scale clothing images (60,000 train / 10,000 test), from the idx files.

The four idx files (plain or ``.gz``) are read from ``root`` or ``root/FashionMNIST/raw``; without a ``root``, from
:data:`DEBIAN_ROOT`, then the knnmix cache, where ``download=True`` fetches them through torchvision. They are
parsed here: torchvision's reader cannot read Debian's ``.gz`` files and checks the format with ``assert``.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from knnmix.data.base import DATASETS, Augment, DatasetBundle, TensorSource, cache_root, check_labels
from knnmix.data.base import torchvision_download
from knnmix.errors import DataError, one_line

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
        with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
            buf = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read idx file {path}: {one_line(e)}") from None
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"idx file {path} is truncated: {len(buf)} bytes, shorter than its {header}-byte header")
    magic, expected = int.from_bytes(buf[:4], "big"), (_IDX_UBYTE << 8) | ndim
    if magic != expected:
        raise DataError(f"idx file {path} has magic number 0x{magic:08x}, expected 0x{expected:08x}")
    dims = tuple(int(d) for d in np.frombuffer(buf, ">u4", ndim, offset=4))
    size = int(np.prod(dims, dtype=np.int64))
    if len(buf) - header != size:
        raise DataError(f"idx file {path} is truncated or corrupt: header says {'x'.join(map(str, dims))} = {size} "
                        f"bytes of data, found {len(buf) - header}")
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims).copy()


def find_files(roots: list[Path]) -> dict[str, Path]:
    """The four idx files (base name -> path; a plain file wins over its ``.gz``) from the first complete directory
    among ``roots`` and their torchvision sub-folders, else a :class:`DataError` naming the searched roots and the
    first file missing from the most complete directory."""
    best: dict[str, Path] = {}
    for directory in (d for root in roots for d in (root, root / TORCHVISION_SUBDIR)):
        found = {name: p for name in FILES for p in (directory / f"{name}.gz", directory / name) if p.is_file()}
        if len(found) == len(FILES):
            return found
        best = found if len(found) > len(best) else best
    missing = next(name for name in FILES if name not in best)
    raise DataError(f"fashion-mnist data not found at {' or '.join(map(str, roots))} (missing {missing}[.gz]); install "
                    "Debian's dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist), pass --set "
                    "data.root=DIR, or --set data.download=true to fetch it")


def _read_split(images_path: Path, labels_path: Path) -> tuple[TensorSource, np.ndarray]:
    images = read_idx(images_path, 3)
    labels = check_labels(read_idx(labels_path, 1), len(images), len(CLASSES), str(labels_path))
    return TensorSource(torch.from_numpy(images[:, None]), MEAN, STD, AUGMENT), labels


@DATASETS.register("fashion-mnist")
def load_fashion_mnist(root: str | None, download: bool) -> DatasetBundle:
    """Load Fashion-MNIST as uint8 ``(N, 1, 28, 28)`` images from ``root`` (default: see the module docstring)."""
    roots = [Path(root).expanduser()] if root else [Path(DEBIAN_ROOT), cache_root()]
    try:
        files = find_files(roots)
    except DataError:
        if not download:
            raise
        torchvision_download("fashion-mnist", "FashionMNIST", roots[-1])  # into <root>/FashionMNIST/raw
        files = find_files(roots[-1:])
    train, train_labels = _read_split(files[TRAIN_IMAGES], files[TRAIN_LABELS])
    test, test_labels = _read_split(files[TEST_IMAGES], files[TEST_LABELS])
    if train.shape != test.shape:
        raise DataError(f"{files[TRAIN_IMAGES]} holds {train.shape[1]}x{train.shape[2]} images but "
                        f"{files[TEST_IMAGES]} holds {test.shape[1]}x{test.shape[2]}")
    return DatasetBundle(
        name="fashion-mnist", family="fashion-mnist", classes=list(CLASSES), default_model="small_cnn",
        train=train, train_labels=train_labels, test=test, test_labels=test_labels,
    )
