"""Run configuration: pydantic v2 models with `extra="forbid"`.

A run is one YAML file (or the defaults) plus dotted overrides (`train.lr=3e-4`). Every mixer
and every task has its own config class, generated from its constructor's keyword
hyperparameters (so the two cannot drift apart) and selected by a `kind` field:

    model:
      d_model: 128
      mixer: {kind: leaky_rnn, rule: default}
    task: {kind: n_parity}

An unknown or misspelt key, or an invalid value, is a `ConfigError` naming its dotted path.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import typing
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from seqmem import mixers, tasks
from seqmem.errors import ConfigError, SeqmemError
from seqmem.models.sequence import SequenceModel, parse_pattern
from seqmem.registry import hyperparameters


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


DEFAULT_MIXER, DEFAULT_TASK = "leaky_rnn", "n_parity"
_NESTED = "\x00"  # marks a nested path inside a value error message


def _kwargs_model(cls: type, kind: str, family: str) -> type[BaseModel]:
    """A pydantic model mirroring cls's keyword-only constructor hyperparameters + `kind`."""
    hints = typing.get_type_hints(cls.__init__)
    fields: dict[str, Any] = {"kind": (Literal[kind], kind)}
    for name, p in hyperparameters(cls).items():
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[name] = (hints.get(name, Any), default)
    return create_model(f"{cls.__name__}Config", __config__=ConfigDict(extra="forbid"), **fields)


@functools.cache
def mixer_config_class(kind: str) -> type[BaseModel]:
    """The config class of a registered mixer (fields = its keyword hyperparameters)."""
    return _kwargs_model(mixers.get(kind), kind, "mixer")


@functools.cache
def task_config_class(kind: str) -> type[BaseModel]:
    """The config class of a registered task (fields = its keyword hyperparameters)."""
    return _kwargs_model(tasks.get(kind), kind, "task")


def _validate_kind(value: Any, family: str, registry_names, config_class, default: str
                   ) -> dict:
    if isinstance(value, str):
        value = {"kind": value}
    if isinstance(value, dict) and "kind" not in value:
        value = {"kind": default, **value}  # options given without a kind: the default kind
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping with a 'kind' key (one of "
                         f"{', '.join(registry_names())}), got {value!r}")
    kind = value["kind"]
    if kind not in registry_names():
        raise ValueError(f"unknown {family} {kind!r}; accepted: {', '.join(registry_names())}")
    try:
        return config_class(kind).model_validate(value).model_dump()
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{_NESTED}{loc}{_NESTED}{_message(err)}") from None


def _validate_mixer(value: Any) -> dict:
    """A mixer entry: {kind: name, **options}, or a hybrid {kind: "a*3,b", a: {...}, b: {...}}."""
    kind = value.get("kind") if isinstance(value, dict) else value
    if not isinstance(kind, str) or ("," not in kind and "*" not in kind):
        return _validate_kind(value, "mixer", mixers.names, mixer_config_class, DEFAULT_MIXER)
    try:
        names = parse_pattern(kind)
    except SeqmemError as e:
        raise ValueError(f"{_NESTED}kind{_NESTED}{e}") from None
    if isinstance(value, str):
        value = {"kind": value}
    if len(set(names)) == 1:  # "gru*2": one mixer, flat options
        out = _validate_kind({**value, "kind": names[0]}, "mixer", mixers.names,
                             mixer_config_class, DEFAULT_MIXER)
        return {**out, "kind": kind}
    out: dict[str, Any] = {"kind": kind}
    for key in value:
        if key != "kind" and key not in names:
            raise ValueError(f"{_NESTED}{key}{_NESTED}unknown key; a hybrid's options are "
                             f"keyed by its mixers: {', '.join(sorted(set(names)))}")
    for name in sorted(set(names)):
        opts = value.get(name) or {}
        if not isinstance(opts, dict):
            raise ValueError(f"{_NESTED}{name}{_NESTED}must be a mapping of {name}'s options")
        try:
            d = _validate_kind({**opts, "kind": name}, "mixer", mixers.names,
                               mixer_config_class, name)
        except ValueError as e:
            msg = str(e)
            if msg.startswith(_NESTED):
                _, inner, rest = msg.split(_NESTED, 2)
                raise ValueError(f"{_NESTED}{name}.{inner}{_NESTED}{rest}") from None
            raise
        out[name] = {k: v for k, v in d.items() if k != "kind"}
    return out


