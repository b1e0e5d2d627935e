"""LightNet's chunked form (gated linear attention on the normalised keys) against the loop of
`lightnet_step`: outputs, final state and gradients, from an empty and from a full state."""

from __future__ import annotations

import pytest
import torch

from seqmem.ops.attention import EMPTY
from seqmem.ops.lightnet import LightNetState, lightnet_chunk, lightnet_step

F64 = torch.float64


def _loop(q, k, v, state):
    outs = []
    for q_t, k_t, v_t in zip(q.unbind(1), k.unbind(1), v.unbind(1), strict=True):
        o, state = lightnet_step(q_t, k_t, v_t, state)
        outs.append(o)
    return torch.stack(outs, 1), state


def _inputs(gen, t, *, empty, key_scale=1.0, dtype=F64):
    b, h, dk, dv = 2, 2, 3, 4
    q, k, v = (torch.randn(b, t, h, n, generator=gen, dtype=dtype) for n in (dk, dk, dv))
    k = k * key_scale
    S0 = torch.randn(b, h, dk, dv, generator=gen, dtype=dtype)
    z0 = torch.full((b, h, dk), EMPTY, dtype=dtype) if empty else \
        torch.randn(b, h, dk, generator=gen, dtype=dtype)
    if empty:
        S0 = torch.zeros_like(S0)
    return [a.requires_grad_(True) for a in (q, k, v, S0, z0)]


@pytest.mark.parametrize("empty", [True, False])
@pytest.mark.parametrize("t,chunk", [(1, 4), (9, 4), (16, 16), (23, 8)])
def test_lightnet_chunk_equals_step_loop(empty, t, chunk):
    gen = torch.Generator().manual_seed(t)
    q, k, v, S0, z0 = _inputs(gen, t, empty=empty)
    o, s = lightnet_chunk(q, k, v, LightNetState(S0, z0), chunk)
    o_ref, s_ref = _loop(q, k, v, LightNetState(S0, z0))
    for a, c in ((o, o_ref), (s.S, s_ref.S), (s.z, s_ref.z)):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
    w = torch.randn(o.shape, generator=gen, dtype=F64)
    wrt = [q, k, v, S0, z0]
    g = torch.autograd.grad((o * w).sum() + s.S.sum() + s.z.sum(), wrt)
    g_ref = torch.autograd.grad((o_ref * w).sum() + s_ref.S.sum() + s_ref.z.sum(), wrt)
    for a, c in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_lightnet_chunk_float32_with_large_keys():
    """Keys of size ~30 (e^k far beyond float32's range): the chunked form stays finite and
    within float32 precision of the float64 loop."""
    gen = torch.Generator().manual_seed(0)
    q, k, v, S0, z0 = (a.detach() for a in _inputs(gen, 40, empty=True, key_scale=30.0))
    o_ref, _ = _loop(q, k, v, LightNetState(S0, z0))
    o, _ = lightnet_chunk(*(a.float() for a in (q, k, v)),
                          LightNetState(S0.float(), z0.float()), 16)
    assert torch.isfinite(o).all()
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)


def test_lightnet_chunk_empty_sequence_keeps_the_state():
    gen = torch.Generator().manual_seed(1)
    q, k, v, S0, z0 = (a.detach() for a in _inputs(gen, 0, empty=False))
    o, s = lightnet_chunk(q, k, v, LightNetState(S0, z0), 8)
    assert o.shape == (2, 0, 2, 4)
    assert torch.equal(s.S, S0) and torch.equal(s.z, z0)
