"""A run described by one flat config: what to build, how to train it, where it goes.

The config is a :class:`RunConfig` (a :class:`~retain.engine.TrainConfig` plus the names and
arguments of the benchmark, model and method). :func:`resolve` is the one path from defaults, a
YAML file, command-line flags, a compare or sweep trial's own keys, ``--set key=value`` pairs
and the ``--smoke`` overlay to a validated config, written fully resolved to the run folder as
``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from retain import config_yaml
from retain.engine.trainer import TrainConfig


class ConfigError(ValueError):
    """A bad config key or value; the message is one line meant for the user."""


@dataclass
class RunConfig(TrainConfig):
    """Everything that defines a run. Same config and seed, same numbers.

    Attributes (beyond :class:`TrainConfig`):
        method, method_args: registered method name and its keyword arguments.
        benchmark, benchmark_args: registered benchmark name and its arguments (``n_tasks``,
            ``seed`` of the class order or permutations, ...). The benchmark's own seed is
            separate from the run seed so that seeds vary training, not the task sequence.
        model, model_args: backbone name (default: ``mlp``) and its arguments.
        head: ``task`` (one head per task) or ``shared`` (one head for all tasks).
        seed: run seed (initialisation, batch order, dropout).
        threads: torch intra-op threads. Default 1: timings on small shared machines stay
            steady and results do not depend on the machine's core count.
        smoke: shrink the run to seconds (:mod:`retain.smoke`): 1 epoch, a few samples per
            class, the first tasks. For checking that a config runs, not for numbers.
    """

    method: str = "finetune"
    method_args: dict[str, Any] = field(default_factory=dict)
    benchmark: str = "split-mnist5k"
    benchmark_args: dict[str, Any] = field(default_factory=dict)
    model: str = "mlp"
    model_args: dict[str, Any] = field(default_factory=dict)
    head: str = "task"
    seed: int = 0
    threads: int = 1
    smoke: bool = False

    def train_config(self) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in asdict(self).items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """All fields, except those added after the first release (augment, device, amp,
        smoke) while they hold their defaults: a config that does not use them keeps the same
        ``config.yaml`` and the same trial folder name (:func:`retain.trials.config_hash`)."""
        d = asdict(self)
        for key, default in LATER_DEFAULTS.items():
            if d.get(key) == default:
                del d[key]
        return d


#: fields added later, left out of :meth:`RunConfig.to_dict` while at these defaults
LATER_DEFAULTS: dict[str, Any] = {"augment": {}, "device": "cpu", "amp": "off", "smoke": False}


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_HINTS = typing.get_type_hints(RunConfig)
DICT_FIELDS = ("method_args", "benchmark_args", "model_args")


def _check_type(key: str, value: Any) -> Any:
    """Coerce/validate ``value`` against the declared type of field ``key``."""
    hint = _HINTS[key]
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            integral = isinstance(value, float) and value.is_integer()
            write = f" (a float; write {int(value)} for an integer)" if integral else ""
            raise ConfigError(f"{key} must be an integer, got {value!r}{write}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{key} must be a list of integers, got {value!r}")
        return value
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    return value


def apply(config: dict[str, Any], updates: dict[str, Any], source: str) -> None:
    """Merge ``updates`` (possibly with dotted ``method_args.x`` keys) into ``config``."""
    for key, value in updates.items():
        if "." in key:
            top, sub = key.split(".", 1)
            if top not in DICT_FIELDS:
                raise ConfigError(
                    f"{source}: unknown key {key!r}; dotted keys must start with "
                    f"{', '.join(DICT_FIELDS)}"
                )
            merged = dict(config.get(top, {}))
            node = merged
            *parents, leaf = sub.split(".")
            for part in parents:  # method_args.base_args.lamb -> nested mappings
                node[part] = dict(node.get(part) or {})
                node = node[part]
            node[leaf] = value
            config[top] = merged
            continue
        if key not in FIELDS:
            raise ConfigError(f"{source}: {_unknown_key(key, config)}")
        value = _check_type(key, value)
        if key in DICT_FIELDS:
            value = {**config.get(key, {}), **value}
        config[key] = value


def _unknown_key(key: str, config: Mapping[str, Any]) -> str:
    """What to say of an unknown top-level key: the ``method_args``/``model_args``/
    ``benchmark_args`` key it is when the method, model or benchmark configured so far takes
    it (``lamb`` -> ``method_args.lamb``), else the closest valid key, then the valid keys."""
    nested = _argument_of(key, config)
    if nested is not None:
        return f"unknown key {key!r}; did you mean {nested}.{key}?"
    from retain.argcheck import suggestion

    return f"unknown key {key!r};{suggestion(key, FIELDS)} valid keys: {', '.join(sorted(FIELDS))}"


def _argument_of(key: str, config: Mapping[str, Any]) -> str | None:
    """``method_args``, ``model_args`` or ``benchmark_args`` when the method, model or
    benchmark named in ``config`` (or the default) takes an argument ``key``, else None."""
    from retain.data.benchmarks import BENCHMARKS, benchmark_parameters
    from retain.methods import REGISTRY
    from retain.models.registry import MODELS, model_options

    method = config.get("method", FIELDS["method"].default)
    params = inspect.signature(REGISTRY[method].__init__).parameters if method in REGISTRY else {}
    if key != "self" and key in params:
        return "method_args"
    model = config.get("model", FIELDS["model"].default)
    if model in MODELS and key in model_options(model):
        return "model_args"
    benchmark = config.get("benchmark", FIELDS["benchmark"].default)
    if benchmark in BENCHMARKS and key in benchmark_parameters(benchmark):
        return "benchmark_args"
    return None


def parse_set(pairs: list[str]) -> dict[str, Any]:
    """``["lr=0.1", "method_args.lamb=5000"]`` -> dict, values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            out[key] = config_yaml.load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}") from None
    return out


