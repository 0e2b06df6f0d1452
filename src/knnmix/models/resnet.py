"""torchvision's ResNet-50 for large images (224x224), returning ``(logits, features)``.

The network is a subclass of :class:`torchvision.models.ResNet` built exactly as ``resnet50(weights=None)``, with
the same module names, so torchvision's ImageNet state dicts (``resnet50-0676ba61.pth`` and the like) load
into it directly; ``fc`` is a fresh ``num_classes`` head on 2048-d features.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet

from knnmix.models.base import Backbone, check_dims

#: Smallest input side: the network downsamples by 32.
MIN_IMAGE_SIZE = 32


class ResNet50(Backbone, ResNet):
    """``torchvision.models.resnet50(weights=None)`` with a ``num_classes`` head and a ``(logits, features)`` forward.

    With ``in_channels != 3`` the 7x7 stem convolution is replaced by one taking ``in_channels`` inputs.
    """

    def __init__(self, num_classes: int, in_channels: int, image_size: int) -> None:
        check_dims("resnet50", num_classes, in_channels, image_size, min_size=MIN_IMAGE_SIZE)
        ResNet.__init__(self, Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
        self.num_classes = num_classes
        self.feature_dim = 512 * Bottleneck.expansion
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    # torchvision's ResNet defines ``forward``; keep the (logits, features) contract of :class:`Backbone`.
    forward = Backbone.forward
