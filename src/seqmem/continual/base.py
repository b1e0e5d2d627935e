"""The continual-learning contract: what a protocol is, what a method is, and their registries.

A protocol is a sequence of experiences, each a task to train on, a task to evaluate on and the
read-out head it uses, in one setting (van de Ven & Tolias 2019, "Three scenarios for
continual learning"):

- "task" (task-incremental): a head per experience; the experience's identity picks the head.
- "domain" (domain-incremental): one head shared by all experiences (as many classes as the
  largest experience), the identity is not given.

An experience is a classification (`loss = "ce"`, scored by accuracy, higher is better) or a
regression (`loss = "mse"`, e.g. forecasting the `dynamics` task, scored by its MSE, lower is
better; its head is a linear read-out of `n_classes` = d_output channels); one protocol holds
experiences of one kind. A protocol may revisit its experiences: `schedule` lists the
experience trained in each session (default: each experience once, in order).

A protocol is a function `(setting="<its default>", *, **options) -> Protocol`, registered
with `@register_protocol("name")`; its keyword-only parameters are its options.

A method wraps one `SequenceModel` and answers, for experience i:

- `train_batches(i, batch_size, gen)`: the (experience, batch) pairs of one step; their losses
  are summed;
- `penalty(i)`: a regulariser added to the loss (0 for most);
- `earlier(i)`: the experiences trained in earlier sessions (0..i-1 unless the protocol
  revisits experiences);
- `logits(j, x)`: the read-out of experience j on inputs x;
- hooks before and after each step and experience, and `state()` / `load_state()` for
  checkpoints.

A method is a subclass of `Method` registered with `@register_method("name")`; its constructor
is `(model, protocol, seed=0, *, **options)` and calls `super().__init__(model, protocol,
seed)`; its keyword-only parameters are its options. Every random number comes from the
generator a hook is given, or from `self.generator(stream)` (a stream of its own seeded by the
run's seed), never from torch's global generator.

Devices (`seqmem.devices`): batches are drawn on the CPU (the generators are CPU ones) and
moved to the model's device (`Method.sample` draws and moves); `Method.to(device)` moves the
model and every tensor, module and dict or list of them that the method holds (its Fisher,
anchors, masks, hypernetwork; a method holding tensors in another object moves them in its
own `to`, with `moved`), so a method built on the CPU runs on any device.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.devices import model_device
from seqmem.errors import SeqmemError, check_choice
from seqmem.models import SequenceModel
from seqmem.registry import Registry
from seqmem.tasks.base import Batch, Task

SETTINGS = ("task", "domain")

_PROTOCOLS = Registry("protocol", sort=False)
_METHODS = Registry("method", sort=False)


# ---- protocols ----------------------------------------------------------------------------
@dataclass
class Experience:
    """One experience: train on `train`, evaluate on `test`, read out by head `head` (of
    `n_classes` outputs: classes, or regression channels when `loss` is "mse")."""

    name: str
    train: Task
    test: Task
    n_classes: int
    head: int
    loss: str = "ce"  # "ce": classification (accuracy); "mse": regression (MSE)


@dataclass
class Protocol:
    """A sequence of experiences in one setting, and what the model needs to read them.
    `schedule` (None: 0, 1, ..., T-1) is the experience trained in each session, for protocols
    that revisit experiences (`power_law`); the metrics are over the distinct experiences."""

    name: str
    setting: str
    experiences: list[Experience]
    d_input: int
    vocab_size: int | None
    schedule: list[int] | None = None

    def __post_init__(self):
        losses = {e.loss for e in self.experiences}
        if len(losses) > 1:
            raise SeqmemError(f"protocol {self.name!r} mixes classification and regression "
                              f"experiences; one protocol holds experiences of one kind")
        if self.setting == "domain" and "mse" in losses \
                and len({e.n_classes for e in self.experiences}) > 1:
            raise SeqmemError(f"protocol {self.name!r}: the domain setting shares one "
                              f"regression head, so every experience needs the same number of "
                              f"output channels; got {[e.n_classes for e in self.experiences]}")
        if self.schedule is not None:
            T = len(self.experiences)
            if not self.schedule or any(not 0 <= j < T for j in self.schedule):
                raise SeqmemError(f"protocol {self.name!r}: a schedule is a non-empty list of "
                                  f"experience indices in [0, {T})")

    @property
    def heads(self) -> list[int]:
        """Outputs of each read-out head of the model (classes, or regression channels)."""
        if self.setting == "task":
            return [e.n_classes for e in self.experiences]
        return [max(e.n_classes for e in self.experiences)]

    @property
    def loss(self) -> str:
        """"ce" (classification, scored by accuracy) or "mse" (regression, scored by MSE)."""
        return self.experiences[0].loss if self.experiences else "ce"

    @property
    def sessions(self) -> list[int]:
        """The experience trained in each session: `schedule`, or each once in order."""
        return list(self.schedule) if self.schedule is not None else list(range(len(self)))

    def __len__(self) -> int:
        return len(self.experiences)


def register_protocol(name: str) -> Callable[[Callable[..., Protocol]], Callable[..., Protocol]]:
    """Decorator: register a protocol function under a short name, after checking it begins
    (setting=<one of SETTINGS>, *, ...options), as `build_protocol` calls it."""

    def deco(make: Callable[..., Protocol]) -> Callable[..., Protocol]:
        first = next(iter(inspect.signature(make).parameters.values()), None)
        if first is None or first.name != "setting" or first.default not in SETTINGS:
            raise TypeError(f"protocol {name!r}: the function must begin (setting=<one of "
                            f"{', '.join(SETTINGS)}>, *, ...options)")
        return _PROTOCOLS.register(name)(make)

    return deco


protocol_names = _PROTOCOLS.names
protocol_function = _PROTOCOLS.get  # the registered function of a protocol name


def build_protocol(name: str, setting: str | None = None, **options) -> Protocol:
    """Build protocol `name` with its options in `setting` (one of SETTINGS; None: the
    default of the protocol function's `setting` parameter)."""
    make = _PROTOCOLS.check_options(name, options)
    default = inspect.signature(make).parameters["setting"].default
    return make(check_choice("setting", setting or default, SETTINGS), **options)


# ---- methods ------------------------------------------------------------------------------
def experience_loss(logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """The loss and the score of one batch. Class targets (integers): cross-entropy (mean over
    supervised positions) and accuracy of logits (b, t, C) against the batch's first target
    column. Real-valued targets (b, t, d) (a regression experience): the MSE over supervised
    positions and channels, which is both the loss and the score (lower is better)."""
    if batch.targets.is_floating_point():
        if logits.shape != batch.targets.shape:
            raise SeqmemError(f"a regression experience needs predictions of its targets' "
                              f"shape {tuple(batch.targets.shape)}, got {tuple(logits.shape)}")
        err = (logits[batch.mask] - batch.targets[batch.mask].to(logits.dtype)) ** 2  # (n, d)
        mse = err.mean()
        return mse, mse.detach()
    y = batch.targets[..., 0][batch.mask]  # (n,)
    z = logits[batch.mask]  # (n, C)
    return F.cross_entropy(z, y), (z.argmax(-1) == y).float().mean()


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a `Method` subclass under a short name, after checking its
    constructor begins (model, protocol, seed), as `build_method` calls it."""

    def deco(cls: type[Method]) -> type[Method]:
        head = list(inspect.signature(cls.__init__).parameters)[1:4]
        if head != ["model", "protocol", "seed"]:
            raise TypeError(f"method {name!r}: the constructor must begin (self, model, "
                            f"protocol, seed=0, *, ...options); {cls.__name__}'s begins "
                            f"(self, {', '.join(head)})")
        return _METHODS.register(name)(cls)

    return deco


@register_method("finetune")
class Method:
    """Fine-tuning (the current experience only: the lower bound), and the base of every
    method."""

    name: ClassVar[str]  # set by register_method

    def __init__(self, model: SequenceModel, protocol: Protocol, seed: int = 0):
        self.model, self.protocol = model, protocol
        self.seed = seed  # the run's seed, from which the method's own generators derive
        # the experiences trained in earlier sessions, in first-seen order (set by the loop
        # before each session; None until then: see `earlier`)
        self.seen: list[int] | None = None

    def generator(self, stream: int) -> torch.Generator:
        """A CPU generator of the method's own, seeded by 10007 stream + seed (stream >= 1), so
        that what it draws leaves the run's generator, and so the training batches, as
        fine-tuning's."""
        return torch.Generator().manual_seed(10007 * stream + self.seed)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters: where batches and the method's tensors go."""
        return model_device(self.model)

    def to(self, device: torch.device | str) -> Method:
        """Move the model, then every tensor, module, and dict, list or tuple of them held in
        the method's attributes, to `device` (in place: the model's parameters stay the same
        objects, so hooks and references to them hold). Returns the method."""
        device = torch.device(device)
        self.model.to(device)
        for name, value in list(vars(self).items()):
            if name not in ("model", "protocol"):  # the protocol's task data stay on the CPU
                setattr(self, name, moved(value, device))
        return self

    def sample(self, task: Task, batch_size: int, gen: torch.Generator) -> Batch:
        """A batch of `task` drawn with the CPU generator `gen`, on the model's device."""
        return task.sample(batch_size, generator=gen).to(self.device)

    def earlier(self, i: int) -> list[int]:
        """The experiences other than i trained in earlier sessions: `seen` (set by the loop),
        or 0..i-1 (every experience once, in order) where no loop set it."""
        seen = range(i) if self.seen is None else self.seen
        return [t for t in seen if t != i]

    # ---- what is trained ------------------------------------------------------------------
    def parameters(self, i: int) -> list[nn.Parameter]:
        """The parameters the optimizer updates during experience i."""
        return list(self.model.parameters())

    def train_batches(self, i: int, batch_size: int, gen: torch.Generator
                      ) -> list[tuple[int, Batch]]:
        """The (experience, batch) pairs of one training step of experience i."""
        return [(i, self.sample(self.protocol.experiences[i].train, batch_size, gen))]

    def logits(self, j: int, x: Tensor) -> Tensor:
        """The read-out of experience j for inputs x: (b, t, classes)."""
        (z,), _ = self.model(x, heads=[self.protocol.experiences[j].head])
        return z

    def penalty(self, i: int) -> Tensor | float:
        """The regulariser added to the loss of every step of experience i."""
        return 0.0

    # ---- hooks ----------------------------------------------------------------------------
    def before_experience(self, i: int, gen: torch.Generator) -> None:
        """Called before the first step of experience i."""

    def after_step(self, i: int, batches: list[tuple[int, Batch]], gen: torch.Generator
                   ) -> None:
        """Called after each optimizer step of experience i with the step's batches."""

    def after_experience(self, i: int, gen: torch.Generator) -> None:
        """Called after the last step of experience i, before it is evaluated."""

    # ---- checkpoints ----------------------------------------------------------------------
    def state(self) -> dict:
        """What a checkpoint holds to resume after an experience (`load_state` reads it)."""
        return {"model": self.model.state_dict()}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])


def moved(value, device: torch.device):
    """`value` on `device`: a tensor (a parameter already there is itself), a module (moved
    in place), a dict, list or tuple of them; anything else as it is."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, nn.Module):
        return value.to(device)
    if isinstance(value, dict):
        return {k: moved(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple) and not hasattr(value, "_fields"):
        return type(value)(moved(v, device) for v in value)
    return value


method_names = _METHODS.names
method_class = _METHODS.get  # the registered class of a method name


def build_method(name: str, model: SequenceModel, protocol: Protocol, *, seed: int = 0,
                 **options) -> Method:
    """The method registered as `name` around `model`, for `protocol`, with its options;
    `seed` (the run's) seeds the method's own generators."""
    return _METHODS.build(name, model, protocol, seed, **options)
