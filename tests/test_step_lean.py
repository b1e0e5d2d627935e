"""The lean step paths: the cached parameter dtype follows .to() and loaded state dicts, the
rotary tables and the inference form of rotary equal the closed form, heads split and merge as
the einops patterns did."""

from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange

from seqmem import mixers
from seqmem.errors import SeqmemError
from seqmem.mixers.parts import merge_heads, split_heads
from seqmem.ops.attention import rotary


def test_dtype_check_follows_conversions():
    m = mixers.build("gru", 4)
    x32, x64 = torch.randn(2, 3, 4), torch.randn(2, 3, 4, dtype=torch.float64)
    m(x32)
    with pytest.raises(SeqmemError, match="does not match the parameters' dtype"):
        m(x64)
    m.double()
    m(x64)
    with pytest.raises(SeqmemError, match=r"parameters' dtype torch\.float64"):
        m.step(x32[:, 0], None)
    m.float()
    m.step(x32[:, 0], None)
    # a state dict loaded with assign=True replaces the parameters themselves
    m.load_state_dict({k: v.double() for k, v in m.state_dict().items()}, assign=True)
    m(x64)


def _rotary_closed_form(x, offset, base):
    t, d = x.shape[1], x.shape[-1]
    p = d // 2
    out = x.clone()
    for i in range(t):
        for c in range(p):
            a = (offset + i) * base ** (-c / p)
            x1, x2 = x[:, i, :, c], x[:, i, :, c + p]
            out[:, i, :, c] = x1 * math.cos(a) - x2 * math.sin(a)
            out[:, i, :, c + p] = x1 * math.sin(a) + x2 * math.cos(a)
    return out


@pytest.mark.parametrize("d", [1, 4, 5])
@pytest.mark.parametrize("offset", [0, 7])
def test_rotary_both_forms_equal_the_closed_form(d, offset):
    x = torch.randn(2, 6, 3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    ref = _rotary_closed_form(x, offset, 100.0)
    with torch.no_grad():
        fast = rotary(x, offset, base=100.0)
    xg = x.clone().requires_grad_()
    diff = rotary(xg, offset, base=100.0)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(diff, ref, rtol=0, atol=1e-12)
    assert diff.requires_grad
    # a strided input (a view of a projection, as attention's q, k, v are)
    wide = torch.randn(2, 6, 3, 2 * d, dtype=torch.float64)[..., :d]
    with torch.no_grad():
        torch.testing.assert_close(rotary(wide, offset, base=100.0),
                                   _rotary_closed_form(wide, offset, 100.0), rtol=0, atol=1e-12)


def test_heads_split_and_merge_as_einops():
    x = torch.randn(2, 3, 12)
    assert torch.equal(split_heads(x, 3), rearrange(x, "... (h e) -> ... h e", h=3))
    y = torch.randn(2, 3, 4, 5).transpose(-1, -2)  # not contiguous
    assert torch.equal(merge_heads(y), rearrange(y, "... h e -> ... (h e)"))


@pytest.mark.parametrize("d", [4, 5])
def test_rotary_gradient_by_finite_differences(d):
    x = torch.randn(2, 4, 2, d, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(7))
    assert torch.autograd.gradcheck(lambda z: rotary(z, 3, base=50.0), (x,))
    # and against autograd through the closed form
    g = torch.randn(2, 4, 2, d, dtype=torch.float64)
    (ours,) = torch.autograd.grad((rotary(x, 3, base=50.0) * g).sum(), [x])
    (ref,) = torch.autograd.grad((_rotary_closed_form(x, 3, 50.0) * g).sum(), [x])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
