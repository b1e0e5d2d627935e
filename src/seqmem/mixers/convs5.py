"""ConvS5: convolutional state transitions over frames (Smith et al. 2023), frames = rows."""

from __future__ import annotations

import math

import torch
from torch import nn

from seqmem.errors import SeqmemError, check_int
from seqmem.mixers.grid import Mixer2D, register_2d
from seqmem.ops.convs5 import convs5_discretise, convs5_parallel, convs5_step


@register_2d("convs5")
class ConvS5(Mixer2D):
    """ConvS5 on a grid whose rows are frames: a state map carried over time by a parallel scan.

    Smith, De Mello, Kautz, Linderman & Byeon 2023 (NeurIPS): x_k = A_bar * x_{k-1} +
    B_bar conv u_k, y_k = C conv x_k + D * u_k, with a pointwise diagonal state kernel A (so
    the frames compose associatively and the recurrence over time is a parallel scan) and
    spatial convolutions B (d_model -> d_state channels) and C (d_state -> d_model), then a
    linear output map. Zero-order hold with a learned step per state channel (log-uniform
    in [1e-3, 1e-1] at initialisation, as S5): A_bar = exp(Lambda dt), B_bar = (A_bar - 1) /
    Lambda B (`seqmem.ops.convs5`).

    Grid mapping (seqmem's): the rows of (b, H, W, d) are the frames, i.e. time, and each
    frame is a 1-D spatial map of W cells, so the convolutions run along the row (odd
    `kernel_size`, "same" zero padding) and the state is one map of W x d_state. The paper's
    frames are 2-D images; on a seqmem grid a frame is a row. Its Lambda is complex (S5's
    HiPPO-N eigenvalues, outputs 2 Re); here it is real and negative, Lambda_p = -(p + 1/2)
    at initialisation (S4D-real), seqmem's choice.

    Causal along rows (time); within a frame every cell sees its kernel's neighbourhood on
    both sides. Modes: "parallel" (`convs5_parallel`: the convolutions on all frames at once,
    the scan over time in log2(H) rounds) and "scan" (`convs5_step`: the frames one by one,
    the paper's recurrence; within a frame the convolution has no cell order). The state
    passed between row blocks is the last frame's map x (b, W, d_state).

    Args:
        d_state: state channels P per position.
        kernel_size: width of the B and C convolutions along a row (odd).
    """

    modes = ("parallel", "scan")

    def __init__(self, d_model: int, *, d_state: int = 16, kernel_size: int = 3):
        super().__init__(d_model)
        self.d_state = check_int("convs5: d_state", d_state)
        self.kernel_size = check_int("convs5: kernel_size", kernel_size)
        if self.kernel_size % 2 == 0:
            raise SeqmemError(f"convs5: kernel_size must be odd (a 'same' convolution along "
                              f"the row), got {kernel_size}")
        P, d, k = self.d_state, d_model, self.kernel_size
        self.log_neg_Lambda = nn.Parameter(torch.log(torch.arange(P) + 0.5))  # (P,)
        self.log_dt = nn.Parameter(torch.rand(P) * (math.log(0.1) - math.log(1e-3))
                                   + math.log(1e-3))  # (P,)
        self.B = nn.Parameter(torch.randn(P, d, k) / math.sqrt(d * k))
        self.C = nn.Parameter(torch.randn(d, P, k) / math.sqrt(P * k))
        self.D = nn.Parameter(torch.ones(d))
        self.out_proj = nn.Linear(d, d, bias=False)

    def discretised(self):
        """(A_bar, gamma) of the current parameters (`ops.convs5.convs5_discretise`)."""
        return convs5_discretise(-torch.exp(self.log_neg_Lambda), self.log_dt)

    def _forward(self, x, state, mode):
        A_bar, gamma = self.discretised()
        if mode == "parallel":
            y, state = convs5_parallel(x, state, A_bar, gamma, self.B, self.C, self.D)
        else:
            ys = []
            for k in range(x.shape[1]):
                y_k, state = convs5_step(x[:, k], state, A_bar, gamma, self.B, self.C, self.D)
                ys.append(y_k)
            y = torch.stack(ys, dim=1)
        return self.out_proj(y), state

    def init_state(self, batch_size, width=1, *, device=None, dtype=None):
        """The zero state map (b, W, d_state)."""
        return torch.zeros(batch_size, width, self.d_state, **self.state_options(device, dtype))

    def state_size(self, width=1):
        """width * d_state floats."""
        return width * self.d_state

    def extra_repr(self):
        return f"d_model={self.d_model}, d_state={self.d_state}, kernel_size={self.kernel_size}"
