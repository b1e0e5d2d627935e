"""pLSTM over a grid (Pöppel et al. 2025, "pLSTM: parallelizable Linear Source Transition Mark
networks"): a linear recurrence on the DAG of the grid (edges to the right and down), with
Source, Transition and Mark gates computed from each cell's input, in the paper's P-mode
(directed propagation) or D-mode (diffusive distribution):

    q = W_q x / sqrt(d_k), k = W_k x, v = W_v x,  S, M, D = sigmoid(...),
    T = P-mode: tanh(W_T x + b_T), columns scaled to absolute sum <= 1;  D-mode: sigmoid(.)/2,
    o = the recurrence of `seqmem.ops.plstm`,  y = W_o RMSNorm(o) * silu(W_g x)

per head. Causal along rows: the state between row blocks is the row of down edges.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from seqmem.errors import check_choice, check_int
from seqmem.mixers.grid import Mixer2D, register_2d
from seqmem.mixers.parts import check_heads, gated_rms_norm, merge_heads, split_heads
from seqmem.ops.plstm import (
    d_mode_transitions,
    p_mode_transitions,
    plstm_parallel,
    plstm_rows,
    plstm_scan,
)

PROPAGATION = ("P", "D")


@register_2d("plstm")
class PLSTM(Mixer2D):
    """pLSTM's Source-Transition-Mark recurrence on the grid's DAG, in P-mode or D-mode.

    Args:
        d_model: model width (and value width).
        n_heads: heads (a divisor of d_model).
        d_key: key width per head (0 = d_model // n_heads).
        propagation: "P" (directed propagation: each incoming edge's transitions scaled to
            an absolute sum <= 1) or "D" (diffusive distribution: every transition tau / 2).
    """

    modes = ("parallel", "rows", "scan")

    def __init__(self, d_model: int, *, n_heads: int = 2, d_key: int = 0,
                 propagation: str = "P"):
        super().__init__(d_model)
        self.n_heads = n_heads
        self.d_head = check_heads("plstm", d_model, n_heads)
        self.d_key = check_int("plstm: d_key (0: d_model // n_heads)", d_key, low=0) \
            or self.d_head
        self.propagation = check_choice("plstm: propagation", propagation, PROPAGATION)
        self.qk = nn.Linear(d_model, 2 * n_heads * self.d_key, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        n_t = 4 if self.propagation == "P" else 1
        # per head: source (right, down), mark (left, up), direct, transitions
        self.gates = nn.Linear(d_model, n_heads * (5 + n_t))
        with torch.no_grad():  # start by carrying along rows and columns, little across
            bias = self.gates.bias.view(n_heads, 5 + n_t)
            bias.zero_()
            if self.propagation == "P":
                bias[:, 5:] = torch.tensor([2.0, 0.0, 0.0, 2.0])  # T^{rl}, T^{ru}, T^{dl}, T^{du}
            else:
                bias[:, 5] = 3.0
        self.gate = nn.Linear(d_model, d_model, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(d_model))
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _inputs(self, x):
        """q, k (b, H, W, h, d_k), v (b, H, W, h, d_v), S, M (.., h, 2), D (.., h), T (.., h,
        2, 2) of the grid x (b, H, W, d)."""
        q, k = rearrange(self.qk(x), "... (n h d) -> n ... h d", n=2, h=self.n_heads)
        v = split_heads(self.v(x), self.n_heads)
        gates = rearrange(self.gates(x), "... (h g) -> ... h g", h=self.n_heads)
        S, M, D = torch.sigmoid(gates[..., 0:2]), torch.sigmoid(gates[..., 2:4]), \
            torch.sigmoid(gates[..., 4])
        if self.propagation == "P":
            T = p_mode_transitions(torch.tanh(gates[..., 5:9]).unflatten(-1, (2, 2)))
        else:
            T = d_mode_transitions(torch.sigmoid(gates[..., 5]))
        return q * self.d_key ** -0.5, k, v, S, T, M, D

    def _forward(self, x, state, mode):
        parts = self._inputs(x)
        form = {"parallel": plstm_parallel, "rows": plstm_rows, "scan": plstm_scan}[mode]
        o, state = form(*parts, state)
        y = self.out(gated_rms_norm(merge_heads(o), self.norm_weight, self.gate(x), 1e-6))
        return y, state

    def init_state(self, batch_size, width=1, *, device=None, dtype=None):
        return torch.zeros(batch_size, width, self.n_heads, self.d_key, self.d_head,
                           **self.state_options(device, dtype))

    def state_size(self, width=1):
        return width * self.n_heads * self.d_key * self.d_head

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, d_key={self.d_key}, "
                f"propagation={self.propagation}")
