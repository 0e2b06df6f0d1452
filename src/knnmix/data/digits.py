"""``digits``: scikit-learn's embedded 8x8 handwritten digits (1,797 images), with a fixed train/test split.

The data ships inside scikit-learn, so ``download`` is ignored and a ``root`` is an error. Pixel values 0..16 are
scaled to 0..255 (``round(v * 255 / 16)``). The split is stratified and seeded with :data:`SPLIT_SEED`, independent
of any run seed, so every run sees the same 1,437 training and 360 test images.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from knnmix.data.base import DATASETS, Augment, DatasetBundle, TensorSource
from knnmix.errors import DataError

#: Seed of the fixed train/test split (never a run's seed).
SPLIT_SEED = 0
#: Fraction of the images held out as the test split.
TEST_FRACTION = 0.2

CLASSES = [str(d) for d in range(10)]
#: One pixel of padding before the random crop; no flip (digits are not flip-invariant).
AUGMENT = Augment(crop_padding=1, hflip=False)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row numbers into sorted ``(train_rows, test_rows)`` with every class in proportion.

    The test split has ``ceil(test_fraction * n)`` rows; each class gets its share rounded by largest
    remainder (ties to the lower class), and its rows are drawn with ``numpy.random.RandomState(seed)``, whose
    stream numpy keeps stable across versions, so the split never changes.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    n_test = math.ceil(test_fraction * n)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n_test / n
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(-(quota - take), kind="stable")[: n_test - int(take.sum())]] += 1
    rng = np.random.RandomState(seed)
    is_test = np.zeros(n, dtype=bool)
    for c, k in zip(classes, take, strict=True):
        is_test[rng.permutation(np.flatnonzero(labels == c))[:k]] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


@DATASETS.register("digits")
def load_digits_dataset(root: str | None, download: bool) -> DatasetBundle:
    """Load scikit-learn's digits as uint8 ``(N, 1, 8, 8)`` images; ``download`` is ignored and a ``root`` refused
    (the images ship inside scikit-learn: a folder given here is a forgotten ``--dataset``, not data to skip).

    Normalised with the training images' per-channel mean and (population) standard deviation.
    """
    if root:
        raise DataError(f"data.root={root!r} is not used by dataset 'digits' (its images ship inside scikit-learn); "
                        "for a folder of your own images use --dataset imagefolder")
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.from_numpy(np.rint(raw.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :])
    labels = raw.target.astype(np.int64)
    train_rows, test_rows = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    train = images[train_rows].numpy().astype(np.float64) / 255.0
    mean, std = train.mean(axis=(0, 2, 3)).tolist(), train.std(axis=(0, 2, 3)).tolist()
    return DatasetBundle(
        name="digits", family="digits", classes=list(CLASSES), default_model="small_cnn",
        train=TensorSource(images[train_rows], mean, std, AUGMENT), train_labels=labels[train_rows],
        test=TensorSource(images[test_rows], mean, std, AUGMENT), test_labels=labels[test_rows],
    )
