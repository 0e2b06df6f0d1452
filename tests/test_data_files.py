"""File-based data sets (imagefolder, clothing1m, webvision) on miniature trees of tiny PNG/JPEG files."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as transforms

from knnmix import config as C
from knnmix.data import (
    DATASETS,
    DatasetBundle,
    LabelledDataset,
    TensorSource,
    collate_batch,
    dataset_options,
    load_dataset,
)
from knnmix.data import files as files_module
from knnmix.data.clothing1m import CLASSES as CLOTHING_CLASSES
from knnmix.data.files import IMAGENET_MEAN, IMAGENET_STD, FileSource, ImageTransform, PreloadedSource
from knnmix.data.imagefolder import choose_image_size, read_train
from knnmix.engine.splits import build_splits
from knnmix.errors import DataError, KnnmixWarning

# The miniature CSVs have one-image classes on purpose (the warning about them is tested on its own).
pytestmark = pytest.mark.filterwarnings("ignore:.*have a single image:knnmix.errors.KnnmixWarning")

_rng = np.random.default_rng(0)


def write_image(path: Path, size: tuple[int, int] = (12, 10), colour: tuple[int, int, int] | None = None) -> Path:
    """A small image (``size`` = width, height): random noise, or one uniform ``colour``; format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if colour is None:
        pixels = _rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        pixels = np.broadcast_to(np.array(colour, dtype=np.uint8), (h, w, 3)).copy()
    Image.fromarray(pixels).save(path)
    return path


def gradient_image(path: Path, size: tuple[int, int]) -> Path:
    """An image whose every pixel differs from its neighbours (so any crop offset or flip shows)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.stack([(x * 7) % 256, (y * 5) % 256, (x * y) % 256], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def as_tensor(image: str | Image.Image) -> torch.Tensor:
    """An image file (or PIL image) as ``uint8 (3, H, W)`` RGB."""
    img = Image.open(image).convert("RGB") if isinstance(image, str) else image
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    """Back to 0..255 pixel values (float), from an ImageNet-normalised ``(..., 3, H, W)`` batch."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
    return x * std + mean


def path_of(source: object, row: int) -> str:
    assert isinstance(source, FileSource | PreloadedSource)
    return source.path(row)


def labels_by_path(bundle_source: object, labels: np.ndarray) -> dict[str, int]:
    assert isinstance(bundle_source, FileSource | PreloadedSource)
    return {os.path.relpath(p, bundle_source.root): int(y) for p, y in zip(bundle_source.paths(), labels)}


def one_line_error(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


# -------------------------------------------------------------------------------------------------- registration


def test_loaders_are_registered_with_the_options_they_use() -> None:
    assert {"imagefolder", "clothing1m", "webvision"} <= set(DATASETS.names())
    assert dataset_options("imagefolder") == {"image_size", "labels_file", "test_root", "on_bad_image"}
    assert dataset_options("clothing1m") == {"image_size", "on_bad_image"}
    assert dataset_options("webvision") == {"image_size", "test_root", "on_bad_image", "first_classes"}


# ---------------------------------------------------------------------------------------- imagefolder: folder mode


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """root/{cat,dog,emu}/...: 3 + 2 + 2 images, one in a nested folder, plus files that must be ignored."""
    root = tmp_path / "pets"
    write_image(root / "cat" / "a.png", colour=(10, 20, 30))
    write_image(root / "cat" / "b.PNG", colour=(40, 50, 60))
    write_image(root / "cat" / "nested" / "deep" / "c.jpg")
    write_image(root / "dog" / "d.png", colour=(70, 80, 90))
    write_image(root / "dog" / "e.jpeg")
    write_image(root / "emu" / "f.png", colour=(100, 110, 120))
    write_image(root / "emu" / "g.bmp", colour=(130, 140, 150))
    (root / "dog" / "notes.txt").write_text("not an image")
    write_image(root / "dog" / ".hidden.png")
    write_image(root / ".trash" / "x.png")
    (root / "README").write_text("a file at the top is not a class")
    return root


def test_folder_mode_classes_labels_and_batches(folder: Path) -> None:
    b = load_dataset("imagefolder", folder, False, image_size=16)
    assert b.classes == ["cat", "dog", "emu"]
    assert (b.name, b.family, b.labels_are_clean, b.default_model) == ("imagefolder", "generic", False, "small_cnn")
    assert b.test is None and b.val is None
    assert labels_by_path(b.train, b.train_labels) == {
        "cat/a.png": 0, "cat/b.PNG": 0, "cat/nested/deep/c.jpg": 0,
        "dog/d.png": 1, "dog/e.jpeg": 1, "emu/f.png": 2, "emu/g.bmp": 2,
    }  # fmt: skip
    assert b.train.shape == (3, 16, 16)
    ds = LabelledDataset(b.train, np.arange(len(b.train)), b.train_labels, b.classes)
    x, y, idx = ds.__getitems__([6, 0, 3])
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32
    assert y.tolist() == [2, 0, 1] and idx.tolist() == [6, 0, 3]
    # Uniform images come back as their colour after normalisation is undone (PNG is lossless).
    pixels = unnormalise(x)
    for j, row in enumerate([6, 0, 3]):
        colour = {0: (10, 20, 30), 3: (70, 80, 90), 6: (130, 140, 150)}[row]
        assert torch.allclose(pixels[j], torch.tensor(colour, dtype=torch.float32).view(3, 1, 1), atol=1e-3)


def test_large_images_get_resnet50_and_are_read_from_files(folder: Path) -> None:
    b = load_dataset("imagefolder", folder, False, image_size=96)
    assert b.default_model == "resnet50"
    assert isinstance(b.train, FileSource) and not isinstance(b.train, TensorSource)
    assert b.train.load(torch.tensor([0, 4]), augment=True).shape == (2, 3, 96, 96)


def test_folder_mode_test_root_uses_the_training_classes(folder: Path, tmp_path: Path) -> None:
    test = tmp_path / "test"
    write_image(test / "emu" / "t1.png")
    write_image(test / "cat" / "t2.png")
    write_image(test / "emu" / "t3.png")
    b = load_dataset("imagefolder", folder, False, image_size=16, test_root=str(test))
    assert b.test is not None and b.test_labels is not None
    assert labels_by_path(b.test, b.test_labels) == {"cat/t2.png": 0, "emu/t1.png": 2, "emu/t3.png": 2}

    write_image(test / "cow" / "t4.png")
    write_image(test / "yak" / "t5.png")
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", folder, False, image_size=16, test_root=str(test))
    assert re.search(r"2 class folders under .*test are not training classes: 'cow', 'yak'", one_line_error(e))


def test_test_images_that_are_training_images_are_an_error(folder: Path, flat: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:  # the training folder again
        load_dataset("imagefolder", folder, False, image_size=16, test_root=str(folder))
    assert re.search(r"7 test images .* are also training images: .*pets/cat/a.png, ", one_line_error(e))
    write_image(folder / "held" / "cat" / "t.png")  # nested: would be a training class 'held' of test images
    with pytest.raises(DataError, match=r"data.test_root .*pets/held lies inside the training folder .*class 'held'"):
        load_dataset("imagefolder", folder, False, image_size=16, test_root=str(folder / "held"))
    csv = write_csv(flat / "labels.csv", ["path,label", "img/0.png,a", "img/1.png,b", "img/2.png,a"])
    (tmp_path / "link").symlink_to(flat)  # the same files by another path
    test_csv = write_csv(tmp_path / "test.csv", ["path,label", "link/img/2.png,a", "link/img/3.png,b"])
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv), test_root=str(test_csv))
    assert re.search(r"1 test images .* are also training images: .*flat/img/2.png$", one_line_error(e))


