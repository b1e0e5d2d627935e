"""Sweep files: a grid (or a list) of configs, expanded into validated run configs.

A sweep is a YAML file, or a Python file defining a dict `SWEEP`, with these keys:

    name: rnn-lr                  # the sweep's name (default: the file's stem)
    base: run.yaml                # a run config file or mapping (default: the defaults)
    overrides: [train.max_epochs=3, curriculum.kind=none]   # applied to base, every run
    grid:                         # dotted key -> values; every combination is one run
      model.mixer.kind: [gru, lstm]
      train.lr: [1.0e-3, 3.0e-4]
    runs:                         # and/or explicit points, each a mapping of dotted keys
      - {model.mixer.kind: leaky_rnn, train.optimizer: sgd}
    seeds: [0, 1]                 # shorthand for grid key `seed`
    retries: 2                    # a run whose worker dies or raises is retried this often
    kind: train                   # the runs' kind: train (default) or continual
    resources: {gpu: 0.25, cpu: 1}  # optional, per run: a GPU share and CPU cores (see below)
    two_phase:                    # optional: tune on one stream, evaluate on another
      tune: {protocol: n_curriculum}           # dotted keys of the tuning phase's runs
      evaluate: {protocol: power_law}          # ... and of the evaluation phase's
      select: forgetting                       # the summary metric that picks the best point
      mode: min                                # min or max (default: known per metric)

Each point's resolved config is validated like `seqmem train`'s (`seqmem continual`'s for
kind continual), and identified by its hash, so re-running a sweep finds what is already done.

Two phases (Cha & Cho 2024, "Hyperparameters in Continual Learning: a Reality Check"): the
grid runs with the `tune` keys (sweep `<name>-tune`); the point whose mean of `select` over
its seeds is best is frozen and run with the `evaluate` keys (sweep `<name>-eval`, the same
seeds); both phases' scores are reported (`seqmem.sweep.driver.run_two_phase`).

Resources are what one run asks for, not part of its config (its hash does not change): on
Ray they are the task's num_gpus / num_cpus, so that four runs of `gpu: 0.25` share one GPU;
the process backend pins each run asking for a GPU to one device, round-robin
(`seqmem.engine.backends`). A GPU share is a fraction of one device (0 < gpu <= 1) or a whole
number of devices; asking for one on a machine without CUDA is an error unless the runs'
train.device is cpu.
"""

from __future__ import annotations

import itertools
import runpy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from seqmem.config import RunConfig, load_config
from seqmem.continual.config import ContinualConfig
from seqmem.errors import ConfigError

SCHEMAS = {"train": RunConfig, "continual": ContinualConfig}
# the direction of the summary metrics a two-phase sweep may select by without `mode`
MODES = {"avg_acc": "max", "bwt": "max", "fwt": "max", "forgetting": "min", "avg_loss": "min",
         "acc": "max", "acc_mean": "max", "mse": "min", "eval_mse": "min"}


class TwoPhase(BaseModel):
    """The `two_phase` key of a sweep file: the dotted keys of the tuning and the evaluation
    phase, the summary metric that selects the best point, and whether lower or higher wins."""

    model_config = ConfigDict(extra="forbid")

    tune: dict[str, Any]
    evaluate: dict[str, Any]
    select: str
    mode: Literal["min", "max"] | None = None

    def direction(self) -> str:
        """"min" or "max": `mode`, or the known direction of `select`."""
        if self.mode is not None:
            return self.mode
        if self.select not in MODES:
            raise ConfigError(f"two_phase.mode: give min or max for metric {self.select!r} "
                              f"(known without it: {', '.join(MODES)})")
        return MODES[self.select]


class Resources(BaseModel):
    """The `resources` key of a sweep file: what each run asks for, a share of a GPU (`gpu`,
    0 = none) and CPU cores (`cpu`, Ray's num_cpus)."""

    model_config = ConfigDict(extra="forbid")

    gpu: float = Field(0.0, ge=0)
    cpu: float = Field(1.0, gt=0)

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"{v} GPUs: give a share of one GPU (0 < gpu <= 1) or a whole "
                             f"number of GPUs")
        return v


