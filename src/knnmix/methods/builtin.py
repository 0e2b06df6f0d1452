"""The four built-in methods: ``ce``, ``mixup``, ``selc`` and ``knnmix``, all on the same engine.

Phase names returned by ``prepare_epoch``: ``ce`` (cross-entropy on the targets), ``mixup`` (random mixup),
``knn`` (neighbour mixing with clean-probability weights).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from knnmix.engine import phases
from knnmix.method import is_correction_epoch, mix_batch, mixup, neighbour_weights, soft_cross_entropy
from knnmix.methods.base import METHODS, Method, TrainContext, targets_of


def _forward_soft(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    logits, _ = model(images)
    return soft_cross_entropy(logits, targets)


def _mixup_loss(model: nn.Module, images: Tensor, members: Tensor, ctx: TrainContext, alpha: float) -> Tensor:
    x = images[:, 0]
    t = targets_of(ctx, members[:, 0], x.device)
    lam = float(np.random.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], device=x.device)
    xm, tm = mixup(x, t, lam, perm)
    return _forward_soft(model, xm, tm)


@METHODS.register("ce")
class CrossEntropy(Method):
    """Standard cross-entropy on the given labels."""

    name = "ce"

    def prepare_epoch(self, epoch: int, ctx: TrainContext) -> str:
        return "ce"

    def loss(self, model: nn.Module, images: Tensor, members: Tensor, ctx: TrainContext) -> Tensor:
        return _forward_soft(model, images[:, 0], targets_of(ctx, members[:, 0], images.device))


@METHODS.register("mixup")
class Mixup(Method):
    """mixup (Zhang et al., ICLR 2018) on the given labels: random pairs, ``lam ~ Beta(alpha, alpha)`` per batch."""

    name = "mixup"

    def prepare_epoch(self, epoch: int, ctx: TrainContext) -> str:
        return "mixup"

    def loss(self, model: nn.Module, images: Tensor, members: Tensor, ctx: TrainContext) -> Tensor:
        return _mixup_loss(model, images, members, ctx, self.cfg.mixup_alpha)


@METHODS.register("selc")
class SELC(Method):
    """Self-ensemble label correction (Lu & He, IJCAI 2022): soft-target correction alone.

    Cross-entropy against the soft targets, which stay the one-hot given labels until ``correction_start`` and are
    then corrected every ``correction_period`` epochs (SELC's paper: every epoch).
    """

    name = "selc"
    uses_soft_targets = True

    def prepare_epoch(self, epoch: int, ctx: TrainContext) -> str:
        c = self.cfg
        if is_correction_epoch(epoch, c.correction_start, c.correction_period):
            phases.correct_targets(ctx.state, ctx.embed_train_set(), c.correction_momentum)
        return "ce"

    def loss(self, model: nn.Module, images: Tensor, members: Tensor, ctx: TrainContext) -> Tensor:
        return _forward_soft(model, images[:, 0], targets_of(ctx, members[:, 0], images.device))


@METHODS.register("knnmix")
class KnnMix(Method):
    """Synthetic samples with soft labels from clean-weighted nearest neighbours (Lu & He 2024).

    Epochs ``1..warmup_epochs``: cross-entropy on the given labels; then ``premix`` until ``correction_start`` and
    neighbour mixing from ``correction_start`` on. Every epoch of the mixing phase (and the ``loss_window - 1``
    epochs before it) starts by embedding the training set, correcting the soft targets on correction epochs,
    fitting the clean-probability mixture and, when mixing, searching neighbours.
    """

    name = "knnmix"
    uses_soft_targets = True
    uses_clean_prob = True

    def phase_of(self, epoch: int) -> str:
        c = self.cfg
        if epoch <= c.warmup_epochs:
            return "ce"
        if epoch >= c.correction_start:
            return "knn"
        return c.premix

    def needs_bank(self, epoch: int) -> bool:
        """Whether ``epoch`` embeds the training set: in the ``knn`` phase, and in the ``loss_window - 1`` epochs
        before it whose losses the first mixture fit averages. Earlier epochs skip the pass (it costs about a third
        of a training epoch and nothing would use it)."""
        c = self.cfg
        first = max(c.warmup_epochs + 1, c.correction_start if c.premix != "knn" else 0)
        return epoch > c.warmup_epochs and epoch >= first - (c.loss_window - 1)

    def prepare_epoch(self, epoch: int, ctx: TrainContext) -> str:
        c = self.cfg
        self.phase = self.phase_of(epoch)
        if not self.needs_bank(epoch):
            return self.phase
        bank = ctx.embed_train_set()
        if is_correction_epoch(epoch, c.correction_start, c.correction_period):
            phases.correct_targets(ctx.state, bank, c.correction_momentum)
        phases.fit_mixture(
            ctx.state,
            bank,
            window=c.loss_window,
            max_iter=c.gmm_max_iter,
            tol=c.gmm_tol,
            reg_covar=c.gmm_reg_covar,
            seed=ctx.seed + epoch,
            dist=ctx.dist,
        )
        if self.phase == "knn":
            phases.search_neighbours(ctx.state, bank, c.k, ctx.make_searcher(), ctx.dist)
        return self.phase

    def batch_members(self, index: Tensor, ctx: TrainContext) -> Tensor:
        if self.phase != "knn":
            return index[:, None]
        return torch.cat([index[:, None], ctx.state.neighbours[index]], dim=1)

    def loss(self, model: nn.Module, images: Tensor, members: Tensor, ctx: TrainContext) -> Tensor:
        if self.phase == "mixup":
            return _mixup_loss(model, images, members, ctx, self.cfg.mixup_alpha)
        targets = targets_of(ctx, members, images.device)
        if self.phase == "ce":
            return _forward_soft(model, images[:, 0], targets[:, 0])
        weights = neighbour_weights(ctx.state.clean_prob, members.cpu(), self.cfg.temperature).to(images.device)
        x_syn, y_syn = mix_batch(images, targets, weights)
        return _forward_soft(model, x_syn, y_syn)
