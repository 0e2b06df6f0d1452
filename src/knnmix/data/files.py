"""Images read from files: the shared machinery of ``imagefolder``, ``clothing1m`` and ``webvision``.

A file-backed split is a root plus one key per row (e.g. ``images/0/00/x.jpg``) with one label per row.
:func:`build_sources` checks every image once at load time, on a thread pool: bad ones fail the load
(``on_bad_image="fail"``) or are dropped *before* row numbers are assigned (``"skip"``), so per-sample state stays
aligned with the rows that remain. Small images (``image_size < 64``, at most :data:`PRELOAD_MAX_BYTES` of pixels)
are decoded once into an in-memory :class:`PreloadedSource`, the decode doubling as the check; everything else
becomes a :class:`FileSource` that decodes each batch from disk.

Decoding is Pillow's (as in torchvision's ``ImageFolder``); resizing, cropping and flipping are torchvision's
transforms v2 (:class:`ImageTransform`, documented in ``docs/data.md``). All randomness comes from torch's global
generator, so the engine's per-epoch seeding (and torch's seeding of DataLoader workers) makes augmentation
reproducible.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, make_dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from knnmix.data._common import as_path, one_line
from knnmix.data.base import Augment, ImageSource, Normalise, TensorSource, random_crop_flip
from knnmix.errors import DataError

#: ImageNet's per-channel mean and std (RGB, 0..1 scale), used by every file-based data set.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: File name endings (matched in any case) taken as images when a folder is listed: torchvision's, plus GIF and PBM.
IMAGE_EXTENSIONS = (*IMG_EXTENSIONS, ".gif", ".pbm")
#: Sides below this use the small-image transform (no up-front enlargement, padded random crop).
SMALL_IMAGE_SIDE = 64
#: Largest decoded size (``N * 3 * s * s`` bytes) preloaded into memory when ``s < SMALL_IMAGE_SIDE``.
PRELOAD_MAX_BYTES = 2 * 1024**3
#: How many offenders an error or warning names.
MAX_LISTED = 5
#: Images per task of the load-time thread pool.
_CHUNK = 256

OnBadImage = Literal["fail", "skip"]


# ------------------------------------------------------------------------------------------------- small helpers


def listing(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    """``"a, b, c, d, e (and 7 more)"``: the first ``limit`` of ``items``."""
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def failure_reason(exc: BaseException, path: str) -> str:
    """Why ``path`` failed, on one short line, without repeating the path itself."""
    text = one_line(exc, 200)
    for form in (repr(path), f'"{path}"', path):
        text = text.replace(form, "")
    return " ".join(text.split()).rstrip(":")[:120] or type(exc).__name__


def load_threads() -> int:
    """Threads of the load-time check / preload pool: the CPUs this process may use, at most 32."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(32, cpus))


def dataset_root(dataset: str, root: str | None, image_size: int | None, on_bad_image: str, what: str) -> tuple[str, int]:
    """The checks every published file-based data set starts with: its options, and a ``root`` that is given and is
    a folder. Returns the absolute root and the image side (224 when ``image_size`` is None)."""
    image_size = 224 if image_size is None else image_size
    check_options(dataset, image_size, on_bad_image)
    if not root:
        raise DataError(f"{dataset}: set data.root to the {what}")
    root = os.path.abspath(as_path(root))
    require_dir(root, dataset)
    return root, image_size


