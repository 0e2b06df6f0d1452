"""Pre-activation ResNets (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016) for small images.

The CIFAR variant: a 3x3 stride-1 stem convolution and no max-pool, four stages of pre-activation basic blocks
(BN-ReLU-Conv twice) with 64/128/256/512 channels and strides 1/2/2/2, then the final BN-ReLU of the
pre-activation design, global average pooling and a linear head. PreActResNet-18 is DivideMix's
``PreResNet18``; the 34-layer variant uses the block counts of Lu & He's ResNet34. Features are 512-d.

State-dict keys follow the common CIFAR implementations (``conv1``, ``layerN.i.{bn1,conv1,bn2,conv2,shortcut.0}``,
``linear``), plus ``bn`` for the final normalisation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from knnmix.models.base import MODELS, Backbone, check_dims, init_conv_bn

#: Smallest input side: three stride-2 stages bring 8x8 down to 1x1.
MIN_IMAGE_SIZE = 8


class PreActBlock(nn.Module):
    """A pre-activation basic block: ``x + conv(relu(bn(conv(relu(bn(x))))))``, 1x1-conv shortcut when reshaping."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


def stage(in_planes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
    """``num_blocks`` blocks from ``in_planes`` to ``planes`` channels; the first one strides by ``stride``."""
    rest = (PreActBlock(planes, planes) for _ in range(num_blocks - 1))
    return nn.Sequential(PreActBlock(in_planes, planes, stride), *rest)


class PreActResNet(Backbone):
    """A CIFAR-style pre-activation ResNet of :class:`PreActBlock` stages; ``feature_dim`` is 512."""

    head_name = "linear"

    def __init__(self, num_blocks: Sequence[int], num_classes: int, in_channels: int, image_size: int, *,
                 name: str = "preact_resnet") -> None:
        super().__init__()
        check_dims(name, num_classes, in_channels, image_size, min_size=MIN_IMAGE_SIZE)
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer1 = stage(64, 64, num_blocks[0], stride=1)
        self.layer2 = stage(64, 128, num_blocks[1], stride=2)
        self.layer3 = stage(128, 256, num_blocks[2], stride=2)
        self.layer4 = stage(256, 512, num_blocks[3], stride=2)
        self.bn = nn.BatchNorm2d(512)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 512
        self.linear = nn.Linear(512, num_classes)
        init_conv_bn(self)

    def forward_features(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        return self.pool(out).flatten(1)


# PreActResNet-18 (about 11.2M parameters for 10 classes) is DivideMix's PreResNet18; -34 has about 21.3M.
MODELS.register("preact_resnet18")(functools.partial(PreActResNet, (2, 2, 2, 2), name="preact_resnet18"))
MODELS.register("preact_resnet34")(functools.partial(PreActResNet, (3, 4, 6, 3), name="preact_resnet34"))
