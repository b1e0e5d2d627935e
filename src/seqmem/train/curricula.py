"""Curricula over the memory length N (Khajehabdollahi et al., ICLR 2024).

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

from seqmem.errors import check_choice

KINDS = ("single", "multi", "sliding", "none")


@dataclass
class Curriculum:
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

    def __post_init__(self):
        check_choice("curriculum", self.kind, KINDS)
        if self.N == 0:
            self.N = self.n_start

    @property
    def n_heads(self) -> int:
        """Read-out heads the model needs for the whole curriculum (0: the task decides)."""
        if self.knob != "N":
            return 0
        if self.kind == "single":
            return 1
        if self.kind in ("multi", "sliding"):
            return self.n_max - self.n_start + 1
        return 0

    def active_N(self) -> list[int] | None:
        """The N values trained now, oldest first (None for kind "none")."""
        if self.kind == "single":
            return [self.N]
        if self.kind == "multi":
            return list(range(self.n_start, self.N + 1, self.step))
        if self.kind == "sliding":
            return list(range(self.n_start, self.N + 1, self.step))[-self.window:]
        return None

    def active_heads(self, n_task_heads: int) -> list[int]:
        """Indices of the model heads that read out the active N."""
        if self.knob != "N":
            return list(range(n_task_heads))
        if self.kind == "single":
            return [0]
        if self.kind in ("multi", "sliding"):
            return [n - self.n_start for n in self.active_N()]
        return list(range(n_task_heads))

    def criterion(self, accs: list[float]) -> bool:
        if self.kind == "single":
            return accs[0] > self.threshold
        mean = sum(accs) / len(accs)
        return mean > self.threshold and accs[-1] > self.threshold

    def update(self, accs: list[float]) -> bool:
        """Record one epoch with these per-head accuracies; return True if N advanced."""
        self.epochs_per_N[self.N] = self.epochs_per_N.get(self.N, 0) + 1
        if self.kind == "none" or self.finished or not self.criterion(accs):
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
        return cls(**d)