def check_options(dataset: str, image_size: int, on_bad_image: str) -> None:
    """Reject an ``image_size`` below 8 or an unknown ``on_bad_image`` with a one-line :class:`DataError`."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise DataError(f"{dataset}: data.image_size must be an integer >= 8, got {image_size!r}")
    if on_bad_image not in ("fail", "skip"):
        raise DataError(f"{dataset}: data.on_bad_image must be 'fail' or 'skip', got {on_bad_image!r}")


def require_file(path: str, dataset: str, hint: str = "") -> str:
    """``path`` if it is a file, else a :class:`DataError` naming it as the expected file."""
    if not os.path.isfile(path):
        raise DataError(f"{dataset}: expected file {path} is missing{hint}")
    return path


def require_dir(path: str, dataset: str, what: str = "data root") -> str:
    """``path`` if it is a directory, else a :class:`DataError` naming it."""
    if not os.path.isdir(path):
        problem = "is not a directory" if os.path.exists(path) else "does not exist"
        raise DataError(f"{dataset}: {what} {path} {problem}")
    return path


def find_images(root: str, folders: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """The images below ``root/<folder>/`` of each ``folder -> label`` in ``folders``: ``(keys, labels (N,))``.

    torchvision's ``make_dataset`` walks each folder recursively (following links) for :data:`IMAGE_EXTENSIONS` in
    any case; hidden files and folders (``.name``) are skipped and a missing folder yields nothing. Keys are relative
    to ``root``, in the order of ``folders``, sorted within each folder.
    """
    prefix = os.path.join(root, "")

    def visible_image(path: str) -> bool:
        hidden = any(part.startswith(".") for part in path.removeprefix(prefix).split(os.sep))
        return not hidden and has_file_allowed_extension(path, IMAGE_EXTENSIONS)

    rank = {label: i for i, label in enumerate(folders.values())}
    found = sorted(
        (rank[label], path.removeprefix(prefix), label)
        for path, label in make_dataset(root, folders, is_valid_file=visible_image, allow_empty=True)
    )
    return [key for _, key, _ in found], np.array([label for _, _, label in found], dtype=np.int64)


def read_columns(path: str, dataset: str, columns: int, what: str) -> list[tuple[int, list[str]]]:
    """The non-blank lines of a whitespace-separated text file as ``(line number, tokens)``.

    Every line must have exactly ``columns`` tokens (``what`` describes them, e.g. ``"<key> <label>"``); otherwise a
    :class:`DataError` lists the first malformed lines.
    """
    rows: list[tuple[int, list[str]]] = []
    malformed: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if tokens := line.split():
                    rows.append((number, tokens))
                    if len(tokens) != columns:
                        malformed.append(f"line {number}: {line.strip()[:80]!r}")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{dataset}: cannot read {path}: {one_line(e)}") from None
    if malformed:
        raise DataError(
            f"{dataset}: {path} has {len(malformed)} malformed lines, expected {what}: {listing(malformed)}"
        )
    return rows


def parse_labels(
    rows: Sequence[tuple[int, list[str]]], column: int, path: str, dataset: str, num_classes: int | None
) -> np.ndarray:
    """Integer labels ``(N,)`` from token ``column`` of ``rows``; each must lie in ``[0, num_classes)`` (or be
    ``>= 0`` when ``num_classes`` is None), else a :class:`DataError` lists the first offending lines."""
    labels = np.array([as_int(tokens[column], -1) for _, tokens in rows], dtype=np.int64)
    invalid = (labels < 0) if num_classes is None else (labels < 0) | (labels >= num_classes)
    bad = [f"line {rows[i][0]}: {rows[i][1][column]!r}" for i in np.flatnonzero(invalid).tolist()]
    if bad:
        valid = f"0..{num_classes - 1}" if num_classes is not None else "non-negative integers"
        raise DataError(f"{dataset}: {path} has {len(bad)} labels outside {valid}: {listing(bad)}")
    return labels


def duplicates(items: Iterable[str]) -> list[str]:
    """The items that occurred before, in order (an item three times is listed twice)."""
    seen: set[str] = set()
    return [x for x in items if x in seen or seen.add(x)]  # type: ignore[func-returns-value]


def as_int(text: str, default: int) -> int:
    """``int(text)``, or ``default`` when ``text`` is not an integer."""
    try:
        return int(text)
    except ValueError:
        return default


def require_listed(
    dataset: str, root: str, keys: Sequence[str], listed_in: str, lines: Sequence[int] | None = None
) -> None:
    """A :class:`DataError` listing the first ``keys`` (named in ``listed_in``) whose file ``root/key`` is missing."""
    missing = [i for i, k in enumerate(keys) if not os.path.isfile(os.path.join(root, k))]
    if missing:
        where = [f"line {lines[i]}: {keys[i]}" if lines is not None else keys[i] for i in missing]
        raise DataError(
            f"{dataset}: {len(missing)} images named in {listed_in} do not exist under {root}: {listing(where)}"
        )


def require_all_classes(dataset: str, classes: Sequence[str], labels: np.ndarray, hint: str = "") -> None:
    """A :class:`DataError` naming the classes without a single training image (an empty class)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    empty = [repr(classes[c]) for c in np.flatnonzero(counts == 0).tolist()]
    if empty:
        raise DataError(
            f"{dataset}: {len(empty)} of {len(classes)} classes have no training images{hint}: {listing(empty)}"
        )


