"""Dilated causal convolution with a carried state, the layer of a temporal convolutional
network (Bai et al. 2018, "An Empirical Evaluation of Generic Convolutional and Recurrent
Networks for Sequence Modeling").

    y_t = bias + sum_{j=0}^{k-1} W[:, :, j] x_{t - (k-1-j) dilation}

weight (d_out, d_in, k) follows torch's conv1d layout. The state is the last (k-1) dilation
inputs, (b, (k-1) dilation, d_in), zeros at the start of a sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmem.ops.loops import float32_recurrence


def dilated_conv_init_state(batch_size: int, d_in: int, kernel_size: int, dilation: int, *,
                            device=None, dtype=None) -> Tensor:
    """The zero state: the (k-1) dilation inputs before the sequence."""
    return torch.zeros(batch_size, (kernel_size - 1) * dilation, d_in, device=device,
                       dtype=dtype)


@float32_recurrence
def dilated_conv_step(x_t: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor,
                      dilation: int) -> tuple[Tensor, Tensor]:
    """One step (the specification): x_t (b, d_in), state (b, (k-1) dil, d_in) -> y_t (b,
    d_out) and the next state."""
    window = torch.cat([state, x_t[:, None]], dim=1)  # (b, (k-1) dil + 1, d_in)
    taps = window[:, ::dilation]  # (b, k, d_in), oldest first
    y = torch.einsum("bki,oik->bo", taps, weight)  # (b, d_out)
    if bias is not None:
        y = y + bias
    return y, window[:, 1:]


@float32_recurrence
def dilated_conv(x: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor, dilation: int
                 ) -> tuple[Tensor, Tensor]:
    """The whole sequence at once: x (b, t, d_in) -> y (b, t, d_out) and the final state."""
    xp = torch.cat([state, x], dim=1)  # (b, (k-1) dil + t, d_in)
    y = F.conv1d(xp.transpose(1, 2), weight, bias, dilation=dilation)  # (b, d_out, t)
    return y.transpose(1, 2), xp[:, xp.shape[1] - state.shape[1]:]
