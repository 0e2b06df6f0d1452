"""Images read from files: the shared machinery of ``imagefolder``, ``clothing1m`` and ``webvision``.

A split is a root plus one key per row (e.g. ``images/0/00/x.jpg``) with one label per row. :func:`build_sources`
checks every image once at load time: bad ones fail the load or are dropped *before* row numbers are assigned, so
per-sample state stays aligned with the rows that remain. Small images are decoded once into a
:class:`PreloadedSource`; others become a :class:`FileSource` that decodes each batch. Decoding, transforms and
their costs: ``docs/data.md``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import warnings

import numpy as np
import torch
from PIL import Image, features
from torch import Tensor

from knnmix.data.base import Augment, ImageSource, Normalise, TensorSource
from knnmix.errors import DataError, KnnmixWarning, listing, one_line

#: ImageNet's per-channel mean and std (RGB, 0..1 scale), used by every file-based data set.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: torchvision's ``IMG_EXTENSIONS`` (``torchvision.datasets.folder``), written out: importing torchvision costs
#: seconds in every process that imports the engine, and only file data sets use it (a test checks the copy).
TORCHVISION_IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: File name endings (matched in any case) taken as images when a folder is listed: torchvision's, plus GIF, PBM,
#: JPEG's other endings and AVIF where Pillow decodes it.
IMAGE_EXTENSIONS = (*TORCHVISION_IMG_EXTENSIONS, ".gif", ".pbm", ".jfif", ".jpe",
                    *((".avif",) if features.check("avif") else ()))
#: Endings of photo formats Pillow does not decode here: a listed folder leaves them out with a warning.
UNREAD_IMAGE_EXTENSIONS = tuple(e for e in (".heic", ".heif", ".avif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw",
                                            ".orf", ".rw2", ".raf", ".svg") if e not in IMAGE_EXTENSIONS)
#: Endings of other image formats, which Pillow decodes but knnmix does not take from a listed folder (neither does
#: torchvision's ``ImageFolder``): left out with a warning, not silently.
OTHER_IMAGE_EXTENSIONS = (".tga", ".jp2", ".j2k", ".jpx", ".jpf", ".ico", ".icns", ".psd", ".pcx", ".sgi", ".dds",
                          ".qoi", ".pnm", ".apng", ".mpo", ".xbm", ".xpm", ".ras", ".dib")
#: ``data.image_size`` of the published data sets when none is given.
DEFAULT_IMAGE_SIZE = 224
#: Sides below this use the small-image transform (no up-front enlargement, padded random crop).
SMALL_IMAGE_SIDE = 64
#: Largest decoded size (``N * 3 * s * s`` bytes) preloaded into memory when ``s < SMALL_IMAGE_SIDE``.
PRELOAD_MAX_BYTES = 2 * 1024**3
#: Images per task of the load-time thread pool.
_CHUNK = 256

OnBadImage = Literal["fail", "skip"]


def locate(dataset: str, key: str, value: str, root: str) -> str | None:
    """The absolute path of option ``key``'s ``value`` as given (relative to the working directory), else below
    ``root``; ``None`` when neither exists. Both existing as different files or folders is a :class:`DataError`:
    which one is meant is unknown (the one in the working directory was silently taken)."""
    given = os.path.expanduser(value)
    found = [p for p in dict.fromkeys((given, os.path.join(root, given))) if os.path.exists(p)]
    if len(found) == 2 and not os.path.samefile(*found):
        raise DataError(f"{dataset}: {key} {value} names both {os.path.abspath(found[0])} (in the working directory) "
                        f"and {found[1]} (below data.root): give the path of the one you mean")
    return os.path.abspath(found[0]) if found else None


def refuse(offenders: Sequence[str], message: str) -> None:
    """A :class:`DataError` ``"<message>: <the first offenders>"`` when there are ``offenders``."""
    if offenders:
        raise DataError(f"{message}: {listing(offenders)}")


def failure_reason(exc: BaseException, path: str) -> str:
    """Why ``path`` failed, on one short line, without repeating the path itself."""
    if isinstance(exc, Image.DecompressionBombError):  # Pillow's words end "could be decompression bomb DOS attack."
        return f"{str(exc).split(',')[0]}: too large to decode safely (Pillow's decompression-bomb limit); downscale it"
    text = one_line(exc, 200)
    for form in (repr(path), f'"{path}"', path):
        text = text.replace(form, "")
    return " ".join(text.split()).rstrip(":")[:120] or type(exc).__name__


def check_options(dataset: str, image_size: int | None, on_bad_image: str) -> None:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8):
        raise DataError(f"{dataset}: data.image_size must be an integer >= 8, got {image_size!r}")
    if on_bad_image not in ("fail", "skip"):
        raise DataError(f"{dataset}: data.on_bad_image must be 'fail' or 'skip', got {on_bad_image!r}")


def data_root(dataset: str, root: str | None, what: str) -> str:
    """The absolute ``root`` (``~`` expanded), which must be given (``what`` names the folder expected) and exist."""
    if not root:
        raise DataError(f"{dataset}: set data.root to the {what}")
    return require_dir(os.path.abspath(os.path.expanduser(root)), dataset)


def require_file(path: str, dataset: str, hint: str = "") -> str:
    if not os.path.isfile(path):
        raise DataError(f"{dataset}: expected file {path} is missing{hint}")
    return path


def require_dir(path: str, dataset: str, what: str = "data root") -> str:
    if not os.path.isdir(path):
        problem = "is not a directory" if os.path.exists(path) else "does not exist"
        raise DataError(f"{dataset}: {what} {path} {problem}")
    return path


#: Files that mark a knnmix folder (knnmix.engine.checkpoint's LOCK, CONFIG and METRICS, knnmix.sweep_folder's
#: STATE_FILE; a test keeps them equal): :func:`find_images` stops at a run, sweep or sweep trial folder.
RUN_FOLDER_FILES = (".lock", "config.yaml", "metrics.jsonl", "sweep_state.json")


def find_images(dataset: str, root: str, folders: dict[str, int]) -> tuple[list[str], np.ndarray, list[str]]:
    """The images below ``root/<folder>/`` of each ``folder -> label``: ``(keys, labels (N,), folders without any)``.

    Each folder is walked recursively for :data:`IMAGE_EXTENSIONS` in any case, following links (as torchvision's
    ``make_dataset``) but entering no folder twice: a folder reached again through a link (a link loop, which would
    otherwise repeat its images at every level or never end, or two links to one folder) is a :class:`DataError`,
    as is an image path that is not valid UTF-8. Hidden files and folders (``.name``) are skipped and a missing
    folder yields nothing; photos in formats Pillow cannot decode here (:data:`UNREAD_IMAGE_EXTENSIONS`, e.g.
    HEIC) and images in other formats (:data:`OTHER_IMAGE_EXTENSIONS`, e.g. TGA) are left out with a warning each.
    Keys are relative to ``root``, in the order of ``folders``, sorted within each folder.
    """
    lock, config, metrics, state = RUN_FOLDER_FILES
    seen = {os.path.realpath(root): "."}  # real path of each folder entered -> its key below root (a link up: ".")
    again: list[str] = []  # "key (= first key)" of folders reached a second time
    runs: list[str] = []  # knnmix run and sweep folders
    found, unread, other = [], [], []
    for rank, (top, label) in enumerate(folders.items()):
        for folder, dirs, files in os.walk(os.path.join(root, top), followlinks=True):
            key = os.path.relpath(folder, root)
            if seen.setdefault(os.path.realpath(folder), key) != key:
                again.append(f"{key} (= {seen[os.path.realpath(folder)]})")
                dirs.clear()
                continue
            if (lock in files and (config in files or state in files or not dirs and files == [lock])
                    or config in files and metrics in files):  # a run or sweep (starting: the lock alone), a trial
                runs.append(key)
                dirs.clear()
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # (sorted: the same error every time)
            found += [(rank, os.path.join(key, f), label) for f in files
                      if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
            unread += [os.path.join(key, f) for f in files
                       if not f.startswith(".") and f.lower().endswith(UNREAD_IMAGE_EXTENSIONS)]
            other += [os.path.join(key, f) for f in files
                      if not f.startswith(".") and f.lower().endswith(OTHER_IMAGE_EXTENSIONS)]
    refuse(runs, f"{dataset}: {len(runs)} folders under {root} are knnmix run folders (this run's --out, or an "
                 "earlier run's), not images of a class: give --out outside the image folder, and move earlier runs "
                 "out of it")
    refuse(again, f"{dataset}: remove the symbolic links through which {len(again)} folders under {root} are reached "
                  "a second time (a link loop, or two links to one folder)")
    if unread:
        endings = sorted({os.path.splitext(k)[1].lower() for k in unread})
        warnings.warn(f"{dataset}: {len(unread)} images under {root} are in formats knnmix cannot read here "
                      f"({'/'.join(endings)}) and are left out: {listing(sorted(unread))}; convert them to JPEG or "
                      "PNG", KnnmixWarning, stacklevel=3)
    if other:
        endings = sorted({os.path.splitext(k)[1].lower() for k in other})
        warnings.warn(f"{dataset}: {len(other)} images under {root} are in formats knnmix does not take from a folder "
                      f"({'/'.join(endings)}) and are left out: {listing(sorted(other))}; convert them to JPEG or PNG",
                      KnnmixWarning, stacklevel=3)
    found.sort()
    # such a name failed only after training, when the audit wrote the images' paths and classes to label_issues.csv
    odd = [os.fsencode(path).decode(errors="backslashreplace") for path in (os.path.join(root, k) for _, k, _ in found)
           if not is_utf8(path)]
    refuse(odd, f"{dataset}: {len(odd)} image paths are not valid UTF-8 (knnmix writes paths and class names to "
                "UTF-8 files); rename them, e.g. with convmv")
    labels = np.array([label for _, _, label in found], dtype=np.int64)
    return [key for _, key, _ in found], labels, [folder for folder, label in folders.items() if label not in labels]


def is_utf8(name: str) -> bool:
    """Whether ``name`` (e.g. a file name as ``os`` decodes it) encodes as UTF-8: the bytes of a name that is not
    UTF-8 (e.g. Latin-1 from an old archive) come out of ``os`` as unpaired surrogates, which do not."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _read_lines(path: str, dataset: str) -> list[tuple[int, str]]:
    """``(line number, stripped line)`` of the non-blank lines of a UTF-8 text file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return [(number, line.strip()) for number, line in enumerate(f, 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{dataset}: cannot read {path}: {one_line(e)}") from None


def read_names(path: str, dataset: str, what: str, first_token: bool = False) -> list[str]:
    """The names (``what``, e.g. ``"class names"``) a file lists one per non-blank line (the line stripped, or its
    first token), in order; an empty list or a name listed twice is a :class:`DataError`."""
    names = [line.split()[0] if first_token else line for _, line in _read_lines(path, dataset)]
    if not names:
        raise DataError(f"{dataset}: {path} lists no {what}")
    seen: set[str] = set()
    twice = [repr(x) for x in names if x in seen or seen.add(x)]  # type: ignore[func-returns-value]
    refuse(twice, f"{dataset}: {path} lists {len(twice)} {what} twice")
    return names


def read_list(
    path: str, dataset: str, what: str, num_classes: int | None = None, labelled: bool = True
) -> tuple[list[str], np.ndarray, list[int]]:
    """A whitespace-separated list of ``<key> <label>`` (``labelled``) or ``<key>`` lines (``what`` names them):
    ``(keys, labels (N,) or empty, line numbers)``, blank lines skipped.

    Labels must lie in ``[0, num_classes)`` (or be ``>= 0`` when ``num_classes`` is None). A malformed line or a bad
    label is a :class:`DataError` listing the first offending lines.
    """
    lines = _read_lines(path, dataset)
    malformed = [f"line {n}: {line[:80]!r}" for n, line in lines if len(line.split()) != (2 if labelled else 1)]
    refuse(malformed, f"{dataset}: {path} has {len(malformed)} malformed lines, expected {what}")
    rows = [line.split() for _, line in lines]
    labels = np.array([as_int(tokens[1], -1) for tokens in rows] if labelled else [], dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= (np.inf if num_classes is None else num_classes))).tolist()
    valid = "non-negative integers" if num_classes is None else f"0..{num_classes - 1}"
    offenders = [f"line {lines[i][0]}: {rows[i][1]!r}" for i in bad]
    refuse(offenders, f"{dataset}: {path} has {len(bad)} labels outside {valid}")
    return [tokens[0] for tokens in rows], labels, [number for number, _ in lines]


def as_int(text: str, default: int | None) -> int | None:
    try:
        return int(text)
    except ValueError:
        return default


def refuse_repeated(dataset: str, path: str, keys: Sequence[str], lines: Sequence[int], what: str = "keys",
                    shown: Sequence[str] | None = None) -> None:
    """A :class:`DataError` listing the ``keys`` (lines ``lines`` of the file ``path``) listed more than once, each
    written as ``shown`` (default: the key itself)."""
    first: dict[str, int] = {}
    again = [f"line {n}: {s} (also line {first[k]})" for k, n, s in zip(keys, lines, shown or keys)
             if first.setdefault(k, n) != n]
    refuse(again, f"{dataset}: {path} lists {len(again)} {what} more than once")


def require_listed(dataset: str, root: str, keys: Sequence[str], listed_in: str, lines: Sequence[int]) -> None:
    """A :class:`DataError` listing the first ``keys`` (lines ``lines`` of ``listed_in``) with no file ``root/key``."""
    missing = [f"line {n}: {k}" for k, n in zip(keys, lines) if not os.path.isfile(os.path.join(root, k))]
    refuse(missing, f"{dataset}: {len(missing)} images named in {listed_in} do not exist under {root}")


def refuse_shared(dataset: str, train: Sequence[str], test: Sequence[str], what: str) -> None:
    """A :class:`DataError` naming the ``test`` files (``what``, e.g. ``"test images"``) also in ``train``; both are
    resolved paths, or keys below one root."""
    seen = set(train)
    shared = [t for t in test if t in seen]
    refuse(shared, f"{dataset}: {len(shared)} {what} are also training images")


def require_all_classes(dataset: str, classes: Sequence[str], labels: np.ndarray, hint: str = "") -> None:
    """A :class:`DataError` naming the classes without a single training image (an empty class)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    empty = [repr(classes[c]) for c in np.flatnonzero(counts == 0).tolist()]
    refuse(empty, f"{dataset}: {len(empty)} of {len(classes)} classes have no training images{hint}")


