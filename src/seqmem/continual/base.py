"""The continual-learning contract: what a protocol is, what a method is, and their registries.

A protocol is a sequence of experiences, each a task to train on, a task to evaluate on and the
read-out head it uses, in one setting (van de Ven & Tolias 2019, "Three scenarios for
continual learning"):

- "task" (task-incremental): a head per experience; the experience's identity picks the head.
- "domain" (domain-incremental): one head shared by all experiences (as many classes as the
  largest experience), the identity is not given.

A protocol is a function `(setting="<its default>", *, **options) -> Protocol`, registered
with `@register_protocol("name")`; its keyword-only parameters are its options.

A method wraps one `SequenceModel` and answers, for experience i:

- `train_batches(i, batch_size, gen)`: the (experience, batch) pairs of one step; their losses
  are summed;
- `penalty(i)`: a regulariser added to the loss (0 for most);
- `logits(j, x)`: the read-out of experience j on inputs x;
- hooks before and after each step and experience, and `state()` / `load_state()` for
  checkpoints.

A method is a subclass of `Method` registered with `@register_method("name")`; its constructor
is `(model, protocol, seed=0, *, **options)` and calls `super().__init__(model, protocol,
seed)`; its keyword-only parameters are its options. Every random number comes from the
generator a hook is given, or from `self.generator(stream)` (a stream of its own seeded by the
run's seed), never from torch's global generator.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.errors import check_choice
from seqmem.models import SequenceModel
from seqmem.registry import Registry
from seqmem.tasks.base import Batch, Task

SETTINGS = ("task", "domain")

_PROTOCOLS = Registry("protocol", sort=False)
_METHODS = Registry("method", sort=False)


# ---- protocols ----------------------------------------------------------------------------
@dataclass
class Experience:
    """One experience: train on `train`, evaluate on `test`, read out by head `head`."""

    name: str
    train: Task
    test: Task
    n_classes: int
    head: int


@dataclass
class Protocol:
    """A sequence of experiences in one setting, and what the model needs to read them."""

    name: str
    setting: str
    experiences: list[Experience]
    d_input: int
    vocab_size: int | None

    @property
    def heads(self) -> list[int]:
        """Classes of each read-out head of the model."""
        if self.setting == "task":
            return [e.n_classes for e in self.experiences]
        return [max(e.n_classes for e in self.experiences)]

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
    """Cross-entropy (mean over supervised positions) and accuracy of logits (b, t, C)
    against the batch's first target column."""
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

    def generator(self, stream: int) -> torch.Generator:
        """A CPU generator of the method's own, seeded by 10007 stream + seed (stream >= 1), so
        that what it draws leaves the run's generator, and so the training batches, as
        fine-tuning's."""
        return torch.Generator().manual_seed(10007 * stream + self.seed)

    # ---- what is trained ------------------------------------------------------------------
    def parameters(self, i: int) -> list[nn.Parameter]:
        """The parameters the optimizer updates during experience i."""
        return list(self.model.parameters())

    def train_batches(self, i: int, batch_size: int, gen: torch.Generator
                      ) -> list[tuple[int, Batch]]:
        """The (experience, batch) pairs of one training step of experience i."""
        return [(i, self.protocol.experiences[i].train.sample(batch_size, generator=gen))]

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


method_names = _METHODS.names
method_class = _METHODS.get  # the registered class of a method name


def build_method(name: str, model: SequenceModel, protocol: Protocol, *, seed: int = 0,
                 **options) -> Method:
    """The method registered as `name` around `model`, for `protocol`, with its options;
    `seed` (the run's) seeds the method's own generators."""
    return _METHODS.build(name, model, protocol, seed, **options)
