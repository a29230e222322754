"""Data: sources, scenarios, named benchmarks, the batch iterator and bring-your-own data."""

from retain.data.benchmark import Benchmark, DataError, Task, make_tasks
from retain.data.iterate import iterate_batches

__all__ = ["Benchmark", "DataError", "Task", "iterate_batches", "make_tasks"]