def load_yaml(path: str | Path, empty_ok: bool = False) -> dict[str, Any]:
    """The mapping of keys in the YAML file ``path`` (:func:`retain.config_yaml.load`: a
    ``1e-3`` is a number). A missing file or a folder, one not UTF-8 or not valid YAML (the
    line and column said), an empty one (unless ``empty_ok``: then ``{}``) and one not
    holding a mapping: ConfigError."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {str(path)!r} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
            f"offset {e.start}); save it as UTF-8"
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e.strerror or e}") from None
    try:
        data = config_yaml.load(text)
    except yaml.YAMLError as e:
        where = config_yaml.describe_error(e)
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}") from None
    if data is None and empty_ok:
        return {}
    if data is None:
        only = " (only comments)" if text.strip() else ""
        raise ConfigError(f"config file {str(path)!r} is empty{only}")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return data


#: the run seeds torch's generators take (numpy's is seeded with the seed modulo 2**32)
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1

#: one layer of config keys and the source named in its error messages ("--set", "grid", ...)
Layer = tuple[str, Mapping[str, Any]]


def resolve(
    file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    axes: Sequence[Layer] = (),
    overrides: Sequence[Layer] = (),
    required: Sequence[str] = (),
    empty_file: bool = False,
) -> RunConfig:
    """The one way a config is made, by ``retain run``, ``--resume``, ``compare`` and ``sweep``.

    Layers, later wins: defaults < YAML ``file`` < ``flags`` (``None`` values ignored) <
    ``axes`` (a compare or sweep trial's own keys in order: the sweep's ``set``, benchmark,
    method, grid or search point, seed) < ``sets`` (``--set`` pairs, raw ``KEY=VALUE`` or
    parsed) < ``overrides`` (further parsed ``--set`` layers, e.g. compare's
    ``METHOD:KEY=VALUE``). The :mod:`retain.smoke` overlay comes last when any layer sets
    ``smoke``. The result is validated, and its method (with its arguments) and benchmark
    (with its arguments) are checked to exist, before anything is built or trained. Each key
    in ``required`` must be given by some layer (``retain run``: method and benchmark), not
    left to its default. An empty ``file`` is refused unless ``empty_file`` (a run folder's
    ``config.yaml``, compared with its checkpoint's afterwards).

    Raises:
        ConfigError: a bad key, value, name or file (one line).
    """
    config: dict[str, Any] = {}
    if file is not None:
        apply(config, load_yaml(file, empty_ok=empty_file), f"config {file}")
    if flags:
        apply(config, {k: v for k, v in flags.items() if v is not None}, "option")
    for source, updates in axes:
        apply(config, dict(updates), source)
    if sets:
        parsed = dict(sets) if isinstance(sets, Mapping) else parse_set(list(sets))
        apply(config, parsed, "--set")
    for source, updates in overrides:
        apply(config, dict(updates), source)
    missing = [key for key in required if key not in config]
    if missing:
        raise ConfigError(missing_message(missing))
    from retain.methods import non_finite

    for key in ("benchmark_args", "model_args"):  # method_args: make_method, below
        bad = non_finite(config.get(key, {}), key)
        if bad is not None:
            raise ConfigError(f"{bad[0]} must be a finite number, got {bad[1]}")
    if config.get("smoke"):
        from retain.smoke import overlay

        config = overlay(config)
    try:
        rc = RunConfig(**config)
        rc.validate()
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if rc.threads < 1:
        raise ConfigError(f"threads must be at least 1, got {rc.threads}")
    if not SEED_MIN <= rc.seed <= SEED_MAX:
        raise ConfigError(
            f"seed must be an integer from {SEED_MIN} to {SEED_MAX} (what torch can take), "
            f"got {rc.seed}"
        )
    check_names(rc)
    return rc


def missing_message(missing: Sequence[str]) -> str:
    """The line for a run that names no method or no benchmark (``missing``)."""
    needs = " and ".join(f"a {key}" for key in missing)
    flags = " and ".join(f"--{key}" for key in missing)
    them = "them" if len(missing) > 1 else "it"
    return (
        f"a run needs {needs}: give {flags} (or name {them} in a --config file or with --set), "
        "e.g. retain run --method finetune --benchmark split-digits; --resume DIR continues a "
        "stopped run"
    )


def check_names(config: RunConfig) -> None:
    """Unknown method, method argument, benchmark, benchmark argument, model or model option,
    or an argument of the wrong kind (``method_args.lamb must be a number, got 'abc'``), or
    more than one epoch of a single-pass stream: ConfigError, before anything is trained
    (building a method is cheap; benchmarks and models are not built)."""
    from retain.data import DataError
    from retain.data.benchmarks import check_benchmark_args, is_single_pass
    from retain.methods import check_method_args, make_method
    from retain.models.registry import check_model_args

    try:
        check_method_args(config.method, config.method_args, "method_args")
        make_method(config.method, **config.method_args)
        check_benchmark_args(config.benchmark, config.benchmark_args, "benchmark_args")
        check_model_args(config.model, config.model_args, "model_args", head=True)
    except (TypeError, ValueError, DataError) as e:
        raise ConfigError(str(e)) from None
    if config.epochs != 1 and is_single_pass(config.benchmark):
        raise ConfigError(single_pass_message(config.benchmark, config.epochs))


def single_pass_message(benchmark: str, epochs: int) -> str:
    return f"benchmark {benchmark!r} is a single-pass stream: epochs must be 1, got {epochs}"


def build(config: RunConfig):
    """Seed, then build ``(benchmark, model, method)`` from a config (errors: ConfigError)."""
    from retain.data import DataError, get_benchmark
    from retain.engine.trainer import seed_everything
    from retain.methods import make_method
    from retain.models import build_model

    try:
        benchmark = get_benchmark(config.benchmark, **config.benchmark_args)
        if config.smoke:
            from retain.smoke import shrink

            benchmark = shrink(benchmark)
    except DataError as e:
        raise ConfigError(str(e)) from None
    if config.epochs != 1 and any(task.ordered for task in benchmark):
        raise ConfigError(single_pass_message(config.benchmark, config.epochs))
    seed_everything(config.seed)
    try:
        model = build_model(
            config.model,
            tuple(benchmark.input_shape),
            benchmark.classes_per_task,
            head=config.head,
            **config.model_args,
        )
        method = make_method(config.method, **config.method_args)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    except (RuntimeError, MemoryError) as e:  # an allocation that cannot be made
        too_large = _too_large(config, e)
        if too_large is None:
            raise
        raise ConfigError(too_large) from None
    return benchmark, model, method


def _too_large(config: RunConfig, error: BaseException) -> str | None:
    """The one-line message for a model whose weights cannot be allocated, with the size
    asked when the allocator says it; None for any other error."""
    import re

    text = str(error)
    if not isinstance(error, MemoryError) and not re.search(
        r"can't allocate memory|out of memory|not enough memory", text, re.IGNORECASE
    ):
        return None
    asked = re.search(r"allocate (\d+) bytes", text)
    size = ""
    if asked:
        n = int(asked.group(1))
        size = f" (one of its tensors asks for {n:,} bytes, {n / 2**30:,.1f} GiB)"
    args = f" with model_args {config.model_args}" if config.model_args else ""
    return f"model {config.model!r}{args} is too large for this machine's memory{size}"
