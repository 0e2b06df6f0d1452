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

import torch
from torch import nn

from knnmix.errors import KnnmixError, one_line
from knnmix.models.base import MODELS, Backbone, LogitsOnly, ModelFactory, count_parameters
from knnmix.models.preact_resnet import PreActResNet
from knnmix.models.pretrained import load_pretrained, read_state_dict
from knnmix.models.small_cnn import SmallCNN


@MODELS.register("resnet50")
def resnet50(num_classes: int, in_channels: int, image_size: int) -> Backbone:
    """:class:`knnmix.models.resnet.ResNet50`, imported when built: it subclasses torchvision's ResNet, and
    torchvision's import costs seconds in every process that imports the engine (Ray Train's workers, a sweep's
    trials), most of which never build a ResNet-50."""
    from knnmix.models.resnet import ResNet50

    return ResNet50(num_classes, in_channels, image_size)


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
    _check_outputs(model, name, num_classes, in_channels, image_size)
    if pretrained is not None:
        load_pretrained(model, pretrained, name=name)
    return model


def _check_outputs(model: nn.Module, name: str, num_classes: int, in_channels: int, image_size: int) -> None:
    """Run ``model`` once (eval mode, no gradients) on two blank images ``(2, in_channels, image_size, image_size)``:
    it must return ``(logits (2, num_classes), features (2, D))``, float. A custom network that does not would fail
    inside the first training step (a head of the wrong width, unpooled features in the neighbour search)."""
    shape = f"(2, {in_channels}, {image_size}, {image_size})"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, image_size, image_size))
    except Exception as exc:  # noqa: BLE001 - whatever a user's network raises, said in one line
        raise KnnmixError(f"model {name!r}: a forward pass on a {shape} batch failed: {one_line(exc)}") from None
    finally:
        model.train(was_training)
    ok = (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) and t.is_floating_point()
                                                            for t in out)
          and tuple(out[0].shape) == (2, num_classes) and out[1].dim() == 2 and out[1].shape[0] == 2)
    if not ok:
        got = (f"({', '.join(str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__ for t in out)})"
               if isinstance(out, tuple) else type(out).__name__)
        raise KnnmixError(f"model {name!r}: forward on a {shape} batch must return float (logits (2, {num_classes}), "
                          f"features (2, D)); it returned {got}")


__all__ = [
    "MODELS", "Backbone", "LogitsOnly", "ModelFactory", "PreActResNet", "SmallCNN", "build_model",
    "count_parameters", "load_pretrained", "read_state_dict",
]  # fmt: skip
