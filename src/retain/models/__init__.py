"""Models: backbones, their registry and the task-head container."""

from retain.models.alexnet import AlexNet
from retain.models.continual import ContinualModel
from retain.models.layers import BATCH_NORM_KINDS
from retain.models.mlp import MLP
from retain.models.registry import (
    MODEL_DESCRIPTIONS,
    MODELS,
    build_backbone,
    build_model,
    describe_models,
    model_options,
)
from retain.models.resnet import BasicBlock, ReducedResNet18, ResNet, ResNet18

__all__ = [
    "BATCH_NORM_KINDS",
    "MLP",
    "MODELS",
    "MODEL_DESCRIPTIONS",
    "AlexNet",
    "BasicBlock",
    "ContinualModel",
    "ReducedResNet18",
    "ResNet",
    "ResNet18",
    "build_backbone",
    "build_model",
    "describe_models",
    "model_options",
]
