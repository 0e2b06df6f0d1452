"""The contract every network follows, the model registry and shared argument checks.

A network returns ``(logits, features)`` from ``forward``: ``features`` ``(B, feature_dim)`` is the penultimate
representation (after global pooling, before the classification head) in which the method looks for nearest
neighbours, and ``logits`` ``(B, num_classes)`` is ``head(features)``. ``build_model`` runs every network it builds
once on two blank images and names one whose outputs break this contract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from knnmix.errors import KnnmixError
from knnmix.registry import Registry

#: A model factory: ``factory(num_classes, in_channels, image_size) -> network``.
ModelFactory = Callable[[int, int, int], nn.Module]

#: Registered networks by name.
MODELS: Registry[ModelFactory] = Registry("model")


class Backbone(nn.Module):
    """Base class of the networks: a feature extractor followed by one linear classification head.

    Subclasses set :attr:`feature_dim`, create their head as the attribute named by :attr:`head_name`
    (an ``nn.Linear(feature_dim, num_classes)``) and implement :meth:`forward_features`.
    """

    #: Name of the attribute holding the classification head; also the prefix of its state_dict keys.
    head_name: ClassVar[str] = "fc"
    #: Width of the penultimate features.
    feature_dim: int
    #: Number of classes the head predicts.
    num_classes: int

    @property
    def head(self) -> nn.Linear:
        """The final linear layer, mapping features ``(B, feature_dim)`` to logits ``(B, num_classes)``."""
        head = getattr(self, self.head_name)
        assert isinstance(head, nn.Linear)
        return head

    def forward_features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, feature_dim)`` of images ``(B, C, H, W)``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(logits (B, num_classes), features (B, feature_dim))``."""
        features = self.forward_features(x)
        return self.head(features), features


class LogitsOnly(nn.Module):
    """A network for serving: ``float32`` images ``(B, C, H, W)`` with pixels in [0, 1] -> logits ``(B, num_classes)``.

    It normalises them as training did (``mean`` / ``std`` per channel, of pixels in [0, 1]; none given: the images
    go to the network as they come) and drops the features. ``input_shape`` ``(C, H, W)``: images of another shape
    are an error (a network with global pooling would otherwise give an answer for any size); ``classes``: the names
    of the logits' columns, kept for the caller.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None, *,
                 input_shape: Sequence[int] | None = None, classes: Sequence[str] | None = None) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean or [0.0]).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std or [1.0]).view(1, -1, 1, 1) * 255.0))
        self.input_shape = tuple(input_shape) if input_shape else None
        self.classes = list(classes) if classes else None

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            x = torch.as_tensor(x, device=self.mean.device)  # e.g. a numpy array
        shape = getattr(self, "input_shape", None)  # absent from a module pickled before it existed
        if shape and tuple(x.shape[1:]) != shape:
            raise KnnmixError(f"images must be (N, {', '.join(map(str, shape))}) with pixels in [0, 1], the size the "
                              f"network trained on; got {tuple(x.shape)}")
        # uint8 images (from PIL or numpy) or images normalised already gave logits without a word, all wrong
        if not x.is_floating_point():
            raise KnnmixError(f"images must be floating-point with pixels in [0, 1]; got {x.dtype} (for uint8 images: "
                              "x.float() / 255)")
        low, high = (float(x.amin()), float(x.amax())) if x.numel() else (0.0, 0.0)
        if low < -0.5 or high > 1.5:
            raise KnnmixError(f"images must have pixels in [0, 1] (the model normalises them itself); got values from "
                              f"{low:.3g} to {high:.3g} (images of 0-255: x / 255; normalised ones: the pixels before)")
        x = x.to(self.mean.dtype)  # float64 (numpy's default) met float32 weights in a deep torch error
        return self.net((x * 255.0 - self.mean) * self.inv_std)[0]  # the arithmetic of knnmix.data.base.Normalise


def check_dims(model: str, num_classes: int, in_channels: int, image_size: int, *, min_size: int) -> None:
    """Raise a one-line :class:`KnnmixError` naming the first bad argument of network ``model``."""
    for name, value, low, note in (("num_classes", num_classes, 2, ""), ("in_channels", in_channels, 1, ""),
                                   ("image_size", image_size, min_size, " for this network")):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise KnnmixError(f"model {model!r}: {name} must be an integer >= {low}{note}, got {value!r}")


def init_conv_bn(module: nn.Module) -> None:
    """He (fan-out) initialisation for convolutions; BatchNorm to identity. Linear layers keep PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

