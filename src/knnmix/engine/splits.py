"""From a config to the run's three splits: noisy train, noisy validation, clean test.

Order of operations (each seeded, so every run with the same seeds sees the same labels):
1. load the dataset bundle (published labels);
2. inject the configured label noise into the whole published training set (CIFAR-N files address it in order);
3. optionally keep a seeded subset of the training rows (``data.train_subset``);
4. carve the noisy validation split (``data.val_fraction``, ``data.split_seed``) from what remains.
A class (by given label) that step 3 or 4 leaves without training images is a :class:`DataError`.
The validation split keeps its noisy labels: it is the only data used to select models and hyper-parameters.
The test split is only ever reported.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from knnmix.config import Config, DataConfig
from knnmix.data import DatasetBundle, ImageSource, LabelledDataset, TensorSource, load_dataset
from knnmix.data.files import PRELOAD_MAX_BYTES, SMALL_IMAGE_SIDE
from knnmix.errors import ConfigError, DataError, KnnmixWarning, listing
from knnmix.noise import NoiseResult, NoiseSpec, apply_noise, parse_noise_spec


# data.* keys handed to dataset loaders that declare them (see knnmix.data.load_dataset).
DATASET_OPTION_KEYS = ("image_size", "labels_file", "test_root", "on_bad_image", "first_classes")
SPLIT_STREAM = 0x5E1EC7  # tag of the random stream of the subset and validation split
AUTO_NOISE = "symmetric:0.4"  # noise.spec=auto on a dataset whose labels are clean


@dataclass
class Splits:
    bundle: DatasetBundle
    noise: NoiseResult  # over the whole published training set
    train: LabelledDataset
    val: LabelledDataset | None
    test: LabelledDataset | None
    train_rows: np.ndarray  # rows of the published training set used for training
    val_rows: np.ndarray  # rows held out as noisy validation (empty when the dataset ships its own split)
    extra_tests: dict[str, LabelledDataset] = field(default_factory=dict)
    #: sha256 of the image files behind the train and validation rows (:meth:`ImageSource.signature`), taken when
    #: they were read; ``None`` for data not read from a user's files (the published datasets)
    files: str | None = None

    @property
    def num_classes(self) -> int:
        return self.bundle.num_classes

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of what per-sample state is aligned to: the noisy labels and the train / validation rows."""
        digest = hashlib.sha256()
        for rows in (self.noise.noisy_labels, self.train_rows, self.val_rows):
            digest.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes() + b"|")
        return digest.hexdigest()

    def noisy_labels_record(self) -> dict[str, np.ndarray]:
        """Everything needed to re-score a run against its labels (saved as ``noisy_labels.npz``)."""
        rec = {
            "noisy_labels": self.noise.noisy_labels,
            "train_rows": self.train_rows,
            "val_rows": self.val_rows,
            "transition": self.noise.transition,
            "noise_rate": np.array(self.noise.noise_rate),
            "spec": np.array(self.noise.spec),
        }
        if self.bundle.labels_are_clean:
            rec["true_labels"] = self.bundle.train_labels
        return rec


_LAST_BUNDLE: dict[tuple, DatasetBundle] = {}  # the last in-memory dataset this process loaded


def load_bundle(d: DataConfig) -> DatasetBundle:
    """The configured dataset; a published in-memory one is kept for the next call with the same data keys (a
    sweep's trials in one process load Fashion-MNIST once). A user's own files are read afresh: they may change."""
    options = {k: getattr(d, k) for k in DATASET_OPTION_KEYS}
    key = (d.name, d.root, d.download, tuple(sorted(options.items())))
    if key in _LAST_BUNDLE:
        return dataclasses.replace(_LAST_BUNDLE[key])
    bundle = load_dataset(
        d.name, d.root, d.download, defaults={k: getattr(DataConfig(), k) for k in DATASET_OPTION_KEYS}, **options
    )
    if isinstance(bundle.train, TensorSource) and bundle.labels_are_clean:
        _LAST_BUNDLE.clear()
        _LAST_BUNDLE[key] = bundle
    return dataclasses.replace(bundle)