def read_rgb(path: str, min_shorter: int = 1) -> Tensor:
    """Decode the image file ``path`` with Pillow as RGB ``uint8 (3, H, W)``; raises whatever Pillow raises.

    A JPEG is decoded at a reduced scale (Pillow's ``draft``, several times cheaper) as long as its shorter side stays
    at least ``min_shorter`` (1: the smallest scale, enough for the load-time check). Grey-scale is repeated on 3
    channels (16-bit, also 32-bit mode I valued 0..65535: its high byte; larger values, floats and a 32-bit TIFF
    whose largest value is 1..255 are a ValueError),
    alpha is dropped, the EXIF orientation is not applied.
    """
    with Image.open(path) as im:
        if im.format == "JPEG":
            w, h = im.size  # ask for the size after resizing the shorter side (torchvision's rounding)
            short = min_shorter
            im.draft("RGB", (short, int(short * h / w)) if w <= h else (int(short * w / h), short))
        im.load()
        if im.mode.startswith("I;16") or im.mode == "I":  # mode I: 32-bit TIFF, 16-bit PGM (Pillow scales to 16 bits)
            values = np.asarray(im)
            if values.size and (values.min() < 0 or values.max() > 65535):
                raise ValueError(f"mode I values outside 0..65535 (min {values.min()}, max {values.max()})")
            if im.mode == "I" and im.format == "TIFF" and 0 < values.max() <= 255:  # black as 16 bits, or 8 bits?
                raise ValueError("a 32-bit TIFF with values in 0..255 only: read as 16 bits it would be black; save "
                                 "8-bit values as an 8-bit image")
            return torch.from_numpy((values.astype(np.uint16) >> 8).astype(np.uint8)).expand(3, -1, -1)
        if im.mode == "F":
            raise ValueError("mode F (floating-point pixels) is not supported: save the image as 8- or 16-bit")
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        pixels = np.array(im if im.mode == "RGB" else im.convert("RGB"))  # (H, W, 3)
    return torch.from_numpy(pixels).permute(2, 0, 1)  # channels-last strides: torch's fast uint8 resize kernel


