"""Titans' linear memory (ops) and the memory mixers (titans, mom).

Op forms are checked against a loop of `titans_step` (float64, values and gradients), and one
step against the definition: a gradient-descent step with momentum and weight decay on the
associative loss, its gradient taken by autograd. MoM's routing is checked on its state.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqmem import mixers
from seqmem.ops.conv import short_conv
from seqmem.ops.titans import TitansState, titans, titans_step

F64 = torch.float64


def _titans_inputs(b, t, h, d_k, d_v, gen, dtype=F64, extreme=False):
    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    def uni(*shape):
        return torch.rand(*shape, generator=gen, dtype=dtype)

    q, k, v = rnd(b, t, h, d_k), F.normalize(rnd(b, t, h, d_k), dim=-1), rnd(b, t, h, d_v)
    alpha, eta, theta = uni(b, t, h), uni(b, t, h), 0.5 * uni(b, t, h)
    if extreme:  # gates at the ends of their ranges: full forgetting, no momentum, no write
        alpha[:, ::3], eta[:, 1::4], theta[:, 2::5] = 1.0, 0.0, 0.0
        alpha[:, 1::5], eta[:, ::4] = 0.0, 1.0
    state = TitansState(rnd(b, h, d_k, d_v), rnd(b, h, d_k, d_v))
    return [q, k, v, alpha, eta, theta], state


def _loop(q, k, v, alpha, eta, theta, state, scale=None):
    outs = []
    for i in range(q.shape[1]):
        o, state = titans_step(q[:, i], k[:, i], v[:, i], alpha[:, i], eta[:, i], theta[:, i],
                               state, scale=scale)
        outs.append(o)
    return torch.stack(outs, dim=1), state


def _values_and_grads(route, ins, state):
    ins = [x.detach().requires_grad_(True) for x in ins]
    state = TitansState(*(s.detach().requires_grad_(True) for s in state))
    o, (M, S) = route(ins, state)
    gen = torch.Generator().manual_seed(5)
    loss = sum((z * torch.randn(z.shape, generator=gen, dtype=z.dtype)).sum() for z in (o, M, S))
    return [o, M, S, *torch.autograd.grad(loss, [*ins, *state])]


@pytest.mark.parametrize("t,chunk_size", [(1, 4), (3, 4), (8, 4), (13, 4), (70, 64), (20, 7)])
@pytest.mark.parametrize("extreme", [False, True])
def test_titans_forms_equal_step_loop(t, chunk_size, extreme):
    gen = torch.Generator().manual_seed(t)
    ins, state = _titans_inputs(2, t, 3, 4, 5, gen, extreme=extreme)
    ref = _values_and_grads(lambda i, s: _loop(*i, s), ins, state)
    for mode in ("chunk", "recurrent"):
        got = _values_and_grads(
            lambda i, s, mode=mode: titans(*i, state=s, mode=mode, chunk_size=chunk_size),
            ins, state)
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_titans_chunk_from_zero_state_and_split():
    """state=None is the zero state; two halves with the state passed equal one pass."""
    gen = torch.Generator().manual_seed(1)
    ins, state = _titans_inputs(2, 11, 2, 3, 3, gen)
    zero = TitansState(torch.zeros_like(state.M), torch.zeros_like(state.S))
    o, s = titans(*ins, chunk_size=4)
    o_ref, s_ref = _loop(*ins, zero)
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-12)
    o1, s1 = titans(*(x[:, :6] for x in ins), chunk_size=4)
    o2, s2 = titans(*(x[:, 6:] for x in ins), state=s1, chunk_size=4)
    torch.testing.assert_close(torch.cat([o1, o2], dim=1), o, rtol=0, atol=1e-12)
    for a, b in zip([*s2, *s], [*s_ref, *s_ref], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_titans_chunk_float32():
    """float32 chunked form against the float64 loop: tolerance 1e-4 at t = 200."""
    gen = torch.Generator().manual_seed(2)
    ins, state = _titans_inputs(2, 200, 2, 16, 16, gen)
    o_ref, s_ref = _loop(*ins, state)
    o, s = titans(*(x.float() for x in ins), state=TitansState(*(x.float() for x in state)),
                  chunk_size=32)
    assert o.dtype == torch.float32
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.M.double(), s_ref.M, rtol=1e-4, atol=1e-4)


def test_titans_step_is_gradient_descent_with_momentum():
    """One step against the definition, the gradient of ||k M - v||^2 taken by autograd."""
    gen = torch.Generator().manual_seed(3)
    b, h, d_k, d_v = 2, 3, 4, 5
    q, k = torch.randn(b, h, d_k, generator=gen, dtype=F64), torch.randn(b, h, d_k, generator=gen,
                                                                        dtype=F64)
    v = torch.randn(b, h, d_v, generator=gen, dtype=F64)
    alpha, eta, theta = (torch.rand(b, h, generator=gen, dtype=F64) for _ in range(3))
    M0 = torch.randn(b, h, d_k, d_v, generator=gen, dtype=F64)
    S0 = torch.randn(b, h, d_k, d_v, generator=gen, dtype=F64)

    M = M0.clone().requires_grad_(True)
    loss = (torch.einsum("bhk,bhkv->bhv", k, M) - v).pow(2).sum()  # sum over (b, h) of losses
    (grad,) = torch.autograd.grad(loss, M)  # each (b, h) block: d loss_bh / d M_bh
    S1 = eta[..., None, None] * S0 - theta[..., None, None] * grad
    M1 = (1 - alpha[..., None, None]) * M0 + S1
    o1 = 0.7 * torch.einsum("bhk,bhkv->bhv", q, M1)

    o, (M_step, S_step) = titans_step(q, k, v, alpha, eta, theta, TitansState(M0, S0), scale=0.7)
    torch.testing.assert_close(S_step, S1, rtol=0, atol=1e-12)
    torch.testing.assert_close(M_step, M1, rtol=0, atol=1e-12)
    torch.testing.assert_close(o, o1, rtol=0, atol=1e-12)
    # the chunked form of one token agrees, and its default scale is d_k^-0.5
    o_c, _ = titans(q[:, None], k[:, None], v[:, None], alpha[:, None], eta[:, None],
                    theta[:, None], state=TitansState(M0, S0), mode="chunk")
    torch.testing.assert_close(o_c[:, 0], o1 / 0.7 * d_k ** -0.5, rtol=0, atol=1e-12)


def test_titans_memory_learns_an_association():
    """With no forgetting or momentum and theta = 1/2 a unit key is written in one step:
    afterwards k M = v (the loss is zero), which the test-time gradient step guarantees."""
    gen = torch.Generator().manual_seed(4)
    k = F.normalize(torch.randn(1, 1, 1, 6, generator=gen, dtype=F64), dim=-1)
    v = torch.randn(1, 1, 1, 3, generator=gen, dtype=F64)
    zeros, ones = torch.zeros(1, 1, 1, dtype=F64), torch.ones(1, 1, 1, dtype=F64)
    o, _ = titans(k, k, v, zeros, zeros, 0.5 * ones, scale=1.0)
    torch.testing.assert_close(o, v, rtol=0, atol=1e-12)


def test_titans_mixer_meta_and_validation():
    from seqmem.errors import SeqmemError

    with torch.device("meta"):
        m = mixers.build("titans", 16, n_heads=4)
    assert m.d_head == 4
    with pytest.raises(SeqmemError):
        mixers.build("titans", 16, n_heads=3)
    with pytest.raises(SeqmemError):
        mixers.build("titans", 16, theta_max=0.0)


# ---- Mixture of Memories: routing -------------------------------------------------------------
def _mom(seed=0, **kw):
    from seqmem.mixers.memory import MoM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MoM(8, **kw).double()


def _noisy_state(m, batch, gen):
    s0 = m.init_state(batch)
    return type(s0)(*(s + torch.randn(s.shape, generator=gen, dtype=F64) for s in s0))


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_mom_router_selects_top_k(top_k):
    gen = torch.Generator().manual_seed(10)
    m = _mom(n_memories=5, top_k=top_k)
    x = torch.randn(3, 7, 8, generator=gen, dtype=F64)
    w, routed = m.route(x)  # (b, t, M)
    assert routed.dtype == torch.bool and (routed.sum(-1) == top_k).all()
    assert ((w > 0) == routed).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 7, dtype=F64), rtol=0, atol=1e-14)
    p = torch.softmax(x @ m.router.weight.T, dim=-1)  # (b, t, M)
    kth = p.sort(dim=-1, descending=True).values[..., top_k - 1 : top_k]  # (b, t, 1)
    assert ((p >= kth) == routed).all()  # the selected memories are the k most probable
    torch.testing.assert_close(w, torch.where(routed, p, 0) / (routed * p).sum(-1, keepdim=True),
                               rtol=0, atol=1e-14)


@pytest.mark.parametrize("memory", ["gated_delta", "linear"])
@pytest.mark.parametrize("shared_memory", [True, False])
def test_mom_memory_sees_only_its_tokens(memory, shared_memory):
    """Each memory's final state equals its own recurrence run over the tokens routed to it
    alone (written out here); a memory chosen by no token is unchanged, bit for bit; the
    shared memory sees every token."""
    gen = torch.Generator().manual_seed(11)
    m = _mom(n_memories=4, top_k=1, memory=memory, shared_memory=shared_memory)
    b, t, h, e = 2, 3, m.n_heads, m.d_head  # 3 tokens, top-1 of 4: a memory stays unchosen
    x = torch.randn(b, t, 8, generator=gen, dtype=F64)
    s0 = _noisy_state(m, b, gen)
    with torch.no_grad():
        for mode in m.modes:
            _, s = m(x, s0, mode=mode, chunk_size=2)
            u, _ = short_conv(torch.cat([m.q_proj(x), m.kv_proj(x)], -1), m.conv.weight, None,
                              s0.conv)
            u = F.silu(u)
            k, v = u[..., 8:].reshape(b, t, 2, m.n_slots, h, e).unbind(2)  # (b, t, s, h, e)
            k = F.normalize(k, dim=-1)
            a, beta = m.ab_proj(x).reshape(b, t, 2, m.n_slots, h).unbind(2) if memory == \
                "gated_delta" else (None, None)
            _, routed = m.route(x)  # (b, t, M)
            unchosen = 0
            for bi in range(b):
                for slot in range(m.n_slots):
                    S = s0.memories[bi, slot]  # (h, e, e)
                    seen = [ti for ti in range(t) if slot == m.n_memories or routed[bi, ti, slot]]
                    for ti in seen:
                        kk, vv = k[bi, ti, slot], v[bi, ti, slot]  # (h, e)
                        if memory == "linear":
                            S = S + kk[:, :, None] * vv[:, None, :]
                        else:
                            decay = torch.exp(-m.A_log.exp() * F.softplus(a[bi, ti, slot]
                                                                         + m.dt_bias))
                            bt = beta[bi, ti, slot].sigmoid()  # (h,)
                            S = decay[:, None, None] * S
                            err = vv - torch.einsum("hk,hkv->hv", kk, S)
                            S = S + bt[:, None, None] * kk[:, :, None] * err[:, None, :]
                    if not seen:
                        unchosen += 1
                        assert torch.equal(s.memories[bi, slot], s0.memories[bi, slot])
                    torch.testing.assert_close(s.memories[bi, slot], S, rtol=0, atol=1e-12)
            assert unchosen >= b


def test_mom_output_reads_only_chosen_memories():
    """Perturbing the state of a memory that the first token does not choose leaves the first
    output unchanged; perturbing a chosen one changes it."""
    gen = torch.Generator().manual_seed(12)
    m = _mom(n_memories=4, top_k=2, shared_memory=False)
    x = torch.randn(2, 1, 8, generator=gen, dtype=F64)
    s0 = _noisy_state(m, 2, gen)
    _, routed = m.route(x[:, 0])  # (b, M)
    with torch.no_grad():
        y, _ = m(x, s0)
        for slot in range(m.n_memories):
            mem = s0.memories.clone()
            mem[:, slot] += 1.0
            y2, _ = m(x, type(s0)(mem, s0.conv))
            diff = (y2 - y).abs().amax(dim=(1, 2))  # (b,)
            assert ((diff > 1e-8) == routed[:, slot]).all()


def test_mom_validation_and_meta():
    from seqmem.errors import SeqmemError
    from seqmem.mixers.memory import MoM

    with torch.device("meta"):
        MoM(16, n_heads=4, n_memories=3, top_k=2)
    for bad in ({"top_k": 5}, {"n_memories": 0}, {"memory": "mlp"}, {"n_heads": 3},
                {"checkpoint_segment": -1}, {"checkpoint_segment": 2.5}):
        with pytest.raises(SeqmemError):
            MoM(8, **bad)


@pytest.mark.parametrize("memory", ["gated_delta", "linear"])
def test_mom_checkpointed_segments_equal_one_pass(memory):
    """A sequence longer than checkpoint_segment runs in checkpointed segments: outputs, final
    state and every gradient (input, initial state, parameters) equal the single-pass chunked
    form and the step loop (float64), for t not a multiple of the segment."""
    gen = torch.Generator().manual_seed(12)
    one = mixers.build("mom", 8, n_heads=2, memory=memory, checkpoint_segment=0).double()
    seg = mixers.build("mom", 8, n_heads=2, memory=memory, checkpoint_segment=5).double()
    seg.load_state_dict(one.state_dict())
    x = torch.randn(2, 23, 8, generator=gen, dtype=F64)
    with torch.no_grad():
        _, s0 = mixers.step_loop(one, torch.randn(2, 3, 8, generator=gen, dtype=F64),
                                 one.init_state(2, dtype=F64))
        y_ref, s_ref = mixers.step_loop(one, x, s0)

    def run(m):
        xx = x.clone().requires_grad_(True)
        st = type(s0)(*(z.clone().requires_grad_(True) for z in s0))
        y, s = m(xx, st, mode="chunk", chunk_size=4)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
        loss = (y * w).sum() + s.memories.square().sum() + s.conv.sum()
        return y, s, torch.autograd.grad(loss, [xx, *st, *m.parameters()])

    y1, s1, g1 = run(one)
    y2, s2, g2 = run(seg)
    torch.testing.assert_close(y2, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(y2, y1, rtol=0, atol=1e-12)
    for a, b in zip((*s2, *g2), (*s1, *g1), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(s2, s_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
