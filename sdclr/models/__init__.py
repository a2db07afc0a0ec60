"""Networks: a CIFAR ResNet-18 with prunable convs and dual BatchNorm, and projection heads.

Every module takes the SDCLR branch (0 = dense, 1 = pruned) as a forward argument.
"""

from sdclr.models.heads import HeadSpec, ProjectionHead, SSLNet, build_model
from sdclr.models.layers import DENSE, PRUNED, DualBatchNorm, MaskedConv2d
from sdclr.models.resnet import BasicBlock, ResNet18

__all__ = [
    "DENSE",
    "PRUNED",
    "BasicBlock",
    "DualBatchNorm",
    "HeadSpec",
    "MaskedConv2d",
    "ProjectionHead",
    "ResNet18",
    "SSLNet",
    "build_model",
]
