"""Short causal depthwise convolution with a carried state (the "short conv" of Mamba,
DeltaNet, GLA and friends).

    y_t[c] = bias[c] + sum_{j=0}^{k-1} weight[c, j] * x_{t-k+1+j}[c]

weight (d, k) follows torch's conv1d layout: weight[:, k-1] multiplies the current input. The
state is the last k-1 inputs, (b, k-1, d), zeros at the start of a sequence, so a long sequence
processed in pieces (or one step at a time) gives the same outputs as one pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqmem.ops import backends
from seqmem.ops.loops import float32_recurrence


def short_conv_init_state(batch_size: int, d: int, kernel_size: int, *, device=None,
                          dtype=None) -> Tensor:
    """The zero state: the k-1 inputs before the sequence, (b, k-1, d)."""
    return torch.zeros(batch_size, kernel_size - 1, d, device=device, dtype=dtype)


@float32_recurrence
def short_conv_step(x_t: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor
                    ) -> tuple[Tensor, Tensor]:
    """One step (the specification): x_t (b, d), state (b, k-1, d) -> y_t (b, d), state."""
    window = torch.cat([state, x_t[:, None]], dim=1)  # (b, k, d)
    y = torch.einsum("bkd,dk->bd", window, weight)  # (b, d)
    if bias is not None:
        y = y + bias
    return y, window[:, 1:]


@float32_recurrence
def short_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, state: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
    """The whole sequence at once: x (b, t, d) -> y (b, t, d), final state (b, k-1, d). A
    sequence of no tokens gives an empty output and keeps the state."""
    kernel = backends.kernel("short_conv", None, x, inputs=(x, bias, state), weight=weight)
    if kernel is not None:  # a CUDA kernel (ops.backends); else seqmem's own form
        return backends.causal_conv1d_short_conv(kernel, x, weight, bias, state)
    b, t, d = x.shape
    k = weight.shape[1]
    if state is None:
        state = short_conv_init_state(b, d, k, device=x.device, dtype=x.dtype)
    if t == 0:
        return x.new_zeros(b, 0, d), state
    xp = torch.cat([state, x], dim=1)  # (b, k-1+t, d)
    return _ShortConv.apply(xp, weight, bias), xp[:, xp.shape[1] - (k - 1):]


class _ShortConv(torch.autograd.Function):
    """y = bias + sum_j weight[:, j] xp[:, j:j+t] over the padded input xp (b, k-1+t, d), as k
    fused multiply-adds in the (b, t, d) layout, with a hand-written backward of k more each
    way. On a CPU this ran faster, forward and backward, than torch's depthwise conv1d
    (whose backward dominates at small widths), and it needs no transposes."""

    @staticmethod
    def forward(ctx, xp: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        k = weight.shape[1]
        t = xp.shape[1] - (k - 1)
        last = xp[:, k - 1:]  # the current input, times weight[:, k-1]
        y = torch.mul(last, weight[:, k - 1]) if bias is None else torch.addcmul(
            bias, last, weight[:, k - 1])
        for j in range(k - 1):
            y.addcmul_(xp[:, j:j + t], weight[:, j])
        ctx.save_for_backward(xp, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @float32_recurrence
    def backward(ctx, g: Tensor):
        xp, weight = ctx.saved_tensors
        k, t = weight.shape[1], g.shape[1]
        want_x, want_w, want_b = ctx.needs_input_grad
        g_xp = torch.zeros_like(xp) if want_x else None
        g_w = torch.empty_like(weight) if want_w else None
        tmp = torch.empty_like(g) if want_w else None
        for j in range(k):
            if want_x:
                g_xp[:, j:j + t].addcmul_(g, weight[:, j])
            if want_w:
                torch.sum(torch.mul(g, xp[:, j:j + t], out=tmp), (0, 1), out=g_w[:, j])
        g_b = g.sum((0, 1)) if ctx.has_bias and want_b else None
        return g_xp, g_w, g_b
