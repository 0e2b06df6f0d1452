"""Dataset loaders: digits, Fashion-MNIST (real Debian files and tiny idx files), CIFAR-10/100 (tiny pickles)."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import re
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.datasets
from torch.utils.data import DataLoader

from knnmix.data import (
    DATASETS,
    Augment,
    DatasetBundle,
    LabelledDataset,
    TensorSource,
    collate_batch,
    load_dataset,
)
from knnmix.data import fashion_mnist as fmnist_module
from knnmix.errors import DataError, KnnmixError

# --------------------------------------------------------------------------------------------------- registry


def test_importing_the_package_registers_every_loader() -> None:
    assert DATASETS.names() == [
        "cifar10", "cifar100", "clothing1m", "digits", "fashion-mnist", "imagefolder", "webvision"
    ]


def test_unknown_dataset_is_a_one_line_registry_error() -> None:
    with pytest.raises(KnnmixError, match=r"unknown dataset 'cifar11' \(did you mean 'cifar10'\?\)") as info:
        load_dataset("cifar11")
    assert "\n" not in str(info.value)
    assert not isinstance(info.value, DataError)


# ----------------------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_dataset("digits")


def test_digits_sizes_types_and_metadata(digits: DatasetBundle) -> None:
    assert (len(digits.train), len(digits.test)) == (1437, 360)
    assert isinstance(digits.train, TensorSource) and isinstance(digits.test, TensorSource)
    assert digits.train.images.dtype == torch.uint8
    assert tuple(digits.train.images.shape) == (1437, 1, 8, 8)
    assert digits.train.shape == digits.test.shape == (1, 8, 8)
    assert digits.train_labels.dtype == np.int64 and digits.train_labels.shape == (1437,)
    assert digits.train_labels.min() == 0 and digits.train_labels.max() == 9
    assert (digits.name, digits.family, digits.default_model) == ("digits", "digits", "small_cnn")
    assert digits.classes == [str(d) for d in range(10)]
    assert digits.labels_are_clean and digits.train_coarse_labels is None
    assert digits.train.augment == Augment(crop_padding=1, hflip=False)
    # 0..16 scaled to the full 0..255 range
    assert int(digits.train.images.max()) == 255 and int(digits.train.images.min()) == 0


def test_digits_split_is_a_stratified_partition_of_sklearns_data(digits: DatasetBundle) -> None:
    from sklearn.datasets import load_digits

    raw = load_digits()
    expected = Counter(
        (np.rint(img * 255 / 16).astype(np.uint8).tobytes(), int(y)) for img, y in zip(raw.images, raw.target)
    )
    got = Counter()
    for source, labels in ((digits.train, digits.train_labels), (digits.test, digits.test_labels)):
        assert isinstance(source, TensorSource)
        got.update((img.numpy().tobytes(), int(y)) for img, y in zip(source.images[:, 0], labels))
    assert got == expected  # every image exactly once, with its own label

    assert digits.test_labels is not None
    test_counts = np.bincount(digits.test_labels, minlength=10)
    all_counts = np.bincount(raw.target, minlength=10)
    assert (test_counts > 0).all()
    assert np.abs(test_counts - 0.2 * all_counts).max() < 1.0  # each class within one image of its 20% share


# sha256 of the test images + labels (prefix): pins the split to numpy's stable RandomState(0) stream.
DIGITS_TEST_DIGEST = "43289c5d80f3d35f"


def test_digits_split_is_fixed(digits: DatasetBundle) -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    again = load_dataset("digits", download=True)  # download is ignored (and a root refused: test_cli)
    assert isinstance(digits.train, TensorSource) and isinstance(again.train, TensorSource)
    assert np.array_equal(again.train_labels, digits.train_labels)
    assert np.array_equal(again.test_labels, digits.test_labels)
    assert torch.equal(again.train.images, digits.train.images)
    # Pinned: the split must never change between versions (runs and papers compare on it).
    assert isinstance(digits.test, TensorSource) and digits.test_labels is not None
    digest = hashlib.sha256(digits.test.images.numpy().tobytes() + digits.test_labels.tobytes()).hexdigest()
    assert digest[:16] == DIGITS_TEST_DIGEST


def test_digits_normalisation_uses_training_statistics(digits: DatasetBundle) -> None:
    x = digits.train.load(torch.arange(len(digits.train)), augment=False)
    assert x.dtype == torch.float32
    assert abs(float(x.mean())) < 1e-4
    assert abs(float(x.std(unbiased=False)) - 1.0) < 1e-4
    t = digits.test.load(torch.arange(len(digits.test)), augment=False) if digits.test is not None else None
    assert t is not None and abs(float(t.mean())) < 0.1  # test images use the same (training) statistics


def test_labelled_dataset_over_digits(digits: DatasetBundle) -> None:
    ds = LabelledDataset(digits.train, np.arange(len(digits.train)), digits.train_labels, digits.classes)
    x, y, i = ds[5]
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 8, 8)
    assert type(y) is int and y == digits.train_labels[5]
    assert type(i) is int and i == 5
    assert torch.equal(x, digits.train.load(torch.tensor([5]), augment=False)[0])

    xb, yb, ib = ds.__getitems__([3, 1, 4])
    assert tuple(xb.shape) == (3, 1, 8, 8) and xb.dtype == torch.float32
    assert yb.dtype == torch.int64 and yb.tolist() == digits.train_labels[[3, 1, 4]].tolist()
    assert ib.tolist() == [3, 1, 4]

    batches = list(DataLoader(ds, batch_size=500, collate_fn=collate_batch))
    assert [tuple(b[0].shape) for b in batches] == [(500, 1, 8, 8), (500, 1, 8, 8), (437, 1, 8, 8)]
    assert torch.equal(torch.cat([b[2] for b in batches]), torch.arange(1437))


def _shifts(img: torch.Tensor, pad: int, fill: float) -> list[torch.Tensor]:
    padded = torch.nn.functional.pad(img, (pad, pad, pad, pad), value=fill)
    h, w = img.shape[-2:]
    return [padded[..., dy : dy + h, dx : dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]


def test_digits_augmentation_is_a_seeded_one_pixel_shift_without_flips(digits: DatasetBundle) -> None:
    ds = LabelledDataset(digits.train, np.arange(len(digits.train)), digits.train_labels, digits.classes)
    aug = ds.view(augment=True)
    rows = list(range(64))
    plain = ds.__getitems__(rows)[0]
    torch.manual_seed(7)
    a = aug.__getitems__(rows)[0]
    torch.manual_seed(7)
    b = aug.__getitems__(rows)[0]
    c = aug.__getitems__(rows)[0]
    assert a.shape == plain.shape
    assert torch.equal(a, b)  # reproducible under torch.manual_seed
    assert not torch.equal(a, plain) and not torch.equal(b, c)  # it does change images
    assert torch.equal(ds[0][0], plain[0])  # the original dataset still loads plain images
    assert isinstance(digits.train, TensorSource)
    zero = float(plain[digits.train.images[rows] == 0][0])  # the normalised value of a black pixel
    for k in range(len(rows)):
        assert any(torch.allclose(a[k], s) for s in _shifts(plain[k], 1, zero)), f"image {k} is not a shift"


# ------------------------------------------------------------------------------------------ fashion-mnist (real)

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def fashion() -> DatasetBundle:
    missing = [n for n in fmnist_module.FILES if not (DEBIAN_FASHION / f"{n}.gz").is_file()]
    if missing:
        pytest.fail(
            f"Fashion-MNIST files missing from {DEBIAN_FASHION} ({', '.join(missing)}): "
            "run `apt-get install -y dataset-fashion-mnist`"
        )
    return load_dataset("fashion-mnist")  # default root: the Debian package


def test_fashion_mnist_from_the_debian_package(fashion: DatasetBundle) -> None:
    assert (len(fashion.train), len(fashion.test)) == (60000, 10000)
    assert fashion.train.shape == fashion.test.shape == (1, 28, 28)
    assert isinstance(fashion.train, TensorSource) and fashion.train.images.dtype == torch.uint8
    assert fashion.train_labels[0] == 9 and fashion.classes[9] == "Ankle boot"  # official first training label
    assert fashion.test_labels is not None and fashion.test_labels[0] == 9
    assert (np.bincount(fashion.train_labels) == 6000).all()
    assert (np.bincount(fashion.test_labels) == 1000).all()
    assert fashion.classes == fmnist_module.CLASSES and len(fashion.classes) == 10
    assert (fashion.family, fashion.default_model) == ("fashion-mnist", "small_cnn")
    assert fashion.train.augment == Augment(crop_padding=2, hflip=True)
    # the published normalisation constants match the training pixels
    hist = np.bincount(fashion.train.images.numpy().ravel(), minlength=256).astype(np.float64)
    v = np.arange(256) / 255.0
    mean = (hist * v).sum() / hist.sum()
    std = np.sqrt((hist * (v - mean) ** 2).sum() / hist.sum())
    assert abs(mean - fmnist_module.MEAN[0]) < 1e-3 and abs(std - fmnist_module.STD[0]) < 1e-3


# ------------------------------------------------------------------------------------------ fashion-mnist (tiny)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path: Path, payload: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def _tiny_fashion(rng: np.random.Generator, n_train: int = 5, n_test: int = 3) -> dict[str, np.ndarray]:
    return {
        fmnist_module.TRAIN_IMAGES: rng.integers(0, 256, (n_train, 6, 5), dtype=np.uint8),  # H != W on purpose
        fmnist_module.TRAIN_LABELS: rng.integers(0, 10, n_train, dtype=np.uint8),
        fmnist_module.TEST_IMAGES: rng.integers(0, 256, (n_test, 6, 5), dtype=np.uint8),
        fmnist_module.TEST_LABELS: rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def _write_fashion(directory: Path, arrays: dict[str, np.ndarray], gz: bool) -> dict[str, Path]:
    return {name: _write(directory / name, _idx_bytes(a), gz) for name, a in arrays.items()}


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("layout", [".", "FashionMNIST/raw"], ids=["flat", "torchvision"])
def test_fashion_mnist_tiny_idx_files(tmp_path: Path, layout: str, gz: bool) -> None:
    arrays = _tiny_fashion(np.random.default_rng(0))
    _write_fashion(tmp_path / layout, arrays, gz)
    b = load_dataset("fashion-mnist", root=str(tmp_path))
    assert isinstance(b.train, TensorSource) and isinstance(b.test, TensorSource)
    assert b.train.shape == (1, 6, 5)
    assert np.array_equal(b.train.images[:, 0].numpy(), arrays[fmnist_module.TRAIN_IMAGES])
    assert np.array_equal(b.test.images[:, 0].numpy(), arrays[fmnist_module.TEST_IMAGES])
    assert np.array_equal(b.train_labels, arrays[fmnist_module.TRAIN_LABELS])
    assert np.array_equal(b.test_labels, arrays[fmnist_module.TEST_LABELS])
    x = b.train.load(torch.tensor([2]), augment=False)
    pixel = arrays[fmnist_module.TRAIN_IMAGES][2, 4, 1] / 255.0
    assert float(x[0, 0, 4, 1]) == pytest.approx((pixel - 0.2860) / 0.3530, abs=1e-5)


def _corrupt_truncated(paths: dict[str, Path]) -> Path:
    p = paths[fmnist_module.TRAIN_IMAGES]
    p.write_bytes(p.read_bytes()[:-7])
    return p


def _corrupt_magic(paths: dict[str, Path]) -> Path:
    p = paths[fmnist_module.TEST_LABELS]  # a labels file with an images header
    p.write_bytes(bytes([0, 0, 8, 3]) + p.read_bytes()[4:])
    return p


def _corrupt_gzip(paths: dict[str, Path]) -> Path:
    p = paths[fmnist_module.TRAIN_LABELS]
    p.write_bytes(b"this is not gzip data at all")
    return p


def _corrupt_cut_gzip(paths: dict[str, Path]) -> Path:
    p = paths[fmnist_module.TEST_IMAGES]
    p.write_bytes(p.read_bytes()[:30])
    return p


def _corrupt_count_mismatch(paths: dict[str, Path]) -> Path:
    p = paths[fmnist_module.TRAIN_LABELS]
    p.write_bytes(gzip.compress(_idx_bytes(np.zeros(4, np.uint8))))
    return p


def _corrupt_bad_label(paths: dict[str, Path]) -> Path:
    p = paths[fmnist_module.TEST_LABELS]
    p.write_bytes(gzip.compress(_idx_bytes(np.array([1, 10, 2], np.uint8))))
    return p


@pytest.mark.parametrize(
    "corrupt",
    [_corrupt_truncated, _corrupt_magic, _corrupt_gzip, _corrupt_cut_gzip, _corrupt_count_mismatch, _corrupt_bad_label],
)
def test_fashion_mnist_corrupt_idx_is_a_data_error_naming_the_file(tmp_path: Path, corrupt: Any) -> None:
    paths = _write_fashion(tmp_path, _tiny_fashion(np.random.default_rng(1)), gz=True)
    bad = corrupt(paths)
    with pytest.raises(DataError, match=re.escape(str(bad))) as info:
        load_dataset("fashion-mnist", root=str(tmp_path))
    assert "\n" not in str(info.value)


def test_fashion_mnist_missing_root_and_missing_file(tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", root=str(nowhere))
    msg = str(info.value)
    assert f"not found at {nowhere} (missing train-images-idx3-ubyte[.gz])" in msg
    assert "apt-get install -y dataset-fashion-mnist" in msg and "data.download=true" in msg
    assert "\n" not in msg

    paths = _write_fashion(tmp_path / "some", _tiny_fashion(np.random.default_rng(2)), gz=False)
    paths[fmnist_module.TEST_LABELS].unlink()
    with pytest.raises(DataError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\]"):
        load_dataset("fashion-mnist", root=str(tmp_path / "some"))


def test_fashion_mnist_download_goes_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = _tiny_fashion(np.random.default_rng(3))
    calls: list[tuple[str, bool]] = []

    class FakeFashionMNIST:  # writes what torchvision leaves behind: extracted files in root/FashionMNIST/raw
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append((root, download))
            _write_fashion(Path(root) / "FashionMNIST" / "raw", arrays, gz=False)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    root = tmp_path / "dl"
    b = load_dataset("fashion-mnist", root=str(root), download=True)
    assert calls == [(str(root), True)]
    assert np.array_equal(b.train_labels, arrays[fmnist_module.TRAIN_LABELS])
    load_dataset("fashion-mnist", root=str(root), download=True)
    assert len(calls) == 1  # files present: no second download

    class Offline:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://x, got:\nno network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    with pytest.raises(DataError, match="could not download fashion-mnist into .*offline.*no network") as info:
        load_dataset("fashion-mnist", root=str(tmp_path / "offline"), download=True)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------------ CIFAR


def _py2_str(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b


def _py2_int(i: int) -> bytes:
    return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)


def _py2_value(v: Any) -> bytes:
    """Encode ``v`` with the opcodes Python 2's cPickle (protocol 2) used for the CIFAR release."""
    if isinstance(v, np.ndarray):
        assert v.dtype == np.uint8
        # numpy.dtype("u1", 0, 1) then BUILD with its state (3, "|", None, None, None, -1, -1, 0)
        dtype = b"".join(
            [
                b"cnumpy\ndtype\n", _py2_str(b"u1"), _py2_int(0), _py2_int(1), b"\x87R",
                b"(", _py2_int(3), _py2_str(b"|"), b"NNN", _py2_int(-1), _py2_int(-1), _py2_int(0), b"tb",
            ]
        )  # fmt: skip
        shape = b"(" + b"".join(_py2_int(d) for d in v.shape) + b"t"
        # _reconstruct(ndarray, (0,), "b") then BUILD with (1, shape, dtype, False, raw bytes as a py2 str)
        return b"".join(
            [
                b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy\nndarray\n", _py2_int(0), b"\x85",
                _py2_str(b"b"), b"\x87R", b"(", _py2_int(1), shape, dtype, b"\x89", _py2_str(v.tobytes()), b"tb",
            ]
        )  # fmt: skip
    if isinstance(v, str):
        return _py2_str(v.encode("latin1"))
    if isinstance(v, int):
        return _py2_int(v)
    if isinstance(v, list):
        return b"]" + (b"(" + b"".join(_py2_value(x) for x in v) + b"e" if v else b"")
    raise TypeError(type(v))


