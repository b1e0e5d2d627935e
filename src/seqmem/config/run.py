"""Run configuration: pydantic v2 models with `extra="forbid"`, typed all the way down.

A run is one YAML file (or the defaults) plus dotted overrides (`train.lr=3e-4`). Every mixer
and every task has its own config class, generated from its constructor's keyword
hyperparameters (so the two cannot drift apart) and selected by a `kind` field:

    model:
      d_model: 128
      mixer: {kind: leaky_rnn, rule: default}
    task: {kind: n_parity}

After validation `cfg.model.mixer` is a `MixerConfig` (or a `HybridMixerConfig` for a layer
pattern) and `cfg.task` a `TaskConfig`: read `cfg.task.kind` and `cfg.task.options()`. An
unknown or misspelt key, or an invalid value, is a `ConfigError` naming its dotted path.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import (
    Field,
    SerializeAsAny,
    field_validator,
    model_serializer,
    model_validator,
)

from seqmem import mixers, tasks
from seqmem.config.base import ComponentConfig, Strict, component_config_class, validate_component
from seqmem.curricula import KINDS as CURRICULUM_KINDS
from seqmem.devices import DeviceName
from seqmem.errors import ConfigError, SeqmemError
from seqmem.models.sequence import SequenceModel, parse_pattern
from seqmem.ops.backends import check_spec

DEFAULT_MIXER, DEFAULT_TASK = "leaky_rnn", "n_parity"


class MixerConfig(ComponentConfig):
    """A mixer: `kind` (a registered mixer name) and its keyword options."""

    family: ClassVar[str] = "mixer"


class TaskConfig(ComponentConfig):
    """A task: `kind` (a registered task name) and its keyword options."""

    family: ClassVar[str] = "task"

    def task_class(self) -> type:
        return tasks.get(self.kind)


@functools.cache
def mixer_config_class(kind: str) -> type[MixerConfig]:
    """The config class of a registered mixer (fields = its keyword hyperparameters)."""
    return component_config_class(mixers.lookup(kind), kind, "mixer", MixerConfig,
                                  rebuild_with=(mixer_config_class, (kind,)))


@functools.cache
def task_config_class(kind: str) -> type[TaskConfig]:
    """The config class of a registered task (fields = its keyword hyperparameters)."""
    return component_config_class(tasks.get(kind), kind, "task", TaskConfig,
                                  rebuild_with=(task_config_class, (kind,)))


def validate_mixer_entry(value: Any, default: str = DEFAULT_MIXER) -> MixerConfig:
    return validate_component(value, family="mixer", names=mixers.every_name(),
                              config_class=mixer_config_class, default=default)


class HybridMixerConfig(MixerConfig):
    """A layer pattern such as "gated_deltanet*3,attention" (`kind`) with one MixerConfig per
    distinct mixer (`parts`). Written as YAML the options are keyed by mixer name
    ({kind: "gru*2,lstm", lstm: {bias: false}}); a pattern of one mixer ("gru*2") takes that
    mixer's options flat ({kind: "gru*2", bias: false})."""

    kind: str
    parts: dict[str, SerializeAsAny[MixerConfig]]

    def names(self) -> list[str]:
        """The mixers of one repetition of the pattern, in order."""
        return parse_pattern(self.kind)

    def options(self) -> dict[str, Any]:
        if len(self.parts) == 1:
            return next(iter(self.parts.values())).options()
        return {name: part.options() for name, part in self.parts.items()}

    @model_serializer(mode="plain")
    def _flat(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.options()}


