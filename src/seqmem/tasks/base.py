"""The task contract and the task registry.

A task is a seeded generator of batches. For task authors:

- Subclass `Task`, decorate it with `@register("short_name")`, and import its module in
  `seqmem/tasks/__init__.py` so that it registers.
- Constructor: hyperparameters keyword-only, each with a default, and no side effects (no
  sampling, no I/O). Validate every value there and raise a one-line `SeqmemError` naming what
  was wrong and what is accepted (`build` and the config layer rely on it to judge options).
  Set the instance attributes `d_input` (input channels), `heads` (classes per output head,
  in order) and, for token tasks, `vocab` (token strings indexed by id).
- `sample(batch_size, *, generator)` returns a `Batch`. Every random number comes from the
  `generator` passed in (a CPU `torch.Generator`), never from the global RNG, so one seed gives
  one sequence of batches. Generate with vectorised torch ops (training draws thousands of
  batches): no Python loop over examples or time steps. All examples of a batch share one
  length `t`.
- Regression tasks (real-valued targets, e.g. next-step forecasting of a dynamical system)
  set the class attribute `loss = "mse"`, the instance attribute `d_output` (target
  channels) and `heads = []`; the model reads them out with one linear regression head and
  the loss is the MSE over supervised positions (`seqmem.models.masked_mse_loss`).
  Classification tasks keep the default `loss = "ce"` and `d_output = None`.
- `Batch` shapes, batch-first and time-second:
    inputs  (b, t, d_input) float32 for real-valued inputs; (b, t) long ids for token tasks
    targets (b, t, n_heads) long class ids in [0, heads[j]); 0 wherever mask is False
            (regression tasks: (b, t, d_output) float32; 0 wherever mask is False)
    mask    (b, t) bool, True at supervised positions (shared by all heads)
    meta    plain facts about the batch: {"N": [...], "seq_len": t, ...}; per-example facts
            as tensors whose first dimension is b.
- Docstrings open with what is computed, cite the paper (and its authors' code where used),
  and say where something is seqmem's choice rather than the source's.
- tests/test_tasks.py loops over `names()` and checks every registered task returns a
  consistent Batch; a new task also needs an oracle test of its labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from seqmem.errors import SeqmemError, check_int  # check_int: the tasks take it from here too
from seqmem.registry import Registry, hyperparameters
from seqmem.tasks.render import render

_REGISTRY = Registry("task")


@dataclass
class Batch:
    """One batch of a task: inputs, per-head targets, the supervised positions and facts."""

    inputs: Tensor  # (b, t, d_input) float32, or (b, t) long token ids
    targets: Tensor  # (b, t, n_heads) long, or (b, t, d_output) float32; 0 where mask is False
    mask: Tensor  # (b, t) bool
    meta: dict = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with inputs, targets, mask and tensor meta values on `device`."""
        meta = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.meta.items()}
        return Batch(self.inputs.to(device), self.targets.to(device), self.mask.to(device), meta)


class Task:
    """Base class of every task: a seeded generator of `Batch`es.

    Subclasses set `d_input`, `heads` (and `vocab` for token tasks; `d_output` for regression
    tasks, which also set `loss = "mse"`) in their constructor and implement `sample`.
    """

    name: ClassVar[str] = ""
    loss: ClassVar[str] = "ce"  # "ce": per-head cross-entropy; "mse": regression
    # The training recipe of the task's source, a key of `seqmem.build.RECIPES`: the optimizer
    # and schedule that `train.optimizer: auto` and `train.schedule: auto` resolve to.
    recipe: ClassVar[str] = "synthetic"
    d_input: int
    heads: list[int]
    d_output: int | None = None  # target channels of a regression task
    vocab: list[str] | None = None
    fixed_data: ClassVar[bool] = False  # True: a fixed labelled set, _data() -> x, y of its split
    # The training settings (keys of the config's `train` section) that a run of this task
    # starts from unless its config sets them: sized so that learning shows within minutes on
    # a 2-core CPU. `paper_setting` says what the task's source trained with, for comparison.
    train_defaults: ClassVar[dict[str, Any]] = {}
    paper_setting: ClassVar[str] = ""

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """A batch of `batch_size` examples drawn with `generator` only."""
        raise NotImplementedError

    @classmethod
    def resolve_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """`options` with every "auto" that the installed packages decide made explicit, as
        a run stores them (e.g. mnist1d's `source`); by default unchanged."""
        return options

    def max_length(self) -> int:
        """The most steps a sequence of this task can have (a bound for memory checks): the
        value of its length option (`length_option`, else `seq_len`) if it has one, else the
        length of one sampled example. Tasks whose length follows other options override it."""
        opt = getattr(type(self), "length_option", None) or "seq_len"
        value = getattr(self, opt, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return int(self.sample(1, generator=torch.Generator().manual_seed(0)).mask.shape[1])

    def render(self, batch: Batch, i: int) -> str:
        """Example i of `batch` as text, supervised targets marked `[->label]` (see
        `seqmem.tasks.render`; a task may override it)."""
        return render(self, batch, i)

    def __repr__(self) -> str:
        opts = ", ".join(
            f"{k}={getattr(self, k)!r}" for k in hyperparameters(type(self)) if hasattr(self, k)
        )
        return f"{type(self).__name__}({opts})"


# ---- shared checks ----------------------------------------------------------------------
def check_sample_args(task: Task, batch_size: int, generator: torch.Generator) -> None:
    """Raise a one-line SeqmemError unless batch_size >= 1 and generator is a CPU Generator."""
    who = task.name or type(task).__name__
    check_int(f"{who}: batch_size", batch_size)
    if not isinstance(generator, torch.Generator):
        raise SeqmemError(
            f"{who}: generator must be a torch.Generator (e.g. "
            f"torch.Generator().manual_seed(0)), got {type(generator).__name__}"
        )
    if generator.device.type != "cpu":
        raise SeqmemError(f"{who}: generator must be on the CPU, got one on {generator.device}")


# ---- registry ---------------------------------------------------------------------------
register = _REGISTRY.register
names = _REGISTRY.names
get = _REGISTRY.get


def build(name: str, **kw) -> Task:
    """Build the task registered as `name` with keyword hyperparameters."""
    return _REGISTRY.check_options(name, kw)(**kw)
