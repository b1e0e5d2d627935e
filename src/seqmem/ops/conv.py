"""Short causal depthwise convolution with a carried state (the "short conv" of Mamba,
DeltaNet, GLA and friends).

    y_t[c] = bias[c] + sum_{j=0}^{k-1} weight[c, j] * x_{t-k+1+j}[c]

weight (d, k) follows torch's conv1d layout: weight[:, k-1] multiplies the current input. The
state is the last k-1 inputs, (b, k-1, d), zeros at the start of a sequence, so a long sequence
processed in pieces (or one step at a time) gives the same outputs as one pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def short_conv_init_state(batch_size: int, d: int, kernel_size: int, *, device=None,
                          dtype=None) -> Tensor:
    """The zero state: the k-1 inputs before the sequence, (b, k-1, d)."""
    return torch.zeros(batch_size, kernel_size - 1, d, device=device, dtype=dtype)


def short_conv_step(x_t: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor
                    ) -> tuple[Tensor, Tensor]:
    """One step (the specification): x_t (b, d), state (b, k-1, d) -> y_t (b, d), state."""
    window = torch.cat([state, x_t[:, None]], dim=1)  # (b, k, d)
    y = torch.einsum("bkd,dk->bd", window, weight)  # (b, d)
    if bias is not None:
        y = y + bias
    return y, window[:, 1:]


def short_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, state: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
    """The whole sequence at once: x (b, t, d) -> y (b, t, d), final state (b, k-1, d). A
    sequence of no tokens gives an empty output and keeps the state."""
    b, t, d = x.shape
    k = weight.shape[1]
    if state is None:
        state = short_conv_init_state(b, d, k, device=x.device, dtype=x.dtype)
    if t == 0:
        return x.new_zeros(b, 0, d), state
    xp = torch.cat([state, x], dim=1)  # (b, k-1+t, d)
    y = F.conv1d(xp.transpose(1, 2), weight[:, None, :], bias, groups=d)  # (b, d, t)
    return y.transpose(1, 2), xp[:, xp.shape[1] - (k - 1):]
