"""Whole networks from native `pax.nn` layers, named as Haiku's ``hk.nets``."""

from pax._src.nets.resnet import ResNet as ResNet
from pax._src.nets.resnet import ResNet18 as ResNet18
from pax._src.nets.resnet import ResNet34 as ResNet34
from pax._src.nets.resnet import ResNet50 as ResNet50
from pax._src.nets.resnet import ResNetBlock as ResNetBlock
from pax._src.nets.resnet import ResNetBlockGroup as ResNetBlockGroup

__all__ = ["ResNet", "ResNet18", "ResNet34", "ResNet50", "ResNetBlock", "ResNetBlockGroup"]
