"""Images read from files: the shared machinery of ``imagefolder``, ``clothing1m`` and ``webvision``.

A file-backed data set is a list of image files (``root`` + one key per row, e.g. ``images/0/00/x.jpg``) with one
label per row. :func:`build_source` turns such a list into an :class:`~knnmix.data.base.ImageSource`:

1. every image is checked once at load time (opened and decoded, on a thread pool); unreadable or corrupt ones
   either fail the load (``on_bad_image="fail"``) or are dropped *before* any row number is assigned
   (``"skip"``), so per-sample state stays aligned with the rows that remain;
2. small decoded data sets (``image_size < 64`` and at most :data:`PRELOAD_MAX_BYTES` of pixels) are decoded
   once into an in-memory :class:`PreloadedSource` (a :class:`~knnmix.data.base.TensorSource`), the decode
   doubling as the check; everything else becomes a :class:`FileSource` that decodes each batch from disk.

Transforms (:class:`ImageTransform`), all normalised with ImageNet's per-channel mean/std, for a side ``s``:

- ``s >= 64``: eval = shorter side resized to ``round(s * 256 / 224)`` (bilinear), centre crop ``s x s``;
  train = the same resize, a random ``s x s`` crop and a random horizontal flip.
- ``s < 64``: eval = shorter side resized to ``s``, centre crop ``s x s``; train = that image randomly
  cropped after ``s // 8`` pixels of zero padding, and randomly flipped (exactly
  :class:`~knnmix.data.base.TensorSource`'s augmentation with ``Augment(crop_padding=s // 8, hflip=True)``).

All randomness comes from torch's global generator, so the engine's per-epoch seeding (and torch's seeding of
DataLoader workers) makes augmentation reproducible.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from knnmix.data._common import one_line
from knnmix.data.base import Augment, ImageSource, TensorSource, random_crop_flip
from knnmix.errors import DataError

#: ImageNet's per-channel mean and std (RGB, 0..1 scale), used by every file-based data set.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: File name endings (lower case) taken as images when a folder is listed.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

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
    """Threads of the load-time scan / preload pool: the CPUs this process may use, at most 32."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(32, cpus))


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
    if not os.path.exists(path):
        raise DataError(f"{dataset}: {what} {path} does not exist")
    if not os.path.isdir(path):
        raise DataError(f"{dataset}: {what} {path} is not a directory")
    return path


def missing_files(root: str, keys: Sequence[str]) -> list[int]:
    """Positions of the ``keys`` whose file ``root/key`` does not exist (one ``stat`` each)."""
    isfile = os.path.isfile
    join = os.path.join
    return [i for i, k in enumerate(keys) if not isfile(join(root, k))]


