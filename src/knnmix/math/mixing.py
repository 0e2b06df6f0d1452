"""Synthetic samples: mixing weights over a sample and its neighbours, the mixed batch, the soft-label loss."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from knnmix.errors import KnnmixError
from knnmix.math._checks import check_range, check_tensor

_EPS = 1e-10  # keeps log(w) finite for w = 0 (the authors add it to the anchor only: lam = (w_i+ε)/(w_i+w_j+ε))


def neighbour_weights(clean_prob: Tensor, members: Tensor, temperature: float) -> Tensor:
    """Mixing weights ``(B, K+1)`` over each row of ``members`` ``(B, K+1)`` (column 0: the sample itself).

    ``lambda_k ∝ w_k^(1/T)`` with ``w = clean_prob`` ``(N,)``: T = 1 gives the authors' K = 1 rule
    ``lambda_i = w_i / (w_i + w_j)``; T -> 0 puts all weight on the cleanest member (split among members tied for
    cleanest; ``temperature=0`` gives it all to the earliest of them); large T tends to uniform weights. Rows sum to
    one. ε = 1e-10 is added to every member's w, so members whose w are all about 0 (below ~1e-10) get equal
    weights, where the authors' rule, with ε on the anchor's side only, keeps the anchor.
    """
    if check_tensor(clean_prob, "clean_prob").dim() != 1:
        raise ValueError(f"clean_prob must be (N,), got {tuple(clean_prob.shape)}")
    if check_tensor(members, "members", "int").dim() != 2 or members.shape[1] < 1:
        raise ValueError(f"members must be (B, K+1), got {tuple(members.shape)}")
    check_range(members, "members", clean_prob.shape[0], "positions in clean_prob")
    if isinstance(temperature, bool) or not isinstance(temperature, (numbers.Real, Tensor)):
        raise KnnmixError(f"temperature must be a number >= 0, got {temperature!r}")
    temperature = float(temperature)
    if not temperature >= 0:  # NaN too
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    w = clean_prob[members].float()
    if bool(((w < 0) | (w > 1) | torch.isnan(w)).any()):
        raise ValueError("clean probabilities of the members must lie in [0, 1]")
    if temperature == 0:
        return torch.nn.functional.one_hot(w.argmax(dim=1), w.shape[1]).float()
    logw = torch.log(w + _EPS).cpu().double()  # (on the CPU: MPS has no float64)
    # Shifted by the row's maximum (softmax ignores the shift), in float64: log(w)/T has no NaN for any T > 0 (in
    # float32 a T below ~1e-45 rounds to 0, and the maximum's 0/0 made every weight NaN)
    return torch.softmax((logw - logw.amax(dim=1, keepdim=True)) / temperature, dim=1).to(w.device, torch.float32)


def mix_batch(images: Tensor, targets: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted sums over the member axis: images ``(B, M, ...)``, targets ``(B, M, C)``, weights ``(B, M)``.

    Returns the synthetic images ``(B, ...)`` and their soft labels ``(B, C)``; the same weights mix both. All three
    must be floating point: weights cast to integer images or targets would truncate to zero.
    """
    for name, x in (("images", images), ("targets", targets), ("weights", weights)):
        if not x.is_floating_point():
            raise KnnmixError(f"{name} must be floating point, got {x.dtype} {tuple(x.shape)} (mixing weights cast "
                              "to an integer dtype truncate to zero)")
    if images.shape[:2] != weights.shape or targets.shape[:2] != weights.shape:
        raise ValueError(f"images {tuple(images.shape)}, targets {tuple(targets.shape)} and weights "
                         f"{tuple(weights.shape)} must agree on (B, M)")
    x = torch.einsum("bm,bm...->b...", weights.to(images.dtype), images)
    y = torch.einsum("bm,bmc->bc", weights.to(targets.dtype), targets)
    return x, y


def mixup(images: Tensor, targets: Tensor, lam: float, perm: Tensor) -> tuple[Tensor, Tensor]:
    """Random mixup (Zhang et al. 2018): ``lam * a + (1 - lam) * a[perm]`` for images ``(B, ...)`` and targets ``(B, C)``."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    if perm.shape != (images.shape[0],) or targets.shape[0] != images.shape[0]:
        raise ValueError("perm, images and targets must share the batch size")
    return lam * images + (1 - lam) * images[perm], lam * targets + (1 - lam) * targets[perm]


def soft_cross_entropy(logits: Tensor, targets: Tensor, weights: Tensor | None = None, *,
                       weight_total: Tensor | None = None) -> Tensor:
    """Mean over the batch of ``-sum_c targets_c * log softmax(logits)_c``; logits and targets ``(B, C)``.

    With ``weights`` ``(B,)`` (>= 0), the weighted mean ``sum_b w_b l_b / sum_b w_b`` (0 when every weight is 0).
    ``weight_total`` (a scalar) replaces ``sum_b w_b`` as the divisor: under data parallelism the global batch's sum
    over the world size, so that the ranks' averaged gradients are those of the global batch's weighted mean.
    """
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be (B, C)")
    if logits.shape[0] == 0:
        raise ValueError("an empty batch (B = 0) has no mean loss")
    per_sample = -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1)
    if weights is None:
        return per_sample.mean()
    if weights.shape != per_sample.shape or not bool((weights >= 0).all()):  # (NaN is not >= 0)
        raise ValueError(f"weights must be (B,) = {tuple(per_sample.shape)} and >= 0, got {tuple(weights.shape)}")
    w = weights.to(per_sample.dtype)
    total = w.sum() if weight_total is None else weight_total.to(per_sample.dtype)
    return (w * per_sample).sum() / total.clamp_min(1e-12)


def negative_entropy(logits: Tensor) -> Tensor:
    """Mean over the batch of ``sum_c p_c log p_c`` for ``p = softmax(logits)`` ``(B, C)``: adding it to a loss
    penalises confident predictions (DivideMix's warm-up penalty for asymmetric noise)."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, C), got {tuple(logits.shape)}")
    log_p = torch.log_softmax(logits, dim=1)
    return (log_p.exp() * log_p).sum(dim=1).mean()


GUARDS = ("none", "scale", "drop")


def guard_weights(member_clean: Tensor, mode: str) -> Tensor:
    """Loss weights ``(B,)`` of synthetic samples from their members' clean probabilities ``(B, M)``.

    ``none``: all ones. ``scale``: the cleanest member's clean probability, so a sample mixed only from likely
    noisy members counts little. ``drop``: 1 if the cleanest member's clean probability is at least 0.5, else 0.
    """
    if member_clean.dim() != 2:
        raise ValueError(f"member_clean must be (B, M), got {tuple(member_clean.shape)}")
    if mode not in GUARDS:
        raise ValueError(f"guard must be one of {', '.join(GUARDS)}, got {mode!r}")
    best = member_clean.float().max(dim=1).values
    if mode == "none":
        return torch.ones_like(best)
    if mode == "scale":
        return best
    return (best >= 0.5).float()