def test_folder_mode_structural_errors(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(DataError, match=r"data root .*nowhere does not exist"):
        load_dataset("imagefolder", tmp_path / "nowhere", False, image_size=16)
    flat = tmp_path / "flat"
    write_image(flat / "a.png")
    with pytest.raises(DataError, match=r"no class folders under .*flat"):
        load_dataset("imagefolder", flat, False, image_size=16)
    (folder / "yak").mkdir()
    (folder / "zebu" / "sub").mkdir(parents=True)
    (folder / "zebu" / "sub" / "readme.txt").write_text("x")
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", folder, False, image_size=16)
    assert re.search(r"2 class folders under .*pets hold no images .*: 'yak', 'zebu'", one_line_error(e))
    with pytest.raises(DataError, match=r"set data\.root"):
        load_dataset("imagefolder", None, False)
    with pytest.raises(DataError, match="on_bad_image must be 'fail' or 'skip'"):
        load_dataset("imagefolder", folder, False, on_bad_image="ignore")


def test_single_class_is_an_error(tmp_path: Path) -> None:
    write_image(tmp_path / "only" / "a.png")
    with pytest.raises(DataError, match="single class 'only'"):
        load_dataset("imagefolder", tmp_path, False, image_size=16)


# ------------------------------------------------------------------------------------------- imagefolder: CSV mode


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    """root/img/0.png .. 5.png, no class folders (CSV mode)."""
    root = tmp_path / "flat"
    for i in range(6):
        write_image(root / "img" / f"{i}.png", colour=(i * 20, 0, 0))
    return root


def write_csv(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_mode_with_class_names(flat: Path, tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path / "meta" / "labels.csv",
        ["path,label", "img/0.png,zebra", "img/1.png,ant", f"{flat / 'img' / '2.png'},zebra", "img/3.png, mole ",
         "", "img/4.png,ant"],
    )  # fmt: skip
    b = load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv))
    assert b.classes == ["ant", "mole", "zebra"]  # sorted set of labels
    assert b.train_labels.tolist() == [2, 0, 2, 1, 0]  # the CSV's row order
    assert [os.path.basename(path_of(b.train, i)) for i in range(5)] == [f"{i}.png" for i in range(5)]
    # pixel check: row 3 is img/3.png (red 60)
    assert float(unnormalise(b.train.load(torch.tensor([3]), augment=False))[0, 0].mean()) == pytest.approx(
        60, abs=1e-3
    )


def test_csv_mode_integer_labels_and_classes_txt(flat: Path) -> None:
    write_csv(flat / "classes.txt", ["zebra", "ant", "", "mole"])  # order = class index; blank lines ignored
    csv = write_csv(flat / "labels.csv", ["path,label", "img/0.png,2", "img/1.png,zebra", "img/2.png,0", "img/3.png,1"])
    b = load_dataset("imagefolder", flat, False, image_size=16, labels_file="labels.csv")  # found below root
    assert b.classes == ["zebra", "ant", "mole"]
    assert b.train_labels.tolist() == [2, 0, 0, 1]
    assert csv.exists()
    # without classes.txt an integer among names has nothing to index: it made a class named "2", silently
    (flat / "classes.txt").unlink()
    with pytest.raises(DataError) as mixed:
        load_dataset("imagefolder", flat, False, image_size=16, labels_file="labels.csv")
    assert str(mixed.value) == (
        f"imagefolder: {csv} mixes class names and 3 integer labels, which would be classes of their own; list every "
        f"class in {flat / 'classes.txt'} (line order = index: an integer label then indexes it, or is a name where "
        "class names are integers): line 2: '2', line 4: '0', line 5: '1'")


def test_a_folder_as_labels_file_is_named_a_folder(flat: Path) -> None:
    """knnmix audit DIR --labels DIR said the folder, which exists, "does not exist"."""
    with pytest.raises(DataError, match=r"data.labels_file img is a folder \(.*img\), not a CSV file$"):
        load_dataset("imagefolder", flat, False, image_size=16, labels_file="img")  # below root


def test_csv_integer_labels_without_classes_txt_sort_numerically(flat: Path) -> None:
    rows = ["path,label"] + [f"img/{i}.png,{lab}" for i, lab in enumerate([10, 2, 2, 10, 7])]
    csv = write_csv(flat / "labels.csv", rows)
    b = load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv))
    assert b.classes == ["2", "7", "10"]
    assert b.train_labels.tolist() == [2, 0, 0, 2, 1]
    # one integer spelled two ways made two classes whose order followed Python's string hashing (PYTHONHASHSEED):
    # the same command gave an image another class index from one process to the next
    write_csv(csv, ["path,label"] + [f"img/{i}.png,{lab}" for i, lab in enumerate(["1", "01", "2", "+2", "7"])])
    with pytest.raises(DataError) as twice:
        load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv))
    assert str(twice.value) == (f"imagefolder: {csv} spells 2 integer labels two ways, which would make two classes of "
                                "each; write each label one way: '01' and '1', '+2' and '2'")


def test_csv_test_root(flat: Path, tmp_path: Path) -> None:
    csv = write_csv(flat / "labels.csv", ["path,label", "img/0.png,a", "img/1.png,b", "img/2.png,a"])
    test_dir = tmp_path / "held"
    write_image(test_dir / "x.png")
    write_image(test_dir / "y.png")
    test_csv = write_csv(test_dir / "trusted.csv", ["path,label", "x.png,b", "y.png,0"])  # relative to the CSV
    b = load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv), test_root=str(test_csv))
    assert b.test_labels is not None and b.test_labels.tolist() == [1, 0]
    assert path_of(b.test, 0) == str(test_dir / "x.png")

    write_csv(test_dir / "classes.txt", ["b", "a"])
    with pytest.raises(DataError, match=r"classes.txt differs from the training class list"):
        load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv), test_root=str(test_csv))
    # written as the training CSV is, relative to the training root: "images missing" without a hint
    meta = write_csv(flat / "meta" / "test.csv", ["path,label", "img/4.png,a", "img/5.png,b"])
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv), test_root=str(meta))
    assert one_line_error(e).startswith(
        f"imagefolder: {meta} names 2 images missing under {flat / 'meta'} (they are below {flat}, the training root: "
        "a test CSV's paths are relative to the CSV's own folder; write them so, or absolute): line 2: 'img/4.png'")


