"""What an analysis sees: the run, its curriculum stages, its options and its own randomness.

Every analysis (and every stage of a per-stage one) draws from a generator of its own, seeded
from the analysis seed and its name (and stage): its numbers do not depend on which other
analyses or stages run. Accuracies are measured on streams drawn anew from one seed at every
call (common random numbers), so variants of a model are compared on the same streams and an
unchanged model has relative accuracy exactly 1.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from seqmem.analysis import probes
from seqmem.config import RunConfig
from seqmem.models import SequenceModel
from seqmem.store import Run

#: Options every analysis run accepts: trials and length of the accuracy streams, and at how
#: many stages the costly per-stage measures run (`needs="spread_stages"`; None: every stage).
COMMON_OPTIONS: dict[str, Any] = {"n_trials": 8, "stream_len": 1100, "tau_net_stages": 3}


def derived_seed(seed: int, *keys: object) -> int:
    """A seed of its own for `seed` and `keys` (names, stages), by numpy's SeedSequence."""
    words = [seed % 2**64, *(zlib.crc32(str(k).encode()) for k in keys)]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0])


def spread_stages(Ns: list[int] | tuple[int, ...], n: int | None) -> set[int]:
    """`n` of the stages `Ns`, spread evenly from the first to the last (None: every one;
    n <= 1: the last only)."""
    if n is None or len(Ns) <= n:
        return set(Ns)
    if n <= 1:
        return {Ns[-1]}
    idx = np.unique(np.linspace(0, len(Ns) - 1, n).round())
    return {Ns[int(i)] for i in idx}


class StageModels:
    """The models of a run's stages, each loaded once while it is in use, on `device`."""

    def __init__(self, cfg: RunConfig, run: Run, device: torch.device | str = "cpu"):
        self.cfg, self.run, self.device = cfg, run, torch.device(device)
        self._models: dict[int, SequenceModel] = {}
        self.base_accuracy: dict[int, float] = {}

    def get(self, N: int) -> SequenceModel:
        if N not in self._models:
            self._models[N] = probes.load_stage(self.cfg, self.run, N, device=self.device)
        return self._models[N]

    def keep_only(self, Ns: set[int]) -> None:
        """Forget the models of the other stages (they are loaded again if asked for)."""
        self._models = {n: m for n, m in self._models.items() if n in Ns}


@dataclass(frozen=True)
class Context:
    """The run under analysis at one curriculum stage, for one analysis."""

    cfg: RunConfig
    run: Run
    Ns: tuple[int, ...]  # the N solved at each curriculum stage, ascending
    N: int  # the stage under analysis (per-stage analyses), else the last
    seed: int
    options: Mapping[str, Any]
    generator: torch.Generator  # this analysis's own (at this stage)
    say: Callable[[str], None]
    stage_models: StageModels = field(repr=False)

    @classmethod
    def of_run(cls, cfg: RunConfig, run: Run, Ns: list[int], *, seed: int,
               options: Mapping[str, Any], say: Callable[[str], None],
               device: torch.device | str = "cpu") -> Context:
        """The context of a run's last stage, its models on `device`; `focus` gives each
        analysis its own."""
        return cls(cfg, run, tuple(Ns), Ns[-1] if Ns else 0, seed, dict(options),
                   torch.Generator().manual_seed(derived_seed(seed)), say,
                   StageModels(cfg, run, device))

    @property
    def device(self) -> torch.device:
        """Where the analysis computes: its models are there, and the probes built for them
        (drawn on the CPU by the context's generators, then moved)."""
        return self.stage_models.device

    def load(self, model: SequenceModel) -> SequenceModel:
        """`model` (built by an analysis from the run's config) on this context's device."""
        return model.to(self.device)

    def focus(self, name: str, N: int | None = None) -> Context:
        """This context for analysis `name` at stage N (default the last stage), with a
        generator seeded from (seed, name) or, at a given stage, (seed, name, N)."""
        keys = (name,) if N is None else (name, N)
        return dataclasses.replace(
            self, N=(self.Ns[-1] if self.Ns else 0) if N is None else N,
            generator=torch.Generator().manual_seed(derived_seed(self.seed, *keys)))

    @property
    def task(self) -> str:
        return self.cfg.task.kind

    def model(self, N: int | None = None) -> SequenceModel:
        """The model as saved when it solved N (default this stage), in eval mode. It is
        shared by the analyses: copy it before changing it (`probes.perturbed` does)."""
        return self.stage_models.get(self.N if N is None else N)

    def head(self, N: int | None = None) -> int:
        """The head that reads out N (default this stage's N)."""
        return probes.head_for(self.cfg, self.N if N is None else N)

    def stream_accuracy(self, model: SequenceModel | None = None, *, silence=()) -> float:
        """Accuracy of `model` (default this stage's) on the streaming task, read out for this
        stage's N by its head, over `n_trials` streams of `stream_len` steps; `silence`: units
        of the last block held at zero (`probes.features_silenced`). The streams are the same
        at every call (see the module docstring)."""
        g = torch.Generator().manual_seed(derived_seed(self.seed, "streams"))
        model = self.model() if model is None else model
        return float(probes.stream_accuracy(model, self.task, [self.N], [self.head()],
                                            generator=g, n_trials=self.options["n_trials"],
                                            stream_len=self.options["stream_len"],
                                            silence=silence)[0])

    def base_accuracy(self) -> float:
        """`stream_accuracy` of this stage's unchanged model (measured once per stage)."""
        cache = self.stage_models.base_accuracy
        if self.N not in cache:
            self.say(f"baseline accuracy at N={self.N}")
            cache[self.N] = self.stream_accuracy()
        return cache[self.N]
