"""Networks that return ``(logits, features)`` (the contract: :mod:`knnmix.models.base`), by name.

========================  ===========  =================================================================
name                      feature_dim  meant for
========================  ===========  =================================================================
``small_cnn``             64           8x8 digits, 28x28 Fashion-MNIST, 32x32 colour; fast on a CPU
``preact_resnet18``       512          CIFAR-size images (DivideMix's PreResNet18), ~11.2M parameters
``preact_resnet34``       512          CIFAR-size images (Lu & He's ResNet34), ~21.3M parameters
``resnet50``              2048         large images (224x224), torchvision layout (ImageNet weights load)
========================  ===========  =================================================================
"""

from __future__ import annotations

import inspect
import os

from torch import nn

from knnmix.errors import KnnmixError
from knnmix.models.base import MODELS, Backbone, LogitsOnly, ModelFactory, count_parameters
from knnmix.models.preact_resnet import PreActResNet
from knnmix.models.pretrained import load_pretrained, read_state_dict
from knnmix.models.resnet import ResNet50
from knnmix.models.small_cnn import SmallCNN


def build_model(
    name: str, num_classes: int, in_channels: int, image_size: int, *, pretrained: str | os.PathLike[str] | None = None
) -> nn.Module:
    """Build the registered network ``name`` for ``num_classes`` classes and ``in_channels x image_size^2`` inputs,
    with the local weights file ``pretrained`` loaded if given (:func:`~knnmix.models.pretrained.load_pretrained`).

    Raises :class:`~knnmix.errors.KnnmixError` for an unknown name, an out-of-range size, a missing file or
    weights that do not fit.
    """
    factory = MODELS.get(name)
    try:
        inspect.signature(factory).bind(num_classes, in_channels, image_size)
    except TypeError as exc:
        raise KnnmixError(f"model {name!r}: its factory must take (num_classes, in_channels, image_size): "
                          f"{exc}") from None
    except ValueError:  # a builtin or class whose signature Python cannot read: call it as it is
        pass
    model = factory(num_classes, in_channels, image_size)
    if not isinstance(model, Backbone):  # the engine needs forward -> (logits, features) and feature_dim
        raise KnnmixError(f"model {name!r}: its factory returned {type(model).__name__}, not a knnmix.models.Backbone "
                          "(forward returns (logits, features); see its docstring)")
    if pretrained is not None:
        load_pretrained(model, pretrained, name=name)
    return model


__all__ = [
    "MODELS", "Backbone", "LogitsOnly", "ModelFactory", "PreActResNet", "ResNet50", "SmallCNN", "build_model",
    "count_parameters", "load_pretrained", "read_state_dict",
]  # fmt: skip