def _py2_pickle(d: dict[str, Any]) -> bytes:
    return b"\x80\x02}(" + b"".join(_py2_value(k) + _py2_value(v) for k, v in d.items()) + b"u."


def test_py2_pickle_helper_is_a_valid_pickle() -> None:
    a = np.arange(24, dtype=np.uint8).reshape(2, 12)
    loaded = pickle.loads(_py2_pickle({"data": a, "labels": [3, 300], "batch_label": "b"}), encoding="latin1")
    assert np.array_equal(loaded["data"], a) and loaded["labels"] == [3, 300] and loaded["batch_label"] == "b"


def _cifar_rows(hwc: np.ndarray) -> np.ndarray:
    """CIFAR's row format: per image the R plane, then G, then B, each row-major."""
    return hwc.transpose(0, 3, 1, 2).reshape(len(hwc), -1)


def _write_cifar10(root: Path, rng: np.random.Generator, style: str) -> dict[str, Any]:
    """Tiny CIFAR-10 in the release layout; returns the HWC images and labels written, in CIFAR order."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)

    def dump(name: str, obj: dict[str, Any]) -> None:
        (d / name).write_bytes(_py2_pickle(obj) if style == "py2" else pickle.dumps(obj, protocol=4))

    train_hwc, train_labels = [], []
    for i, n in enumerate([3, 1, 2, 4, 2], start=1):
        hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, n)]
        dump(
            f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": labels,
                "data": _cifar_rows(hwc),
                "filenames": [f"img_{i}_{k}.png" for k in range(n)],
            },
        )
        train_hwc.append(hwc)
        train_labels += labels
    test_hwc = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    test_labels = [int(x) for x in rng.integers(0, 10, 3)]
    dump("test_batch", {"batch_label": "testing batch 1 of 1", "labels": test_labels, "data": _cifar_rows(test_hwc)})
    names = [f"class-{k}" for k in range(10)]
    dump("batches.meta", {"num_cases_per_batch": 10000, "label_names": names, "num_vis": 3072})
    return {
        "train_hwc": np.concatenate(train_hwc),
        "train_labels": np.array(train_labels),
        "test_hwc": test_hwc,
        "test_labels": np.array(test_labels),
        "names": names,
    }


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_cifar10_tiny_pickles(tmp_path: Path, style: str) -> None:
    w = _write_cifar10(tmp_path, np.random.default_rng(0), style)
    b = load_dataset("cifar10", root=str(tmp_path))
    assert isinstance(b.train, TensorSource) and isinstance(b.test, TensorSource)
    assert (len(b.train), len(b.test)) == (12, 3)
    assert b.train.shape == (3, 32, 32) and b.train.images.dtype == torch.uint8
    assert np.array_equal(b.train_labels, w["train_labels"])  # data_batch_1..5 order preserved
    assert np.array_equal(b.test_labels, w["test_labels"])
    assert np.array_equal(b.train.images.numpy(), w["train_hwc"].transpose(0, 3, 1, 2))
    assert np.array_equal(b.test.images.numpy(), w["test_hwc"].transpose(0, 3, 1, 2))
    # one pixel spelled out: image 6 (first of data_batch_4), row 5, column 17, green channel
    assert int(b.train.images[6, 1, 5, 17]) == int(w["train_hwc"][6, 5, 17, 1])
    assert b.classes == w["names"]
    assert (b.name, b.family, b.default_model, b.num_classes) == ("cifar10", "cifar10", "preact_resnet18", 10)
    assert b.train_coarse_labels is None
    assert b.train.augment == Augment(crop_padding=4, hflip=True)
    x = b.train.load(torch.tensor([6]), augment=False)
    expected = (w["train_hwc"][6, 5, 17, 2] / 255.0 - 0.4465) / 0.2010
    assert float(x[0, 2, 5, 17]) == pytest.approx(expected, abs=1e-5)


def test_cifar10_root_may_be_the_batch_folder(tmp_path: Path) -> None:
    w = _write_cifar10(tmp_path, np.random.default_rng(1), "py3")
    b = load_dataset("cifar10", root=str(tmp_path / "cifar-10-batches-py"))
    assert np.array_equal(b.train_labels, w["train_labels"])
    # a file missing there is named there (it said "expected cifar-10-batches-py/data_batch_1", one level deeper)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").unlink()
    with pytest.raises(DataError, match=re.escape(f"cifar10 data not found under {tmp_path / 'cifar-10-batches-py'} "
                                                  "(expected data_batch_1)")):
        load_dataset("cifar10", root=str(tmp_path / "cifar-10-batches-py"))


def _write_cifar100(root: Path, rng: np.random.Generator) -> dict[str, Any]:
    """Tiny CIFAR-100 (Python 3 protocol-5 pickles with bytes keys, the other way such files can look)."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    out: dict[str, Any] = {}
    for split, n in (("train", 7), ("test", 4)):
        hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = [int(x) for x in rng.integers(0, 100, n)]
        coarse = [int(x) for x in rng.integers(0, 20, n)]
        entry = {b"filenames": [b"x.png"] * n, b"batch_label": b"x", b"fine_labels": fine, b"coarse_labels": coarse}
        entry[b"data"] = _cifar_rows(hwc)
        (d / split).write_bytes(pickle.dumps(entry, protocol=5))
        out[split] = (hwc, np.array(fine), np.array(coarse))
    names = [f"fine{k}" for k in range(100)]
    meta = {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"c"] * 20}
    (d / "meta").write_bytes(pickle.dumps(meta, protocol=5))
    out["names"] = names
    return out


