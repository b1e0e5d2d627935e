"""Continual-learning methods: what is trained on each step, and what holds earlier experiences.

Every method wraps one `SequenceModel` and answers, for experience i:

- `train_batches(i, gen)`: the (experience, batch) pairs of one step; their losses are summed;
- `penalty(i)`: a regulariser added to the loss (0 for most);
- `logits(j, x)`: the read-out of experience j on inputs x;
- hooks before and after each step and experience, and `state()` / `load_state()` for
  checkpoints.

Methods:

- `finetune`: the current experience only (the lower bound).
- `joint`: every experience from the first step (the i.i.d. upper bound; a "phase" of the
  same length per experience, so the accuracy matrix is measured on the same schedule).
- `multihead`: the current and every earlier experience, each a fresh batch every step: the
  flagship's multi-head curriculum written as a rehearsal protocol.
- `replay`: experience replay (Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual
  Learning"): a reservoir buffer (Vitter 1985, algorithm R) of `replay_size` examples of the
  stream; each step adds a batch of `replay_batch` buffered examples to the current batch.
- `ewc`: online elastic weight consolidation (Kirkpatrick et al. 2017; the online form of
  Schwarz et al. 2018): after experience i, F <- gamma F + F_i with F_i the diagonal empirical
  Fisher (squared per-example gradients of the log-likelihood of the true label, averaged
  over `fisher_batches` batches of `fisher_batch_size` examples), theta* <- theta; penalty
  (lambda / 2) sum F (theta - theta*)^2.
- `si`: synaptic intelligence (Zenke, Poole & Ganguli 2017): omega += -g * dtheta along the
  training path (g the gradient of the task loss, without the penalty), and after the
  experience Omega += omega / (Delta^2 + xi), Delta the experience's total change; penalty
  c sum Omega (theta - theta~)^2, theta~ the weights at the end of the last experience.
- `hnet`, `rnn_hnet`: task-conditioned hypernetworks, see `seqmem.continual.hnet`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.continual.protocols import Protocol
from seqmem.errors import SeqmemError
from seqmem.models import SequenceModel
from seqmem.tasks.base import Batch

METHODS = ("finetune", "joint", "multihead", "replay", "ewc", "si", "hnet", "rnn_hnet")


def experience_loss(logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """Cross-entropy (mean over supervised positions) and accuracy of logits (b, t, C)
    against the batch's first target column."""
    y = batch.targets[..., 0][batch.mask]  # (n,)
    z = logits[batch.mask]  # (n, C)
    return F.cross_entropy(z, y), (z.argmax(-1) == y).float().mean()


class Method:
    """Fine-tuning, and the base of every method."""

    name = "finetune"
    seed = 0  # the run's seed: methods that draw batches of their own derive generators from it

    def __init__(self, model: SequenceModel, protocol: Protocol, **options):
        self.model, self.protocol = model, protocol
        if options:
            raise SeqmemError(f"method {self.name} takes no options; got {sorted(options)}")

    # ---- what is trained ------------------------------------------------------------------
    def parameters(self, i: int) -> list[nn.Parameter]:
        """The parameters the optimizer updates during experience i."""
        return list(self.model.parameters())

    def train_batches(self, i: int, batch_size: int, gen: torch.Generator
                      ) -> list[tuple[int, Batch]]:
        return [(i, self.protocol.experiences[i].train.sample(batch_size, generator=gen))]

    def logits(self, j: int, x: Tensor) -> Tensor:
        """The read-out of experience j for inputs x: (b, t, classes)."""
        (z,), _ = self.model(x, heads=[self.protocol.experiences[j].head])
        return z

    def penalty(self, i: int) -> Tensor | float:
        return 0.0

    # ---- hooks ----------------------------------------------------------------------------
    def before_experience(self, i: int, gen: torch.Generator) -> None:
        pass

    def after_step(self, i: int, batches: list[tuple[int, Batch]], gen: torch.Generator
                   ) -> None:
        pass

    def after_experience(self, i: int, gen: torch.Generator) -> None:
        pass

    # ---- checkpoints ----------------------------------------------------------------------
    def state(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])


class Joint(Method):
    """Every experience from the first step on."""

    name = "joint"

    def train_batches(self, i, batch_size, gen):
        return [(j, e.train.sample(batch_size, generator=gen))
                for j, e in enumerate(self.protocol.experiences)]