def validate_mixer(value: Any) -> MixerConfig:
    """A mixer entry: {kind: name, **options}, or a hybrid {kind: "a*3,b", a: {...}, b: {...}}."""
    if isinstance(value, HybridMixerConfig):
        return value
    if isinstance(value, MixerConfig):
        value = value.model_dump()
    kind = value.get("kind") if isinstance(value, dict) else value
    if not isinstance(kind, str) or ("," not in kind and "*" not in kind):
        return validate_mixer_entry(value)
    try:
        names = parse_pattern(kind)
    except SeqmemError as e:
        raise ConfigError(str(e), "kind") from None
    if isinstance(value, str):
        value = {"kind": value}
    distinct = sorted(set(names))
    if len(distinct) == 1:  # "gru*2": one mixer, flat options
        part = validate_mixer_entry({**value, "kind": names[0]})
        return HybridMixerConfig(kind=kind, parts={names[0]: part})
    for key in value:
        if key != "kind" and key not in distinct:
            raise ConfigError(f"unknown key; a hybrid's options are keyed by its mixers: "
                              f"{', '.join(distinct)}", key)
    parts = {}
    for name in distinct:
        opts = value.get(name) or {}
        if not isinstance(opts, dict):
            raise ConfigError(f"must be a mapping of {name}'s options", name)
        try:
            parts[name] = validate_mixer_entry({**opts, "kind": name}, default=name)
        except ConfigError as e:
            raise e.within(name) from None
    return HybridMixerConfig(kind=kind, parts=parts)


def grid_tasks() -> list[str]:
    """The tasks whose inputs are grids: those of `seqmem.tasks.grid`, and those with a
    `layout` option (as "name (layout=grid)")."""
    out = [n for n in tasks.names() if tasks.get(n).__module__ == "seqmem.tasks.grid"]
    return out + [f"{n} (layout=grid)" for n in tasks.names()
                  if "layout" in tasks.hyperparameters(tasks.get(n))]


def check_grid_mixers(mixer_kind: str, task_kind: str, grid) -> None:
    """One ConfigError line (at model.mixer.kind) naming the 2-D mixers and the grid tasks if
    the mixer pattern has a 2-D mixer and the task has no grid."""
    two_d = [n for n in parse_pattern(mixer_kind) if mixers.is_2d(n)]
    if two_d and grid is None:
        raise ConfigError(f"the 2-D mixer {two_d[0]} needs a grid task; task {task_kind!r} is a "
                          f"sequence. 2-D mixers: {', '.join(mixers.names_2d())}; grid tasks: "
                          f"{', '.join(grid_tasks())}", "model.mixer.kind")


def length_option(task_cls: type) -> str | None:
    """The constructor option that sets a task's sequence length: the class attribute
    `length_option` if it has one, else `seq_len` if the task takes it, else None."""
    opt = getattr(task_cls, "length_option", None)
    if opt is None and "seq_len" in tasks.hyperparameters(task_cls):
        opt = "seq_len"
    return opt


class ModelConfig(Strict):
    """The network: encoder -> blocks -> heads. `mixer.kind` is a mixer name or a layer pattern
    such as "gated_deltanet*3,attention" (then options are keyed by mixer name, e.g.
    `model.mixer.attention.window=64`); `n_layers` stacks the pattern that many times."""

    d_model: int = Field(128, ge=1, description="width of every block")
    n_layers: int = Field(1, ge=1, description="times the mixer pattern is stacked")
    block: Literal["plain", "residual"] = Field(
        "plain", description="plain: the mixer alone; residual: norm, mixer, residual and MLP")
    mixer: SerializeAsAny[MixerConfig] = Field(
        default_factory=lambda: validate_mixer_entry(DEFAULT_MIXER))

    @field_validator("mixer", mode="before")
    @classmethod
    def _mixer(cls, v):
        return validate_mixer(v)


