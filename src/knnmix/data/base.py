"""The data contract every dataset follows, and the helpers the loaders share.

A registered dataset loader returns a :class:`DatasetBundle`: image *sources* (things that turn row numbers into
normalised image tensors) plus the published labels. The engine then injects label noise, carves the noisy
validation split and wraps each split in a :class:`LabelledDataset`, whose items are ``(image, given_label,
index)``. A dataset's labels never change after construction: corrected labels live in the engine's per-sample
state, index-aligned with ``index``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from knnmix.errors import DataError, one_line
from knnmix.registry import Registry


def cache_root() -> Path:
    """Where downloadable data sets live unless the user passes ``root`` (``data.root``)."""
    return Path("~/.cache/knnmix/data").expanduser()


def check_labels(labels: Any, n: int, num_classes: int, what: str) -> np.ndarray:
    """``labels`` as int64 ``(n,)`` in ``[0, num_classes)``, else a :class:`DataError` starting with ``what``."""
    try:
        raw = np.asarray(labels)
        labels = raw.astype(np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{what} is not a list of integers: {one_line(e)}") from None
    if raw.dtype == bool or raw.dtype.kind not in "iuf" or (raw.dtype.kind == "f" and (labels != raw).any()):
        raise DataError(f"{what} must be integer class indices, got {raw.dtype} values (e.g. {raw.ravel()[:3]})")
    if labels.shape != (n,):
        raise DataError(f"{what} has shape {labels.shape}, expected ({n},) to match the images")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{what} must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    return labels


def torchvision_download(dataset: str, cls: str, root: Path) -> None:
    """Fetch a public data set into ``root`` through ``torchvision.datasets.<cls>`` (needs internet)."""
    from torchvision import datasets

    try:
        getattr(datasets, cls)(str(root), train=True, download=True)
    except (RuntimeError, OSError) as e:
        raise DataError(f"could not download {dataset} into {root}: {one_line(e)}") from None


class ImageSource(ABC):
    """Images addressable by row number, loaded in batches as normalised ``float32`` tensors."""

    #: ``(channels, height, width)`` of what :meth:`load` returns.
    shape: tuple[int, int, int]

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def load(self, rows: Tensor, *, augment: bool) -> Tensor:
        """Load rows ``(B,)`` as a batch ``(B, C, H, W)``; each image augmented independently if ``augment``.

        Randomness comes from torch's global generator (the engine seeds it per epoch and worker).
        """

    def preview(self, rows: Tensor) -> Tensor:
        """Rows ``(B,)`` as displayable ``uint8`` images ``(B, C, H, W)``, not augmented or normalised."""
        raise NotImplementedError(f"{type(self).__name__} cannot show its images")

    def path(self, row: int) -> str | None:
        """The file a row was read from, for sources backed by files; ``None`` otherwise."""
        return None

    def signature(self) -> str | None:
        """A digest of the files behind the rows, for sources backed by files (a resume compares it); ``None``
        otherwise."""
        return None


@dataclass(frozen=True)
class Augment:
    """Train-time augmentation of in-memory images: random crop after zero padding, optional horizontal flip."""

    crop_padding: int = 0  # pixels of zero padding before the random crop back to the original size; 0 = no crop
    hflip: bool = False  # flip horizontally with probability 1/2

    def __call__(self, x: Tensor) -> Tensor:
        """Independently random-crop (after zero padding) and flip each image of a batch ``(B, C, H, W)``."""
        b, c, h, w = x.shape
        pad = self.crop_padding
        if pad > 0:
            padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
            dy = torch.randint(0, 2 * pad + 1, (b,))
            dx = torch.randint(0, 2 * pad + 1, (b,))
            rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
            cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
            x = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
        if self.hflip:
            flip = torch.rand(b) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x


class Normalise:
    """``uint8 (B, C, H, W)`` -> normalised ``float32``: ``(x - 255 * mean) * (1 / (255 * std))`` per channel.

    Every source normalises with this arithmetic, so images preloaded into memory and images decoded from files
    give bit-identical batches (torchvision's ``ToDtype`` + ``Normalize`` round differently).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.values = {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}  # of pixels in [0, 1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)

    def __call__(self, x: Tensor) -> Tensor:
        return x.float().sub_(self.mean).mul_(self.inv_std)


class TensorSource(ImageSource):
    """An in-memory ``uint8`` image tensor ``(N, C, H, W)`` with batched, vectorised augmentation.

    Loading a batch is one gather plus a few tensor ops, so small data sets train at full CPU speed without
    DataLoader worker processes.
    """

    def __init__(self, images: Tensor, mean: Sequence[float], std: Sequence[float], augment: Augment = Augment()):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        c = images.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std need {c} channel values, got {len(mean)}/{len(std)}")
        self.images = images.contiguous()
        self.shape = (c, images.shape[2], images.shape[3])
        self.normalise = Normalise(mean, std)
        self.augment = augment

    def __len__(self) -> int:
        return self.images.shape[0]

    def load(self, rows: Tensor, *, augment: bool) -> Tensor:
        x = self.images[rows]
        return self.normalise(self.augment(x) if augment else x)

    def preview(self, rows: Tensor) -> Tensor:
        return self.images[rows]

    def as_float(self) -> Tensor:
        """All images as ``(N, C*H*W)`` floats in [0, 1] (used by instance-dependent noise)."""
        return self.images.reshape(len(self), -1).float() / 255.0


@dataclass
class DatasetBundle:
    """What a registered dataset loader returns: sources and published labels of each split.

    ``train_labels`` are the labels as published. For benchmark data sets they are the clean ground truth and
    ``labels_are_clean`` is True (synthetic noise is injected on top); for a user's own data they are the given,
    possibly wrong labels and there is no ground truth.
    """

    name: str
    family: str  # class-structure family for asymmetric noise maps: digits, fashion-mnist, cifar10, cifar100, generic
    classes: list[str]
    train: ImageSource
    train_labels: np.ndarray  # (N_train,) int64
    test: ImageSource | None = None
    test_labels: np.ndarray | None = None  # (N_test,) int64
    labels_are_clean: bool = True
    train_coarse_labels: np.ndarray | None = None  # (N_train,) int64 super-classes (CIFAR-100)
    default_model: str = "small_cnn"
    # A validation split shipped with the data (e.g. Clothing1M's clean validation set), used instead of one carved
    # from the training set; the config must then ask for no carved split (data.val_fraction=0).
    val: ImageSource | None = None
    val_labels: np.ndarray | None = None
    # Further test sets reported beside the main one, by name (e.g. ImageNet's validation images for WebVision).
    extra_tests: dict[str, tuple[ImageSource, np.ndarray]] = field(default_factory=dict)
    # Optional: which training rows take part in a given epoch (e.g. Clothing1M's class-balanced subsample).
    epoch_rows: Callable[[int, int], np.ndarray] | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __post_init__(self) -> None:
        if isinstance(self.classes, str) or not all(isinstance(c, str) for c in self.classes):
            raise DataError(f"DatasetBundle {self.name!r}: classes must be a list of class names, got {self.classes!r}")
        for split in ("train", "test", "val"):
            source = getattr(self, split)
            if not (source is None and split != "train") and not isinstance(source, ImageSource):
                raise DataError(f"DatasetBundle {self.name!r}: {split} must be an ImageSource (e.g. TensorSource of "
                                f"uint8 (N, C, H, W) images), got {type(source).__name__}")
        k = self.num_classes
        self.train_labels = check_labels(self.train_labels, len(self.train), k, "train_labels")
        for split, name in (("test", "test"), ("val", "validation")):
            source, labels = getattr(self, split), getattr(self, f"{split}_labels")
            if source is not None:
                if labels is None:
                    raise ValueError(f"a {name} source needs {name} labels")
                setattr(self, f"{split}_labels", check_labels(labels, len(source), k, f"{split}_labels"))
        for name, (source, labels) in list(self.extra_tests.items()):
            self.extra_tests[name] = (source, check_labels(labels, len(source), k, f"extra_tests[{name!r}]"))


#: The signature every registered dataset loader has (plus the keyword options it declares).
DatasetLoader = Callable[..., DatasetBundle]

#: Dataset name -> loader (:func:`knnmix.data.load_dataset` looks names up here).
DATASETS: Registry[DatasetLoader] = Registry("dataset")


def _frozen_labels(labels: np.ndarray, rows: np.ndarray, what: str) -> np.ndarray:
    """A read-only int64 copy of ``labels``, one per row."""
    labels = np.array(labels, dtype=np.int64, copy=True)
    if labels.shape != rows.shape:
        raise ValueError(f"{len(labels)} {what} for {len(rows)} rows")
    labels.setflags(write=False)
    return labels


class LabelledDataset(Dataset):
    """Selected rows of a source with fixed given labels; item ``i`` is ``(image, given_label, i)``.

    ``index`` is the position inside this dataset (``0 .. len-1``): the key of every per-sample tensor the
    engine keeps. ``true_labels`` (when known) are for diagnostics only and never reach training.
    Batched access through ``__getitems__`` returns already-collated tensors (use :func:`collate_batch`).
    """

    def __init__(self, source: ImageSource, rows: np.ndarray, given_labels: np.ndarray, classes: Sequence[str],
                 true_labels: np.ndarray | None = None, augment: bool = False) -> None:
        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64)
        self._rows_t = torch.from_numpy(self.rows)
        self.given_labels = _frozen_labels(given_labels, self.rows, "labels")
        self._given_t = torch.tensor(self.given_labels)
        self.true_labels = None if true_labels is None else _frozen_labels(true_labels, self.rows, "true labels")
        self.classes = list(classes)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.rows)

    def given_tensor(self) -> Tensor:
        """A copy of the given labels ``(N,)`` as an int64 tensor (the dataset's own labels stay untouched)."""
        return self._given_t.clone()

    def subset(self, positions: np.ndarray) -> LabelledDataset:
        """A new dataset of the samples at ``positions`` (re-indexed ``0 .. len-1``), same source and view."""
        positions = np.asarray(positions, dtype=np.int64)
        true = None if self.true_labels is None else self.true_labels[positions]
        return LabelledDataset(
            self.source, self.rows[positions], self.given_labels[positions], self.classes, true, self.augment
        )

    def view(self, *, augment: bool) -> LabelledDataset:
        """The same samples and labels, loaded with or without augmentation."""
        other = object.__new__(LabelledDataset)
        other.__dict__.update(self.__dict__, augment=augment)
        return other

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        x, y, idx = self.__getitems__([i])
        return x[0], int(y[0]), int(idx[0])

    def __getitems__(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x = self.source.load(self._rows_t[idx], augment=self.augment)
        return x, self._given_t[idx], idx


def collate_batch(batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """DataLoader ``collate_fn`` for :meth:`LabelledDataset.__getitems__`, which already returns a batch."""
    return batch
