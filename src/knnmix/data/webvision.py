"""``webvision``: WebVision 1.0 (Li et al. 2017), web images of ImageNet's 1000 classes with real noisy labels.

Below ``root`` (required; the resized release, downloaded by hand): ``info/`` (file lists, optional ``synsets.txt``),
``google/`` and ``val_images_256/`` (layout: ``docs/data.md``). Train = the Google images with their web labels;
test = WebVision's validation images; ``data.first_classes=50`` gives mini-WebVision. ImageNet's validation images
of the kept classes (per-synset folders in ``data.test_root`` or ``<root>/imagenet_val``) are a second test set,
``extra_tests["imagenet"]``.
"""

from __future__ import annotations

import os

import numpy as np

from knnmix.data.base import DATASETS, DatasetBundle
from knnmix.data.files import OnBadImage, build_sources, check_options, data_root, find_images, locate, read_list
from knnmix.data.files import read_names, refuse, refuse_repeated, require_all_classes, require_dir, require_file
from knnmix.data.files import require_listed
from knnmix.errors import DataError

NAME = "webvision"
TRAIN_LIST = os.path.join("info", "train_filelist_google.txt")
VAL_LIST = os.path.join("info", "val_filelist.txt")
SYNSETS = os.path.join("info", "synsets.txt")
VAL_DIR = "val_images_256"
#: Default location of ImageNet's validation images (per-synset folders) below the root.
IMAGENET_VAL_DIR = "imagenet_val"


@DATASETS.register("webvision")
def load_webvision(root: str | None, download: bool, *, image_size: int | None = None, test_root: str | None = None,
                   on_bad_image: OnBadImage = "fail", first_classes: int | None = None) -> DatasetBundle:
    """Load WebVision 1.0 (or mini-WebVision with ``first_classes=50``) from ``root``; see the module docstring.

    ``test_root``: ImageNet's validation folder (per-synset layout), default ``<root>/imagenet_val`` when it exists.
    ``download`` is ignored (WebVision is downloaded by hand). Images are ``float32 (B, 3, s, s)``.
    """
    check_options(NAME, image_size, on_bad_image)
    root = data_root(NAME, root, "WebVision folder (holding info/, google/ and val_images_256/)")
    hint, what = " (WebVision 1.0's info/ folder)", "'<image path> <label>'"
    train_list, val_list = (require_file(os.path.join(root, f), NAME, hint) for f in (TRAIN_LIST, VAL_LIST))
    synsets_file = os.path.join(root, SYNSETS)
    # WordNet ids in class order: the first token of each line of synsets.txt
    synsets = read_names(synsets_file, NAME, "synsets", first_token=True) if os.path.isfile(synsets_file) else None
    total = len(synsets) if synsets is not None else None
    train, val = read_list(train_list, NAME, what, total), read_list(val_list, NAME, what, total)
    for (keys, _, lines), path in ((train, train_list), (val, val_list)):  # an image listed twice would count twice
        refuse_repeated(NAME, path, [os.path.normpath(k) for k in keys], lines, "images", keys)
    if total is None:
        total = int(max(train[1].max(initial=-1), val[1].max(initial=-1))) + 1
    if first_classes is not None and (
        isinstance(first_classes, bool) or not isinstance(first_classes, int) or not 2 <= first_classes <= total
    ):
        raise DataError(f"{NAME}: data.first_classes must be an integer in 2..{total}, got {first_classes!r}")
    k = total if first_classes is None else first_classes
    classes = synsets[:k] if synsets is not None else [str(c) for c in range(k)]

    def first_k(listed: tuple[list[str], np.ndarray, list[int]], path: str, folder: str = "") -> tuple:
        """``(root, keys, labels)`` of the listed images of classes ``0 .. k-1``, which must exist."""
        keys, labels, lines = listed
        rows = np.flatnonzero(labels < k).tolist()
        keys = [os.path.join(folder, keys[i]) for i in rows]
        require_listed(NAME, root, keys, path, [lines[i] for i in rows])
        return root, keys, labels[rows]

    require_all_classes(NAME, classes, train[1][train[1] < k], f" in {train_list}")
    splits = {"train": first_k(train, train_list), "test": first_k(val, val_list, VAL_DIR)}

    given = locate(NAME, "data.test_root", test_root, root) if test_root else None
    imagenet_dir = given or os.path.join(root, IMAGENET_VAL_DIR)
    if test_root and given is None:
        raise DataError(f"{NAME}: data.test_root {test_root} does not exist (nor below {root})")
    if test_root or os.path.isdir(imagenet_dir):
        if synsets is None:
            raise DataError(f"{NAME}: the ImageNet test set {imagenet_dir} needs {synsets_file} to map classes to "
                            "synsets")
        require_dir(imagenet_dir, NAME, "ImageNet validation folder")
        keys, labels, missing = find_images(NAME, imagenet_dir, {synset: c for c, synset in enumerate(synsets[:k])})
        refuse(missing, f"{NAME}: the ImageNet validation folder {imagenet_dir} has no images for {len(missing)} of "
                        f"the {k} classes (expected {imagenet_dir}/<synset>/*.JPEG)")
        splits["imagenet"] = (imagenet_dir, keys, labels)

    sources = build_sources(NAME, classes, splits, image_size=image_size, on_bad_image=on_bad_image)
    return DatasetBundle(
        name=NAME, family="generic", classes=classes, labels_are_clean=False, default_model="resnet50",
        train=sources["train"][0], train_labels=sources["train"][1], test=sources["test"][0],
        test_labels=sources["test"][1], extra_tests={"imagenet": sources["imagenet"]} if "imagenet" in sources else {},
    )