def list_images(directory: str) -> list[str]:
    """Image files (by :data:`IMAGE_EXTENSIONS`, any case) below ``directory``, recursively, as sorted paths
    relative to it; hidden files and folders (``.name``) are skipped, symbolic links followed."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, directory)
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(name if rel == "." else os.path.join(rel, name))
    return sorted(found)


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
                tokens = line.split()
                if not tokens:
                    continue
                if len(tokens) != columns:
                    malformed.append(f"line {number}: {line.strip()[:80]!r}")
                rows.append((number, tokens))
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
    labels = np.empty(len(rows), dtype=np.int64)
    bad: list[str] = []
    for i, (number, tokens) in enumerate(rows):
        try:
            labels[i] = int(tokens[column])
        except ValueError:
            labels[i] = -1
        if labels[i] < 0 or (num_classes is not None and labels[i] >= num_classes):
            bad.append(f"line {number}: {tokens[column]!r}")
    if bad:
        valid = f"0..{num_classes - 1}" if num_classes is not None else "non-negative integers"
        raise DataError(f"{dataset}: {path} has {len(bad)} labels outside {valid}: {listing(bad)}")
    return labels


def require_listed(
    dataset: str, root: str, keys: Sequence[str], listed_in: str, lines: Sequence[int] | None = None
) -> None:
    """A :class:`DataError` listing the first ``keys`` (named in ``listed_in``) whose file ``root/key`` is missing."""
    missing = missing_files(root, keys)
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


def read_rgb(path: str, min_shorter: int | None = None) -> np.ndarray:
    """Decode the image file ``path`` as RGB pixels ``uint8 (H, W, 3)`` (raises whatever PIL raises on a bad file).

    ``min_shorter``: a JPEG may be decoded at a reduced scale (PIL's ``draft``: libjpeg's DCT scaling by 1/2, 1/4
    or 1/8) as long as its shorter side stays at least this long (and the longer side in proportion); the result
    is resized to that side anyway, and this makes decoding large photos several times cheaper. Palette images
    with transparency go through RGBA, whose alpha is then dropped; grey-scale images are repeated on 3 channels,
    16-bit grey-scale ones after keeping their high byte.
    """
    with Image.open(path) as im:
        if min_shorter is not None and im.format == "JPEG":
            im.draft("RGB", _resized_size(*im.size, min_shorter))
        im.load()
        if im.mode.startswith("I;16"):
            grey = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
            return np.repeat(grey[:, :, None], 3, axis=2)
        return np.array(_as_rgb(im), dtype=np.uint8)


def _as_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def _resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """Size after resizing the shorter side to ``shorter`` keeping the aspect ratio (torchvision's rounding)."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


@dataclass(frozen=True)
class ImageTransform:
    """Decode + resize + crop (+ flip) of one image file into a ``uint8`` tensor ``(3, s, s)``; see the module doc.

    For ``s >= 64`` the train-time randomness (crop position, flip) is drawn per image inside :meth:`decode`; for
    ``s < 64`` :meth:`decode` is deterministic and :meth:`augment_batch` augments a decoded batch.
    """

    image_size: int

    @property
    def small(self) -> bool:
        """Whether the small-image transform applies (``s < 64``)."""
        return self.image_size < SMALL_IMAGE_SIDE

    @property
    def resize_to(self) -> int:
        """Shorter side after the resize: ``s`` for small images, else ``round(s * 256 / 224)``."""
        return self.image_size if self.small else round(self.image_size * 256 / 224)

    @property
    def augment(self) -> Augment:
        """The batched augmentation of the small-image transform: ``s // 8`` padding, random flip."""
        return Augment(crop_padding=self.image_size // 8, hflip=True)

    def decode(self, path: str, *, train: bool = False) -> Tensor:
        """The file at ``path`` as ``uint8 (3, s, s)``: resized, cropped (randomly if ``train`` and ``s >= 64``).

        The resize is torch's antialiased bilinear interpolation of ``uint8`` images (what torchvision's ``Resize``
        does to tensors; within one grey level of PIL's, and about 3x faster). Raises :class:`DataError` naming
        ``path`` when the file cannot be read or decoded.
        """
        s, r = self.image_size, self.resize_to
        try:
            pixels = read_rgb(path, r)  # (H, W, 3)
        except Exception as e:  # noqa: BLE001 -- PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
            raise DataError(f"cannot decode image {path}: {failure_reason(e, path)}") from None
        x = torch.from_numpy(pixels).permute(2, 0, 1)  # (3, H, W), channels-last strides: the fast uint8 kernel
        h, w = x.shape[1:]
        if min(h, w) != r:
            w, h = _resized_size(w, h, r)
            x = torch.nn.functional.interpolate(x[None], size=(h, w), mode="bilinear", antialias=True)[0]
        if train and not self.small:
            top = int(torch.randint(0, h - s + 1, (1,)))
            left = int(torch.randint(0, w - s + 1, (1,)))
            flip = bool(torch.rand(1) < 0.5)
        else:
            top = round((h - s) / 2.0)
            left = round((w - s) / 2.0)
            flip = False
        x = x[:, top : top + s, left : left + s]
        return (x.flip(2) if flip else x).contiguous()

    def augment_batch(self, x: Tensor) -> Tensor:
        """Train-time augmentation of decoded ``uint8 (B, 3, s, s)`` for ``s < 64`` (identity for larger sides)."""
        if not self.small:
            return x
        return random_crop_flip(x, self.augment.crop_padding, self.augment.hflip)


def probe_image(path: str) -> None:
    """Check that ``path`` opens, decodes (a JPEG at 1/8 scale) and converts to RGB; raise whatever PIL raises."""
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (1, 1))
        im.load()
        _as_rgb(im)


# ------------------------------------------------------------------------------------------------------ sources


class _Normalise:
    """ImageNet normalisation of ``uint8`` batches, with exactly :class:`TensorSource`'s arithmetic."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        c = len(mean)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1) * 255.0
        self._inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1) * 255.0)

    def __call__(self, x: Tensor) -> Tensor:
        """``uint8 (B, C, H, W)`` -> ``float32 (B, C, H, W)``; in place on the new float tensor (same rounding)."""
        return x.float().sub_(self._mean).mul_(self._inv_std)


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
        self._normalise = _Normalise(mean, std)

    def __len__(self) -> int:
        return len(self.keys)

    def load_uint8(self, rows: Tensor, *, augment: bool) -> Tensor:
        """Rows ``(B,)`` decoded as ``uint8 (B, 3, s, s)``, augmented if ``augment`` (before normalisation)."""
        s = self.transform.image_size
        row_list = rows.reshape(-1).tolist()
        out = torch.empty((len(row_list), 3, s, s), dtype=torch.uint8)
        for j, r in enumerate(row_list):
            out[j] = self.transform.decode(self.path(r), train=augment)
        return self.transform.augment_batch(out) if augment else out

    def load(self, rows: Tensor, *, augment: bool) -> Tensor:
        return self._normalise(self.load_uint8(rows, augment=augment))

    def preview(self, rows: Tensor) -> Tensor:
        return self.load_uint8(rows, augment=False)


class PreloadedSource(_Files, TensorSource):
    """A :class:`TensorSource` of images decoded once from files; remembers each row's file (:meth:`path`)."""

    def __init__(
        self,
        images: Tensor,
        root: str,
        keys: Sequence[str] | np.ndarray,
        augment: Augment,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        TensorSource.__init__(self, images, mean, std, augment)
        self._set_files(root, keys)
        if len(self.keys) != images.shape[0]:
            raise ValueError(f"{len(self.keys)} paths for {images.shape[0]} images")


# ---------------------------------------------------------------------------------------------- load-time checks


def _chunks(n: int, size: int = _CHUNK) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def _pooled(n: int, work: Callable[[range], list[tuple[int, str]]], threads: int | None) -> list[tuple[int, str]]:
    """Run ``work`` over chunks of ``range(n)`` on a thread pool; the concatenated ``(row, reason)`` failures."""
    threads = load_threads() if threads is None else threads
    if threads <= 1 or n <= _CHUNK:
        failures = [f for chunk in _chunks(n) for f in work(chunk)]
    else:
        with ThreadPoolExecutor(threads) as pool:
            failures = [f for part in pool.map(work, _chunks(n)) for f in part]
    return sorted(failures)


def scan_images(paths: Sequence[str], threads: int | None = None) -> list[tuple[int, str]]:
    """Open and decode every file of ``paths`` (JPEGs at 1/8 scale) on a thread pool.

    Returns ``(position, reason)`` for each file that is unreadable or not a decodable image, in order.
    """

    def work(chunk: range) -> list[tuple[int, str]]:
        bad = []
        for i in chunk:
            try:
                probe_image(paths[i])
            except Exception as e:  # noqa: BLE001 -- any failure makes the image bad
                bad.append((i, failure_reason(e, paths[i])))
        return bad

    return _pooled(len(paths), work, threads)


def decode_all(
    paths: Sequence[str], transform: ImageTransform, threads: int | None = None
) -> tuple[Tensor, list[tuple[int, str]]]:
    """Decode every file of ``paths`` (eval transform) into ``uint8 (N, 3, s, s)``; the failures as ``(pos, reason)``.

    Rows of failed files are left zero.
    """
    s = transform.image_size
    out = torch.zeros((len(paths), 3, s, s), dtype=torch.uint8)

    def work(chunk: range) -> list[tuple[int, str]]:
        bad = []
        for i in chunk:
            try:
                out[i] = transform.decode(paths[i])
            except DataError as e:
                bad.append((i, str(e).removeprefix(f"cannot decode image {paths[i]}: ")))
        return bad

    return out, _pooled(len(paths), work, threads)


@dataclass
class BadImages:
    """Collects the images a loader skipped (``on_bad_image="skip"``) to report them in one warning line."""

    dataset: str
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (split, path, reason)

    def handle(self, split: str, paths: Sequence[str], bad: list[tuple[int, str]], on_bad_image: OnBadImage) -> None:
        """Raise for ``bad`` (``(position, reason)`` into ``paths``) under ``"fail"``; record them under ``"skip"``."""
        if not bad:
            return
        if on_bad_image == "fail":
            shown = [f"{paths[i]} ({reason})" for i, reason in bad]
            raise DataError(
                f"{self.dataset}: {len(bad)} unreadable or corrupt {split} image{'s' if len(bad) > 1 else ''}: "
                f"{listing(shown)}; fix or remove them, or set data.on_bad_image=skip"
            )
        self.skipped.extend((split, paths[i], reason) for i, reason in bad)

    def warn(self) -> None:
        """Print one line to stderr naming the count and the first skipped files (nothing if none was skipped)."""
        if not self.skipped:
            return
        per_split: dict[str, int] = {}
        for split, _, _ in self.skipped:
            per_split[split] = per_split.get(split, 0) + 1
        splits = ", ".join(f"{n} {s}" for s, n in per_split.items())
        shown = [f"{p} ({reason})" for _, p, reason in self.skipped]
        print(
            f"knnmix: warning: {self.dataset}: skipped {len(self.skipped)} unreadable or corrupt "
            f"image{'s' if len(self.skipped) > 1 else ''} ({splits}): {listing(shown)}",
            file=sys.stderr,
            flush=True,
        )


def should_preload(n: int, image_size: int) -> bool:
    """Whether ``n`` images of side ``image_size`` are decoded once into memory (small transform, small enough)."""
    return image_size < SMALL_IMAGE_SIDE and n * 3 * image_size * image_size <= PRELOAD_MAX_BYTES


def build_source(
    root: str,
    keys: Sequence[str],
    labels: np.ndarray,
    *,
    image_size: int,
    on_bad_image: OnBadImage,
    split: str,
    bad: BadImages,
    preload: bool | None = None,
    threads: int | None = None,
) -> tuple[ImageSource, np.ndarray, np.ndarray]:
    """Check the files ``root/key`` and wrap them in a source: ``(source, labels, kept)``.

    ``labels`` ``(N,)`` go with ``keys``; bad images fail the load or are dropped (see :class:`BadImages`), so the
    returned labels and ``kept`` (positions into ``keys``, ``(M,)`` int64) only cover the images that remain.
    ``preload`` None decides by :func:`should_preload`. The source is a :class:`PreloadedSource` when preloaded,
    else a :class:`FileSource`; both return ``float32 (B, 3, s, s)``.
    """
    transform = ImageTransform(image_size)
    paths = [os.path.join(root, k) for k in keys]
    if preload is None:
        preload = should_preload(len(paths), image_size)
    n_threads = load_threads() if threads is None else threads
    images: Tensor | None = None
    if preload:
        images, failures = decode_all(paths, transform, n_threads)
    else:
        failures = scan_images(paths, n_threads)
    bad.handle(split, paths, failures, on_bad_image)
    kept = np.ones(len(paths), dtype=bool)
    kept[[i for i, _ in failures]] = False
    kept_rows = np.flatnonzero(kept).astype(np.int64)
    kept_keys = [keys[i] for i in kept_rows.tolist()]
    labels = np.asarray(labels, dtype=np.int64)[kept_rows]
    if images is not None:
        if failures:
            images = images[torch.from_numpy(kept_rows)]
        source: ImageSource = PreloadedSource(images, root, kept_keys, transform.augment)
    else:
        source = FileSource(root, kept_keys, transform)
    return source, labels, kept_rows
