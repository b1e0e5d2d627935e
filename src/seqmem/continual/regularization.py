"""Regularisation methods: a penalty that holds the weights important to earlier experiences.

- `ewc`: online elastic weight consolidation (Kirkpatrick et al. 2017; the online form of
  Schwarz et al. 2018): after experience i, F <- gamma F + F_i with F_i the diagonal empirical
  Fisher (squared per-example gradients of the log-likelihood of the true label, averaged
  over `fisher_batches` batches of `fisher_batch_size` examples; for a regression experience
  the log-likelihood of a unit-variance Gaussian around the prediction, -1/2 sum (y - z)^2),
  theta* <- theta; penalty
  (lambda / 2) sum F (theta - theta*)^2.
- `si`: synaptic intelligence (Zenke, Poole & Ganguli 2017): omega += -g * dtheta along the
  training path (g the gradient of the task loss, without the penalty), and after the
  experience Omega += omega / (Delta^2 + xi), Delta the experience's total change; penalty
  c sum Omega (theta - theta~)^2, theta~ the weights at the end of the last experience.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.continual.base import Method, register_method
from seqmem.errors import SeqmemError, check_int
from seqmem.tasks.base import Batch


def _named(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _zeros(model: nn.Module) -> dict[str, Tensor]:
    return {n: torch.zeros_like(p) for n, p in _named(model).items()}


def _copy(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in _named(model).items()}


@register_method("ewc")
class EWC(Method):
    """Online EWC: penalty (lambda / 2) sum F (theta - theta*)^2 (Kirkpatrick et al. 2017,
    Schwarz et al. 2018)."""

    def __init__(self, model, protocol, seed=0, *, ewc_lambda: float = 100.0,
                 ewc_gamma: float = 1.0, fisher_batches: int = 2, fisher_batch_size: int = 32):
        super().__init__(model, protocol, seed)
        if not ewc_lambda >= 0 or not 0 <= ewc_gamma <= 1:
            raise SeqmemError(f"ewc needs ewc_lambda >= 0 and ewc_gamma in [0, 1], got "
                              f"{ewc_lambda!r}, {ewc_gamma!r}")
        self.lam, self.gamma = float(ewc_lambda), float(ewc_gamma)
        self.fisher_batches = check_int("ewc: fisher_batches", fisher_batches, low=1)
        self.fisher_batch_size = check_int("ewc: fisher_batch_size", fisher_batch_size, low=1)
        self.F: dict[str, Tensor] | None = None
        self.star: dict[str, Tensor] | None = None

    def fisher(self, i: int) -> dict[str, Tensor]:
        """The diagonal empirical Fisher of experience i: mean squared per-example gradient of
        the log-likelihood of the true label (summed over the example's labelled positions).
        Its batches come from a generator of its own (stream i + 1), so the training stream is
        the same as fine-tuning's."""
        gen = self.generator(i + 1)
        params = _named(self.model)
        Fi = {n: torch.zeros_like(p) for n, p in params.items()}
        task, n = self.protocol.experiences[i].train, 0
        for _ in range(self.fisher_batches):
            batch = self.sample(task, self.fisher_batch_size, gen)
            for b in range(batch.mask.shape[0]):
                one = Batch(batch.inputs[b:b + 1], batch.targets[b:b + 1], batch.mask[b:b + 1])
                z = self.logits(i, one.inputs)[one.mask]  # (positions, C)
                if one.targets.is_floating_point():  # regression: a unit-variance Gaussian
                    loglik = -0.5 * ((z - one.targets[one.mask].to(z.dtype)) ** 2).sum()
                else:
                    y = one.targets[..., 0][one.mask]  # (positions,)
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


@register_method("si")
class SI(Method):
    """Synaptic intelligence: penalty c sum Omega (theta - theta~)^2 (Zenke, Poole & Ganguli
    2017)."""

    def __init__(self, model, protocol, seed=0, *, si_c: float = 1.0, si_xi: float = 0.1):
        super().__init__(model, protocol, seed)
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