def test_cifar100_tiny_pickles_with_coarse_labels(tmp_path: Path) -> None:
    w = _write_cifar100(tmp_path, np.random.default_rng(2))
    b = load_dataset("cifar100", root=str(tmp_path))
    hwc, fine, coarse = w["train"]
    assert isinstance(b.train, TensorSource) and isinstance(b.test, TensorSource)
    assert np.array_equal(b.train.images.numpy(), hwc.transpose(0, 3, 1, 2))
    assert int(b.train.images[3, 0, 31, 0]) == int(hwc[3, 31, 0, 0])
    assert np.array_equal(b.train_labels, fine)
    assert b.train_coarse_labels is not None and b.train_coarse_labels.dtype == np.int64
    assert np.array_equal(b.train_coarse_labels, coarse)
    assert np.array_equal(b.test_labels, w["test"][1])
    assert b.classes == w["names"] and b.num_classes == 100
    assert (b.family, b.default_model) == ("cifar100", "preact_resnet18")
    x = b.test.load(torch.tensor([1]), augment=False)
    expected = (w["test"][0][1, 2, 3, 0] / 255.0 - 0.507) / 0.267
    assert float(x[0, 0, 2, 3]) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    "name, first", [("cifar10", "cifar-10-batches-py/data_batch_1"), ("cifar100", "cifar-100-python/train")]
)
def test_cifar_missing_root_names_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, first: str
) -> None:
    nowhere = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_dataset(name, root=str(nowhere))
    msg = str(info.value)
    assert msg == (
        f"{name} data not found under {nowhere} (expected {first}); "
        "pass --set data.root=DIR or --set data.download=true"
    )
    monkeypatch.setenv("HOME", str(tmp_path))  # the default root is ~/.cache/knnmix/data
    default = f"not found under {tmp_path}/.cache/knnmix/data (expected {first})"
    with pytest.raises(DataError, match=re.escape(default)):
        load_dataset(name)


