"""Segmentation models: DeepLabV3+ on ResNets, DPT on DINOv2 / DINOv3 ViTs (one builder: build.py)."""

from fastforec.models.backbones import BACKBONES, PretrainedError, ResNetBackbone
from fastforec.models.build import build_model
from fastforec.models.deeplab import Decoder, DeepLabV3Plus, deeplabv3plus
from fastforec.models.dpt import DPT, dpt
from fastforec.models.segmentor import Segmentor
from fastforec.models.vit import VIT_SPECS, DinoBackbone, DinoV2Backbone, DinoV3Backbone

__all__ = ["BACKBONES", "DPT", "Decoder", "DeepLabV3Plus", "DinoBackbone", "DinoV2Backbone", "DinoV3Backbone",
           "PretrainedError", "ResNetBackbone", "Segmentor", "VIT_SPECS", "build_model", "deeplabv3plus", "dpt"]
