"""The method's math as small, pure tensor functions: no config objects, no I/O, no Ray.

- :mod:`.clean_prob` -- normalised losses, loss window, GMM clean probability
- :mod:`.neighbours` -- exact cosine top-K over a feature bank (faiss or torch), self excluded
- :mod:`.mixing` -- neighbour mixing weights with temperature, synthetic batch, mixup, soft cross-entropy
- :mod:`.targets` -- one-hot targets, moving-average soft-target correction and its schedule
"""

from knnmix.math.clean_prob import fit_clean_probability, fit_clean_probability_per_class, normalise_losses, window_mean
from knnmix.math.mixing import GUARDS, guard_weights, mix_batch, mixup, negative_entropy, neighbour_weights
from knnmix.math.mixing import soft_cross_entropy
from knnmix.math.neighbours import FaissSearch, NeighbourSearch, TorchSearch, l2_normalise
from knnmix.math.neighbours import neighbour_agreement, neighbours_excluding_self, neighbours_within_batch
from knnmix.math.targets import is_correction_epoch, one_hot_targets, update_soft_targets

__all__ = [
    "GUARDS", "FaissSearch", "NeighbourSearch", "TorchSearch", "fit_clean_probability",
    "fit_clean_probability_per_class", "guard_weights", "is_correction_epoch", "l2_normalise", "mix_batch", "mixup",
    "neighbour_agreement", "neighbour_weights", "negative_entropy", "neighbours_excluding_self", "neighbours_within_batch",
    "normalise_losses", "one_hot_targets", "soft_cross_entropy", "update_soft_targets", "window_mean",
]  # fmt: skip