class TrainConfig(Strict):
    """The training loop. An epoch is `steps_per_epoch` updates then `eval_batches` evaluation
    batches.

    "auto" settings follow the source of the task: on the flagship paper's tasks (n_parity,
    n_dms) SGD with Nesterov momentum (lr 0.05, momentum 0.1) for leaky_rnn and elman, Adam
    (lr 1e-3) for the rest, at a constant learning rate; on every other task AdamW (lr 1e-3,
    weight decay 0.01) with a cosine schedule over the step budget
    (max_epochs * steps_per_epoch), the usual setting of the synthetic-task literature.
    `target_acc` stops a run without a curriculum once its evaluation accuracy has reached it
    in `target_patience` consecutive evaluations (classification tasks only; one evaluation
    is noisy). The learning-rate schedule runs over the budget: the updates of max_epochs,
    and with `max_time_s` the time, whichever ends first.

    `gtf_alpha` (regression tasks that forecast their own next input, e.g. `dynamics`; default
    None: off, ordinary teacher forcing): generalised teacher forcing (Hess et al. 2023). The
    model runs step by step and its input at t + 1 is
    gtf_alpha * x_{t+1} (the data) + (1 - gtf_alpha) * its own prediction of x_{t+1};
    1 is teacher forcing, 0 free running (see `seqmem.train.loop.gtf_predictions`). Used in
    training only; evaluation batches are teacher forced and the free-running metrics run
    free. `gtf`: where the forcing acts: "input" (as above) or "latent" (the paper's form, for
    a model read out by the identity of its first N latent units: the state itself is forced,
    z~[:N] = alpha x + (1 - alpha) z[:N]; one plain block of a mixer in
    `seqmem.train.gtf.latent_mixers()`, plrnn or al_rnn; the builder fixes the identity
    read-out). `gtf_alpha=adaptive` (latent only): alpha = max(0, 1 - 1/G) from the geometric
    mean G of the step Jacobians' spectral norms on each batch (`seqmem.train.gtf`)."""

    optimizer: Literal["auto", "sgd", "adam", "adamw"] = Field(
        "auto", description="auto: the task's recipe (seqmem.build.RECIPES)")
    lr: float | None = Field(None, gt=0, description="learning rate (null: the optimizer's "
                             "default: sgd 0.05, adam and adamw 1e-3)")
    momentum: float = Field(0.1, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(True, description="SGD with Nesterov momentum")
    weight_decay: float | None = Field(None, ge=0, description="null: 0.01 for adamw, else 0")
    schedule: Literal["auto", "constant", "cosine", "linear", "rex", "step", "inverse_sqrt",
                      "wsd", "infinite", "refined"] = Field(
        "auto", description="learning-rate schedule over the budget (seqmem.train.schedules): "
        "constant, cosine, linear, rex, step, inverse_sqrt, wsd (warm-up, stable, decay), "
        "infinite (cool-down, constant, annealing), refined (from train.schedule_from); "
        "auto: the task's recipe")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up updates")
    min_lr_fraction: float | None = Field(
        None, ge=0, lt=1, description="final learning rate as a fraction of lr (cosine, "
        "linear, rex, wsd, infinite); null: 0, and 0.01 for infinite")
    decay_fraction: float = Field(0.2, ge=0, le=1, description="wsd: the final decay, "
                                  "infinite: the final annealing, as a fraction of the budget")
    decay_shape: Literal["linear", "sqrt", "cosine"] = Field(
        "linear", description="wsd's decay: linear 1-q, sqrt 1-sqrt(q), cosine")
    cooldown_fraction: float = Field(0.1, ge=0, le=1, description="infinite: the cosine "
                                     "cool-down from lr to the constant level, as a fraction "
                                     "of the budget")
    constant_fraction: float = Field(0.5, gt=0, le=1, description="infinite: the learning rate "
                                     "of its constant phase as a fraction of lr")
    step_milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75],
                                         description="step: fractions of the budget at which "
                                         "the rate is multiplied by step_gamma")
    step_gamma: float = Field(0.1, gt=0, le=1, description="step: the factor at each milestone")
    schedule_from: str | None = Field(None, description="refined: the run (an id in this "
                                      "run's store, or its folder) whose gradient norms are "
                                      "refined")
    refine_smoothing: float = Field(0.05, ge=0, lt=1, description="refined: median-filter "
                                    "width as a fraction of the source run's updates")
    grad_noise: float | None = Field(None, gt=0, description="annealed gradient noise: eta of "
                                     "sigma^2 = eta / (1 + t)^gamma (null: off)")
    grad_noise_gamma: float = Field(0.55, ge=0, description="gradient noise: the decay exponent "
                                    "gamma")
    clip: float | None = Field(2.0, gt=0, description="gradient norm clipping (null: none)")
    batch_size: int = Field(256, ge=1, description="sequences per update and per evaluation "
                            "batch (some tasks start from less: `config --show task`)")
    steps_per_epoch: int = Field(50, ge=1, description="updates per epoch")
    eval_batches: int = Field(10, ge=1, description="evaluation batches per epoch")
    max_epochs: int = Field(1000, ge=1, description="budget in epochs")
    max_time_s: float | None = Field(None, gt=0, description="budget in seconds of training")
    target_acc: float | None = Field(None, gt=0, le=1, description="stop a run without a "
                                     "curriculum at this evaluation accuracy")
    target_patience: int = Field(1, ge=1, description="consecutive evaluations at target_acc "
                                 "to stop")
    threads: int | None = Field(1, ge=1, description="torch threads (null: torch's choice)")
    device: DeviceName = Field("auto", description="auto (cuda when available, else cpu), "
                               "cpu, cuda, cuda:N or mps: where the model, its optimiser and "
                               "its batches live")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast of the forward pass: fp32 (none), bf16, fp16 (with a "
        "gradient scaler); recurrences run in float32 always (seqmem.devices)")
    backend: str | dict[str, str] = Field(
        "auto", description="kernels of the ops: auto (the installed GPU kernel that "
        "supports a call on CUDA, else seqmem's own), torch, fla, mamba_ssm; or per op, e.g. "
        "{gla: fla, selective_scan: torch} (seqmem.ops.backends)")
    nproc: int = Field(1, ge=1, description="data-parallel processes of one run (gloo on "
                       "the CPU, NCCL on CUDA; seqmem.train.distributed): the same numbers as "
                       "one process with the whole batch")
    compile: bool = Field(False, description="torch.compile the model's blocks (see "
                          "benchmarks/compile.md for what it gains per mixer on a CPU)")
    gtf_alpha: Annotated[float, Field(ge=0, le=1)] | Literal["adaptive"] | None = Field(
        None, description="generalised teacher forcing: input = alpha data + (1 - alpha) "
        "prediction; adaptive (gtf=latent): from the Jacobians' norms")
    gtf: Literal["input", "latent"] = Field("input", description="where generalised teacher "
                                            "forcing acts: the next input, or the latent state")
    log: list[str] = Field(default_factory=list, description="live logging of every epoch: "
                           "tensorboard, wandb (offline; files in the run's folder)")

    @field_validator("backend")
    @classmethod
    def _backend(cls, v):
        try:
            check_spec(v)
        except SeqmemError as e:  # pydantic names the key: train.backend
            raise ValueError(str(e)) from None
        return v

    @field_validator("log", mode="before")
    @classmethod
    def _loggers(cls, v):
        if isinstance(v, str):  # "tensorboard,wandb" from the command line
            v = [x.strip() for x in v.split(",") if x.strip()]
        return check_loggers(list(v or []))


