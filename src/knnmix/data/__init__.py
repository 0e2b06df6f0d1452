"""Data sets: the registry of loaders (``DATASETS``) and the data contract, both in :mod:`knnmix.data.base`.

Importing this package registers every built-in loader (``digits``, ``fashion-mnist``, ``cifar10``, ``cifar100``,
``imagefolder``, ``clothing1m``, ``webvision``). A loader is a function
``loader(root: str | None, download: bool, **options) -> DatasetBundle`` registered with
``@DATASETS.register("name")``; :func:`load_dataset` looks it up and calls it. The keyword options a loader declares
(e.g. ``image_size``) come from the config's ``data`` section; a non-default value for an option the dataset does
not use is an error, never silently ignored.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

# Importing the loader modules registers them.
from knnmix.data import cifar, clothing1m, digits, fashion_mnist, imagefolder, webvision  # noqa: F401
from knnmix.data.base import DATASETS, Augment, DatasetBundle, DatasetLoader, ImageSource, LabelledDataset
from knnmix.data.base import TensorSource, collate_batch
from knnmix.errors import DataError


def load_dataset(name: str, root: str | os.PathLike[str] | None = None, download: bool = False, *,
                 defaults: dict[str, Any] | None = None, **options: Any) -> DatasetBundle:
    """Load the registered dataset ``name`` from ``root`` (``None`` or ``""``: its default, see ``docs/data.md``),
    letting loaders of public data sets fetch missing files first if ``download``.

    An unknown ``name`` is the registry's one-line :class:`~knnmix.errors.KnnmixError`; missing or corrupt files are
    a :class:`~knnmix.errors.DataError`. ``options`` go to the loader when its signature declares them; an option it
    does not declare must equal its value in ``defaults`` (the config's default), else a ``DataError`` names it.
    """
    loader = DATASETS.get(name)
    accepted = dataset_options(name)
    unused = sorted(k for k, v in options.items() if k not in accepted and (defaults is None or v != defaults.get(k)))
    if unused:
        raise DataError(f"data.{unused[0]}={options[unused[0]]!r} is not used by dataset {name!r} "
                        f"(its options: {', '.join(sorted(accepted)) or 'none'})")
    kwargs = {k: v for k, v in options.items() if k in accepted}
    args = (os.fspath(root) if root else None, bool(download))
    try:
        inspect.signature(loader).bind(*args, **kwargs)
    except TypeError as exc:
        raise DataError(f"dataset {name!r}: its loader must take (root, download, *, options...): {exc}") from None
    bundle = loader(*args, **kwargs)
    if not isinstance(bundle, DatasetBundle):
        raise DataError(f"dataset {name!r}: its loader returned {type(bundle).__name__}, not a DatasetBundle "
                        "(knnmix.data.DatasetBundle: image sources and labels)")
    return bundle


def dataset_options(name: str) -> set[str]:
    """The keyword options (besides ``root`` and ``download``) that dataset ``name``'s loader accepts."""
    params = inspect.signature(DATASETS.get(name)).parameters
    return {p.name for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


__all__ = [
    "DATASETS", "Augment", "DatasetBundle", "DatasetLoader", "ImageSource", "LabelledDataset", "TensorSource",
    "collate_batch", "dataset_options", "load_dataset",
]  # fmt: skip
