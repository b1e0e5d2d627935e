"""Rehearsal methods: what each step trains on besides the current experience.

- `joint`: every experience from the first step (the i.i.d. upper bound; a "phase" of the
  same length per experience, so the accuracy matrix is measured on the same schedule).
- `multihead`: the current and every earlier experience, each a fresh batch every step: the
  flagship's multi-head curriculum written as a rehearsal protocol.
- `replay`: experience replay (Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual
  Learning"): a reservoir buffer (Vitter 1985, algorithm R) of `replay_size` examples of the
  stream; each step adds a batch of `replay_batch` buffered examples to the current batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmem.continual.base import Method, moved, register_method
from seqmem.errors import check_int
from seqmem.tasks.base import Batch


@register_method("joint")
class Joint(Method):
    """Every experience from the first step on."""

    def train_batches(self, i, batch_size, gen):
        return [(j, self.sample(e.train, batch_size, gen))
                for j, e in enumerate(self.protocol.experiences)]


@register_method("multihead")
class MultiHead(Method):
    """The current and every earlier experience (every one trained in an earlier session), a
    fresh batch of each per step."""

    def train_batches(self, i, batch_size, gen):
        return [(j, self.sample(self.protocol.experiences[j].train, batch_size, gen))
                for j in sorted({*self.earlier(i), i})]


# ---- replay -----------------------------------------------------------------------------------
class ReservoirBuffer:
    """A uniform sample of at most `capacity` items of a stream (Vitter's algorithm R): the
    n-th item is kept with probability capacity / n, replacing a uniformly chosen slot."""

    def __init__(self, capacity: int):
        self.capacity = check_int("replay_size", capacity, low=1)
        self.n_seen, self.items = 0, []

    def add(self, items: list, gen: torch.Generator) -> None:
        """Offer the items of `items`, in order."""
        m = len(items)
        if m == 0:
            return
        n = self.n_seen + torch.arange(1, m + 1, dtype=torch.float64)  # (m,) each item's count
        slot = (torch.rand(m, generator=gen, dtype=torch.float64) * n).long()  # U{0..n-1}
        for k, item in enumerate(items):
            if len(self.items) < self.capacity:
                self.items.append(item)
            elif slot[k] < self.capacity:
                self.items[int(slot[k])] = item
        self.n_seen += m

    def sample(self, k: int, gen: torch.Generator) -> list:
        """k distinct items (all of them if fewer)."""
        idx = torch.randperm(len(self.items), generator=gen)[:k]
        return [self.items[int(i)] for i in idx]

    def __len__(self) -> int:
        return len(self.items)


def _examples(j: int, batch: Batch) -> list[tuple]:
    """A batch as a list of (experience, inputs, targets, mask) per example (class targets:
    the first column; regression targets: every channel)."""
    targets = batch.targets if batch.targets.is_floating_point() else batch.targets[..., :1]
    return [(j, batch.inputs[b], targets[b], batch.mask[b]) for b in range(batch.mask.shape[0])]


def _collate(items: list[tuple]) -> list[tuple[int, Batch]]:
    """Buffered examples as one batch per experience, padded at the end to a common length
    (masked out; every mixer is causal, so padding after a position does not change it)."""
    out = []
    for j in sorted({it[0] for it in items}):
        group = [it for it in items if it[0] == j]
        t = max(it[3].shape[0] for it in group)

        def pad(x: Tensor, t=t) -> Tensor:
            return F.pad(x, [0, 0] * (x.ndim - 1) + [0, t - x.shape[0]])

        inputs = torch.stack([pad(it[1]) for it in group])  # (b, t, d) or (b, t)
        targets = torch.stack([pad(it[2]) for it in group])  # (b, t, 1) or (b, t, d)
        mask = torch.stack([pad(it[3]) for it in group])  # (b, t)
        out.append((j, Batch(inputs, targets, mask, {"seq_len": t, "replay": True})))
    return out


@register_method("replay")
class Replay(Method):
    """The current batch plus `replay_batch` examples from a reservoir buffer of
    `replay_size` examples of the stream."""

    def __init__(self, model, protocol, seed=0, *, replay_size: int = 500,
                 replay_batch: int = 64):
        super().__init__(model, protocol, seed)
        self.buffer = ReservoirBuffer(replay_size)
        self.replay_batch = check_int("replay_batch", replay_batch, low=1)

    def train_batches(self, i, batch_size, gen):
        current = super().train_batches(i, batch_size, gen)
        if len(self.buffer) == 0:
            return current
        return current + [(j, b.to(self.device))
                          for j, b in _collate(self.buffer.sample(self.replay_batch, gen))]

    def after_step(self, i, batches, gen):
        self.buffer.add(_examples(*batches[0]), gen)  # the current experience's batch

    def to(self, device):
        super().to(device)
        self.buffer.items = moved(self.buffer.items, device)  # (experience, x, y, mask) each
        return self

    def state(self):
        items = [{"j": j, "x": x, "y": y, "m": m} for j, x, y, m in self.buffer.items]
        return {**super().state(), "buffer": items, "n_seen": self.buffer.n_seen}

    def load_state(self, state):
        super().load_state(state)
        self.buffer.items = [(int(d["j"]), d["x"], d["y"], d["m"]) for d in state["buffer"]]
        self.buffer.n_seen = int(state["n_seen"])
