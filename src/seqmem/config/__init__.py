"""seqmem's configs: one system for every kind of config (see `seqmem.config.base`).

- `RunConfig` (a training run) and its parts live in `seqmem.config.run`;
- continual-learning and bench configs live beside their tiers
  (`seqmem.continual.config.ContinualConfig`, `seqmem.bench.config.BenchConfig`) and are
  the same kind of model, loaded by the same `load_config(source, overrides, schema=...)`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from seqmem.config.base import (
    ComponentConfig,
    Strict,
    apply_overrides,
    component_config_class,
    load,
    parse_value,
    read_yaml,
    to_config_error,
)
from seqmem.config.run import (
    DEFAULT_MIXER,
    DEFAULT_TASK,
    CurriculumConfig,
    EvalConfig,
    HybridMixerConfig,
    MixerConfig,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    length_option,
    mixer_config_class,
    task_config_class,
    validate_mixer,
)
from seqmem.errors import ConfigError


def load_config(source: str | Path | dict | BaseModel | None = None,
                overrides: list[str] | None = None, *, schema: type[Strict] = RunConfig):
    """A config of `schema` (default RunConfig) from a YAML file, a dict, a config or the
    defaults, then dotted overrides (`train.lr=3e-4`); bad input raises ConfigError with the
    dotted path of the key. The result is resolved (see `RunConfig.resolve`)."""
    return load(schema, source, overrides)


__all__ = [
    "DEFAULT_MIXER", "DEFAULT_TASK", "ComponentConfig", "ConfigError", "CurriculumConfig",
    "EvalConfig", "HybridMixerConfig", "MixerConfig", "ModelConfig", "RunConfig", "Strict",
    "TaskConfig", "TrainConfig", "apply_overrides", "component_config_class", "length_option",
    "load_config", "mixer_config_class", "parse_value", "read_yaml", "task_config_class",
    "to_config_error", "validate_mixer",
]