class SweepSpec(BaseModel):
    """The keys of a sweep file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    base: str | dict | None = None
    overrides: list[str] = Field(default_factory=list)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    runs: list[dict[str, Any]] = Field(default_factory=list)
    seeds: list[int] | None = None
    retries: int = Field(1, ge=0)
    kind: Literal["train", "continual"] = "train"
    two_phase: TwoPhase | None = None
    resources: Resources | None = None


def _fmt(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def point_label(point: dict[str, Any]) -> str:
    """"key=value, ..." for a grid point (the keys without their common prefixes)."""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in point.items()) or "(base)"


def read_sweep(path: str | Path) -> SweepSpec:
    """Load and check a sweep file's keys (one-line ConfigError on any problem)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file {str(p)!r} not found")
    if p.suffix == ".py":
        try:
            data = runpy.run_path(str(p)).get("SWEEP")
        except Exception as e:  # the user's file: report, don't crash
            raise ConfigError(f"sweep file {str(p)!r} failed to run: {type(e).__name__}: "
                              f"{e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"sweep file {str(p)!r} must define a dict SWEEP")
    else:
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"sweep file {str(p)!r} is not valid YAML: "
                              f"{str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"sweep file {str(p)!r} must hold a mapping at top level")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden":
                inner = {"two_phase": TwoPhase, "resources": Resources}.get(err["loc"][0])
                fields = (inner or SweepSpec).model_fields
                what = "resource" if inner is Resources else "key"
                parts.append(f"{loc}: unknown {what}; accepted: {', '.join(fields)}")
            else:
                parts.append(f"{loc}: {err['msg']}")
        raise ConfigError(f"sweep file {str(p)!r}: {'; '.join(parts)}") from None
    if spec.name is None:
        spec.name = p.stem
    if spec.two_phase is not None:
        check_two_phase(spec)
    if isinstance(spec.base, str) and not Path(spec.base).is_absolute():
        spec.base = str(p.parent / spec.base)
    return spec


def check_two_phase(spec: SweepSpec) -> None:
    """A two-phase sweep's phases may set only keys that the grid does not sweep (the tuned
    hyperparameters are frozen between the phases), and its metric needs a direction."""
    tp = spec.two_phase
    swept = set(spec.grid) | {k for r in spec.runs for k in r} | (
        {"seed"} if spec.seeds is not None else set())
    for phase in ("tune", "evaluate"):
        both = sorted(swept & set(getattr(tp, phase)))
        if both:
            raise ConfigError(f"sweep {spec.name!r}: two_phase.{phase} sets {', '.join(both)}, "
                              f"which the grid sweeps; a phase sets only the keys its stream "
                              f"differs in (e.g. protocol, protocol_options.*)")
    tp.direction()


def phase_spec(spec: SweepSpec, phase: str, point: dict[str, Any] | None = None) -> SweepSpec:
    """The plain sweep of one phase of a two-phase sweep: "tune" (the grid with the tuning
    keys, named <name>-tune) or "evaluate" (the frozen `point` without its seed, with the
    evaluation keys and the sweep's seeds, named <name>-eval)."""
    tp = spec.two_phase
    keys = tp.tune if phase == "tune" else tp.evaluate
    extra = {"name": f"{spec.name}-{'tune' if phase == 'tune' else 'eval'}",
             "overrides": [*spec.overrides, *(f"{k}={_fmt(v)}" for k, v in keys.items())],
             "two_phase": None}
    if phase != "tune":
        frozen = {k: v for k, v in (point or {}).items() if k != "seed"}
        extra.update(grid={}, runs=[frozen] if frozen else [{}])
        if spec.seeds is None and point and "seed" in point:
            extra["seeds"] = [point["seed"]]
    return spec.model_copy(update=extra)


def expand(spec: SweepSpec) -> list[tuple[dict[str, Any], RunConfig | ContinualConfig]]:
    """Every (point, resolved config) of the sweep, in a stable order. The point's name is the
    sweep's name; bad points raise one ConfigError line naming the point."""
    grid = dict(spec.grid)
    if spec.seeds is not None:
        grid["seed"] = spec.seeds
    for key, values in grid.items():
        if not values:
            raise ConfigError(f"sweep {spec.name!r}: grid.{key} is an empty list; give at "
                              f"least one value")
    if not grid and not spec.runs:
        raise ConfigError(f"sweep {spec.name!r} has no runs: give a non-empty grid (dotted "
                          f"key: [values]) and/or runs (a list of mappings)")
    keys = list(grid)
    combos = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*grid.values())]
    extras = spec.runs or [{}]
    out, seen = [], set()
    for extra in extras:
        for combo in combos:
            point = {**combo, **extra}
            overrides = [*spec.overrides, *(f"{k}={_fmt(v)}" for k, v in point.items()),
                         f"name={spec.name}"]
            try:
                cfg = load_config(spec.base, overrides, schema=SCHEMAS[spec.kind])
            except ConfigError as e:
                raise ConfigError(f"sweep {spec.name!r}, point {point_label(point)}: {e}"
                                  ) from None
            h = cfg.config_hash()
            if h in seen:
                continue  # the same resolved config twice is one run
            seen.add(h)
            out.append((point, cfg))
    return out