def test_labels_file_and_test_root_are_looked_up_in_the_working_directory_then_below_the_root(
        flat: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A labels.csv in the working directory was silently taken over the root's of the same name (every label
    swapped: no warning); data.test_root was looked up in the working directory only (data.labels_file also below
    the root), so a relative one broke on Ray's workers, which run elsewhere."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    write_csv(flat / "labels.csv", ["path,label", "img/0.png,a", "img/1.png,b", "img/2.png,a"])
    write_csv(flat / "held" / "trusted.csv", ["path,label", "../img/3.png,b"])
    b = load_dataset("imagefolder", flat, False, image_size=16, labels_file="labels.csv", test_root="held/trusted.csv")
    assert (b.train_labels.tolist(), b.test_labels.tolist()) == ([0, 1, 0], [1])  # both found below the root
    write_csv(work / "labels.csv", ["path,label", "img/0.png,b", "img/1.png,a", "img/2.png,b"])
    with pytest.raises(DataError) as both:
        load_dataset("imagefolder", flat, False, image_size=16, labels_file="labels.csv")
    assert str(both.value) == (f"imagefolder: data.labels_file labels.csv names both {work / 'labels.csv'} (in the "
                               f"working directory) and {flat / 'labels.csv'} (below data.root): give the path of the "
                               "one you mean")
    b = load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(work / "labels.csv"))
    assert b.train_labels.tolist() == [1, 0, 1]  # a path that names one file is that file
    monkeypatch.chdir(flat)  # the same file both ways: no question
    load_dataset("imagefolder", flat, False, image_size=16, labels_file="labels.csv", test_root="held/trusted.csv")
    with pytest.raises(DataError, match=r"data.test_root nowhere does not exist \(nor below .*flat\)$"):
        load_dataset("imagefolder", flat, False, image_size=16, labels_file="labels.csv", test_root="nowhere")


@pytest.mark.parametrize(
    ("lines", "pattern"),
    [
        ([], r"labels.csv has no header \(empty file\), expected a first line 'path,label'"),
        (["file,class", "img/0.png,a"], r"labels.csv has header 'file,class', expected a first line 'path,label'"),
        (["path,label", "img/0.png,a", "img/1.png", "img/2.png,"],
         r"2 rows without 2 fields and a non-empty path and label: line 3: 'img/1.png', line 4: 'img/2.png,'"),
        (["path,label", "img/0.png,a", "img/9.png,b", "img/1.png,a", "gone.png,b"],
         r"names 2 images missing under .*flat: line 3: 'img/9.png', line 5: 'gone.png'"),
        (["path,label", "img/0.png,a", "img/1.png,b", "img/./0.png,b", "img/1.png,a"],
         r"lists 2 paths more than once: line 4: 'img/./0.png' \(also line 2\), line 5: 'img/1.png' \(also line 3\)"),
        (["path,label"], r"labels.csv lists no images"),
        (["path,label", "img/0.png,0", "img/1.png,-1", "img/2.png,1", "img/3.png,-1"],  # was a class '-1'
         r"labels.csv has 2 negative integer labels \(a 'no label' marker\?\), which would make a class of their "
         r"own; remove those rows, or list every class in .*flat/classes.txt: line 3: '-1', line 5: '-1'$"),
    ],
)  # fmt: skip
def test_csv_errors_list_the_offending_lines(flat: Path, lines: list[str], pattern: str) -> None:
    csv = write_csv(flat / "labels.csv", lines) if lines else flat / "labels.csv"
    if not lines:
        csv.write_text("")
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv))
    assert re.search(pattern, one_line_error(e)), str(e.value)


def test_csv_labels_absent_from_the_class_list(flat: Path) -> None:
    write_csv(flat / "classes.txt", ["ant", "bee"])
    csv = write_csv(flat / "labels.csv", ["path,label", "img/0.png,ant", "img/1.png,wasp", "img/2.png,2",
                                         "img/3.png,-1", "img/4.png,1"])  # fmt: skip
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv))
    msg = one_line_error(e)
    assert "3 labels absent from the class list (2 classes from" in msg and "0..1" in msg
    assert "line 3: 'wasp', line 4: '2', line 5: '-1'" in msg


def test_csv_integer_class_names_are_never_taken_as_indices(flat: Path, tmp_path: Path) -> None:
    csv = write_csv(flat / "labels.csv", ["path,label", "img/0.png,0", "img/1.png,1", "img/2.png,3"])  # classes 0 1 3
    write_image(tmp_path / "held" / "x.png")
    write_image(tmp_path / "held" / "y.png")
    test_csv = write_csv(tmp_path / "held" / "test.csv", ["path,label", "x.png,3", "y.png,2"])
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv), test_root=str(test_csv))
    assert re.search(r"test.csv has 1 labels absent from the class list .*: line 3: '2'$", one_line_error(e))
    write_csv(flat / "classes.txt", ["10", "20"])  # integer names from classes.txt: '1' is no index either
    write_csv(flat / "labels.csv", ["path,label", "img/0.png,10", "img/1.png,20", "img/2.png,1"])
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv))
    assert re.search(r"labels.csv has 1 labels absent from the class list .*: line 4: '1'$", one_line_error(e))


def test_csv_negative_label_listed_in_classes_txt_is_a_name(flat: Path) -> None:
    write_csv(flat / "classes.txt", ["-1", "0"])
    csv = write_csv(flat / "labels.csv", ["path,label", "img/0.png,0", "img/1.png,-1", "img/2.png,-1"])
    b = load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv))
    assert b.classes == ["-1", "0"] and b.train_labels.tolist() == [1, 0, 0]


def test_csv_class_without_images_and_missing_labels_file(flat: Path) -> None:
    write_csv(flat / "classes.txt", ["ant", "bee", "cow", "dog"])
    csv = write_csv(flat / "labels.csv", ["path,label", "img/0.png,ant", "img/1.png,cow"])
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv))
    assert "2 of 4 classes have no training images (remove them from classes.txt or add images): 'bee', 'dog'" in (
        one_line_error(e)
    )
    with pytest.raises(DataError, match=r"data.labels_file nope.csv does not exist"):
        load_dataset("imagefolder", flat, False, image_size=16, labels_file="nope.csv")


def test_csv_class_with_a_single_image_is_a_warning(flat: Path) -> None:
    rows = ["path,label", "img/0.png,cat", "img/1.png,dog", "img/2.png,cat", "img/3.png,dgo", "img/4.png,dog"]
    csv = write_csv(flat / "labels.csv", rows)
    with pytest.warns(KnnmixWarning) as record:
        b = load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv))
    assert b.classes == ["cat", "dgo", "dog"] and len(b.train) == 5  # a warning, not an error
    assert [str(w.message) for w in record] == [
        f"imagefolder: 1 of 3 classes in {csv} have a single image (a mistyped label?): 'dgo' (line 5)"
    ]
    csv.write_text("\n".join(rows[:4] + ["img/3.png,dog"]) + "\n")  # every class twice: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv))
    test_csv = write_csv(flat / "test.csv", ["path,label", "img/5.png,cat"])  # a small test split is no typo
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv), test_root=str(test_csv))