def length_option(task_cls: type) -> str | None:
    """The constructor option that sets a task's sequence length: the class attribute
    `length_option` if it has one, else `seq_len` if the task takes it, else None."""
    opt = getattr(task_cls, "length_option", None)
    if opt is None and "seq_len" in tasks.hyperparameters(task_cls):
        opt = "seq_len"
    return opt


def mixer_options(mixer: dict) -> dict:
    """The options to pass to SequenceModel for a validated mixer entry (all but `kind`)."""
    return {k: v for k, v in mixer.items() if k != "kind"}


class ModelConfig(Strict):
    """The network: encoder -> blocks -> heads. `mixer.kind` is a mixer name or a layer pattern
    such as "gated_deltanet*3,attention" (then options are keyed by mixer name, e.g.
    `model.mixer.attention.window=64`); `n_layers` stacks the pattern that many times."""

    d_model: int = Field(128, ge=1)
    n_layers: int = Field(1, ge=1)
    block: Literal["plain", "residual"] = "plain"
    mixer: dict = Field(default_factory=lambda: {"kind": DEFAULT_MIXER})

    @field_validator("mixer", mode="before")
    @classmethod
    def _mixer(cls, v):
        return _validate_mixer(v)


class TrainConfig(Strict):
    """The training loop. An epoch is `steps_per_epoch` updates then `eval_batches` evaluation
    batches.

    "auto" settings follow the source of the task: on the flagship paper's tasks (n_parity,
    n_dms) SGD with Nesterov momentum (lr 0.05, momentum 0.1) for leaky_rnn and elman, Adam
    (lr 1e-3) for the rest, at a constant learning rate; on every other task AdamW (lr 1e-3,
    weight decay 0.01) with a cosine schedule over the step budget
    (max_epochs * steps_per_epoch), the usual setting of the synthetic-task literature.
    `target_acc` stops a run without a curriculum once its evaluation accuracy reaches it
    (classification tasks only).

    `gtf_alpha` (regression tasks that forecast their own next input, e.g. `dynamics`; default
    None: off, ordinary teacher forcing): generalised teacher forcing (Hess et al. 2023). The
    model runs step by step and its input at t + 1 is
    gtf_alpha * x_{t+1} (the data) + (1 - gtf_alpha) * its own prediction of x_{t+1};
    1 is teacher forcing, 0 free running (see `seqmem.train.loop.gtf_predictions`). Used in
    training only; evaluation batches are teacher forced and the free-running metrics run
    free."""

    optimizer: Literal["auto", "sgd", "adam", "adamw"] = "auto"
    lr: float | None = Field(None, gt=0)
    momentum: float = Field(0.1, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float | None = Field(None, ge=0)
    schedule: Literal["auto", "constant", "cosine"] = "auto"
    warmup_steps: int = Field(0, ge=0)
    clip: float | None = Field(2.0, gt=0)
    batch_size: int = Field(256, ge=1)
    steps_per_epoch: int = Field(50, ge=1)
    eval_batches: int = Field(10, ge=1)
    max_epochs: int = Field(1000, ge=1)
    max_time_s: float | None = Field(None, gt=0)
    target_acc: float | None = Field(None, gt=0, le=1)
    threads: int | None = Field(1, ge=1)
    gtf_alpha: float | None = Field(None, ge=0, le=1)


class EvalConfig(Strict):
    """Extra evaluation after training. `lengths`: evaluate the trained model on the task
    rebuilt at each of these sequence lengths (its `seq_len`-like option, see
    `Task.length_option`), e.g. longer than trained, for length generalisation.
    `free_run_steps`, `free_run_trajectories`: after training on a task with free-running
    metrics (`dynamics`), D_stsp and D_H of that many generated steps, averaged over that many
    test trajectories (`seqmem.analysis.dynamics.free_run_metrics`); 0 steps: skip."""

    lengths: list[int] = Field(default_factory=list)
    batches: int = Field(4, ge=1)
    free_run_steps: int = Field(2000, ge=0)
    free_run_trajectories: int = Field(4, ge=1)

    @field_validator("lengths", mode="before")
    @classmethod
    def _comma_list(cls, v):
        if isinstance(v, str):  # "64,128,256" from the command line
            try:
                return [int(x) for x in v.split(",") if x.strip()]
            except ValueError:
                raise ValueError(f"lengths must be integers like 64,128,256, got {v!r}") from None
        if isinstance(v, int) and not isinstance(v, bool):
            return [v]
        return v

    @field_validator("lengths")
    @classmethod
    def _positive(cls, v):
        if any(n < 1 for n in v):
            raise ValueError(f"lengths must be positive integers, got {v}")
        return v


class CurriculumConfig(Strict):
    """How N grows (tasks with an `N` option only).

    - single: one head; when its accuracy > threshold, N -> N + 1 on the same head.
    - multi: heads for N = n_start..N; when the mean accuracy over heads and the newest head's
      accuracy both exceed threshold, add a head for N + 1.
    - sliding: like multi, but only the newest `window` heads are trained and evaluated.
    - none: train the task as configured.
    - auto: multi for tasks with an N option (n_parity, n_dms), none for the others.
    The curriculum ends when N = n_max is solved.
    """

    kind: Literal["auto", "single", "multi", "sliding", "none"] = "auto"
    n_start: int = Field(2, ge=1)
    n_max: int = Field(100, ge=1)
    threshold: float = Field(0.98, gt=0, le=1)
    window: int = Field(5, ge=1)
    knob: str = "N"  # the task option that grows: N, or any integer option (seq_len, n_pairs)
    step: int = Field(1, ge=1)


class RunConfig(Strict):
    """One run: a model trained on a task under a curriculum, with a seed."""

    name: str | None = None
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: dict = Field(default_factory=lambda: {"kind": DEFAULT_TASK})
    train: TrainConfig = Field(default_factory=TrainConfig)
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, v):
        return _validate_kind(v, "task", tasks.names, task_config_class, DEFAULT_TASK)

    @model_validator(mode="after")
    def _values_fit(self):
        # Values only the constructors can judge (N >= 2, tau_init, ...) are judged now, by
        # building the task and the mixer (on the meta device: no memory, no side effects).
        opts = opts_task = {k: v for k, v in self.task.items() if k != "kind"}
        try:
            tasks.build(self.task["kind"], **opts)
        except SeqmemError as e:
            raise ValueError(f"{_NESTED}task{_NESTED}{e}") from None
        opts = {k: v for k, v in self.model.mixer.items() if k != "kind"}
        try:
            with torch.device("meta"):
                SequenceModel(1, self.model.d_model, mixer=self.model.mixer["kind"],
                              mixer_options=opts, n_layers=self.model.n_layers)
        except SeqmemError as e:
            raise ValueError(f"{_NESTED}model.mixer{_NESTED}{e}") from None
        c = self.curriculum
        params = tasks.hyperparameters(tasks.get(self.task["kind"]))
        has_N = "N" in params
        knobs = [k for k, p in params.items() if isinstance(p.default, int)
                 and not isinstance(p.default, bool) and k not in ("N", "data_seed", "split_seed")]
        if c.kind == "auto":
            c.kind = "multi" if has_N and c.knob == "N" else "none"
        if c.kind != "none" and c.knob != "N":
            if c.knob not in knobs:
                accepted = ["N"] * has_N + knobs
                raise ValueError(f"curriculum.knob: task {self.task['kind']!r} has no integer "
                                 f"option {c.knob!r}; accepted: {', '.join(accepted)}")
            try:
                for value in (c.n_start, c.n_max):
                    tasks.build(self.task["kind"], **{**opts_task, c.knob: value})
            except SeqmemError as e:
                raise ValueError(f"curriculum: {c.knob} from n_start={c.n_start} to "
                                 f"n_max={c.n_max}: {e}") from None
        elif c.kind != "none":
            if not has_N:
                raise ValueError(
                    f"curriculum.kind: {c.kind!r} needs a task with an N option (n_parity, "
                    f"n_dms) or curriculum.knob set to one of the task's integer options"
                    f"{' (' + ', '.join(knobs) + ')' if knobs else ''}; task "
                    f"{self.task['kind']!r} has no N: use curriculum.kind=none"
                )
            if c.n_start < 2:
                raise ValueError(f"curriculum.n_start: N starts at 2 or more, got {c.n_start}")
        if c.kind != "none" and c.n_max < c.n_start:
            raise ValueError(f"curriculum.n_max ({c.n_max}) must be >= curriculum.n_start "
                             f"({c.n_start})")
        task_cls = tasks.get(self.task["kind"])
        regression = getattr(task_cls, "loss", "ce") == "mse"
        if self.train.target_acc is not None and regression:
            raise ValueError(f"train.target_acc: task {self.task['kind']!r} is a regression "
                             f"task (MSE, no accuracy); leave train.target_acc null")
        if self.train.gtf_alpha is not None and not regression:
            raise ValueError(f"train.gtf_alpha: generalised teacher forcing needs a regression "
                             f"task that forecasts its next input (dynamics); task "
                             f"{self.task['kind']!r} is a classification task")
        if self.eval.lengths and length_option(tasks.get(self.task["kind"])) is None:
            raise ValueError(f"eval.lengths: task {self.task['kind']!r} has no sequence-length "
                             f"option to vary; leave eval.lengths empty")
        return self

    def config_hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---- loading, overrides and error messages -------------------------------------------------