# ----------------------------------------------------------------------------------------------------- decoding


def read_rgb(path: str, min_shorter: int = 1) -> Tensor:
    """Decode the image file ``path`` with Pillow as RGB ``uint8 (3, H, W)``; raises whatever Pillow raises.

    A JPEG is decoded at a reduced scale (Pillow's ``draft``: libjpeg's DCT scaling by 1/2, 1/4 or 1/8) as long as
    its shorter side stays at least ``min_shorter`` (1: the smallest scale, enough for the load-time check); it is
    resized to that side anyway, and this makes decoding large photos several times cheaper. Grey-scale is repeated
    on 3 channels (16-bit grey-scale after keeping its high byte); alpha is dropped (palette transparency through
    RGBA). The EXIF orientation is not applied.
    """
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", _resized_size(*im.size, min_shorter))
        im.load()
        if im.mode.startswith("I;16"):
            grey = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
            return torch.from_numpy(grey).expand(3, -1, -1)
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        pixels = np.array(im if im.mode == "RGB" else im.convert("RGB"))  # (H, W, 3)
    return torch.from_numpy(pixels).permute(2, 0, 1)  # channels-last strides: torch's fast uint8 resize kernel


def _resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """Size after resizing the shorter side to ``shorter`` keeping the aspect ratio (torchvision's rounding)."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


class ImageTransform:
    """One image file -> ``uint8 (3, s, s)``: torchvision's v2 ``Resize`` (antialiased bilinear, on ``uint8``
    tensors), ``CenterCrop`` for evaluation, ``RandomCrop`` + ``RandomHorizontalFlip`` for training.

    ``s >= 64``: the shorter side goes to ``round(s * 256 / 224)`` and training draws a random ``s x s`` crop and
    flip per image in :meth:`decode`. ``s < 64``: the shorter side goes to ``s`` and :meth:`decode` is the centre
    crop in training too; :meth:`augment_batch` then crops each image of the decoded batch after ``s // 8`` pixels of
    zero padding and flips it: :class:`TensorSource`'s vectorised augmentation, so preloaded images and images
    decoded from files give the same batches under the same seed.
    """

    def __init__(self, image_size: int) -> None:
        s = self.image_size = image_size
        self.small = s < SMALL_IMAGE_SIDE
        self.resize_to = s if self.small else round(s * 256 / 224)
        self.augment = Augment(crop_padding=s // 8, hflip=True)  # the small-image batch augmentation
        self.random_crop_flip = v2.Compose([v2.RandomCrop(s), v2.RandomHorizontalFlip()])

    def __call__(self, x: Tensor, *, train: bool = False) -> Tensor:
        """A decoded ``uint8 (3, H, W)`` image resized and cropped (randomly if ``train`` and ``s >= 64``)."""
        x = F.resize(x, [self.resize_to], antialias=True)  # (the functional forms skip the transforms' overhead)
        x = self.random_crop_flip(x) if train and not self.small else F.center_crop(x, [self.image_size])
        return x.contiguous()

    def decode(self, path: str, *, train: bool = False) -> Tensor:
        """The file at ``path`` transformed; a :class:`DataError` naming ``path`` if it cannot be decoded."""
        try:
            x = read_rgb(path, self.resize_to)
        except Exception as e:  # noqa: BLE001 -- PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
            raise DataError(f"cannot decode image {path}: {failure_reason(e, path)}") from None
        return self(x, train=train)

    def augment_batch(self, x: Tensor) -> Tensor:
        """Train-time augmentation of decoded ``uint8 (B, 3, s, s)`` for ``s < 64`` (identity for larger sides)."""
        return random_crop_flip(x, self.augment.crop_padding, self.augment.hflip) if self.small else x


# ------------------------------------------------------------------------------------------------------ sources


class _Files:
    """Image paths stored compactly: a root plus one key per row (a fixed-width bytes array, cheap to pickle)."""

    root: str
    keys: np.ndarray

    def _set_files(self, root: str, keys: Sequence[str] | np.ndarray) -> None:
        self.root = root
        if isinstance(keys, np.ndarray) and keys.dtype.kind == "S":
            self.keys = keys
        else:
            self.keys = np.array([os.fsencode(k) for k in keys], dtype=np.bytes_).reshape(-1)

    def path(self, row: int) -> str:
        """The file of ``row``."""
        return os.path.join(self.root, os.fsdecode(self.keys[row]))

    def paths(self) -> list[str]:
        """The file of every row, in row order."""
        return [self.path(i) for i in range(len(self.keys))]


class FileSource(_Files, ImageSource):
    """Images decoded from files on every :meth:`load`: rows -> ``float32 (B, 3, s, s)``, ImageNet-normalised.

    Decoding happens in the calling process (use ``data.num_workers`` DataLoader workers to parallelise it). A file
    that fails to decode raises :class:`DataError` naming its path.
    """

    def __init__(
        self,
        root: str,
        keys: Sequence[str] | np.ndarray,
        transform: ImageTransform,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self._set_files(root, keys)
        self.transform = transform
        self.shape = (3, transform.image_size, transform.image_size)
        self.normalise = Normalise(mean, std)

    def __len__(self) -> int:
        return len(self.keys)

    def load_uint8(self, rows: Tensor, *, augment: bool) -> Tensor:
        """Rows ``(B,)`` decoded as ``uint8 (B, 3, s, s)``, augmented if ``augment`` (before normalisation)."""
        out = torch.empty((rows.numel(), *self.shape), dtype=torch.uint8)
        for j, r in enumerate(rows.reshape(-1).tolist()):
            out[j] = self.transform.decode(self.path(r), train=augment)
        return self.transform.augment_batch(out) if augment else out

    def load(self, rows: Tensor, *, augment: bool) -> Tensor:
        return self.normalise(self.load_uint8(rows, augment=augment))

    def preview(self, rows: Tensor) -> Tensor:
        return self.load_uint8(rows, augment=False)


class PreloadedSource(_Files, TensorSource):
    """A :class:`TensorSource` of images decoded once from files; remembers each row's file (:meth:`path`)."""

    def __init__(self, images: Tensor, root: str, keys: Sequence[str] | np.ndarray, augment: Augment,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        TensorSource.__init__(self, images, mean, std, augment)
        self._set_files(root, keys)
        if len(self.keys) != images.shape[0]:
            raise ValueError(f"{len(self.keys)} paths for {images.shape[0]} images")


# ---------------------------------------------------------------------------------------------- load-time checks


def check_all(
    paths: Sequence[str], check: Callable[[int], object], threads: int | None = None
) -> list[tuple[int, str]]:
    """Run ``check(i)`` for every position of ``paths`` on a thread pool (Pillow decodes without holding the GIL);
    ``(position, reason)`` of each that raised, in order."""

    def chunk(start: int) -> list[tuple[int, str]]:
        bad = []
        for i in range(start, min(len(paths), start + _CHUNK)):
            try:
                check(i)
            except Exception as e:  # noqa: BLE001 -- any failure makes the image bad
                bad.append((i, failure_reason(e, paths[i])))
        return bad

    threads = load_threads() if threads is None else threads
    starts = range(0, len(paths), _CHUNK)
    if threads <= 1 or len(starts) <= 1:
        return [f for start in starts for f in chunk(start)]
    with ThreadPoolExecutor(threads) as pool:
        return [f for part in pool.map(chunk, starts) for f in part]


def should_preload(n: int, image_size: int) -> bool:
    """Whether ``n`` images of side ``image_size`` are decoded once into memory (small transform, small enough)."""
    return image_size < SMALL_IMAGE_SIDE and n * 3 * image_size * image_size <= PRELOAD_MAX_BYTES


def build_source(
    root: str, keys: Sequence[str], *, image_size: int, preload: bool | None = None, threads: int | None = None
) -> tuple[ImageSource, np.ndarray, list[tuple[int, str]]]:
    """Check the files ``root/key`` and wrap the good ones in a source: ``(source, kept, failures)``.

    Every image is opened and decoded (a JPEG at 1/8 scale: ``open`` + ``verify`` alone would miss truncated files),
    or, when preloaded (``preload`` None: :func:`should_preload`), decoded and transformed into memory. ``kept``
    (``(M,)`` int64 positions into ``keys``) are the rows of the source, a :class:`PreloadedSource` when preloaded,
    else a :class:`FileSource`; ``failures`` are ``(position, reason)`` of the others.
    """
    transform = ImageTransform(image_size)
    paths = [os.path.join(root, k) for k in keys]
    images = None
    if should_preload(len(paths), image_size) if preload is None else preload:
        images = torch.zeros((len(paths), 3, image_size, image_size), dtype=torch.uint8)

    def check(i: int) -> None:
        if images is None:
            read_rgb(paths[i])
        else:
            images[i] = transform(read_rgb(paths[i], transform.resize_to))

    failures = check_all(paths, check, threads)
    kept = np.ones(len(paths), dtype=bool)
    kept[[i for i, _ in failures]] = False
    rows = np.flatnonzero(kept).astype(np.int64)
    kept_keys = [keys[i] for i in rows.tolist()]
    if images is None:
        return FileSource(root, kept_keys, transform), rows, failures
    if failures:
        images = images[torch.from_numpy(rows)]
    return PreloadedSource(images, root, kept_keys, transform.augment), rows, failures


def build_sources(
    dataset: str,
    classes: Sequence[str],
    splits: dict[str, tuple[str, Sequence[str], np.ndarray]],
    *,
    image_size: int,
    on_bad_image: OnBadImage,
) -> dict[str, tuple[ImageSource, np.ndarray]]:
    """:func:`build_source` for each split (``name -> (root, keys, labels (N,))``, the training split first):
    ``name -> (source, labels)``.

    Bad images fail the load with a one-line :class:`DataError` (``on_bad_image="fail"``), or are dropped before row
    numbers are assigned (``"skip"``) and named in one warning line on stderr; a training class left without images
    is a :class:`DataError`.
    """
    out: dict[str, tuple[ImageSource, np.ndarray]] = {}
    skipped: list[tuple[str, str]] = []  # (split, "path (reason)")
    for split, (root, keys, labels) in splits.items():
        source, kept, bad = build_source(root, keys, image_size=image_size)
        shown = [f"{os.path.join(root, keys[i])} ({reason})" for i, reason in bad]
        if bad and on_bad_image == "fail":
            raise DataError(
                f"{dataset}: {len(bad)} unreadable or corrupt {split} image{'s' if len(bad) > 1 else ''}: "
                f"{listing(shown)}; fix or remove them, or set data.on_bad_image=skip"
            )
        skipped += [(split, item) for item in shown]
        out[split] = (source, np.asarray(labels, dtype=np.int64)[kept])
        if len(out) == 1:
            require_all_classes(dataset, classes, out[split][1], " left after skipping unreadable images")
    if skipped:
        counts = ", ".join(f"{n} {split}" for split in out if (n := sum(s == split for s, _ in skipped)))
        print(
            f"knnmix: warning: {dataset}: skipped {len(skipped)} unreadable or corrupt "
            f"image{'s' if len(skipped) > 1 else ''} ({counts}): {listing([item for _, item in skipped])}",
            file=sys.stderr,
            flush=True,
        )
    return out
