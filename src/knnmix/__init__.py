"""knnmix: learning with noisy labels by mixing each sample with its clean-weighted nearest neighbours.

``knnmix.find_label_issues(labels, pred_probs)`` ranks labels by how likely they are wrong (see
:mod:`knnmix.audit`); ``knnmix.train(cfg)`` trains one run (see :mod:`knnmix.engine.train`).
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["find_label_issues", "train"]


def __getattr__(name: str) -> Any:  # lazy, so that `import knnmix` stays light
    if name == "find_label_issues":
        from knnmix.audit import find_label_issues

        return find_label_issues
    if name == "train":
        from knnmix.engine.train import train

        return train
    raise AttributeError(f"module 'knnmix' has no attribute {name!r}")
