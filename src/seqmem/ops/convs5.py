"""ConvS5: a state-space recurrence over frames whose state is a spatial map.

Smith, De Mello, Kautz, Linderman & Byeon 2023, "Convolutional State Space Models for
Long-Range Spatiotemporal Modeling" (NeurIPS). Frames u_k (a spatial map with d channels per
position) drive a state map x_k with P channels per position:

    x_k = A_bar * x_{k-1} + B_bar conv u_k        (A: one pointwise (1 x 1) diagonal kernel)
    y_k = C conv x_k + D * u_k

With a pointwise diagonal state kernel the frames compose as affine maps (the paper's
Proposition: (A_i, b_i) then (A_j, b_j) = (A_j A_i, A_j b_i + b_j)), so the recurrence over
time runs as a parallel scan, while B and C are ordinary spatial convolutions applied to all
frames at once. Discretisation by zero-order hold of the continuous system with a learned
step Delta per state channel: A_bar = exp(Lambda Delta), B_bar = (A_bar - 1) / Lambda * B.

Here a frame is one row of a grid (b, H, W, d): rows are the frames (time), each a 1-D
spatial map of W positions, and the convolutions run along W ("same" padding, odd kernel).
Forms: `convs5_step` (one frame: the specification) and `convs5_parallel` (all frames, the
scan over time by `ops.scan.linear_recurrence`). Shapes: u (b, H, W, d); state x (b, W, P);
B (P, d, k), C (d, P, k) convolution kernels; Lambda, log_dt (P,); D (d,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmem.ops.loops import float32_recurrence
from seqmem.ops.scan import linear_recurrence


def convs5_discretise(Lambda: Tensor, log_dt: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order hold: (A_bar, gamma) with A_bar = exp(Lambda dt) and gamma =
    (A_bar - 1) / Lambda, the factor of B_bar = gamma * B; Lambda < 0, dt = exp(log_dt)."""
    A_bar = torch.exp(Lambda * torch.exp(log_dt))  # (P,)
    return A_bar, torch.expm1(Lambda * torch.exp(log_dt)) / Lambda


def _conv_rows(v: Tensor, weight: Tensor) -> Tensor:
    """The 'same' convolution along W of every row: v (..., W, c_in) -> (..., W, c_out)."""
    lead, W = v.shape[:-2], v.shape[-2]
    flat = v.reshape(-1, W, v.shape[-1]).transpose(1, 2)  # (rows, c_in, W)
    out = F.conv1d(flat, weight, padding=weight.shape[-1] // 2)  # (rows, c_out, W)
    return out.transpose(1, 2).reshape(*lead, W, weight.shape[0])


@float32_recurrence
def convs5_step(u_k: Tensor, x: Tensor, A_bar: Tensor, gamma: Tensor, B: Tensor, C: Tensor,
                D: Tensor) -> tuple[Tensor, Tensor]:
    """One frame: u_k (b, W, d), x (b, W, P) -> (y_k (b, W, d), x_k (b, W, P))."""
    x = A_bar * x + gamma * _conv_rows(u_k, B)
    return _conv_rows(x, C) + D * u_k, x


@float32_recurrence
def convs5_parallel(u: Tensor, x0: Tensor, A_bar: Tensor, gamma: Tensor, B: Tensor, C: Tensor,
                    D: Tensor) -> tuple[Tensor, Tensor]:
    """Every frame at once: u (b, H, W, d), x0 (b, W, P) -> (y (b, H, W, d), x_H (b, W, P));
    B_bar conv u for all frames, the scan over time in log2(H) rounds, C conv x for all."""
    bu = gamma * _conv_rows(u, B)  # (b, H, W, P)
    x = linear_recurrence(A_bar.expand_as(bu), bu, x0, dim=1)  # (b, H, W, P)
    return _conv_rows(x, C) + D * u, x[:, -1]
