"""``clothing1m``: Clothing1M (Xiao et al. 2015), ~1M online-shopping photos of 14 classes with real noisy labels.

Below ``root`` (required; distributed by its authors on request): ``images/`` and ``annotations/`` with the noisy and
clean ``<key> <label>`` files and the train, validation and test key lists (layout: ``docs/data.md``). Train = the
noisy training keys with noisy labels; ``val`` and test = the clean lists with clean labels (the shipped validation
split, so runs need ``data.val_fraction=0``). The engine draws the usual per-epoch class-balanced subsample
(``data.epoch_samples``).
"""

from __future__ import annotations

import os

import numpy as np

from knnmix.data.base import DATASETS, DatasetBundle
from knnmix.data.files import OnBadImage, build_sources, check_options, data_root, read_list, refuse, refuse_shared
from knnmix.data.files import refuse_repeated, require_all_classes, require_file, require_listed
from knnmix.errors import DataError

NAME = "clothing1m"
#: The 14 classes, in label order.
CLASSES = [
    "T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
    "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear",
]  # fmt: skip
NOISY_KV = os.path.join("annotations", "noisy_label_kv.txt")
CLEAN_KV = os.path.join("annotations", "clean_label_kv.txt")
TRAIN_KEYS = os.path.join("annotations", "noisy_train_key_list.txt")
VAL_KEYS = os.path.join("annotations", "clean_val_key_list.txt")
TEST_KEYS = os.path.join("annotations", "clean_test_key_list.txt")
FILES = (NOISY_KV, CLEAN_KV, TRAIN_KEYS, VAL_KEYS, TEST_KEYS)


def read_kv(path: str) -> dict[str, int]:
    """A ``<key> <label>`` file as a dict; malformed lines, labels outside 0..13 or a key listed twice are a
    :class:`DataError`."""
    keys, labels, lines = read_list(path, NAME, "'<image key> <label>'", len(CLASSES))
    refuse_repeated(NAME, path, keys, lines)
    return dict(zip(keys, labels.tolist()))


def read_split(root: str, list_file: str, kv: dict[str, int], kv_file: str) -> tuple[list[str], np.ndarray]:
    """The keys of ``root/list_file`` and their labels from ``kv`` (read from ``kv_file``): ``(keys, labels (N,))``.

    A key listed twice, absent from the kv file, or naming no image under ``root``, is a :class:`DataError` listing
    the first offenders with their line numbers.
    """
    path = os.path.join(root, list_file)
    keys, _, lines = read_list(path, NAME, "one image key", labelled=False)
    refuse_repeated(NAME, path, keys, lines)
    absent = [f"line {n}: {k}" for n, k in zip(lines, keys) if k not in kv]
    refuse(absent, f"{NAME}: {len(absent)} keys of {path} are missing from {os.path.join(root, kv_file)}")
    if not keys:
        raise DataError(f"{NAME}: {path} lists no images")
    require_listed(NAME, root, keys, path, lines)
    return keys, np.array([kv[k] for k in keys], dtype=np.int64)


@DATASETS.register("clothing1m")
def load_clothing1m(
    root: str | None, download: bool, *, image_size: int | None = None, on_bad_image: OnBadImage = "fail"
) -> DatasetBundle:
    """Load Clothing1M from ``root`` (layout in the module docstring); images ``float32 (B, 3, s, s)``.

    ``download`` is ignored: Clothing1M is distributed by its authors on request.
    """
    check_options(NAME, image_size, on_bad_image)
    root = data_root(NAME, root, "Clothing1M folder (holding images/ and annotations/)")
    for name in FILES:
        require_file(os.path.join(root, name), NAME, " (Clothing1M's published annotations/ folder)")
    noisy, clean = read_kv(os.path.join(root, NOISY_KV)), read_kv(os.path.join(root, CLEAN_KV))
    listed = {
        "train": (root, *read_split(root, TRAIN_KEYS, noisy, NOISY_KV)),
        "validation": (root, *read_split(root, VAL_KEYS, clean, CLEAN_KV)),
        "test": (root, *read_split(root, TEST_KEYS, clean, CLEAN_KV)),
    }
    del noisy, clean  # the noisy kv file holds ~1M entries
    train_keys, val_keys, test_keys = ([os.path.normpath(k) for k in listed[s][1]] for s in listed)
    refuse_shared(NAME, train_keys, test_keys, f"keys of {os.path.join(root, TEST_KEYS)}")
    refuse_shared(NAME, train_keys, val_keys, f"keys of {os.path.join(root, VAL_KEYS)}")  # would select on them
    require_all_classes(NAME, CLASSES, listed["train"][2], f" in {os.path.join(root, TRAIN_KEYS)}")
    splits = build_sources(NAME, CLASSES, listed, image_size=image_size, on_bad_image=on_bad_image)
    return DatasetBundle(
        name=NAME, family="generic", classes=list(CLASSES), labels_are_clean=False, default_model="resnet50",
        train=splits["train"][0], train_labels=splits["train"][1], val=splits["validation"][0],
        val_labels=splits["validation"][1], test=splits["test"][0], test_labels=splits["test"][1],
    )
