"""Curricula over the memory length N (Khajehabdollahi et al., ICLR 2024), one registered
class per kind (`@register_curriculum("name")`; `Curriculum(kind=...)` makes the registered
kind, `KINDS` lists them).

A curriculum decides which N are trained (and on which read-out heads) and when to move on.
After every epoch it receives the accuracy of each active head:

- single: one head trained on N; when its accuracy exceeds `threshold`, N -> N + 1 on the
  same head (earlier N are no longer trained: the setting in which they are forgotten).
- multi: one head per N = n_start..N; when the mean accuracy over heads and the newest head's
  accuracy both exceed `threshold`, a head for N + 1 is added (earlier N keep being trained).
- sliding: like multi, but only the newest `window` heads are trained.
- none: the task is trained as configured, with no advance.

Other difficulty knobs (`knob`: any integer option of the task, e.g. seq_len or n_pairs) grow
the same way, by `step` from n_start to n_max, with the task's own heads: single trains the
current value; multi trains a uniform mixture of the values reached so far (a value drawn per
batch) and advances when the mean accuracy over those values and the newest value's accuracy
both exceed `threshold`; sliding does so over the newest `window` values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

from seqmem.errors import check_int
from seqmem.registry import Registry

_KINDS = Registry("curriculum", sort=False)


@dataclass
class Curriculum:
    """The state of a curriculum; `Curriculum(kind=name, ...)` makes the class registered as
    `name`. A kind overrides `active_N`, `head_of` (the model head of a value of N),
    `heads_needed` and `criterion`."""

    kind: str = "multi"
    n_start: int = 2
    n_max: int = 100
    threshold: float = 0.98
    window: int = 5
    knob: str = "N"  # the task option that grows
    step: int = 1  # how much it grows per advance
    N: int = 0  # the newest N (knob value) being trained
    solved: list[int] = field(default_factory=list)  # N solved, in order
    epochs_per_N: dict[int, int] = field(default_factory=dict)
    finished: bool = False

    def __new__(cls, kind: str = "multi", *args, **kwargs):
        if cls is Curriculum:  # an unknown kind: a one-line error listing the accepted ones
            cls = _KINDS.get(kind)
        return object.__new__(cls)

    def __post_init__(self):
        self.kind = type(self).name
        for what in ("n_start", "n_max", "window", "step"):  # step 0 would never advance
            check_int(f"curriculum: {what}", getattr(self, what))
        if self.N == 0:
            self.N = self.n_start

    # ---- what a kind defines ------------------------------------------------------------
    advances: ClassVar[bool] = True  # False: the stage never changes

    def active_N(self) -> list[int] | None:
        """The N values trained now, oldest first (None: the task as configured)."""
        return None

    def heads_needed(self) -> int:
        """Read-out heads the model needs for the whole curriculum over N (0: the task's)."""
        return 0

    def head_of(self, n: int) -> int:
        """The model head that reads out value n of N."""
        return n - self.n_start

    def criterion(self, accs: list[float]) -> bool:
        """Whether the epoch's accuracies (per active value, oldest first) solve the stage:
        the mean and the newest above the threshold."""
        mean = sum(accs) / len(accs)
        return mean > self.threshold and accs[-1] > self.threshold

    # ---- shared --------------------------------------------------------------------------
    @property
    def n_heads(self) -> int:
        """Read-out heads the model needs for the whole curriculum (0: the task decides)."""
        return self.heads_needed() if self.knob == "N" else 0

    def active_heads(self, n_task_heads: int) -> list[int]:
        """Indices of the model heads that read out the active N."""
        active = self.active_N()
        if self.knob != "N" or active is None:
            return list(range(n_task_heads))
        return sorted({self.head_of(n) for n in active})

    def update(self, accs: list[float]) -> bool:
        """Record one epoch with these per-head accuracies; return True if N advanced."""
        self.epochs_per_N[self.N] = self.epochs_per_N.get(self.N, 0) + 1
        if not self.advances or self.finished or not self.criterion(accs):
            return False
        self.solved.append(self.N)
        if self.n_max < self.N + self.step:
            self.finished = True
        else:
            self.N += self.step
        return True

    @property
    def n_solved(self) -> int | None:
        """The largest N solved so far (None before the first)."""
        return max(self.solved) if self.solved else None

    def state_dict(self) -> dict:
        d = asdict(self)
        d["epochs_per_N"] = {str(k): v for k, v in self.epochs_per_N.items()}
        return d

    @classmethod
    def from_state(cls, d: dict) -> Curriculum:
        d = dict(d)
        d["epochs_per_N"] = {int(k): v for k, v in d["epochs_per_N"].items()}
        d["solved"] = list(d["solved"])
        return Curriculum(**d)


def register_curriculum(name: str):
    """Class decorator: register a Curriculum subclass as kind `name`."""
    return _KINDS.register(name)


@register_curriculum("single")
class Single(Curriculum):
    """One head trained on N; when its accuracy exceeds the threshold, N -> N + step."""

    def active_N(self):
        return [self.N]

    def heads_needed(self):
        return 1

    def head_of(self, n):
        return 0

    def criterion(self, accs):
        return accs[0] > self.threshold


@register_curriculum("multi")
class Multi(Curriculum):
    """A head per N = n_start..N, all trained; a head for N + step once they are solved."""

    def active_N(self):
        return list(range(self.n_start, self.N + 1, self.step))

    def heads_needed(self):
        return self.n_max - self.n_start + 1


@register_curriculum("sliding")
class Sliding(Multi):
    """Like multi, with only the newest `window` values trained and evaluated."""

    def active_N(self):
        return super().active_N()[-self.window:]


@register_curriculum("none")
class NoCurriculum(Curriculum):
    """The task as configured, with no advance."""

    advances: ClassVar[bool] = False


KINDS = tuple(_KINDS.names())
