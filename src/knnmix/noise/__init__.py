"""Label noise models: synthetic corruption of clean labels and the real human labels of CIFAR-N.

>>> from knnmix.noise import apply_noise, parse_noise_spec
>>> spec = parse_noise_spec("symmetric:0.4")          # validates a config before any data is loaded
>>> result = apply_noise(spec, labels, 10, seed=0)    # doctest: +SKIP
>>> result.noisy_labels, result.noise_rate, result.transition, result.is_noisy  # doctest: +SKIP

Models are registered by name in :data:`NOISE_MODELS` (see :func:`register_noise_model`); :data:`NOISE_KINDS`
lists the built-in ones. Conventions and class maps are documented in ``docs/noise.md``.
"""

from __future__ import annotations

from knnmix.noise import cifar_n, synthetic  # importing the model modules registers their models
from knnmix.noise.base import NOISE_MODELS, SYMMETRIC_CONVENTIONS, NoiseInputs, NoiseModel, NoiseResult, NoiseSpec
from knnmix.noise.base import apply_noise, parse_noise_spec, register_noise_model, transition_matrix
from knnmix.noise.cifar_n import CIFAR_N, load_cifar_n_file
from knnmix.noise.synthetic import ASYMMETRIC_CLASS_MAPS, asymmetric_class_map, instance_expected_rate


def check_noise_family(spec: NoiseSpec, family: str) -> None:
    """Raise the one-line error that ``spec`` would raise on a data set of ``family`` (``"cifar10"``, ...,
    ``"generic"``) where that needs the family alone: asymmetric noise's class map, a CIFAR-N label file's data set.
    A config is so checked before any image is read."""
    if spec.kind == "asymmetric" and family != "cifar100":  # (CIFAR-100's map is built from its super-classes)
        asymmetric_class_map(family)
    elif spec.kind in CIFAR_N:
        cifar_n.check_family(spec.kind, family)


#: Names of the built-in noise models (``NOISE_MODELS.names()`` also lists models registered later).
NOISE_KINDS: tuple[str, ...] = tuple(NOISE_MODELS.names())

__all__ = [
    "ASYMMETRIC_CLASS_MAPS", "CIFAR_N", "NOISE_KINDS", "NOISE_MODELS", "SYMMETRIC_CONVENTIONS", "NoiseInputs",
    "NoiseModel", "NoiseResult", "NoiseSpec", "apply_noise", "asymmetric_class_map", "check_noise_family",
    "instance_expected_rate",
    "load_cifar_n_file", "parse_noise_spec", "register_noise_model", "transition_matrix",
]  # fmt: skip