class MultiHead(Method):
    """The current and every earlier experience, a fresh batch of each per step."""

    name = "multihead"

    def train_batches(self, i, batch_size, gen):
        return [(j, self.protocol.experiences[j].train.sample(batch_size, generator=gen))
                for j in range(i + 1)]


# ---- replay -----------------------------------------------------------------------------------
class ReservoirBuffer:
    """A uniform sample of at most `capacity` items of a stream (Vitter's algorithm R): the
    n-th item is kept with probability capacity / n, replacing a uniformly chosen slot."""

    def __init__(self, capacity: int):
        if not isinstance(capacity, int) or capacity < 1:
            raise SeqmemError(f"replay_size must be an integer >= 1, got {capacity!r}")
        self.capacity, self.n_seen, self.items = capacity, 0, []

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
    """A batch as a list of (experience, inputs, targets, mask) per example."""
    return [(j, batch.inputs[b], batch.targets[b, :, :1], batch.mask[b])
            for b in range(batch.mask.shape[0])]


def _collate(items: list[tuple]) -> list[tuple[int, Batch]]:
    """Buffered examples as one batch per experience, padded at the end to a common length
    (masked out; every mixer is causal, so padding after a position does not change it)."""
    out = []
    for j in sorted({it[0] for it in items}):
        group = [it for it in items if it[0] == j]
        t = max(it[3].shape[0] for it in group)

        def pad(x: Tensor, t=t) -> Tensor:
            return F.pad(x, [0, 0] * (x.ndim - 1) + [0, t - x.shape[0]])

        inputs = torch.stack([pad(it[1]) for it in group])
        targets = torch.stack([pad(it[2]) for it in group])
        mask = torch.stack([pad(it[3]) for it in group])
        out.append((j, Batch(inputs, targets, mask, {"seq_len": t, "replay": True})))
    return out


class Replay(Method):
    """The current batch plus `replay_batch` examples from a reservoir buffer."""

    name = "replay"

    def __init__(self, model, protocol, *, replay_size: int = 500, replay_batch: int = 64):
        super().__init__(model, protocol)
        if not isinstance(replay_batch, int) or replay_batch < 1:
            raise SeqmemError(f"replay_batch must be an integer >= 1, got {replay_batch!r}")
        self.buffer, self.replay_batch = ReservoirBuffer(replay_size), replay_batch

    def train_batches(self, i, batch_size, gen):
        current = super().train_batches(i, batch_size, gen)
        if len(self.buffer) == 0:
            return current
        return current + _collate(self.buffer.sample(self.replay_batch, gen))

    def after_step(self, i, batches, gen):
        self.buffer.add(_examples(*batches[0]), gen)  # the current experience's batch

    def state(self):
        items = [{"j": j, "x": x, "y": y, "m": m} for j, x, y, m in self.buffer.items]
        return {**super().state(), "buffer": items, "n_seen": self.buffer.n_seen}

    def load_state(self, state):
        super().load_state(state)
        self.buffer.items = [(int(d["j"]), d["x"], d["y"], d["m"]) for d in state["buffer"]]
        self.buffer.n_seen = int(state["n_seen"])