def test_cifar10_missing_batch_is_named(tmp_path: Path) -> None:
    _write_cifar10(tmp_path, np.random.default_rng(3), "py3")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"\(expected cifar-10-batches-py/data_batch_3\)"):
        load_dataset("cifar10", root=str(tmp_path))


def test_cifar_batches_of_different_image_sizes_are_a_data_error(tmp_path: Path) -> None:
    """A user's own CIFAR-format batches: one of 16x16 images crashed numpy's concatenate (a ValueError)."""
    _write_cifar10(tmp_path, np.random.default_rng(4), "py3")
    small = {"labels": [1, 2], "data": np.zeros((2, 3 * 16 * 16), dtype=np.uint8)}
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(small))
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", root=str(tmp_path))
    assert str(info.value).endswith("the batches hold images of different sizes (data_batch_1: 32x32, data_batch_2: "
                                    "32x32, data_batch_3: 16x16, data_batch_4: 32x32, data_batch_5: 32x32, "
                                    "test_batch: 32x32); all must be equal")


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("pickles must not run code",))


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"\x80\x02}q\x00(X\x04\x00\x00", "not a readable CIFAR pickle"),  # truncated
        (b"garbage, not a pickle", "not a readable CIFAR pickle"),
        (pickle.dumps({"data": _Evil()}), "refusing to load global builtins.print"),
        (pickle.dumps([1, 2, 3]), "it holds a list"),
        (pickle.dumps({"labels": [1]}), "has no 'data' entry"),
        (pickle.dumps({"data": np.zeros((1, 3072), np.float32), "labels": [1]}), "expected a uint8"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1]}), "'labels' has shape"),
        (pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [10]}), "must lie in"),
    ],
    ids=["truncated", "garbage", "code", "not-a-dict", "no-data", "float-data", "short-labels", "bad-label"],
)
def test_cifar_corrupt_pickle_is_a_data_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], payload: bytes, why: str
) -> None:
    _write_cifar10(tmp_path, np.random.default_rng(4), "py3")
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(payload)
    with pytest.raises(DataError, match=re.escape(str(bad))) as info:
        load_dataset("cifar10", root=str(tmp_path))
    assert why in str(info.value) and "\n" not in str(info.value)
    assert "must not run code" not in capsys.readouterr().out


def test_cifar_meta_needs_every_class_name(tmp_path: Path) -> None:
    _write_cifar10(tmp_path, np.random.default_rng(5), "py3")
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({"label_names": ["a", "b"]}))
    with pytest.raises(DataError, match=re.escape(f"{meta}: 'label_names' has 2 entries, expected 10")):
        load_dataset("cifar10", root=str(tmp_path))


def test_cifar_download_goes_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, bool]] = []
    written: dict[str, Any] = {}

    class FakeCIFAR100:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append((root, download))
            written.update(_write_cifar100(Path(root), np.random.default_rng(6)))

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    root = tmp_path / "dl"
    b = load_dataset("cifar100", root=str(root), download=True)
    assert calls == [(str(root), True)]
    assert np.array_equal(b.train_labels, written["train"][1])
    load_dataset("cifar100", root=str(root), download=True)
    assert len(calls) == 1  # already there: no second download

    class Offline:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataError, match="could not download cifar10 into .*name resolution"):
        load_dataset("cifar10", root=str(tmp_path / "offline"), download=True)
