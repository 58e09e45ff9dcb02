"""Segmentation models."""

from fastforec.models.backbones import BACKBONES, PretrainedError, ResNetBackbone
from fastforec.models.build import build_model
from fastforec.models.deeplab import Decoder, DeepLabV3Plus, deeplabv3plus

__all__ = ["BACKBONES", "Decoder", "DeepLabV3Plus", "PretrainedError", "ResNetBackbone", "build_model",
           "deeplabv3plus"]