def _message(err: dict) -> str:
    msg = err["msg"]
    if err.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown key"
    return msg


def format_validation_error(e: ValidationError) -> str:
    """One line per problem: '<dotted.path>: <what is wrong>'."""
    lines = []
    for err in e.errors():
        loc = [str(p) for p in err["loc"]]
        msg = _message(err)
        if msg.startswith(_NESTED):
            _, inner, msg = msg.split(_NESTED, 2)
            loc.append(inner)
        where = ".".join(loc)
        if err.get("type") == "extra_forbidden":
            msg += "; accepted: " + ", ".join(_accepted_keys(loc))
        lines.append(f"{where}: {msg}" if where else msg)
    return "; ".join(lines)


def _accepted_keys(loc: list[str]) -> list[str]:
    model: Any = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def parse_value(text: str) -> Any:
    """A dotted override's value, read as YAML (numbers, booleans, lists, null, strings)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides to a nested dict (returns a new dict)."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, value = item.removeprefix("--").partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        parts = key.split(".")
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if isinstance(nxt, str) and p in ("mixer", "task"):
                nxt = {"kind": nxt}
            if not isinstance(nxt, dict):
                nxt = {}
            node[p] = nxt
            node = nxt
        if parts[-1] == "kind" and parts[-2:-1] in (["mixer"], ["task"]):
            node.clear()  # changing the kind drops the previous kind's options
        node[parts[-1]] = parse_value(value)
    return data


def load_config(source: str | Path | dict | None = None, overrides: list[str] | None = None
                ) -> RunConfig:
    """Build a RunConfig from a YAML file, a dict or the defaults, then dotted overrides."""
    if source is None:
        data: dict = {}
    elif isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: "
                              f"{str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at top level")
    data = apply_overrides(data, overrides or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    except SeqmemError as e:
        raise ConfigError(str(e)) from None
