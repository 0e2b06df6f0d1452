"""Per-sample state, index-aligned with the training set and kept outside the dataset.

Every tensor here has the training set's size N on its first axis (``loss_history`` on its second; ``features``
is empty until a method keeps them): row ``i`` belongs to the sample whose dataset index is ``i``. Under data
parallelism every rank holds the same full copy: each rank computes its shard's rows and the rows are gathered
(:mod:`knnmix.methods.dist`), so the state that any rank checkpoints is the whole method's state.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from knnmix.math import one_hot_targets


@dataclass
class SampleState:
    targets: Tensor  # (N, C) float32 soft targets t, one-hot given labels at the start
    clean_prob: Tensor  # (N,) float32 probability that the sample's current target is clean (1 before any fit)
    loss_history: Tensor  # (H, N) float32 normalised losses of the last H fitted epochs, NaN = not evaluated
    neighbours: Tensor  # (N, K) int64 dataset indices of each sample's neighbours, -1 = not searched yet
    features: Tensor  # (N, D) float32 features of the last embedding, which neighbours=batch searches; (0, 0): none

    @classmethod
    def initial(cls, given_labels: Tensor, num_classes: int, k: int) -> SampleState:
        n = given_labels.shape[0]
        return cls(
            targets=one_hot_targets(given_labels, num_classes),
            clean_prob=torch.ones(n),
            loss_history=torch.empty(0, n),
            neighbours=torch.full((n, k), -1, dtype=torch.int64),
            features=torch.empty(0, 0),
        )

    @property
    def num_samples(self) -> int:
        return self.targets.shape[0]

    def corrected_labels(self) -> Tensor:
        """``argmax t`` ``(N,)``: the method's current label of each sample."""
        return self.targets.argmax(dim=1)

    def state_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name).clone() for f in fields(self)}

    def load_state_dict(self, sd: dict[str, Tensor]) -> None:
        for f in fields(self):
            if f.name == "features" and f.name not in sd:  # a checkpoint from before it was kept: none
                continue
            cur, new = getattr(self, f.name), sd[f.name]
            if f.name == "features" and new.numel() > 0 and new.shape[0] != self.num_samples:
                raise ValueError(f"checkpointed features have {new.shape[0]} rows, expected {self.num_samples}")
            if f.name not in ("loss_history", "features") and new.shape != cur.shape:
                raise ValueError(f"checkpointed {f.name} has shape {tuple(new.shape)}, expected {tuple(cur.shape)}")
            setattr(self, f.name, new.clone().to(cur.dtype))
