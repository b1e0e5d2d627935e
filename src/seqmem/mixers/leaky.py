"""The leaky RNN with a trainable timescale per neuron (Khajehabdollahi et al., ICLR 2024).

    default rule:  h_t = phi((1 - 1/tau) h_{t-1} + (1/tau) (W h_{t-1} + U x_t + b))
    mod rule:      h_t = (1 - 1/tau) h_{t-1} + (1/tau) phi(W h_{t-1} + U x_t + b)

tau is used as clamp(tau, min=1), initialised 1 + U(0, 1). The diagonal of W is forced to zero
(by default), so tau is each unit's only self-timescale and longer memory must come from the
network's connectivity. The output is the hidden state h_t.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.errors import SeqmemError, check_choice
from seqmem.mixers.base import Mixer, register
from seqmem.mixers.parts import NewtonForm
from seqmem.mixers.recurrent_init import check_init, init_recurrent_
from seqmem.ops.rnn import LEAKY_RULES, PHIS, leaky_rnn_recurrent, leaky_rnn_step

H0_CHOICES = ("zeros", "random")


@register("leaky_rnn")
class LeakyRNN(NewtonForm, Mixer):
    """Leaky RNN with per-neuron trainable timescales tau (the flagship paper's network).

    Args:
        d_model: number of units (input and output width).
        rule: "default" (phi outside the leak) or "mod" (phi on the drive only).
        phi: nonlinearity, "leaky_relu" (default, slope 0.01), "tanh" or "relu".
        zero_diagonal: force W's diagonal to zero on every forward pass.
        input_proj: learn U (d_model x d_model); if False, U is the identity and the input is
            taken to be the drive itself (the model's encoder then plays U, as in the paper).
        bias: learn the bias b.
        train_tau: make tau trainable; otherwise tau stays at its initial value.
        tau_init: (low, high): tau is initialised U(low, high); the paper uses (1, 2).
        h0: initial state, "zeros" or "random" (0.1 * U(0, 1) per unit and sequence, as in the
            authors' code; draws from the generator given to `init_state`).
        init: initial W, "default" (U(-1/sqrt(d), 1/sqrt(d)) times init_gain), "normal"
            (N(0, init_gain^2 / d)) or "orthogonal" (W W^T = init_gain^2 I); the diagonal is
            still zeroed in use if zero_diagonal (`seqmem.mixers.recurrent_init`).
        init_gain: the scale g of the initial W (small: rich learning, large: lazy).
        init_rank: if given, W starts as a rank-r matrix (sum of r outer products, Frobenius
            norm g sqrt(d)); None: full rank. Low-rank initial connectivity: Liu et al. 2023;
            zeroing the diagonal makes it full rank in use, so give zero_diagonal=False.
        init_noise: full-rank N(0, 1/d) noise added to the rank-r W (times init_gain).
    """

    recipe_optimizer: ClassVar[str | None] = "sgd"

    modes = ("recurrent", "newton")  # newton: all steps at once by Newton iterations

    def __init__(
        self,
        d_model: int,
        *,
        rule: str = "default",
        phi: str = "leaky_relu",
        zero_diagonal: bool = True,
        input_proj: bool = True,
        bias: bool = True,
        train_tau: bool = True,
        tau_init: tuple[float, float] = (1.0, 2.0),
        h0: str = "zeros",
        init: str = "default",
        init_gain: float = 1.0,
        init_rank: int | None = None,
        init_noise: float = 0.0,
    ):
        super().__init__(d_model)
        self.rule = check_choice("leaky_rnn rule", rule, LEAKY_RULES)
        self.phi = check_choice("activation phi", phi, PHIS)
        self.h0 = check_choice("leaky_rnn h0", h0, H0_CHOICES)
        init_options = check_init("leaky_rnn", d_model, init, init_gain, init_rank, init_noise)
        try:
            lo, hi = (float(v) for v in tau_init)
        except (TypeError, ValueError):
            lo, hi = math.nan, math.nan  # not a pair of numbers: rejected below
        if not (1.0 <= lo <= hi < math.inf):
            raise SeqmemError(
                f"tau_init must be (low, high) with 1 <= low <= high < inf, got {tau_init}"
            )
        self.zero_diagonal = zero_diagonal
        k = 1 / math.sqrt(d_model)  # torch.nn.Linear's default range
        self.W = nn.Parameter(torch.empty(d_model, d_model).uniform_(-k, k))  # (d, d)
        init_recurrent_(self.W, **init_options)
        self.U = nn.Parameter(torch.empty(d_model, d_model).uniform_(-k, k)) if input_proj else None
        self.b = nn.Parameter(torch.empty(d_model).uniform_(-k, k)) if bias else None
        self.tau = nn.Parameter(torch.empty(d_model).uniform_(lo, hi), requires_grad=train_tau)
        self.register_buffer("off_diagonal", 1 - torch.eye(d_model), persistent=False)

    def recurrent_weight(self) -> Tensor:
        """W with its diagonal zeroed if `zero_diagonal` (the matrix the recurrence uses)."""
        return self.W * self.off_diagonal if self.zero_diagonal else self.W

    def inv_tau(self) -> Tensor:
        return 1 / torch.clamp(self.tau, min=1.0)  # (d,)

    def drive(self, x: Tensor) -> Tensor:
        """Input drive U x + b, for x (..., d)."""
        if self.U is not None:
            return F.linear(x, self.U, self.b)  # one product, bias included
        return x + self.b if self.b is not None else x

    def _forward(self, x, state, mode, chunk_size):
        if mode == "newton":
            return self._newton(x, state)[:2]
        return leaky_rnn_recurrent(self.drive(x), state, self.recurrent_weight(), self.inv_tau(),
                                   rule=self.rule, phi=self.phi)

    def newton_system(self, x, state):
        W, a = self.recurrent_weight(), self.inv_tau()

        def cell(u_t, h):
            return leaky_rnn_step(u_t, h, W, a, rule=self.rule, phi=self.phi)

        return cell, self.drive(x), state

    def _step(self, x_t, state):
        h = leaky_rnn_step(self.drive(x_t), state, self.recurrent_weight(), self.inv_tau(),
                           rule=self.rule, phi=self.phi)
        return h, h

    def init_state(self, batch_size, *, device=None, dtype=None, generator=None):
        kw = self.state_options(device, dtype)
        if self.h0 == "random":
            # drawn on the CPU, where the generator is, then moved to the state's device
            return 0.1 * torch.rand(batch_size, self.d_model, generator=generator,
                                    dtype=kw["dtype"]).to(kw["device"])
        return torch.zeros(batch_size, self.d_model, **kw)

    def state_size(self):
        return self.d_model

    def timescales(self):
        """tau per unit, as used: clamp(tau, min=1)."""
        return torch.clamp(self.tau.detach(), min=1.0)

    def extra_repr(self):
        return f"d_model={self.d_model}, rule={self.rule}, phi={self.phi}, h0={self.h0}"
