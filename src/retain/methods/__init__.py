"""Continual-learning methods, one file each, available by name from :data:`REGISTRY`."""

from retain.methods.base import REGISTRY, Batch, BenchmarkInfo, Method, register

__all__ = ["REGISTRY", "Batch", "BenchmarkInfo", "Method", "register"]