class ImageTransform:
    """One image file -> ``uint8 (3, s, s)`` with torchvision's v2 transforms (the table in ``docs/data.md``).

    ``s >= 64``: the shorter side goes to ``round(s * 256 / 224)``, then a centre crop (eval) or a random crop and
    flip (train). ``s < 64``: resize to ``s`` and centre crop; training then pads, crops and flips the decoded batch
    (:meth:`augment_batch`, :class:`TensorSource`'s augmentation, so preloaded and decoded images agree).
    """

    def __init__(self, image_size: int) -> None:
        from torchvision.transforms import v2  # here, not at import: see TORCHVISION_IMG_EXTENSIONS
        from torchvision.transforms.v2 import functional as F

        # per image, the functional forms (they skip the transforms' overhead)
        self.resize, self.center_crop = F.resize, F.center_crop
        s = self.image_size = image_size
        self.small = s < SMALL_IMAGE_SIDE
        self.resize_to = s if self.small else round(s * 256 / 224)
        self.augment = Augment(crop_padding=s // 8, hflip=True)  # the small-image batch augmentation
        self.random_crop_flip = v2.Compose([v2.RandomCrop(s), v2.RandomHorizontalFlip()])

    def __call__(self, x: Tensor, *, train: bool = False) -> Tensor:
        """A decoded ``uint8 (3, H, W)`` image resized and cropped (randomly if ``train`` and ``s >= 64``)."""
        x = self.resize(x, [self.resize_to], antialias=True)
        x = self.random_crop_flip(x) if train and not self.small else self.center_crop(x, [self.image_size])
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
        return self.augment(x) if self.small else x


class _Files:
    """Image paths stored compactly: a root plus one key per row (a fixed-width bytes array, cheap to pickle)."""

    def __init__(self, root: str, keys: Sequence[str]) -> None:
        self.root = root
        self.keys = np.array([os.fsencode(k) for k in keys], dtype=np.bytes_).reshape(-1)

    def path(self, row: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.keys[row]))

    def paths(self) -> list[str]:
        return [self.path(i) for i in range(len(self.keys))]

    def signature(self) -> str:
        """sha256 of the rows' file sizes, in row order: a file replaced in place changes it (unless by one of the
        same size); the same files elsewhere (another root, other absolute paths in a CSV) do not. No reading."""
        sizes = np.array([os.stat(self.path(i)).st_size for i in range(len(self.keys))], dtype=np.int64)
        return hashlib.sha256(sizes.tobytes()).hexdigest()


