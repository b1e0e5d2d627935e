"""The short convolution's hand-written backward against torch's depthwise conv1d (an
independent implementation) in float64: outputs and the gradients of the input, the carried
state, the weight and the bias."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqmem.ops.conv import short_conv

F64 = torch.float64


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("t", [1, 3, 9])
def test_short_conv_gradients_equal_conv1d(k, bias, t):
    gen = torch.Generator().manual_seed(k * 10 + t)
    b, d = 3, 5
    x = torch.randn(b, t, d, dtype=F64, generator=gen, requires_grad=True)
    state = torch.randn(b, k - 1, d, dtype=F64, generator=gen, requires_grad=True)
    w = torch.randn(d, k, dtype=F64, generator=gen, requires_grad=True)
    bb = torch.randn(d, dtype=F64, generator=gen, requires_grad=True) if bias else None
    g = torch.randn(b, t, d, dtype=F64, generator=gen)
    leaves = [x, state, w] + ([bb] if bias else [])

    y, last = short_conv(x, w, bb, state)
    grads = torch.autograd.grad((y * g).sum() + last.sum(), leaves)

    xp = torch.cat([state, x], dim=1).transpose(1, 2)  # (b, d, k - 1 + t)
    y_ref = F.conv1d(xp, w[:, None, :], bb, groups=d).transpose(1, 2)
    last_ref = torch.cat([state, x], dim=1)[:, t:]
    ref = torch.autograd.grad((y_ref * g).sum() + last_ref.sum(), leaves)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(last, last_ref, rtol=0, atol=0)
    for a, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-12)


def test_short_conv_gradient_of_the_weight_alone():
    """Only the weight needs a gradient (a frozen input): the backward skips the rest."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 4, dtype=F64, generator=gen)
    w = torch.randn(4, 3, dtype=F64, generator=gen, requires_grad=True)
    (gw,) = torch.autograd.grad(short_conv(x, w)[0].sum(), [w])
    # closed form: d/dw[c, j] of sum_t y_t[c] = sum over (b, t) of the input j - k + 1 back
    xp = torch.cat([x.new_zeros(2, 2, 4), x], dim=1)
    expected = torch.stack([xp[:, j:j + 6].sum((0, 1)) for j in range(3)], dim=1)
    torch.testing.assert_close(gw, expected, rtol=0, atol=1e-12)