def build_splits(cfg: Config) -> Splits:
    d = cfg.data
    bundle = load_bundle(d)
    labels = bundle.train_labels
    text = cfg.noise.spec
    if text == "auto":  # synthetic noise on a benchmark's clean labels, never on top of labels that are already noisy
        text = AUTO_NOISE if bundle.labels_are_clean else "none"
    spec = parse_noise_spec(text)
    features = None
    if spec.kind == "instance":
        if not isinstance(bundle.train, TensorSource):
            raise DataError(f"instance noise needs the training images in memory; {d.name!r} reads them from files "
                            f"at {bundle.train.shape[1]} px (data.image_size; images below {SMALL_IMAGE_SIDE} px and "
                            f"{PRELOAD_MAX_BYTES // 1024**3} GiB in all are held in memory)")
        features = bundle.train.as_float().numpy()
    noise = apply_noise(
        spec, labels, bundle.num_classes, seed=cfg.seed if cfg.noise.seed is None else cfg.noise.seed,
        family=bundle.family, coarse_labels=bundle.train_coarse_labels, features=features,
        cifar_n_dir=cfg.noise.cifar_n_dir, symmetric_convention=cfg.noise.symmetric_convention,
        instance_std=cfg.noise.instance_std,
    )
    lost = [i for i, row in enumerate(noise.transition) if row[i] < np.delete(row, i).max(initial=0.0)]
    if lost and spec.kind != "none":  # (T[i, j] = P(given j | true i): row i's largest entry is not the true class)
        warnings.warn(f"noise {spec}: {len(lost)} of {bundle.num_classes} classes are given one other class's label "
                      f"more often than their own ({listing([repr(bundle.classes[i]) for i in lost])}); trained on "
                      "these labels, a model learns to call them that class", KnnmixWarning, stacklevel=2)
    # A stream of its own: seeded with the bare seed it would replay the noise model's draws (same seed, same
    # generator) and the validation split would hold exactly the flipped samples.
    rng = np.random.default_rng([d.split_seed, SPLIT_STREAM])
    rows = np.arange(len(labels))
    if d.train_subset is not None:
        if d.train_subset > len(rows):
            raise DataError(f"data.train_subset={d.train_subset} exceeds the {len(rows)} training images of {d.name}")
        rows = np.sort(rng.choice(rows, size=d.train_subset, replace=False))
        refuse_lost_classes(noise.noisy_labels, np.arange(len(labels)), rows, bundle.classes,
                            f"data.train_subset={d.train_subset} (data.split_seed={d.split_seed})", labels, spec)
    if bundle.val is not None and d.val_fraction > 0:
        raise ConfigError(f"data.val_fraction={d.val_fraction}: {d.name} ships its own validation split; set "
                          "data.val_fraction=0")
    n_val = int(round(d.val_fraction * len(rows)))
    if d.val_fraction > 0 and n_val == 0:
        warnings.warn(f"data.val_fraction={d.val_fraction} of {len(rows)} training images is no image: the run has no "
                      "validation split (nothing is selected on validation; the last epoch is reported)",
                      KnnmixWarning, stacklevel=2)
    perm = rng.permutation(rows)
    val_rows, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    if len(train_rows) < 2:
        raise DataError(f"only {len(train_rows)} training images remain after the validation split")
    refuse_lost_classes(noise.noisy_labels, rows, train_rows, bundle.classes,
                        f"data.val_fraction={d.val_fraction} (data.split_seed={d.split_seed})", labels, spec)

    def subset(r: np.ndarray) -> LabelledDataset:
        true = labels[r] if bundle.labels_are_clean else None
        return LabelledDataset(bundle.train, r, noise.noisy_labels[r], bundle.classes, true_labels=true)

    def trusted(source: ImageSource | None, labels: np.ndarray | None) -> LabelledDataset | None:
        if source is None or labels is None:
            return None
        return LabelledDataset(source, np.arange(len(source)), labels, bundle.classes, true_labels=labels)

    val = subset(val_rows) if n_val else trusted(bundle.val, bundle.val_labels)
    if d.epoch_samples is not None:
        bundle.epoch_rows = class_balanced_epochs(noise.noisy_labels, train_rows, d.epoch_samples, bundle.num_classes)
    return Splits(
        bundle=bundle, noise=noise, train=subset(train_rows).view(augment=d.augment), val=val,
        test=trusted(bundle.test, bundle.test_labels), train_rows=train_rows, val_rows=val_rows,
        extra_tests={k: trusted(src, lab) for k, (src, lab) in bundle.extra_tests.items()},  # type: ignore[misc]
        files=_files_digest([s.signature() for s in (bundle.train, bundle.val) if s is not None]),
    )


def _files_digest(signatures: list[str | None]) -> str | None:
    parts = [s for s in signatures if s is not None]
    return hashlib.sha256("|".join(parts).encode()).hexdigest() if parts else None


def refuse_lost_classes(given: np.ndarray, before: np.ndarray, after: np.ndarray, classes: list[str],
                        setting: str, unflipped: np.ndarray | None = None, noise: NoiseSpec | None = None) -> None:
    """A :class:`DataError` naming the classes that have training images (by given label) among rows ``before`` but
    none among rows ``after``, the rows ``setting`` kept: a run would never train on them. ``unflipped``: the labels
    before ``noise``, which the error names when it took most of a lost class's images away."""
    lost = np.setdiff1d(given[before], given[after]).tolist()
    if lost:
        counts = np.bincount(given[before], minlength=len(classes))
        had = np.bincount(unflipped[before], minlength=len(classes)) if unflipped is not None else counts
        emptied = {c for c in lost if had[c] > 2 * counts[c]}  # by the noise, mostly
        shown = [f"{classes[c]!r} ({counts[c]} image{'s' if counts[c] > 1 else ''}"
                 + (f", {had[c]} before {noise} noise)" if c in emptied else ")") for c in lost]
        fix = "lower the noise rate, " if noise and noise.rate and emptied else ""
        raise DataError(f"{setting} leaves {len(lost)} of {len(classes)} classes without training images: "
                        f"{listing(shown)}; add images to them, {fix}or change {setting.split('=')[0]} or "
                        "data.split_seed")


def class_balanced_epochs(
    labels: np.ndarray, rows: np.ndarray, per_epoch: int, num_classes: int
) -> Callable[[int, int], np.ndarray]:
    """``epoch_rows(epoch, seed)``: a fresh class-balanced draw of ``per_epoch`` training rows for every epoch.

    Each class (by given label) contributes ``per_epoch // C`` rows (all of its rows if it has fewer), drawn
    without replacement from a stream seeded by (seed, epoch) -- the usual per-epoch subsampling of Clothing1M.
    """
    by_class = [rows[labels[rows] == c] for c in range(num_classes)]
    quota = max(per_epoch // num_classes, 1)

    def epoch_rows(epoch: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng([seed, epoch, SPLIT_STREAM])
        picked = [r if len(r) <= quota else rng.choice(r, size=quota, replace=False) for r in by_class]
        return np.sort(np.concatenate(picked))

    return epoch_rows