def test_class_names_that_differ_only_in_case_are_a_warning(flat: Path, folder: Path) -> None:
    """'Cat' among 'cat' rows (or a folder 'Cat' beside 'cat') trained as a class of its own without a word."""
    rows = ["path,label", "img/0.png,cat", "img/1.png,dog", "img/2.png,Cat", "img/3.png,Cat", "img/4.png,dog"]
    csv = write_csv(flat / "labels.csv", rows + ["img/5.png,cat"])
    with pytest.warns(KnnmixWarning) as record:
        b = load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv))
    assert b.classes == ["Cat", "cat", "dog"]  # still three classes: a warning
    assert [str(w.message) for w in record] == [
        f"imagefolder: labels in {csv} differ only in case, each a class of its own: 'Cat' and 'cat'; if they are "
        "one class, write its label one way (two classes: list every class in classes.txt beside the CSV)"]
    write_csv(flat / "classes.txt", ["Cat", "cat", "dog"])  # said to be two classes: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("imagefolder", flat, False, image_size=16, labels_file=str(csv))
    (folder / "dog").rename(folder / "Dog")
    write_image(folder / "dog" / "x.png")
    with pytest.warns(KnnmixWarning, match=rf"class folders under {folder} differ only in case, each a class of its "
                                           "own: 'Dog' and 'dog'; if they are one class, merge their folders"):
        load_dataset("imagefolder", folder, False, image_size=16)


# ------------------------------------------------------------------------------------------------- image size


def test_a_class_the_validation_split_or_subset_empties_is_an_error(folder: Path) -> None:
    """3 + 2 + 2 images, half held out: some split seeds put all of a class's images in the validation split, which
    trained without that class (and never ranked its images)."""
    base = C.replace(C.Config(), **{"data.name": "imagefolder", "data.root": str(folder), "data.image_size": 8,
                                    "data.val_fraction": 0.5, "noise.spec": "none"})
    lost = 0
    for seed in range(8):
        try:
            splits = build_splits(C.replace(base, **{"data.split_seed": seed}))
        except DataError as e:
            lost += 1
            assert re.search(rf"^data.val_fraction=0.5 \(data.split_seed={seed}\) leaves 1 of 3 classes without "
                             r"training images: '\w+' \([23] images\); add images to them, or change "
                             r"data.val_fraction or data.split_seed$", str(e))
        else:
            assert set(splits.train.given_labels.tolist()) == {0, 1, 2}
    assert 0 < lost < 8
    with pytest.raises(DataError, match=r"^data.train_subset=2 \(data.split_seed=0\) leaves 1 of 3 classes without "):
        build_splits(C.replace(base, **{"data.train_subset": 2, "data.val_fraction": 0.0}))
    # a class that noise emptied: the error names the noise (it blamed only the subset)
    digits = C.replace(C.Config(), **{"data.name": "digits", "noise.spec": "asymmetric:0.95", "data.train_subset": 200})
    with pytest.raises(DataError, match=r"^data.train_subset=200 \(data.split_seed=0\) leaves 1 of 10 classes without "
                                        r"training images: '2' \(7 images, 142 before asymmetric:0.95 noise\); add "
                                        r"images to them, lower the noise rate, or change data.train_subset or "):
        build_splits(digits)


def test_image_size_none_is_chosen_from_the_images(folder: Path, tmp_path: Path) -> None:
    train = read_train(str(folder))
    assert choose_image_size(train.base, train.keys) == 32  # 12x10 images: shorter side 10 -> 32
    b = load_dataset("imagefolder", folder, False, image_size=None)
    assert b.train.shape == (3, 32, 32) and b.default_model == "small_cnn" and isinstance(b.train, PreloadedSource)
    for size, side, model in [((50, 60), 64, "small_cnn"), ((100, 80), 224, "resnet50")]:
        root = tmp_path / f"side{side}"
        for i in range(4):
            gradient_image(root / f"c{i % 2}" / f"{i}.png", size)
        (root / "c0" / "broken.png").write_bytes(b"not an image")  # left out of the sample, reported at load time
        train = read_train(str(root))
        assert choose_image_size(train.base, train.keys) == side
        with pytest.raises(DataError, match="1 unreadable or corrupt train image"):
            load_dataset("imagefolder", root, False, image_size=None)
        b = load_dataset("imagefolder", root, False, image_size=None, on_bad_image="skip")
        assert b.train.shape == (3, side, side) and b.default_model == model
    assert choose_image_size(str(folder), []) == 224  # nothing readable: the photo default


def test_folder_listing_order_and_hidden_files(tmp_path: Path) -> None:
    for key in ["b/z.png", "b/a/y.png", "b/a-b/x.png", "b/.git/h.png", "b/a/.h.png", "a-b/w.png", "a/v.PNG"]:
        write_image(tmp_path / "root" / key)
    b = load_dataset("imagefolder", tmp_path / "root", False, image_size=16)
    assert isinstance(b.train, PreloadedSource)
    # classes in sorted folder order, each class's paths sorted as strings; hidden files and folders left out
    assert [os.path.relpath(p, b.train.root) for p in b.train.paths()] == [
        "a/v.PNG", "a-b/w.png", "b/a-b/x.png", "b/a/y.png", "b/z.png"
    ]
    assert b.classes == ["a", "a-b", "b"] and b.train_labels.tolist() == [0, 1, 2, 2, 2]