LOGGERS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # live logger -> its package


def check_loggers(names: list[str]) -> list[str]:
    """The live loggers asked for (`seqmem.engine.logging`), or a one-line error naming one
    that is unknown or whose package is not installed."""
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"unknown logger {name!r}; accepted: {', '.join(LOGGERS)}")
        if importlib.util.find_spec(LOGGERS[name]) is None:
            raise ConfigError(f"logging to {name} needs the {LOGGERS[name]} package: pip "
                              f"install 'seqmem[logging]' (or pip install {LOGGERS[name]})")
    return names


class EvalConfig(Strict):
    """Extra evaluation after training. `lengths`: evaluate the trained model on the task
    rebuilt at each of these sequence lengths (its `seq_len`-like option, see
    `Task.length_option`), e.g. longer than trained, for length generalisation.
    `free_run_steps`, `free_run_trajectories`: after training on a task with free-running
    metrics (`dynamics`), D_stsp and D_H of that many generated steps, averaged over that many
    test trajectories (`seqmem.analysis.dynamics.free_run_metrics`); 0 steps: skip."""

    lengths: list[int] = Field(default_factory=list, description="after training, accuracy at "
                               "these sequence lengths, e.g. 64,128,256")
    batches: int = Field(4, ge=1, description="batches per length of eval.lengths")
    free_run_steps: int = Field(2000, ge=0, description="dynamics: steps the model runs free "
                                "for D_stsp and D_H (0: skip)")
    free_run_trajectories: int = Field(4, ge=1, description="dynamics: test trajectories")
    exact: bool | None = Field(None, description="evaluate on one exact pass over a finite "
                               "held-out split (null: whenever the task has one)")

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

    kind: Literal[("auto", *CURRICULUM_KINDS)] = Field(  # type: ignore[valid-type]
        "auto", description="single, multi, sliding, none; auto: multi for tasks with N")
    n_start: int = Field(2, ge=1, description="the knob's first value")
    n_max: int = Field(100, ge=1, description="the knob's last value")
    threshold: float = Field(0.98, gt=0, le=1, description="accuracy that solves a stage")
    window: int = Field(5, ge=1, description="sliding: values trained at once")
    knob: str = Field("N", description="the task option that grows: N, or any integer option "
                      "(seq_len, n_pairs)")
    step: int = Field(1, ge=1, description="how much the knob grows per stage")


