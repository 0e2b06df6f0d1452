"""knnmix: learning with noisy labels by mixing each sample with its clean-weighted nearest neighbours.

``knnmix.find_label_issues(labels, pred_probs)`` ranks labels by how likely they are wrong (see
:mod:`knnmix.audit`); ``knnmix.train(cfg)`` trains one run (see :mod:`knnmix.engine.train`); both raise
``knnmix.KnnmixError`` (one line) for a mistake in what they are given.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["KnnmixError", "find_label_issues", "train"]

#: The public functions, imported on first use so that `import knnmix` stays light: name -> its module.
_LAZY = {"find_label_issues": "knnmix.audit", "train": "knnmix.engine.train", "KnnmixError": "knnmix.errors"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'knnmix' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names too (a notebook's tab completion offers what ``dir`` lists), not the imported helper."""
    return sorted({*globals(), *__all__} - {"Any"})