class FileSource(_Files, ImageSource):
    """Images decoded from files on every :meth:`load`: rows -> ``float32 (B, 3, s, s)``, ImageNet-normalised.

    Decoding happens in the calling process (use ``data.num_workers`` DataLoader workers to parallelise it). A file
    that fails to decode raises :class:`DataError` naming its path.
    """

    def __init__(self, root: str, keys: Sequence[str], transform: ImageTransform) -> None:
        _Files.__init__(self, root, keys)
        self.transform = transform
        self.shape = (3, transform.image_size, transform.image_size)
        self.normalise = Normalise(IMAGENET_MEAN, IMAGENET_STD)

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

    def __init__(self, images: Tensor, root: str, keys: Sequence[str], augment: Augment) -> None:
        TensorSource.__init__(self, images, IMAGENET_MEAN, IMAGENET_STD, augment)
        _Files.__init__(self, root, keys)
        if len(self.keys) != images.shape[0]:
            raise ValueError(f"{len(self.keys)} paths for {images.shape[0]} images")


def build_source(
    root: str, keys: Sequence[str], image_size: int
) -> tuple[ImageSource, np.ndarray, list[tuple[int, str]]]:
    """Check the files ``root/key`` and wrap the good ones in a source: ``(source, kept, failures)``.

    Every image is opened and decoded (a JPEG at 1/8 scale: ``open`` + ``verify`` alone would miss truncated files)
    on a thread pool (one thread per usable CPU, at most 32; Pillow decodes without the GIL), or,
    when small enough to preload, decoded and transformed into memory. ``kept`` (``(M,)`` int64 positions into
    ``keys``) are the rows of the source, a :class:`PreloadedSource` when preloaded, else a :class:`FileSource`;
    ``failures`` are ``(position, reason)`` of the others.
    """
    transform = ImageTransform(image_size)
    paths = [os.path.join(root, k) for k in keys]
    images = None
    if image_size < SMALL_IMAGE_SIDE and len(paths) * 3 * image_size * image_size <= PRELOAD_MAX_BYTES:
        images = torch.zeros((len(paths), 3, image_size, image_size), dtype=torch.uint8)

    def check(start: int) -> list[tuple[int, str]]:
        bad = []
        for i in range(start, min(len(paths), start + _CHUNK)):
            try:
                if images is None:
                    read_rgb(paths[i])
                else:
                    images[i] = transform(read_rgb(paths[i], transform.resize_to))
            except Exception as e:  # noqa: BLE001 -- any failure makes the image bad
                bad.append((i, failure_reason(e, paths[i])))
        return bad

    starts = range(0, len(paths), _CHUNK)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with ThreadPoolExecutor(max(1, min(32, cpus, len(starts)))) as pool:
        failures = [f for part in pool.map(check, starts) for f in part]
    kept = np.setdiff1d(np.arange(len(paths)), [i for i, _ in failures]).astype(np.int64)
    kept_keys = [keys[i] for i in kept.tolist()]
    if images is None:
        return FileSource(root, kept_keys, transform), kept, failures
    if failures:
        images = images[torch.from_numpy(kept)]
    return PreloadedSource(images, root, kept_keys, transform.augment), kept, failures


