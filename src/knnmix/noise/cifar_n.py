"""Real human label noise of CIFAR-10N and CIFAR-100N (Wei et al., ICLR 2022).

The label files ``CIFAR-10_human.pt`` and ``CIFAR-100_human.pt`` (https://github.com/UCSC-REAL/cifar-10-100n)
are pickled dicts of numpy arrays, 50,000 labels each, in the order of CIFAR's python training batches. They are
read with ``torch.load(weights_only=True)`` and an allow-list of the numpy types they contain, so loading never
runs arbitrary pickled code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from knnmix.errors import KnnmixError, load_tensors
from knnmix.noise.base import NoiseInputs, NoiseSpec, register_noise_model

CIFAR_N_TRAIN_SIZE = 50_000


@dataclass(frozen=True)
class CifarNInfo:
    """One CIFAR-N label file and the noise variants it provides (:data:`CIFAR_N` keys it by noise model name)."""

    family: str  # dataset family it belongs to
    dataset: str  # human-readable data set name
    num_classes: int
    filename: str
    variants: Mapping[str, str]  # variant name -> key in the file
    order: str  # the sample order the labels follow


CIFAR_N: Mapping[str, CifarNInfo] = MappingProxyType(
    {
        "cifar10n": CifarNInfo(
            family="cifar10", dataset="CIFAR-10", num_classes=10, filename="CIFAR-10_human.pt",
            variants=MappingProxyType({"aggre": "aggre_label", "random1": "random_label1", "random2": "random_label2",
                                       "random3": "random_label3", "worse": "worse_label"}),
            order="data_batch_1 .. data_batch_5 of the python version",
        ),
        "cifar100n": CifarNInfo(
            family="cifar100", dataset="CIFAR-100", num_classes=100, filename="CIFAR-100_human.pt",
            variants=MappingProxyType({"noisy": "noisy_label"}), order="the 'train' file of the python version",
        ),
    }
)


def _allowed_globals() -> list[object]:
    """The numpy globals a CIFAR-N file pickles (ndarrays of int64), allow-listed for ``weights_only`` loading; float
    and bool arrays load too, so that a file of such labels is the one-line "not an integer label array" error."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    label_dtypes = {type(np.dtype(code)) for code in np.typecodes["AllInteger"] + np.typecodes["Float"] + "?"}
    return [
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *sorted(label_dtypes, key=lambda cls: cls.__name__),
    ]


def load_cifar_n_file(path: str | Path) -> dict[str, np.ndarray]:
    """Load a CIFAR-N label file (``CIFAR-10_human.pt`` or ``CIFAR-100_human.pt``) safely.

    Returns every entry as a ``(50000,)`` int64 array (``clean_label``, ``aggre_label``, ... or ``clean_label``,
    ``noisy_label``, ``clean_coarse_label``, ``noisy_coarse_label``).
    """
    import torch

    raw = load_tensors(path, "CIFAR-N label file", _allowed_globals())
    if not isinstance(raw, dict):
        raise KnnmixError(f"CIFAR-N label file {path} holds a {type(raw).__name__}, expected a dict of label arrays")
    out: dict[str, np.ndarray] = {}
    for key, value in raw.items():
        arr = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise KnnmixError(f"entry {key!r} of {path} is not a 1-D integer label array (got {arr.dtype} {arr.shape})")
        out[str(key)] = arr.astype(np.int64, copy=False)
    return out


def _entry(data: dict[str, np.ndarray], key: str, path: Path, info: CifarNInfo) -> np.ndarray:
    if key not in data:
        raise KnnmixError(f"{path} has no {key!r} entry; is it {info.filename} of CIFAR-N?")
    arr = data[key]
    if arr.shape != (CIFAR_N_TRAIN_SIZE,):
        raise KnnmixError(f"entry {key!r} of {path} has {arr.shape[0]:,} labels, expected {CIFAR_N_TRAIN_SIZE:,}")
    if arr.min() < 0 or arr.max() >= info.num_classes:
        raise KnnmixError(f"entry {key!r} of {path} has labels outside [0, {info.num_classes})")
    return arr


def check_family(kind: str, family: str) -> None:
    """Refuse CIFAR-N noise model ``kind`` on a data set of another family than its label file's."""
    info = CIFAR_N[kind]
    if family != info.family:
        raise KnnmixError(f"noise model {kind!r} holds human labels of {info.dataset}'s training set; it needs "
                          f"dataset family {info.family!r}, got {family!r}")


def _human_labels(spec: NoiseSpec, inputs: NoiseInputs) -> np.ndarray:
    """The human labels of variant ``spec.variant`` of the file of ``CIFAR_N[spec.kind]``, once the data is known
    to be that file's training set: ``inputs.labels`` must equal its ``clean_label``, in the same order."""
    assert spec.variant is not None
    info = CIFAR_N[spec.kind]
    check_family(spec.kind, inputs.family)
    if inputs.num_classes != info.num_classes:
        raise KnnmixError(f"noise model {spec.kind!r} needs {info.num_classes} classes, but num_classes is "
                          f"{inputs.num_classes}")
    n = inputs.labels.shape[0]
    if n != CIFAR_N_TRAIN_SIZE:
        raise KnnmixError(f"{spec.kind} labels cover {info.dataset}'s {CIFAR_N_TRAIN_SIZE:,} training images; this "
                          f"dataset has {n:,}")
    if inputs.cifar_n_dir is None:
        raise KnnmixError(f"noise spec {str(spec)!r} needs cifar_n_dir, the folder holding {info.filename} "
                          "(CIFAR-N human labels, https://github.com/UCSC-REAL/cifar-10-100n)")
    path = inputs.cifar_n_dir / info.filename
    if inputs.cifar_n_dir.is_file():  # the label file itself: said ".../CIFAR-10_human.pt/CIFAR-10_human.pt not found"
        raise KnnmixError(f"cifar_n_dir {str(inputs.cifar_n_dir)!r} is a file; give the folder that holds "
                          f"{info.filename}")
    if not path.is_file():
        raise KnnmixError(f"CIFAR-N label file {path} not found: noise spec {str(spec)!r} expects {info.filename} in "
                          "cifar_n_dir")
    data = load_cifar_n_file(path)
    clean, noisy = (_entry(data, key, path, info) for key in ("clean_label", info.variants[spec.variant]))
    mismatch = int(np.count_nonzero(clean != inputs.labels))
    if mismatch:
        raise KnnmixError(f"labels differ from clean_label of {path} at {mismatch:,} of {CIFAR_N_TRAIN_SIZE:,} "
                          f"positions; {spec.kind} needs {info.dataset}'s training set in the order of {info.order}")
    return np.array(noisy, dtype=np.int64, copy=True)


for _kind, _info in CIFAR_N.items():
    register_noise_model(
        _kind,
        variants=tuple(_info.variants),
        summary=f"real human labels of {_info.dataset}N (Wei et al. 2022), needs cifar_n_dir",
    )(_human_labels)
