"""Models: backbones and the task-head container."""

from retain.models.continual import ContinualModel

__all__ = ["ContinualModel"]
