"""Backbones by name, for configs and the command line.

``build_backbone("alexnet", (3, 32, 32), drop1=0.3)`` or
``build_model("mlp", (1, 28, 28), [2] * 5, hidden=[400, 400])``. Options are the keyword
arguments of the backbone's constructor; a misspelt one is an error, not silently ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from retain.models.alexnet import AlexNet
from retain.models.continual import ContinualModel
from retain.models.lenet import LargeLeNet, LeNet
from retain.models.mlp import MLP
from retain.models.resnet import ReducedResNet18, ResNet18, ResNet50
from retain.models.tinynet import TinyNet

BackboneBuilder = Callable[..., nn.Module]
"""Called as ``builder(input_shape, **options)``; returns a module with ``out_features``."""

MODELS: dict[str, BackboneBuilder] = {}
MODEL_DESCRIPTIONS: dict[str, str] = {}
#: per backbone, upper bounds of its width options under ``--smoke`` (:mod:`retain.smoke`)
MODEL_SMOKE: dict[str, dict[str, int]] = {}


def register_model(
    name: str, builder: BackboneBuilder, description: str, smoke: dict[str, int] | None = None
) -> None:
    """Make ``builder`` available as ``name``, with a one-line ``description`` and its
    ``smoke`` caps: upper bounds of its width options (the same layers, fewer channels or
    units; a per-layer option is capped layer by layer) for a ``--smoke`` run."""
    if name in MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    accepted = set(list(inspect.signature(builder).parameters)[1:])
    unknown = sorted(set(smoke or {}) - accepted)
    if unknown:
        raise ValueError(f"smoke caps of model {name!r} name unknown options: {unknown}")
    MODELS[name] = builder
    MODEL_DESCRIPTIONS[name] = description
    MODEL_SMOKE[name] = dict(smoke or {})


register_model(
    "mlp",
    MLP,
    "fully connected ReLU net on the flattened input (default 400-400)",
    smoke={"hidden": 64},
)
register_model(
    "alexnet",
    AlexNet,
    "HAT/SPG AlexNet-like net: 3 convs (64/128/256) + 2 x 2048 fc; optional WSN BN",
    smoke={"nhid": 64},
)
register_model(
    "resnet18",
    ResNet18,
    "ResNet-18: CIFAR 3x3 stem (stem=imagenet: 7x7, max-pool), nf=64, skip_conv",
    smoke={"nf": 8},
)
register_model(
    "reduced-resnet18",
    ReducedResNet18,
    "Dynamos backbone: first two ResNet-18 stages at nf=32 (32/64 channels)",
    smoke={"nf": 8},
)
register_model(
    "resnet50",
    ResNet50,
    "ResNet-50: CIFAR 3x3 stem as Eidetic (stem=imagenet option), skip_conv",
    smoke={"nf": 4},
)
register_model(
    "lenet",
    LeNet,
    "GPM/WSN LeNet-5: convs 20/50 (5x5), fc 800-500, no biases (CIFAR-100 Superclass)",
    smoke={"channels": 8, "hidden": 32},
)
register_model(
    "lenet-large",
    LargeLeNet,
    "WSN large LeNet: convs 64/128 (5x5), fc 2500-1500, no biases (Omniglot)",
    smoke={"channels": 8, "hidden": 32},
)
register_model(
    "tinynet",
    TinyNet,
    "WSN TinyNet: 4 stride-2 3x3 convs of 160 + fc 640-640, no biases (TinyImageNet)",
    smoke={"channels": 16, "hidden": 32},
)


def describe_models() -> list[tuple[str, str]]:
    """``(name, one-line description)`` for every registered backbone, in registry order."""
    return [(name, MODEL_DESCRIPTIONS.get(name, "")) for name in MODELS]


def model_options(name: str) -> list[str]:
    """The option names ``build_backbone(name, ...)`` accepts (constructor keywords)."""
    builder = _builder(name)
    params = inspect.signature(builder).parameters.values()
    return [
        p.name
        for p in list(params)[1:]  # the first parameter is input_shape
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def build_backbone(name: str, input_shape: int | Sequence[int], **kwargs: Any) -> nn.Module:
    """Build the backbone ``name`` for samples of shape ``input_shape``.

    Lists among the options (as YAML gives them, e.g. ``hidden: [400, 400]``) become tuples.

    Raises:
        ValueError: unknown model name (the message lists the valid ones) or unknown option
            (the message names it and lists the accepted ones).
    """
    builder = _builder(name)
    check_model_args(name, kwargs)
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    if isinstance(input_shape, list):
        input_shape = tuple(input_shape)
    return builder(input_shape, **options)


#: options of :func:`build_model` itself (the head's), beside the backbone's, in ``model_args``
HEAD_OPTIONS: dict[str, Any] = {"head_bias": bool}


def check_model_args(
    name: str, kwargs: dict[str, Any], where: str = "model_args", head: bool = False
) -> None:
    """Raise ValueError (one line) unless ``name`` is a registered backbone and ``kwargs`` are
    options it takes (``head``: or :func:`build_model`'s own :data:`HEAD_OPTIONS`), of the
    kinds its constructor declares (``model_args.hidden must be a list of integers, got
    'abc'``; :mod:`retain.argcheck`)."""
    from retain.argcheck import check_arguments, signature_hints, suggestion

    builder = _builder(name)
    accepted = model_options(name) + (list(HEAD_OPTIONS) if head else [])
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        hint = suggestion(unknown[0], accepted) if len(unknown) == 1 else ""
        raise ValueError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for model {name!r};{hint} accepted: {', '.join(accepted)}"
        )
    hints = {**signature_hints(builder, skip=1), **(HEAD_OPTIONS if head else {})}
    check_arguments(hints, kwargs, where)


def build_model(
    name: str,
    input_shape: int | Sequence[int],
    classes_per_task: Sequence[int],
    head: str = "task",
    head_bias: bool = True,
    **kwargs: Any,
) -> ContinualModel:
    """``ContinualModel(build_backbone(name, input_shape, **kwargs), classes_per_task, head)``.

    The model records how it was built in ``model.built_by`` (``{"name", "args", "head",
    "head_bias", "input_shape", "classes_per_task"}``, the arguments as given): what a run
    folder's ``config.yaml`` records (:func:`retain.fit`)."""
    backbone = build_backbone(name, input_shape, **kwargs)
    model = ContinualModel(backbone, classes_per_task, head=head, head_bias=head_bias)
    shape = (input_shape,) if isinstance(input_shape, int) else input_shape
    model.built_by = {
        "name": name,
        "args": dict(kwargs),
        "head": head,
        "head_bias": head_bias,
        "input_shape": tuple(int(s) for s in shape),
        "classes_per_task": [int(c) for c in classes_per_task],
    }
    return model


def _builder(name: str) -> BackboneBuilder:
    try:
        return MODELS[name]
    except KeyError:
        from retain.argcheck import suggestion

        hint = suggestion(name, MODELS)
        raise ValueError(
            f"unknown model {name!r};{hint} choose one of {', '.join(MODELS)}"
        ) from None
