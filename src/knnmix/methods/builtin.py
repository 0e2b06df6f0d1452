"""The four built-in methods: ``ce``, ``mixup``, ``selc`` and ``knnmix``, all on the same engine.

Phase names (``Method.phase``, set by ``prepare_epoch``): ``ce`` (cross-entropy on the targets), ``mixup``
(random mixup), ``knn`` (neighbour mixing with clean-probability weights).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from knnmix.methods import phases
from knnmix.methods.dist import all_reduce_sum, mean_weight_total
from knnmix.math import guard_weights, is_correction_epoch, mix_batch, mixup, negative_entropy, neighbour_weights
from knnmix.math import neighbours_within_batch, soft_cross_entropy
from knnmix.methods.base import METHODS, Method, TrainContext, targets_of

if TYPE_CHECKING:
    from knnmix.config import MethodConfig


def _mixup_loss(model: nn.Module, images: Tensor, members: Tensor, ctx: TrainContext, alpha: float) -> Tensor:
    x = images[:, 0]
    t = targets_of(ctx, members[:, 0], x.device)
    lam = float(np.random.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], device=x.device)
    xm, tm = mixup(x, t, lam, perm)
    logits, _ = model(xm)
    return soft_cross_entropy(logits, tm)


@METHODS.register("ce")
class CrossEntropy(Method):
    """Standard cross-entropy on the given labels: the base :class:`Method` unchanged."""

    reads = frozenset()


@METHODS.register("mixup")
class Mixup(Method):
    """mixup (Zhang et al., ICLR 2018) on the given labels: random pairs, ``lam ~ Beta(alpha, alpha)`` per batch."""

    phase = "mixup"
    reads = frozenset({"mixup_alpha"})

    def loss(self, model: nn.Module, images: Tensor, members: Tensor, ctx: TrainContext) -> Tensor:
        return _mixup_loss(model, images, members, ctx, self.cfg.mixup_alpha)


@METHODS.register("selc")
class SELC(Method):
    """Self-ensemble label correction (Lu & He, IJCAI 2022): soft-target correction alone.

    Cross-entropy against the soft targets, which stay the one-hot given labels until ``correction_start`` and are
    then corrected every ``correction_period`` epochs (SELC's paper: every epoch).
    """

    uses_soft_targets = True
    reads = frozenset({"correction_start", "correction_period", "correction_momentum"})

    def schedule_note(self, epochs: int) -> str | None:
        if epochs < self.cfg.correction_start:
            return (f"selc never corrects a target: epochs={epochs} ends before method.correction_start="
                    f"{self.cfg.correction_start} (this run is plain cross-entropy)")
        return None

    def prepare_epoch(self, epoch: int, ctx: TrainContext) -> None:
        c = self.cfg
        if is_correction_epoch(epoch, c.correction_start, c.correction_period):
            phases.correct_targets(ctx.state, ctx.embed_train_set(), c.correction_momentum)


@METHODS.register("knnmix")
class KnnMix(Method):
    """Synthetic samples with soft labels from clean-weighted nearest neighbours (Lu & He 2024).

    Epochs ``1..warmup_epochs``: cross-entropy on the given labels (plus ``warmup_penalty`` times the negative
    entropy); then ``premix`` until ``correction_start`` and neighbour mixing from ``correction_start`` on. An epoch
    of the mixing phase embeds the training set (when :meth:`needs_bank`), corrects the soft targets on correction
    epochs, fits the clean-probability mixture (``global`` or ``per_class``) and searches neighbours over the whole
    bank (``neighbours=bank``); with ``neighbours=batch`` each sample's neighbours are found inside its own
    mini-batch, on the bank's features, when the batch is formed.
    """

    uses_soft_targets = True
    uses_clean_prob = True

    @classmethod
    def unread(cls, cfg: MethodConfig) -> dict[str, str]:
        """Every method.* field is read, but those this config turns off."""
        if cls is not KnnMix:  # a plug-in's subclass may read them otherwise
            return {}
        voting = cfg.correction_gate in phases.VOTING_GATES
        off = {"mixup_alpha": cfg.premix != "mixup" and f"method.premix={cfg.premix}",
               "vote_k": not voting and f"method.correction_gate={cfg.correction_gate}",
               "mixture_min_class": cfg.mixture == "global" and "method.mixture=global",
               "search": cfg.neighbours == "batch" and not voting
               and f"method.neighbours=batch and method.correction_gate={cfg.correction_gate}"}
        return {key: f"knnmix does not read it with {why}" for key, why in off.items() if why}

    def __init__(self, cfg: MethodConfig, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.epoch = 0
        self._drawn = torch.empty(0, 0)  # (N, D) features of this epoch's draw (data.epoch_samples, neighbours=batch)
        # noisy anchors' self-weight, noisy anchors, synthetic labels' mass on the anchor's true class, anchors
        self._mixing = torch.zeros(4, dtype=torch.float64)

    def phase_of(self, epoch: int) -> str:
        c = self.cfg
        if epoch <= c.warmup_epochs:
            return "ce"
        if epoch >= c.correction_start:
            return "knn"
        return c.premix

    def first_mixing_epoch(self) -> int:
        """The first epoch that trains on neighbour mixtures (and so needs clean probabilities)."""
        c = self.cfg
        return max(c.warmup_epochs + 1, c.correction_start if c.premix != "knn" else 0)

    def needs_bank(self, epoch: int, subsampled: bool = False) -> bool:
        """Whether ``epoch`` embeds the training set: every ``bank_every`` epochs of the mixing phase and on its
        correction epochs (every mixing epoch when ``subsampled``: each epoch's fresh draw of samples needs its own
        clean probabilities and neighbours), and in the ``loss_window - 1`` epochs before it whose losses the first
        mixture fit averages (after warm-up only). Earlier epochs skip the pass (it costs about a third of a training
        epoch and nothing would use it)."""
        c = self.cfg
        first = self.first_mixing_epoch()
        if epoch <= c.warmup_epochs or epoch < first - (c.loss_window - 1):
            return False
        if epoch <= first or subsampled:
            return True
        return (epoch - first) % c.bank_every == 0 or self.corrects(epoch)

    def schedule_note(self, epochs: int) -> str | None:
        first = self.first_mixing_epoch()
        if epochs < first:
            return (f"knnmix never mixes neighbours: epochs={epochs} ends before its mixing phase starts in epoch "
                    f"{first} (method.warmup_epochs={self.cfg.warmup_epochs}, method.correction_start="
                    f"{self.cfg.correction_start}); lower them or train longer")
        return None

    def corrects(self, epoch: int) -> bool:
        return is_correction_epoch(epoch, self.cfg.correction_start, self.cfg.correction_period)

    def prepare_epoch(self, epoch: int, ctx: TrainContext) -> None:
        c = self.cfg
        self.epoch = epoch
        self.phase = self.phase_of(epoch)
        self._mixing.zero_()
        # (a checkpoint from before the state kept the features that neighbours=batch searches: embed again)
        lost = c.neighbours == "batch" and self.phase == "knn" and self._feature_table(ctx).numel() == 0
        if not (self.needs_bank(epoch, ctx.subsampled) or lost):
            return
        bank = ctx.embed_train_set()
        corrects = self.corrects(epoch)
        voting = corrects and c.correction_gate in phases.VOTING_GATES
        mixing = self.phase == "knn" and c.neighbours == "bank"
        if voting or mixing:  # one search of the bank serves the vote and the neighbour table
            k = max(c.vote_k if voting else 0, c.k if mixing else 0)
            found = phases.bank_neighbours(bank, k, ctx.neighbour_search(), ctx.dist)
        if corrects:
            vote = phases.neighbour_vote(ctx.state, bank, found[:, :c.vote_k]) if voting else None
            phases.correct_targets(ctx.state, bank, c.correction_momentum, c.correction_gate, vote)
        phases.fit_mixture(
            ctx.state, bank, window=c.loss_window, per_class=c.mixture == "per_class", min_class=c.mixture_min_class,
            max_iter=c.gmm_max_iter, tol=c.gmm_tol, reg_covar=c.gmm_reg_covar, seed=ctx.seed + epoch, dist=ctx.dist,
        )
        if mixing:
            ctx.state.neighbours[bank.index] = bank.index[found[:, :c.k]]
        elif self.phase == "knn":  # neighbours=batch: searched within each batch, on these features
            self._feature_table(ctx, bank.features.shape[1])[bank.index] = bank.features.float().cpu()

    def _feature_table(self, ctx: TrainContext, dim: int | None = None) -> Tensor:
        """The ``(N, D)`` features that ``neighbours=batch`` searches (a new table of ``dim`` columns when asked):
        per-sample state, checkpointed so that a resume between two embeddings continues exactly; with
        ``data.epoch_samples`` every epoch's draw is embedded afresh, so its table stays here, out of the checkpoint
        (N x D floats that no resume would read)."""
        table = self._drawn if ctx.subsampled else ctx.state.features
        if dim is not None and tuple(table.shape) != (ctx.state.num_samples, dim):
            table = torch.zeros(ctx.state.num_samples, dim)
            if ctx.subsampled:
                self._drawn = table
            else:
                ctx.state.features = table
        return table

    def batch_members(self, index: Tensor, ctx: TrainContext) -> Tensor:
        if self.phase != "knn":
            return index[:, None]
        if self.cfg.neighbours == "bank":
            return torch.cat([index[:, None], ctx.state.neighbours[index]], dim=1)
        found = neighbours_within_batch(self._feature_table(ctx)[index], self.cfg.k)
        return torch.cat([index[:, None], index[found]], dim=1)

    def loss(self, model: nn.Module, images: Tensor, members: Tensor, ctx: TrainContext) -> Tensor:
        if self.phase == "mixup":
            return _mixup_loss(model, images, members, ctx, self.cfg.mixup_alpha)
        targets = targets_of(ctx, members, images.device)
        if self.phase == "ce":
            logits, _ = model(images[:, 0])
            loss = soft_cross_entropy(logits, targets[:, 0])
            if self.cfg.warmup_penalty > 0 and self.epoch <= self.cfg.warmup_epochs:
                loss = loss + self.cfg.warmup_penalty * negative_entropy(logits)
            return loss
        cpu_members = members.cpu()
        weights = neighbour_weights(ctx.state.clean_prob, cpu_members, self.cfg.temperature)
        x_syn, y_syn = mix_batch(images, targets, weights.to(images.device))
        keep = total = None
        if self.cfg.guard != "none":
            keep = guard_weights(ctx.state.clean_prob[cpu_members], self.cfg.guard).to(images.device)
            total = mean_weight_total(keep, ctx.dist)  # the global batch's weighted mean, not each rank's
        self._record_mixing(cpu_members, weights, y_syn, ctx)
        logits, _ = model(x_syn)
        return soft_cross_entropy(logits, y_syn, keep, weight_total=total)

    def _record_mixing(self, members: Tensor, weights: Tensor, y_syn: Tensor, ctx: TrainContext) -> None:
        true, noisy = ctx.true_labels, ctx.truly_noisy
        if true is None or noisy is None:
            return
        anchors = members[:, 0]
        bad = noisy[anchors]
        mass = y_syn.detach().cpu().gather(1, true[anchors][:, None]).squeeze(1)
        self._mixing += torch.tensor(
            [float(weights[bad, 0].sum()), float(bad.sum()), float(mass.sum()), float(anchors.numel())],
            dtype=torch.float64,
        )

    def diagnostics(self, ctx: TrainContext) -> dict[str, Any]:
        """In mixing epochs where true labels are known: the mean weight a truly noisy sample keeps on itself in
        its synthetic sample, and the mean mass of the synthetic labels on the anchor's true class."""
        if self.phase != "knn" or ctx.true_labels is None:
            return {}
        s = all_reduce_sum(self._mixing, ctx.dist)
        return {
            "noisy_self_weight": float(s[0] / s[1]) if s[1] > 0 else None,
            "synthetic_true_mass": float(s[2] / s[3]) if s[3] > 0 else None,
        }
