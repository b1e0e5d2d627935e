"""The config of a continual-learning run: protocol x method x model x schedule.

The same kind of model as a training run's config (`seqmem.config`), loaded by the same
`load_config(source, overrides, schema=ContinualConfig)`. The options of the protocol, the
method and the mixer are typed by the registered protocol function, method class and mixer
(`protocol_options.n_max`, `method_options.ewc_lambda`, `mixer_options.bias`): a misspelt
option is an error naming its dotted path and the accepted ones.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import (
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from seqmem import mixers
from seqmem.config import ComponentConfig, Strict, component_config_class, to_config_error
from seqmem.config.run import check_loggers
from seqmem.continual.base import method_class, protocol_function
from seqmem.continual.methods import METHODS
from seqmem.continual.protocols import PROTOCOLS
from seqmem.devices import DeviceName
from seqmem.errors import ConfigError


class OptionsConfig(ComponentConfig):
    """The options of one component, written without its kind (the kind is a sibling key:
    `method: ewc` beside `method_options: {ewc_lambda: 1000}`)."""

    @model_serializer(mode="plain")
    def _options_only(self) -> dict[str, Any]:
        return self.options()


@functools.cache
def _options_class(family: str, name: str) -> type[OptionsConfig]:
    builder = {"protocol": protocol_function, "method": method_class,
               "mixer": mixers.get}[family](name)
    return component_config_class(builder, name, family, OptionsConfig,
                                  rebuild_with=(_options_class, (family, name)))


def _typed(family: str, name: str, value: Any, key: str) -> OptionsConfig:
    if isinstance(value, OptionsConfig):
        value = value.options()
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"must be a mapping of {family} {name!r}'s options", key)
    cls = _options_class(family, name)
    try:
        return cls.model_validate({**value, "kind": name})
    except ValidationError as e:
        raise to_config_error(e, cls).within(key) from None


class ContinualConfig(Strict):
    """A continual-learning run: protocol x method x model x schedule."""

    name: str | None = None
    protocol: Literal[PROTOCOLS] = "n_curriculum"  # type: ignore[valid-type]
    setting: Literal["task", "domain"] | None = None  # None: the protocol's default
    protocol_options: SerializeAsAny[OptionsConfig]  # e.g. {n_max: 6, task: n_dms}
    method: Literal[METHODS] = "finetune"  # type: ignore[valid-type]
    method_options: SerializeAsAny[OptionsConfig]  # e.g. {ewc_lambda: 1000}
    mixer: str = "leaky_rnn"
    mixer_options: SerializeAsAny[OptionsConfig]
    d_model: int = Field(64, ge=1)
    n_layers: int = Field(1, ge=1)
    steps: int = Field(300, ge=1)  # per experience
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    eval_batches: int = Field(4, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    curve_every: int = Field(50, ge=1)
    seed: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1)
    device: DeviceName = "auto"  # auto | cpu | cuda | cuda:N | mps (seqmem.devices)
    log: list[str] = Field(default_factory=list)  # live logging per experience (see train.log)

    @field_validator("log", mode="before")
    @classmethod
    def _loggers(cls, v):
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        return check_loggers(list(v or []))

    @model_validator(mode="before")
    @classmethod
    def _typed_options(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        fields = cls.model_fields
        for family, key in (("protocol", "protocol_options"), ("method", "method_options"),
                            ("mixer", "mixer_options")):
            name = data.get(family, fields[family].default)
            accepted = {"protocol": PROTOCOLS, "method": METHODS,
                        "mixer": mixers.names()}[family]
            if name not in accepted:
                if family == "mixer":
                    raise ConfigError(f"unknown mixer {name!r}; accepted: "
                                      f"{', '.join(accepted)}", "mixer")
                continue  # the Literal field reports it
            data[key] = _typed(family, name, data.get(key), key)
        return data