class RunConfig(Strict):
    """One run: a model trained on a task under a curriculum, with a seed."""

    name: str | None = Field(None, description="a label for the run")
    seed: int = Field(0, description="seed of the weights and the data")
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: SerializeAsAny[TaskConfig] = Field(
        default_factory=lambda: task_config_class(DEFAULT_TASK)())
    train: TrainConfig = Field(default_factory=TrainConfig)
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, v):
        return validate_component(v, family="task", names=tasks.names(),
                                  config_class=task_config_class, default=DEFAULT_TASK)

    def curriculum_kind(self) -> str:
        """The curriculum that runs: `curriculum.kind`, with "auto" read as "multi" for a task
        with an N option (and the knob N) and "none" otherwise."""
        c = self.curriculum
        if c.kind != "auto":
            return c.kind
        has_N = "N" in tasks.hyperparameters(self.task.task_class())
        return "multi" if has_N and c.knob == "N" else "none"

    def resolve(self) -> RunConfig:
        """The config that runs, as a run stores it, so that the stored config never differs
        from what ran:
        - every "auto" that the config alone decides made explicit (`curriculum.kind`);
        - the task's training defaults (`Task.train_defaults`) filled into the train keys
          that the config leaves unset;
        - the task's "auto" options that the installed packages decide made explicit
          (`Task.resolve_options`, e.g. mnist1d's `source`);
        - under a curriculum, the task option it grows (`task.N`, or `curriculum.knob`) at
          the value training starts from (`curriculum.n_start`)."""
        kind = self.curriculum_kind()
        update: dict = {}
        if kind != self.curriculum.kind:
            update["curriculum"] = self.curriculum.model_copy(update={"kind": kind})
        defaults = {k: v for k, v in self.task.task_class().train_defaults.items()
                    if k not in self.train.model_fields_set}
        if defaults:  # the task's training defaults, where the config leaves them unset
            update["train"] = self.train.model_copy(update=defaults)
        task_update = {k: v for k, v in self.task.task_class().resolve_options(
            self.task.options()).items() if getattr(self.task, k, v) != v}
        knob = self.curriculum.knob
        if kind != "none" and knob in type(self.task).model_fields \
                and getattr(self.task, knob) != self.curriculum.n_start:
            task_update[knob] = self.curriculum.n_start
        if task_update:  # "auto" task options made explicit, the curriculum's start value
            update["task"] = self.task.model_copy(update=task_update)
        return self.model_copy(update=update) if update else self

    @model_validator(mode="after")
    def _values_fit(self):
        # Values only the constructors can judge (N >= 2, tau_init, ...) are judged now, by
        # building the task and the mixer (on the meta device: no memory, no side effects).
        task_kind, opts_task = self.task.kind, self.task.options()
        try:
            task = tasks.build(task_kind, **opts_task)
        except SeqmemError as e:
            raise ConfigError(str(e), "task") from None
        grid = getattr(task, "grid", None)
        check_grid_mixers(self.model.mixer.kind, task_kind, grid)
        try:
            with torch.device("meta"):
                SequenceModel(1, self.model.d_model, mixer=self.model.mixer.kind,
                              mixer_options=self.model.mixer.options(),
                              n_layers=self.model.n_layers, grid=grid)
        except SeqmemError as e:
            raise ConfigError(str(e), "model.mixer") from None
        c, kind = self.curriculum, self.curriculum_kind()
        task_cls = self.task.task_class()
        params = tasks.hyperparameters(task_cls)
        has_N = "N" in params
        knobs = [k for k, p in params.items() if isinstance(p.default, int)
                 and not isinstance(p.default, bool) and k not in ("N", "data_seed", "split_seed")]
        if kind != "none" and c.knob != "N":
            if c.knob not in knobs:
                accepted = ["N"] * has_N + knobs
                raise ConfigError(f"task {task_kind!r} has no integer option {c.knob!r}; "
                                  f"accepted: {', '.join(accepted)}", "curriculum.knob")
            try:
                for value in (c.n_start, c.n_max):
                    tasks.build(task_kind, **{**opts_task, c.knob: value})
            except SeqmemError as e:
                raise ConfigError(f"{c.knob} from n_start={c.n_start} to n_max={c.n_max}: {e}",
                                  "curriculum") from None
        elif kind != "none":
            if not has_N:
                raise ConfigError(
                    f"{kind!r} needs a task with an N option (n_parity, n_dms) or "
                    f"curriculum.knob set to one of the task's integer options"
                    f"{' (' + ', '.join(knobs) + ')' if knobs else ''}; task {task_kind!r} has "
                    f"no N: use curriculum.kind=none", "curriculum.kind")
            if c.n_start < 2:
                raise ConfigError(f"N starts at 2 or more, got {c.n_start}", "curriculum.n_start")
        if kind != "none" and c.knob in self.task.model_fields_set:
            value = getattr(self.task, c.knob)
            default = type(self.task).model_fields[c.knob].default
            if value not in (default, c.n_start, [c.n_start]):
                raise ConfigError(
                    f"the {kind} curriculum sets {c.knob} (from curriculum.n_start="
                    f"{c.n_start} to n_max={c.n_max}), so {c.knob}={value} would be ignored; "
                    f"start there with curriculum.n_start={value}, or train only this value "
                    f"with curriculum.kind=none", f"task.{c.knob}")
        if kind != "none" and c.n_max < c.n_start:
            raise ConfigError(f"must be >= curriculum.n_start ({c.n_start}), got {c.n_max}",
                              "curriculum.n_max")
        regression = getattr(task_cls, "loss", "ce") == "mse"
        if self.train.target_acc is not None and regression:
            raise ConfigError(f"task {task_kind!r} is a regression task (MSE, no accuracy); "
                              f"leave train.target_acc null", "train.target_acc")
        if self.train.gtf_alpha is not None and not regression:
            raise ConfigError(f"generalised teacher forcing needs a regression task that "
                              f"forecasts its next input (dynamics); task {task_kind!r} is a "
                              f"classification task", "train.gtf_alpha")
        self._check_gtf()
        if self.eval.lengths and length_option(task_cls) is None:
            raise ConfigError(f"task {task_kind!r} has no sequence-length option to vary; "
                              f"leave eval.lengths empty", "eval.lengths")
        return self

    def _check_gtf(self) -> None:
        """train.gtf and train.gtf_alpha together: latent forcing needs an alpha and one
        plain block of a mixer whose state is its latent output; adaptive alpha needs latent
        forcing."""
        t = self.train
        if t.gtf_alpha == "adaptive" and t.gtf != "latent":
            raise ConfigError("the adaptive alpha bounds the Jacobians of the forced latent "
                              "state: use it with train.gtf=latent", "train.gtf_alpha")
        if t.gtf != "latent":
            return
        if t.gtf_alpha is None:
            raise ConfigError("latent teacher forcing needs train.gtf_alpha (a number in [0, "
                              "1] or adaptive)", "train.gtf_alpha")
        latent = [n for n in mixers.names() if getattr(mixers.get(n), "latent_state", False)]
        names = parse_pattern(self.model.mixer.kind)
        if (len(names) != 1 or names[0] not in latent or self.model.n_layers != 1
                or self.model.block != "plain"):
            raise ConfigError(f"latent teacher forcing needs one plain block (model.n_layers=1, "
                              f"model.block=plain) of a mixer with an identifiable latent "
                              f"state: {', '.join(latent)}; got {self.model.mixer.kind!r} x "
                              f"{self.model.n_layers}, block {self.model.block}", "train.gtf")
