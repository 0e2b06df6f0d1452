"""``imagefolder``: a user's own images with the labels they were given (not trusted: ``labels_are_clean=False``).

``root`` holds one sub-folder per class (folder mode), or ``data.labels_file`` is a ``path,label`` CSV (CSV mode,
class list from a ``classes.txt`` beside it or the sorted labels); ``data.test_root`` is a second folder or CSV with
trusted labels, the test split. ``image_size=None`` chooses the side from the images. Details: ``docs/data.md``.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass

import numpy as np
from PIL import Image

from knnmix.data.base import DATASETS, DatasetBundle
from knnmix.data.files import IMAGE_EXTENSIONS, OnBadImage, as_int, build_sources, check_options, data_root
from knnmix.data.files import find_images, listing, locate, read_names, refuse, refuse_repeated, refuse_shared
from knnmix.data.files import require_all_classes, require_dir
from knnmix.errors import DataError, KnnmixWarning, one_line

NAME = "imagefolder"
#: The class list beside a labels CSV.
CLASSES_FILE = "classes.txt"
#: Largest ``image_size`` that gets the small CNN by default (larger images: ResNet-50).
SMALL_MODEL_MAX_SIDE = 64
#: The sides ``image_size=None`` chooses from: the first at least the images' median shorter side, else the last.
AUTO_SIDES = (32, 64, 224)
#: How many training images (a seeded sample) have their size read to choose ``image_size``.
SIZE_SAMPLE = 256
#: Folder names of splits (case-insensitive): a "class" folder of these names that holds only sub-folders is a split
SPLIT_NAMES = ("train", "training", "test", "testing", "val", "valid", "validation")


@dataclass
class LabelledFiles:
    """One split before its images are checked: files ``base/key`` with labels ``(N,)`` into ``classes``."""

    base: str  # the folder keys are relative to
    keys: list[str]
    labels: np.ndarray
    classes: list[str]


def read_folder(root: str, classes: list[str] | None = None) -> LabelledFiles:
    """Folder mode: every image below ``root/<class>/`` (:func:`~knnmix.data.files.find_images`).

    ``classes`` None: the class list is the sorted class folder names. Given (a test folder), every class folder
    must be one of them (a test folder may lack some classes). An empty class folder is a :class:`DataError`.
    """
    require_dir(root, NAME, "image folder")
    folders = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not folders:
        raise DataError(f"{NAME}: no class folders under {root} (expected {root}/<class>/<image>, "
                        "or a CSV of path,label given as data.labels_file)")
    classes = folders if classes is None else classes
    unknown = [repr(f) for f in folders if f not in classes]
    refuse(unknown, f"{NAME}: {len(unknown)} class folders under {root} are not training classes")
    keys, labels, empty = find_images(NAME, root, {f: classes.index(f) for f in folders})
    if classes is folders:
        warn_alike(folders, f"class folders under {root}", "merge their folders")
    refuse([repr(f) for f in empty], f"{NAME}: {len(empty)} class folders under {root} hold no images "
                                     f"({'/'.join(IMAGE_EXTENSIONS)})")
    check_layout(root, folders, keys)
    return LabelledFiles(root, keys, labels, list(classes))


def warn_alike(classes: list[str], what: str, fix: str) -> None:
    """Warn of class names that differ only in case ('Cat' and 'cat'): a typo makes a class of its own."""
    alike: dict[str, list[str]] = {}
    for name in classes:
        alike.setdefault(name.casefold(), []).append(name)
    twins = [" and ".join(repr(n) for n in names) for names in alike.values() if len(names) > 1]
    if twins:
        warnings.warn(f"{NAME}: {what} differ only in case, each a class of its own: {listing(twins)}; if they "
                      f"are one class, {fix}", KnnmixWarning, stacklevel=4)


def check_layout(root: str, folders: list[str], keys: list[str]) -> None:
    """Refuse or warn about what folder mode would read otherwise than its user may think: class folders named like
    splits (``train``, ``test``, ``val``, ...) that hold only sub-folders are splits read as classes (an error);
    images directly under ``root`` are in no class folder and left out, and class folders that all hold only the
    same sub-folders may be splits too (warnings)."""
    loose = sorted(f for f in os.listdir(root) if not f.startswith(".") and os.path.isfile(os.path.join(root, f))
                   and f.lower().endswith(IMAGE_EXTENSIONS))
    if loose:
        warnings.warn(f"{NAME}: {len(loose)} images directly under {root} are in no class folder and are left out: "
                      f"{listing(loose)}", KnnmixWarning, stacklevel=3)
    subfolders: dict[str, set[str]] = {folder: set() for folder in folders}
    own = set()  # class folders with an image of their own
    for key in keys:
        folder, sub, image = (*key.split(os.sep, 2), "")[:3]
        if image:
            subfolders[folder].add(sub)
        else:
            own.add(folder)
    splits = [f for f in folders if f.lower() in SPLIT_NAMES and f not in own]
    if splits:
        train = next((f for f in folders if f.lower().startswith("train")), None)
        hint = (f"set data.root to the training split ({os.path.join(root, train)})" if train
                else "set data.root to the training split")
        raise DataError(f"{NAME}: {root} holds splits, not classes: the folders {listing([repr(f) for f in splits])} "
                        f"hold only sub-folders ({listing(sorted(set().union(*(subfolders[f] for f in splits))))}); "
                        f"{hint} and data.test_root to the test split")
    first = subfolders[folders[0]]
    if not own and len(first) > 1 and all(s == first for s in subfolders.values()):
        warnings.warn(f"{NAME}: the class folders {listing([repr(f) for f in folders])} under {root} all hold the same "
                      f"sub-folders ({listing(sorted(first))}) and no images of their own: if they are splits "
                      f"and those are the classes, set data.root to one split (e.g. {os.path.join(root, folders[0])}) "
                      "and data.test_root to another", KnnmixWarning, stacklevel=3)


def _read_rows(csv_path: str) -> list[tuple[int, str, str]]:
    """The ``(line number, path, label)`` of each non-blank row of a ``path,label`` CSV (any column order, extra
    columns ignored); a missing header or a row without a path or label is a :class:`DataError`."""
    rows, malformed = [], []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            columns = [h.strip().lower() for h in header or []]
            if "path" not in columns or "label" not in columns:
                found = f"header {','.join(header)!r}" if header else "no header (empty file)"
                raise DataError(f"{NAME}: {csv_path} has {found}, expected a first line 'path,label'")
            pi, li = columns.index("path"), columns.index("label")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                path, label = (row[pi].strip(), row[li].strip()) if len(row) == len(columns) else ("", "")
                if not path or not label:
                    malformed.append(f"line {reader.line_num}: {','.join(row)[:80]!r}")
                rows.append((reader.line_num, path, label))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{NAME}: cannot read {csv_path}: {one_line(e)}") from None
    refuse(malformed, f"{NAME}: {csv_path} has {len(malformed)} rows without {len(columns)} fields and a "
                      "non-empty path and label")
    if not rows:
        raise DataError(f"{NAME}: {csv_path} lists no images")
    return rows


def _sorted_labels(labels: set[str], csv_path: str) -> list[str]:
    """The sorted set of label names; numerically sorted when every one is an integer (``"2"`` before ``"10"``),
    where one integer spelled two ways (``1`` and ``01``) is a :class:`DataError` (two classes in no fixed order)."""
    try:
        values = {label: int(label) for label in labels}
    except ValueError:
        return sorted(labels)
    spellings: dict[int, list[str]] = {}
    for label, value in values.items():
        spellings.setdefault(value, []).append(label)
    twice = [" and ".join(repr(x) for x in sorted(s)) for _, s in sorted(spellings.items()) if len(s) > 1]
    refuse(twice, f"{NAME}: {csv_path} spells {len(twice)} integer labels two ways, which would make two classes of "
                  "each; write each label one way")
    return sorted(labels, key=int)


def read_csv(csv_path: str, base: str, classes: list[str] | None = None, near: str | None = None) -> LabelledFiles:
    """CSV mode: rows ``path,label`` of ``csv_path``; relative paths are taken below ``base``.

    ``classes`` None: the class list is ``classes.txt`` beside the CSV, else the sorted labels (then a negative
    integer label is an error: a "no label" marker, not a class). Given (a test CSV), labels are resolved against it
    and a ``classes.txt`` beside the CSV must agree with it. An integer label is a class index only when no class
    name is an integer. Raises a :class:`DataError` listing the first offending lines
    for: malformed rows, a label absent from the class list (or an out-of-range index), a path listed twice, a path
    naming no file (with a hint when every such path names a file below ``near``, the training root).
    """
    rows = _read_rows(csv_path)
    classes_file = os.path.join(os.path.dirname(os.path.abspath(csv_path)), CLASSES_FILE)
    listed = read_names(classes_file, NAME, "class names") if os.path.isfile(classes_file) else None
    training = classes is None
    if classes is None:
        if listed is None:  # -1 for "no label" would otherwise be a class of its own
            negative = [f"line {n}: {label!r}" for n, _, label in rows
                        if label.startswith("-") and as_int(label, None) is not None]
            refuse(negative, f"{NAME}: {csv_path} has {len(negative)} negative integer labels (a 'no label' marker?), "
                             f"which would make a class of their own; remove those rows, or list every class in "
                             f"{classes_file}")
            numbers = [f"line {n}: {label!r}" for n, _, label in rows if as_int(label, None) is not None]
            if numbers and len(numbers) < len(rows):  # "2" among "cat" and "dog" would be a class named "2"
                refuse(numbers, f"{NAME}: {csv_path} mixes class names and {len(numbers)} integer labels, which "
                                f"would be classes of their own; list every class in {classes_file} (line order = "
                                "index: an integer label then indexes it, or is a name where class names are integers)")
        classes = listed if listed is not None else _sorted_labels({label for _, _, label in rows}, csv_path)
        origin = classes_file if listed is not None else "the sorted labels"
    else:
        if listed is not None and listed != classes:
            raise DataError(f"{NAME}: {classes_file} differs from the training class list ({len(classes)} classes)")
        origin = "the training class list"

    index = {c: i for i, c in enumerate(classes)}
    by_index = all(as_int(c, None) is None for c in classes)  # integer labels index names; integer names are names
    labels = np.array([index.get(label, as_int(label, -1) if by_index else -1) for _, _, label in rows], np.int64)
    labels[labels >= len(classes)] = -1
    unknown = [f"line {number}: {label!r}" for (number, _, label), c in zip(rows, labels) if c < 0]
    rule = (f"integer labels must lie in 0..{len(classes) - 1}" if by_index
            else "labels are names, never indices, where class names are integers")
    refuse(unknown, f"{NAME}: {csv_path} has {len(unknown)} labels absent from the class list ({len(classes)} "
                    f"classes from {origin}; {rule})")

    keys = [os.path.normpath(p) for _, p, _ in rows]
    refuse_repeated(NAME, csv_path, [os.path.normpath(os.path.join(base, k)) for k in keys], [n for n, _, _ in rows],
                    "paths", [repr(p) for _, p, _ in rows])
    gone = [(n, p, k) for (n, p, _), k in zip(rows, keys) if not os.path.isfile(os.path.join(base, k))]
    hint = ""
    if gone and near is not None and all(os.path.isfile(os.path.join(near, k)) for _, _, k in gone):
        hint = (f" (they are below {near}, the training root: a test CSV's paths are relative to the CSV's own folder; "
                "write them so, or absolute)")
    refuse([f"line {n}: {p!r}" for n, p, _ in gone], f"{NAME}: {csv_path} names {len(gone)} images missing under "
                                                     f"{base}{hint}")
    counts = np.bincount(labels, minlength=len(classes))
    single = [f"{classes[c]!r} (line {number})" for (number, _, _), c in zip(rows, labels) if counts[c] == 1]
    if training and listed is None:
        warn_alike(classes, f"labels in {csv_path}", "write its label one way (two classes: list every class in "
                   "classes.txt beside the CSV)")
    if training and single:  # a mistyped label in a training CSV becomes a class of its own, with a single image
        warnings.warn(
            f"{NAME}: {len(single)} of {len(classes)} classes in {csv_path} have a single image (a mistyped "
            f"label?): {listing(single)}", KnnmixWarning, stacklevel=2,
        )  # fmt: skip
    return LabelledFiles(base, keys, labels, list(classes))


def read_train(root: str | None, labels_file: str | None = None) -> LabelledFiles:
    """The training split of ``root`` (folder mode, or CSV mode with ``labels_file``, looked up as given, then
    below ``root``), with at least 2 classes and an image in every class."""
    root = data_root(NAME, root, "folder holding your images")
    if labels_file:
        csv_path = locate(NAME, "data.labels_file", labels_file, root)
        if csv_path is None or not os.path.isfile(csv_path):
            found = f"is a folder ({csv_path}), not a CSV file" if csv_path else f"does not exist (nor below {root})"
            raise DataError(f"{NAME}: data.labels_file {labels_file} {found}")
        train = read_csv(csv_path, root)
    else:
        train = read_folder(root)
    if len(train.classes) < 2:
        raise DataError(f"{NAME}: the data holds a single class {train.classes[0]!r}; at least 2 are needed")
    # Folder mode already refused empty class folders; a classes.txt may list classes without rows.
    require_all_classes(NAME, train.classes, train.labels, f" (remove them from {CLASSES_FILE} or add images)")
    return train


def choose_image_size(base: str, keys: Sequence[str], sample: int = SIZE_SAMPLE) -> int:
    """An ``image_size`` that fits the images ``base/key``: the median shorter side of a seeded sample of them
    (sizes read from the file headers; unreadable files left out) rounded up to one of :data:`AUTO_SIDES`, so
    28-pixel images get 32 (and the small CNN) and photos 224 (and ResNet-50)."""
    sides = []
    for i in np.random.default_rng(0).permutation(len(keys))[:sample].tolist():
        # a bad image is left out; the load-time check reports it
        with suppress(Exception), Image.open(os.path.join(base, keys[i])) as im:
            sides.append(min(im.size))
    median = float(np.median(sides)) if sides else AUTO_SIDES[-1]
    return next((side for side in AUTO_SIDES if median <= side), AUTO_SIDES[-1])


@DATASETS.register("imagefolder")
def load_imagefolder(root: str | None, download: bool, *, image_size: int | None = None, labels_file: str | None = None,
                     test_root: str | None = None, on_bad_image: OnBadImage = "fail") -> DatasetBundle:
    """Load a user's images from ``root`` (folder mode, or CSV mode with ``labels_file``); see the module docstring.

    ``download`` is ignored (there is nothing to fetch). Images come out as ``float32 (B, 3, s, s)`` with
    ``s = image_size`` (None: :func:`choose_image_size`); ``default_model`` is the small CNN up to 64 pixels, else
    ResNet-50. Bad images fail the load or are skipped with one warning (``on_bad_image``).
    """
    check_options(NAME, image_size, on_bad_image)
    train = read_train(root, labels_file)
    if image_size is None:
        image_size = choose_image_size(train.base, train.keys)
    splits = {"train": (train.base, train.keys, train.labels)}
    if test_root:
        location = locate(NAME, "data.test_root", test_root, train.base)
        if location is None:
            raise DataError(f"{NAME}: data.test_root {test_root} does not exist (nor below {train.base})")
        if os.path.isfile(location):  # a CSV, paths relative to its folder
            test = read_csv(location, os.path.dirname(location), train.classes, near=train.base)
        else:
            inside = os.path.relpath(os.path.realpath(location), os.path.realpath(train.base)).split(os.sep)[0]
            if not labels_file and inside in train.classes:
                raise DataError(f"{NAME}: data.test_root {location} lies inside the training folder {train.base}, "
                                f"where its images are training images of class {inside!r}; move it out")
            test = read_folder(location, train.classes)
        resolved = [[os.path.realpath(os.path.join(s.base, k)) for k in s.keys] for s in (train, test)]
        refuse_shared(NAME, *resolved, f"test images of {location}")
        splits["test"] = (test.base, test.keys, test.labels)
    sources = build_sources(NAME, train.classes, splits, image_size=image_size, on_bad_image=on_bad_image)
    test_source, test_labels = sources.get("test", (None, None))
    return DatasetBundle(
        name=NAME, family="generic", classes=train.classes, labels_are_clean=False,
        default_model="small_cnn" if image_size <= SMALL_MODEL_MAX_SIDE else "resnet50",
        train=sources["train"][0], train_labels=sources["train"][1], test=test_source, test_labels=test_labels,
    )
