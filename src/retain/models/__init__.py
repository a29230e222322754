"""Models: backbones, their registry and the task-head container."""

from retain.models.alexnet import AlexNet
from retain.models.continual import ContinualModel
from retain.models.layers import BATCH_NORM_KINDS
from retain.models.lenet import LargeLeNet, LeNet
from retain.models.mlp import MLP
from retain.models.registry import (
    MODEL_DESCRIPTIONS,
    MODEL_SMOKE,
    MODELS,
    build_backbone,
    build_model,
    describe_models,
    model_options,
    register_model,
)
from retain.models.resnet import (
    BasicBlock,
    Bottleneck,
    ReducedResNet18,
    ResNet,
    ResNet18,
    ResNet50,
)
from retain.models.tinynet import TinyNet

__all__ = [
    "BATCH_NORM_KINDS",
    "MLP",
    "MODELS",
    "MODEL_DESCRIPTIONS",
    "MODEL_SMOKE",
    "AlexNet",
    "BasicBlock",
    "Bottleneck",
    "ContinualModel",
    "LargeLeNet",
    "LeNet",
    "ReducedResNet18",
    "ResNet",
    "ResNet18",
    "ResNet50",
    "TinyNet",
    "build_backbone",
    "build_model",
    "describe_models",
    "model_options",
    "register_model",
]