def test_folder_mode_reads_jpeg_by_its_other_endings_and_warns_of_photos_it_cannot_decode(folder: Path) -> None:
    write_image(folder / "cat" / "h.jfif", colour=(1, 2, 3))  # a JPEG, as browsers save them: was left out silently
    write_image(folder / "dog" / "i.jpe")
    (folder / "emu" / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")  # an iPhone photo: Pillow cannot decode it
    write_image(folder / "emu" / "render.tga")  # formats Pillow reads but a folder's listing skips: left out silently
    write_image(folder / "cat" / "scan.JP2")
    with pytest.warns(KnnmixWarning) as caught:
        b = load_dataset("imagefolder", folder, False, image_size=16)
    assert len(b.train) == 9 and {"cat/h.jfif", "dog/i.jpe"} <= {os.path.relpath(p, folder) for p in b.train.paths()}
    assert [str(w.message) for w in caught] == [
        f"imagefolder: 1 images under {folder} are in formats knnmix cannot read here (.heic) and are left out: "
        "emu/IMG_0001.HEIC; convert them to JPEG or PNG",
        f"imagefolder: 2 images under {folder} are in formats knnmix does not take from a folder (.jp2/.tga) and are "
        "left out: cat/scan.JP2, emu/render.tga; convert them to JPEG or PNG",
    ]


def test_folder_mode_warns_of_loose_images_and_of_splits_read_as_classes(folder: Path, tmp_path: Path) -> None:
    write_image(folder / "stray.png")  # in no class folder: left out, which was silent
    with pytest.warns(KnnmixWarning) as caught:
        b = load_dataset("imagefolder", folder, False, image_size=16)
    assert len(b.train) == 7 and [str(w.message) for w in caught] == [
        f"imagefolder: 1 images directly under {folder} are in no class folder and are left out: stray.png"
    ]
    # a data set in split folders, given by its top folder: 2 classes 'test' and 'train', which was silent
    for key in ["train/cat/a.png", "train/cat/b.png", "train/dog/c.png", "test/cat/d.png", "test/dog/e.png"]:
        write_image(tmp_path / "kaggle" / key)
    with pytest.raises(DataError) as split:
        load_dataset("imagefolder", tmp_path / "kaggle", False, image_size=16)
    assert str(split.value) == (
        f"imagefolder: {tmp_path / 'kaggle'} holds splits, not classes: the folders 'test', 'train' hold only "
        f"sub-folders (cat, dog); set data.root to the training split ({tmp_path / 'kaggle' / 'train'}) and "
        "data.test_root to the test split")
    # ... also when the splits' classes differ (a warning needed the same sub-folders: 2 classes, silently), or a
    # test split sits beside the classes (a class 'test', silently)
    write_image(tmp_path / "kaggle" / "train" / "emu" / "f.png")
    with pytest.raises(DataError, match="the folders 'test', 'train' hold only sub-folders .cat, dog, emu."):
        load_dataset("imagefolder", tmp_path / "kaggle", False, image_size=16)
    for key in ["cat/a.png", "dog/b.png", "Test/cat/c.png", "Test/dog/d.png"]:
        write_image(tmp_path / "beside" / key)
    with pytest.raises(DataError, match="holds splits, not classes: the folders 'Test' hold only sub-folders"):
        load_dataset("imagefolder", tmp_path / "beside", False, image_size=16)
    # class folders not named like splits that all hold the same sub-folders: maybe splits, a warning
    for key in ["fold1/cat/a.png", "fold1/dog/b.png", "fold2/cat/c.png", "fold2/dog/d.png"]:
        write_image(tmp_path / "folds" / key)
    with pytest.warns(KnnmixWarning) as caught:
        b = load_dataset("imagefolder", tmp_path / "folds", False, image_size=16)
    assert b.classes == ["fold1", "fold2"] and [str(w.message) for w in caught] == [
        f"imagefolder: the class folders 'fold1', 'fold2' under {tmp_path / 'folds'} all hold the same sub-folders "
        f"(cat, dog) and no images of their own: if they are splits and those are the classes, set data.root to one "
        f"split (e.g. {tmp_path / 'folds' / 'fold1'}) and data.test_root to another"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nested folders of a class's own (fixture: cat/nested/deep) are no split
        load_dataset("imagefolder", tmp_path / "kaggle" / "train", False, image_size=16,
                     test_root=str(tmp_path / "kaggle" / "test"))
        (folder / "stray.png").unlink()
        load_dataset("imagefolder", folder, False, image_size=16)


def test_image_paths_that_are_not_utf8_are_an_error(folder: Path) -> None:
    """Latin-1 names (e.g. from an old zip archive) trained, then crashed writing label_issues.csv (a traceback)."""
    write_image(Path(os.fsdecode(bytes(folder) + b"/cat/caf\xe9.png")))
    os.rename(bytes(folder / "emu"), bytes(folder) + b"/\xe9mu")
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", folder, False, image_size=16)
    assert one_line_error(e) == (
        f"imagefolder: 3 image paths are not valid UTF-8 (knnmix writes paths and class names to UTF-8 files); rename "
        f"them, e.g. with convmv: {folder}/cat/caf\\xe9.png, {folder}/\\xe9mu/f.png, {folder}/\\xe9mu/g.bmp"
    )


@pytest.mark.timeout(60)  # the link back to the root used to make the folder walk (practically) endless
def test_folder_links_are_followed_once_and_loops_are_an_error(folder: Path, tmp_path: Path) -> None:
    write_image(tmp_path / "elsewhere" / "h.png")
    (folder / "fox").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # a linked class folder
    b = load_dataset("imagefolder", folder, False, image_size=16)
    assert b.classes == ["cat", "dog", "emu", "fox"] and b.train_labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    # a link to its own folder repeated the class's images at every level of the loop (41 times)
    (folder / "cat" / "self").symlink_to(".", target_is_directory=True)
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", folder, False, image_size=16)
    assert re.search(r"remove the symbolic links through which 1 folders under .*/pets are reached a second time "
                     r"\(a link loop, or two links to one folder\): cat/self \(= cat\)$", one_line_error(e))
    (folder / "cat" / "self").unlink()
    (folder / "dog" / "alias").symlink_to(folder / "emu", target_is_directory=True)  # emu's images labelled dog too
    with pytest.raises(DataError, match=r"1 folders .*: emu \(= dog/alias\)$"):
        load_dataset("imagefolder", folder, False, image_size=16)
    (folder / "dog" / "alias").unlink()
    (folder / "cat" / "up").symlink_to("..", target_is_directory=True)  # named dog and emu (first reached through
    with pytest.raises(DataError, match=r"1 folders .*: cat/up \(= \.\)$"):  # it) as the folders to remove
        load_dataset("imagefolder", folder, False, image_size=16)


# -------------------------------------------------------------------------------------------------- bad images


def corrupt_files(root: Path) -> dict[str, Path]:
    """A garbage file, a truncated PNG and a truncated JPEG, each in a class folder."""
    garbage = root / "cat" / "garbage.png"
    garbage.write_bytes(b"this is not an image at all")
    png = write_image(root / "dog" / "trunc.png", size=(64, 64))
    png.write_bytes(png.read_bytes()[:200])
    jpg = write_image(root / "emu" / "trunc.jpg", size=(64, 64))
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    return {"garbage": garbage, "png": png, "jpg": jpg}


@pytest.mark.parametrize("image_size", [16, 96])  # preload (decode) and file (scan) paths
def test_bad_images_fail_listing_them(folder: Path, image_size: int) -> None:
    bad = corrupt_files(folder)
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", folder, False, image_size=image_size)
    msg = one_line_error(e)
    assert "3 unreadable or corrupt train images" in msg and "data.on_bad_image=skip" in msg
    for path in bad.values():
        assert str(path) in msg


@pytest.mark.parametrize("image_size", [16, 96])
def test_bad_images_skipped_with_one_warning(
    folder: Path, tmp_path: Path, image_size: int, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = load_dataset("imagefolder", folder, False, image_size=image_size)
    bad = corrupt_files(folder)
    test = tmp_path / "test"
    write_image(test / "dog" / "ok.png")
    (test / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    capsys.readouterr()
    b = load_dataset("imagefolder", folder, False, image_size=image_size, on_bad_image="skip", test_root=str(test))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("knnmix: warning: imagefolder: skipped 4 unreadable")
    assert "(3 train, 1 test)" in err
    for path in [*bad.values(), test / "dog" / "broken.jpg"]:
        assert str(path) in err
    # Exactly the good images remain, in the same order and with their labels: indices stay aligned.
    assert labels_by_path(b.train, b.train_labels) == labels_by_path(clean.train, clean.train_labels)
    assert b.test_labels is not None and b.test_labels.tolist() == [1]
    assert torch.equal(
        b.train.load(torch.arange(len(b.train)), augment=False),
        clean.train.load(torch.arange(len(clean.train)), augment=False),
    )


def test_skipping_every_image_of_a_class_is_an_error(folder: Path) -> None:
    for f in (folder / "dog").iterdir():
        if f.is_file():
            f.write_bytes(b"junk")
    with pytest.raises(DataError, match=r"1 of 3 classes have no training images left after skipping .*: 'dog'"):
        load_dataset("imagefolder", folder, False, image_size=16, on_bad_image="skip")


def test_image_broken_after_the_scan_fails_naming_its_path(folder: Path) -> None:
    b = load_dataset("imagefolder", folder, False, image_size=96)
    assert isinstance(b.train, FileSource)
    victim = Path(b.train.path(3))
    victim.write_bytes(b"gone bad")
    b.train.load(torch.tensor([0, 1]), augment=True)  # other rows still load
    with pytest.raises(DataError, match=rf"cannot decode image {re.escape(str(victim))}: cannot identify image file"):
        b.train.load(torch.tensor([0, 3]), augment=False)


def test_file_source_loads_in_dataloader_workers(folder: Path) -> None:
    b = load_dataset("imagefolder", folder, False, image_size=64)
    ds = LabelledDataset(b.train, np.arange(len(b.train)), b.train_labels, b.classes)
    batches = [[0, 1, 2], [3, 4, 5, 6]]
    loader = DataLoader(ds, batch_sampler=batches, collate_fn=collate_batch, num_workers=1)  # type: ignore[arg-type]
    xs, ys = zip(*[(x, y) for x, y, _ in loader])
    assert torch.equal(torch.cat(xs), b.train.load(torch.arange(7), augment=False))  # the source pickles
    assert torch.cat(ys).tolist() == b.train_labels.tolist()


# ------------------------------------------------------------------------------------------------- transforms


def test_preloaded_and_file_decoding_paths_agree(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pre = load_dataset("imagefolder", folder, False, image_size=24)
    monkeypatch.setattr(files_module, "PRELOAD_MAX_BYTES", 0)
    disk = load_dataset("imagefolder", folder, False, image_size=24)
    assert isinstance(pre.train, PreloadedSource) and isinstance(pre.train, TensorSource)
    assert isinstance(disk.train, FileSource)
    assert pre.train.augment == ImageTransform(24).augment  # crop_padding = 24 // 8 = 3, flip
    rows = torch.tensor([6, 0, 2, 3, 2])
    assert torch.equal(pre.train.load(rows, augment=False), disk.train.load(rows, augment=False))
    torch.manual_seed(5)
    a = pre.train.load(rows, augment=True)
    torch.manual_seed(5)
    b = disk.train.load(rows, augment=True)
    assert torch.equal(a, b)  # same augmentation, same draws from torch's global generator


def test_large_image_transform_matches_torchvision_and_is_random_only_in_training(tmp_path: Path) -> None:
    s = 64
    for i in range(4):
        gradient_image(tmp_path / "root" / f"c{i % 2}" / f"{i}.png", (100 + 10 * i, 80))
    b = load_dataset("imagefolder", tmp_path / "root", False, image_size=s)
    src = b.train
    assert isinstance(src, FileSource)
    rows = torch.arange(4)
    ev1 = src.load(rows, augment=False)
    assert ev1.shape == (4, 3, s, s)
    assert torch.equal(ev1, src.load(rows, augment=False))  # eval is deterministic
    resize = round(s * 256 / 224)  # 73
    reference = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(s)])
    for i in range(4):
        ours = src.load_uint8(torch.tensor([i]), augment=False)[0]
        assert torch.equal(ours, reference(as_tensor(src.path(i))))  # torchvision's transform of uint8 tensors
        pil = reference(Image.open(src.path(i)).convert("RGB"))  # ... and of PIL images, to one grey level
        assert (ours.int() - as_tensor(pil).int()).abs().max() <= 1

    def train_batch(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return src.load(rows, augment=True)

    assert torch.equal(train_batch(1), train_batch(1))
    assert not torch.equal(train_batch(1), train_batch(2))
    assert train_batch(3).shape == (4, 3, s, s)
    # a training view is a crop (possibly flipped) of the resized image, not the centre crop every time
    assert any(not torch.equal(train_batch(seed), ev1) for seed in range(3))


def test_every_pixel_format_becomes_rgb(tmp_path: Path) -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray((grey.astype(np.uint16) << 8) | 0xFF).save(tmp_path / "grey16.png")  # mode I;16
    Image.fromarray(np.dstack([grey, grey, grey, np.zeros_like(grey)])).save(tmp_path / "rgba.png")
    t = ImageTransform(8)
    for name in ("grey.png", "grey16.png", "rgba.png"):
        x = t.decode(str(tmp_path / name))
        assert x.shape == (3, 8, 8) and torch.equal(x[0], torch.from_numpy(grey)) and torch.equal(x[0], x[2]), name


def test_an_image_past_pillows_decompression_bomb_limit_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # refused above twice this: a 50x50 image stands in
    Image.new("L", (50, 50)).save(tmp_path / "huge.png")
    with pytest.raises(DataError) as e:
        ImageTransform(8).decode(str(tmp_path / "huge.png"))
    assert one_line_error(e).endswith("huge.png: Image size (2500 pixels) exceeds limit of 2000 pixels: too large to "
                                      "decode safely (Pillow's decompression-bomb limit); downscale it"), str(e.value)


def test_32_bit_integer_images_keep_16_bits_and_float_or_8_bit_valued_ones_are_refused(tmp_path: Path) -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    sixteen = (grey.astype(np.int32) << 8) | 0xFF
    Image.fromarray(sixteen).save(tmp_path / "grey32.tif")  # mode I with 16-bit values
    Image.fromarray(sixteen.astype(np.uint16)).save(tmp_path / "grey16.pgm")  # 16-bit PGM: opens as mode I
    Image.fromarray(sixteen << 8).save(tmp_path / "wide.tif")  # mode I beyond 16 bits
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "float.tif")  # mode F
    Image.fromarray(grey.astype(np.int32)).save(tmp_path / "eight.tif")  # mode I with 8-bit values: black as 16 bits
    Image.fromarray(np.zeros((8, 8), np.int32)).save(tmp_path / "black.tif")  # black as 8 or 16 bits: kept
    assert torch.equal(ImageTransform(8).decode(str(tmp_path / "black.tif")), torch.zeros(3, 8, 8, dtype=torch.uint8))
    t = ImageTransform(8)
    for name in ("grey32.tif", "grey16.pgm"):
        assert Image.open(tmp_path / name).mode == "I", name
        x = t.decode(str(tmp_path / name))
        assert torch.equal(x[0], torch.from_numpy(grey)) and torch.equal(x[0], x[2]), name
    for name, pattern in [("wide.tif", r"mode I values outside 0\.\.65535"), ("float.tif", r"mode F .* not supported"),
                          ("eight.tif", r"32-bit TIFF with values in 0\.\.255 only: read as 16 bits it would be black")]:
        with pytest.raises(DataError) as e:
            t.decode(str(tmp_path / name))
        assert re.search(rf"cannot decode image .*{name}: .*{pattern}", one_line_error(e)), str(e.value)


def test_small_image_transform_resizes_then_pads_and_crops(tmp_path: Path) -> None:
    t = ImageTransform(16)
    path = str(gradient_image(tmp_path / "g.png", (40, 20)))
    img = t.decode(path)
    assert torch.equal(img, transforms.Compose([transforms.Resize(16), transforms.CenterCrop(16)])(as_tensor(path)))
    batch = img.expand(8, -1, -1, -1)
    torch.manual_seed(0)
    a = t.augment_batch(batch)
    torch.manual_seed(1)
    b = t.augment_batch(batch)
    assert a.shape == (8, 3, 16, 16) and not torch.equal(a, b)
    assert (a == 0).any()  # zero padding shows up in some crops


# ---------------------------------------------------------------------------------------------------- clothing1m


def build_clothing(root: Path) -> dict[str, dict[str, int]]:
    """A miniature Clothing1M: 28 noisy-train images (2 per class), 3 clean val, 2 clean test images."""
    keys = {f"images/{i % 3}/{i:02d}/{i:04d}.jpg": i for i in range(33)}
    for key in keys:
        write_image(root / key, size=(10, 8))
    names = list(keys)
    train, val, test = names[:28], names[28:31], names[31:]
    noisy = {k: keys[k] % 14 for k in train} | {k: 13 for k in val}  # val images have noisy labels too
    clean = {k: (keys[k] * 5) % 14 for k in val + test} | {train[0]: 9}
    ann = root / "annotations"
    ann.mkdir(parents=True)
    (ann / "noisy_label_kv.txt").write_text("".join(f"{k} {v}\n" for k, v in noisy.items()))
    (ann / "clean_label_kv.txt").write_text("".join(f"{k} {v}\n" for k, v in clean.items()))
    (ann / "noisy_train_key_list.txt").write_text("\n".join(train) + "\n")
    (ann / "clean_val_key_list.txt").write_text("\n".join(val) + "\n")
    (ann / "clean_test_key_list.txt").write_text("\n".join(test) + "\n")
    return {"noisy": noisy, "clean": clean, "train": dict.fromkeys(train, 0), "val": dict.fromkeys(val, 0),
            "test": dict.fromkeys(test, 0)}  # fmt: skip


def test_clothing1m_splits_and_labels(tmp_path: Path) -> None:
    info = build_clothing(tmp_path)
    b = load_dataset("clothing1m", tmp_path, False, image_size=16)
    assert b.classes == CLOTHING_CLASSES and len(b.classes) == 14 and b.classes[0] == "T-Shirt"
    assert (b.labels_are_clean, b.default_model, b.family) == (False, "resnet50", "generic")
    assert (len(b.train), len(b.val or []), len(b.test or [])) == (28, 3, 2)
    assert labels_by_path(b.train, b.train_labels) == {k: info["noisy"][k] for k in info["train"]}
    assert b.val_labels is not None and b.test_labels is not None
    assert labels_by_path(b.val, b.val_labels) == {k: info["clean"][k] for k in info["val"]}  # clean, not noisy 13
    assert labels_by_path(b.test, b.test_labels) == {k: info["clean"][k] for k in info["test"]}
    assert b.train.load(torch.arange(3), augment=True).shape == (3, 3, 16, 16)
    from knnmix.engine.report import banner
    from knnmix.engine.train import build_run

    cfg = C.from_dict({"data": {"name": "clothing1m", "root": str(tmp_path), "val_fraction": 0.0, "image_size": 16},
                       "model": {"name": "small_cnn"}, "out": str(tmp_path / "run")})
    assert "(28 train / 3 val of its own / 2 test, 16x16 px)" in banner(build_run(cfg))  # was "3 noisy val": clean
    # labels that are noisy already: their noise is not "measured 0.00%"; what was added to them is said
    assert ", noise none (labels whose own noise is unknown), " in banner(build_run(cfg))  # (auto: none here)
    added = banner(build_run(C.replace(cfg, **{"noise.spec": "symmetric:0.5"})))
    assert ", noise symmetric:0.5 (50.00% added to labels whose own noise is unknown), " in added


def test_clothing1m_errors(tmp_path: Path) -> None:
    build_clothing(tmp_path)
    ann = tmp_path / "annotations"
    val_list = (ann / "clean_val_key_list.txt").read_text()
    (ann / "clean_val_key_list.txt").write_text(val_list + "images/9/99/nope.jpg\nimages/9/99/nada.jpg\n")
    with pytest.raises(DataError) as e:
        load_dataset("clothing1m", tmp_path, False, image_size=16)
    assert re.search(r"2 keys of .*clean_val_key_list.txt are missing from .*clean_label_kv.txt: "
                     r"line 4: images/9/99/nope.jpg, line 5: images/9/99/nada.jpg", one_line_error(e))  # fmt: skip
    (ann / "clean_val_key_list.txt").write_text(val_list)
    os.remove(tmp_path / "images/0/00/0000.jpg")
    with pytest.raises(DataError, match=r"1 images named in .*noisy_train_key_list.txt do not exist .*0000.jpg"):
        load_dataset("clothing1m", tmp_path, False, image_size=16)
    (ann / "noisy_label_kv.txt").write_text("images/0/00/0000.jpg 14\nbroken line with tokens\n")
    with pytest.raises(DataError, match=r"noisy_label_kv.txt has 1 malformed lines.*line 2"):
        load_dataset("clothing1m", tmp_path, False, image_size=16)
    (ann / "noisy_label_kv.txt").write_text("images/0/00/0000.jpg 14\n")
    with pytest.raises(DataError, match=r"noisy_label_kv.txt has 1 labels outside 0..13: line 1: '14'"):
        load_dataset("clothing1m", tmp_path, False, image_size=16)
    os.remove(ann / "clean_test_key_list.txt")
    with pytest.raises(DataError, match=r"expected file .*annotations/clean_test_key_list.txt is missing"):
        load_dataset("clothing1m", tmp_path, False, image_size=16)


def test_clothing1m_keys_listed_twice_are_an_error(tmp_path: Path) -> None:
    info = build_clothing(tmp_path)
    ann = tmp_path / "annotations"
    first = next(iter(info["train"]))
    train_list = (ann / "noisy_train_key_list.txt").read_text()
    (ann / "noisy_train_key_list.txt").write_text(train_list + f"{first}\n")
    with pytest.raises(DataError) as e:
        load_dataset("clothing1m", tmp_path, False, image_size=16)
    assert re.search(rf"noisy_train_key_list.txt lists 1 keys more than once: line 29: {first} \(also line 1\)$",
                     one_line_error(e))  # fmt: skip
    (ann / "noisy_train_key_list.txt").write_text(train_list)
    (ann / "noisy_label_kv.txt").write_text((ann / "noisy_label_kv.txt").read_text() + f"{first} 5\n")
    with pytest.raises(DataError) as e:  # the last label would have won
        load_dataset("clothing1m", tmp_path, False, image_size=16)
    assert re.search(rf"noisy_label_kv.txt lists 1 keys more than once: line 32: {first} \(also line 1\)$",
                     one_line_error(e))  # fmt: skip


@pytest.mark.parametrize("split", ["test", "val"])
def test_clothing1m_test_or_val_keys_that_are_training_keys_are_an_error(tmp_path: Path, split: str) -> None:
    """A validation key that is also a training key was accepted: runs would select their epoch on seen images."""
    info = build_clothing(tmp_path)
    train = list(info["train"])
    for name, lines in [("clean_label_kv.txt", f"{train[3]} 1\n{train[5]} 2\n"),
                        (f"clean_{split}_key_list.txt", f"{train[3]}\n{train[5]}\n")]:
        with open(tmp_path / "annotations" / name, "a") as f:
            f.write(lines)
    with pytest.raises(DataError) as e:
        load_dataset("clothing1m", tmp_path, False, image_size=16)
    assert re.search(rf"2 keys of .*clean_{split}_key_list.txt are also training images: {train[3]}, {train[5]}$",
                     one_line_error(e))  # fmt: skip


# ----------------------------------------------------------------------------------------------------- webvision

SYNSETS = ["n01440764", "n01443537", "n01484850", "n01491361"]


def build_webvision(root: Path, *, synsets: bool = True) -> None:
    """A miniature WebVision: 4 classes, 2 Google images each (plus 1 extra in class 3), 1 val image each."""
    info = root / "info"
    info.mkdir(parents=True)
    train = []
    for c in range(4):
        for j in range(3 if c == 3 else 2):
            key = f"google/q{c + 1:04d}/{j:08d}.jpg"
            write_image(root / key, size=(12, 9))
            train.append(f"{key} {c}")
    (info / "train_filelist_google.txt").write_text("\n".join(train) + "\n")
    val = []
    for c in range(4):
        name = f"val{c + 1:06d}.JPEG"
        write_image(root / "val_images_256" / name)
        val.append(f"{name} {3 - c}")
    (info / "val_filelist.txt").write_text("\n".join(val) + "\n")
    if synsets:
        (info / "synsets.txt").write_text("".join(f"{s} some description, {i}\n" for i, s in enumerate(SYNSETS)))


def test_webvision_all_classes_and_val_as_test(tmp_path: Path) -> None:
    build_webvision(tmp_path)
    b = load_dataset("webvision", tmp_path, False, image_size=16)
    assert b.classes == SYNSETS
    assert (b.labels_are_clean, b.default_model) == (False, "resnet50")
    assert len(b.train) == 9 and b.train_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert path_of(b.train, 4) == str(tmp_path / "google/q0003/00000000.jpg")
    assert b.test_labels is not None and labels_by_path(b.test, b.test_labels) == {
        f"val_images_256/val{c + 1:06d}.JPEG": 3 - c for c in range(4)
    }
    assert b.extra_tests == {}


def test_webvision_first_classes_and_imagenet_extra_test(tmp_path: Path) -> None:
    build_webvision(tmp_path)
    imagenet = tmp_path / "imagenet_val"
    for s in SYNSETS[::-1]:  # folder order must not matter: classes follow synsets.txt
        write_image(imagenet / s / f"ILSVRC2012_val_{s}.JPEG")
    write_image(imagenet / SYNSETS[1] / "second.JPEG")
    b = load_dataset("webvision", tmp_path, False, image_size=16, first_classes=2)
    assert b.classes == SYNSETS[:2]
    assert b.train_labels.tolist() == [0, 0, 1, 1]
    assert b.test_labels is not None and sorted(b.test_labels.tolist()) == [0, 1]  # val images of classes 3 - c < 2
    source, labels = b.extra_tests["imagenet"]
    assert labels_by_path(source, labels) == {
        f"{SYNSETS[0]}/ILSVRC2012_val_{SYNSETS[0]}.JPEG": 0,
        f"{SYNSETS[1]}/ILSVRC2012_val_{SYNSETS[1]}.JPEG": 1,
        f"{SYNSETS[1]}/second.JPEG": 1,
    }
    # the same through an explicit test_root, and an ImageNet folder lacking some classes is an error
    other = tmp_path / "elsewhere"
    write_image(other / SYNSETS[0] / "a.JPEG")
    with pytest.raises(DataError) as e:
        load_dataset("webvision", tmp_path, False, image_size=16, first_classes=3, test_root=str(other))
    assert re.search(r"has no images for 2 of the 3 classes .*: n01443537, n01484850", one_line_error(e))
    write_image(other / SYNSETS[1] / "b.JPEG")
    b2 = load_dataset("webvision", tmp_path, False, image_size=16, first_classes=2, test_root=str(other))
    assert b2.extra_tests["imagenet"][1].tolist() == [0, 1]


def test_webvision_errors(tmp_path: Path) -> None:
    build_webvision(tmp_path, synsets=False)
    b = load_dataset("webvision", tmp_path, False, image_size=16)
    assert b.classes == ["0", "1", "2", "3"]
    (tmp_path / "imagenet_val" / "n01440764").mkdir(parents=True)
    with pytest.raises(DataError, match=r"needs .*info/synsets.txt to map classes"):
        load_dataset("webvision", tmp_path, False, image_size=16)
    with pytest.raises(DataError, match=r"first_classes must be an integer in 2..4, got 5"):
        load_dataset("webvision", tmp_path, False, image_size=16, first_classes=5)
    os.remove(tmp_path / "google/q0002/00000001.jpg")
    with pytest.raises(DataError, match=r"1 images named in .*train_filelist_google.txt do not exist .*line 4: "):
        load_dataset("webvision", tmp_path, False, image_size=16)
    os.remove(tmp_path / "info" / "val_filelist.txt")
    with pytest.raises(DataError, match=r"expected file .*info/val_filelist.txt is missing"):
        load_dataset("webvision", tmp_path, False, image_size=16)


def test_webvision_images_listed_twice_are_an_error(tmp_path: Path) -> None:
    """A concatenated or hand-edited file list trained on the repeated images twice, possibly under two labels."""
    build_webvision(tmp_path)
    with open(tmp_path / "info" / "train_filelist_google.txt", "a") as f:
        f.write("google/q0002/00000000.jpg 3\ngoogle/./q0001/00000001.jpg 0\n")
    with pytest.raises(DataError) as e:
        load_dataset("webvision", tmp_path, False, image_size=16)
    assert re.search(r"train_filelist_google.txt lists 2 images more than once: line 10: google/q0002/00000000.jpg "
                     r"\(also line 3\), line 11: google/./q0001/00000001.jpg \(also line 2\)$", one_line_error(e))


def test_bundles_satisfy_the_contract(tmp_path: Path) -> None:
    build_webvision(tmp_path)
    b = load_dataset("webvision", tmp_path, False, image_size=16)
    assert isinstance(b, DatasetBundle) and b.train_labels.dtype == np.int64
    loaded = b.train.load(torch.arange(len(b.train)), augment=True)
    assert loaded.dtype == torch.float32 and loaded.shape == (9, 3, 16, 16)


def test_instance_noise_on_images_read_from_files_says_when_they_are_held_in_memory(folder: Path) -> None:
    """Said "'imagefolder' is loaded from files", though it runs at 32 px (held in memory): name the condition."""
    cfg = C.from_dict({"data": {"name": "imagefolder", "root": str(folder), "image_size": 64, "val_fraction": 0},
                       "noise": {"spec": "instance:0.3"}})
    with pytest.raises(DataError, match=r"instance noise needs the training images in memory; 'imagefolder' reads "
                                        r"them from files at 64 px \(data.image_size; images below 64 px and 2 GiB in"):
        build_splits(cfg)
    # the size chosen for data.image_size=null is named, not "None"
    for name in ["cat/a", "cat/b", "dog/c", "dog/d"]:
        write_image(folder.parent / "big" / f"{name}.png", size=(300, 300))
    with pytest.raises(DataError, match=r"'imagefolder' reads them from files at 224 px \(data.image_size; "):
        build_splits(C.replace(cfg, **{"data.image_size": None, "data.root": str(folder.parent / "big")}))
