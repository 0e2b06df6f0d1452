"""What a training method is: a few hooks around one shared training loop.

The engine owns the loop (batches, forward/backward, optimiser, evaluation, checkpoints); a method decides, per
epoch, what to prepare (an embedding pass, a mixture fit, a neighbour search, a target correction), which samples
each training example is built from, and the loss. Methods never touch datasets' labels: they read and write the
index-aligned :class:`~knnmix.methods.state.SampleState`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from knnmix.math import soft_cross_entropy
from knnmix.methods.dist import Dist
from knnmix.methods.state import SampleState
from knnmix.registry import Registry

if TYPE_CHECKING:
    from knnmix.config import MethodConfig
    from knnmix.methods.phases import Bank
    from knnmix.math import NeighbourSearch


class TrainContext(Protocol):
    """The engine services a method may use (:class:`knnmix.engine.train.Run` provides them)."""

    state: SampleState
    dist: Dist

    @property
    def seed(self) -> int: ...

    @property
    def true_labels(self) -> Tensor | None:
        """``(N,)`` true labels of the training samples where known (synthetic noise), for diagnostics only."""

    @property
    def truly_noisy(self) -> Tensor | None:
        """``(N,)`` bool: the sample's given label differs from its true label (where known), diagnostics only."""

    @property
    def subsampled(self) -> bool:
        """Each epoch trains a fresh draw of the training set (``data.epoch_samples``), so a bank embedded for one
        epoch does not cover the next epoch's samples."""

    def embed_train_set(self) -> Bank:
        """A no-augmentation pass over the training set, gathered across ranks."""

    def neighbour_search(self) -> NeighbourSearch:
        """A fresh neighbour-search backend as configured."""


class Method:
    """Base class: cross-entropy on the current soft targets (the given labels unless corrected), no preparation."""

    phase = "ce"  # the current epoch's phase, logged with it
    uses_soft_targets = False  # reports label-correction accuracy of argmax t
    uses_clean_prob = False  # reports the clean/noisy split of its clean probabilities
    #: The ``method.*`` fields (besides ``name``) this method's hooks read (:meth:`unread`); ``None``: every field
    #: may be read (knnmix's, or a plug-in that does not say).
    reads: ClassVar[frozenset[str] | None] = None

    def __init__(self, cfg: MethodConfig, num_classes: int) -> None:
        self.cfg = cfg
        self.num_classes = num_classes

    def prepare_epoch(self, epoch: int, ctx: TrainContext) -> None:
        """Run the epoch's preparation phases and set :attr:`phase`."""

    def batch_members(self, index: Tensor, ctx: TrainContext) -> Tensor:
        """``(B, M)`` dataset indices whose (independently augmented) images build each example; column 0 = itself."""
        return index[:, None]

    def loss(self, model: nn.Module, images: Tensor, members: Tensor, ctx: TrainContext) -> Tensor:
        """Loss of one batch: ``images`` ``(B, M, C, H, W)`` loaded for ``members`` ``(B, M)``."""
        logits, _ = model(images[:, 0])
        return soft_cross_entropy(logits, targets_of(ctx, members[:, 0], images.device))

    @classmethod
    def unread(cls, cfg: MethodConfig) -> dict[str, str]:
        """``{field: why}``: the ``method.*`` fields (besides ``name``) this method does not read under ``cfg``, so
        that a knob it ignores is named as such (a sweep searching it is refused, ``--set`` warns). By default those
        outside the :attr:`reads` its own class declares (a subclass that declares none may read every field)."""
        reads = vars(cls).get("reads")
        if reads is None:
            return {}
        its = ", ".join(f"method.{key}" for key in sorted(reads)) or "no method.* key"
        return {f.name: f"method {cfg.name} does not read it (it reads {its})" for f in dataclasses.fields(cfg)
                if f.name != "name" and f.name not in reads}

    def schedule_note(self, epochs: int) -> str | None:
        """A warning when a run of ``epochs`` epochs never reaches a phase this method's config asks for."""
        return None

    def diagnostics(self, ctx: TrainContext) -> dict[str, Any]:
        """Figures of the epoch just trained (the same on every rank), merged into the epoch's metrics."""
        return {}


METHODS: Registry[type[Method]] = Registry("method")


def targets_of(ctx: TrainContext, members: Tensor, device: torch.device) -> Tensor:
    """Current soft targets of the members ``(B, M, C)`` on ``device``."""
    return ctx.state.targets[members.cpu()].to(device, non_blocking=True)