def build_sources(
    dataset: str, classes: Sequence[str], splits: dict[str, tuple[str, Sequence[str], np.ndarray]], *,
    image_size: int | None, on_bad_image: OnBadImage,
) -> dict[str, tuple[ImageSource, np.ndarray]]:
    """:func:`build_source` for each split (``name -> (root, keys, labels (N,))``, the training split first):
    ``name -> (source, labels)``; ``image_size`` None is :data:`DEFAULT_IMAGE_SIZE`.

    Bad images fail the load with a one-line :class:`DataError` (``on_bad_image="fail"``), or are dropped before row
    numbers are assigned (``"skip"``) and named in one warning line on stderr; a training class left without images
    is a :class:`DataError`.
    """
    out: dict[str, tuple[ImageSource, np.ndarray]] = {}
    skipped: list[str] = []  # "path (reason)"
    counts: list[str] = []  # "3 train"
    for split, (root, keys, labels) in splits.items():
        source, kept, bad = build_source(root, keys, image_size or DEFAULT_IMAGE_SIZE)
        shown = [f"{os.path.join(root, keys[i])} ({reason})" for i, reason in bad]
        if bad and on_bad_image == "fail":
            raise DataError(f"{dataset}: {len(bad)} unreadable or corrupt {split} image{'s' if len(bad) > 1 else ''}: "
                            f"{listing(shown)}; fix or remove them, or set data.on_bad_image=skip")
        skipped += shown
        counts += [f"{len(bad)} {split}"] if bad else []
        out[split] = (source, np.asarray(labels, dtype=np.int64)[kept])
        if len(out) == 1:
            require_all_classes(dataset, classes, out[split][1], " left after skipping unreadable images")
    if skipped:
        print(
            f"knnmix: warning: {dataset}: skipped {len(skipped)} unreadable or corrupt image"
            f"{'s' if len(skipped) > 1 else ''} ({', '.join(counts)}): {listing(skipped)}",
            file=sys.stderr, flush=True,
        )
    return out