# ---- regularisation ---------------------------------------------------------------------------
def _named(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _zeros(model: nn.Module) -> dict[str, Tensor]:
    return {n: torch.zeros_like(p) for n, p in _named(model).items()}


def _copy(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in _named(model).items()}


class EWC(Method):
    """Online EWC: penalty (lambda / 2) sum F (theta - theta*)^2."""

    name = "ewc"

    def __init__(self, model, protocol, *, ewc_lambda: float = 100.0, ewc_gamma: float = 1.0,
                 fisher_batches: int = 2, fisher_batch_size: int = 32):
        super().__init__(model, protocol)
        if not ewc_lambda >= 0 or not 0 <= ewc_gamma <= 1:
            raise SeqmemError(f"ewc needs ewc_lambda >= 0 and ewc_gamma in [0, 1], got "
                              f"{ewc_lambda!r}, {ewc_gamma!r}")
        if min(fisher_batches, fisher_batch_size) < 1:
            raise SeqmemError("ewc fisher_batches and fisher_batch_size must be >= 1")
        self.lam, self.gamma = float(ewc_lambda), float(ewc_gamma)
        self.fisher_batches, self.fisher_batch_size = fisher_batches, fisher_batch_size
        self.F: dict[str, Tensor] | None = None
        self.star: dict[str, Tensor] | None = None

    def fisher(self, i: int) -> dict[str, Tensor]:
        """The diagonal empirical Fisher of experience i: mean squared per-example gradient of
        the log-likelihood of the true label (summed over the example's labelled positions).
        Its batches come from a generator of its own, so the training stream is the same as
        fine-tuning's."""
        gen = torch.Generator().manual_seed(10007 * (i + 1) + self.seed)
        params = _named(self.model)
        Fi = {n: torch.zeros_like(p) for n, p in params.items()}
        task, n = self.protocol.experiences[i].train, 0
        for _ in range(self.fisher_batches):
            batch = task.sample(self.fisher_batch_size, generator=gen)
            for b in range(batch.mask.shape[0]):
                one = Batch(batch.inputs[b:b + 1], batch.targets[b:b + 1], batch.mask[b:b + 1])
                z = self.logits(i, one.inputs)[one.mask]  # (positions, C)
                y = one.targets[..., 0][one.mask]
                loglik = -F.cross_entropy(z, y, reduction="sum")
                grads = torch.autograd.grad(loglik, list(params.values()), allow_unused=True)
                for (name, _), g in zip(params.items(), grads, strict=True):
                    if g is not None:
                        Fi[name] += g.detach() ** 2
                n += 1
        return {k: v / n for k, v in Fi.items()}

    def penalty(self, i):
        if self.F is None or self.lam == 0:
            return 0.0
        params = _named(self.model)
        return self.lam / 2 * sum((self.F[n] * (p - self.star[n]) ** 2).sum()
                                  for n, p in params.items())

    def after_experience(self, i, gen):
        Fi = self.fisher(i)
        self.F = Fi if self.F is None else {n: self.gamma * self.F[n] + Fi[n] for n in Fi}
        self.star = _copy(self.model)

    def state(self):
        return {**super().state(), "F": self.F, "star": self.star}

    def load_state(self, state):
        super().load_state(state)
        self.F, self.star = state["F"], state["star"]


class SI(Method):
    """Synaptic intelligence: penalty c sum Omega (theta - theta~)^2."""

    name = "si"

    def __init__(self, model, protocol, *, si_c: float = 1.0, si_xi: float = 0.1):
        super().__init__(model, protocol)
        if not si_c >= 0 or not si_xi > 0:
            raise SeqmemError(f"si needs si_c >= 0 and si_xi > 0, got {si_c!r}, {si_xi!r}")
        self.c, self.xi = float(si_c), float(si_xi)
        self.Omega = _zeros(model)
        self.anchor = _copy(model)  # theta~
        self.omega = _zeros(model)
        self.start = _copy(model)
        self.prev = _copy(model)

    def penalty(self, i):
        if self.c == 0 or i == 0:
            return 0.0
        return self.c * sum((self.Omega[n] * (p - self.anchor[n]) ** 2).sum()
                            for n, p in _named(self.model).items())

    def before_experience(self, i, gen):
        self.omega, self.start, self.prev = _zeros(self.model), _copy(self.model), \
            _copy(self.model)

    def after_step(self, i, batches, gen):
        for n, p in _named(self.model).items():
            if p.grad is None:
                continue
            g = p.grad
            if i > 0 and self.c:  # the task loss's gradient: remove the penalty's, known exactly
                g = g - 2 * self.c * self.Omega[n] * (self.prev[n] - self.anchor[n])
            now = p.detach()
            self.omega[n] -= g * (now - self.prev[n])
            self.prev[n] = now.clone()

    def after_experience(self, i, gen):
        for n, p in _named(self.model).items():
            delta = p.detach() - self.start[n]
            self.Omega[n] = self.Omega[n] + self.omega[n] / (delta ** 2 + self.xi)
        self.anchor = _copy(self.model)

    def state(self):
        return {**super().state(), "Omega": self.Omega, "anchor": self.anchor}

    def load_state(self, state):
        super().load_state(state)
        self.Omega, self.anchor = state["Omega"], state["anchor"]


def build_method(name: str, model: SequenceModel, protocol: Protocol, *, seed: int = 0,
                 **options) -> Method:
    """The method `name` (one of METHODS) around `model`, with its options."""
    from seqmem.continual.hnet import HNet, RNNHNet
    from seqmem.errors import check_choice

    check_choice("method", name, METHODS)
    cls = {"finetune": Method, "joint": Joint, "multihead": MultiHead, "replay": Replay,
           "ewc": EWC, "si": SI, "hnet": HNet, "rnn_hnet": RNNHNet}[name]
    try:
        method = cls(model, protocol, **options)
    except TypeError as e:
        raise SeqmemError(f"method {name}: {e}") from None
    method.seed = seed
    return method
