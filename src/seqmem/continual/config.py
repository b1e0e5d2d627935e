"""The config of a continual-learning run: protocol x method x model x schedule.

The same kind of model as a training run's config (`seqmem.config`), loaded by the same
`load_config(source, overrides, schema=ContinualConfig)`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from seqmem.config import Strict
from seqmem.continual.methods import METHODS
from seqmem.continual.protocols import PROTOCOLS


class ContinualConfig(Strict):
    """A continual-learning run: protocol x method x model x schedule."""

    name: str | None = None
    protocol: Literal[PROTOCOLS] = "n_curriculum"  # type: ignore[valid-type]
    setting: Literal["task", "domain"] | None = None  # None: the protocol's default
    protocol_options: dict = Field(default_factory=dict)  # e.g. {n_max: 6, task: n_dms}
    method: Literal[METHODS] = "finetune"  # type: ignore[valid-type]
    method_options: dict = Field(default_factory=dict)  # e.g. {ewc_lambda: 1000}
    mixer: str = "leaky_rnn"
    mixer_options: dict = Field(default_factory=dict)
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
