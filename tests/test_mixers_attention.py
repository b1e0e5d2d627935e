"""Attention, Aaren, RAT and TCN against independent routes: an explicit softmax loop, the
rotary closed form, softmax over each prefix, RAT's chunk definition, the TCN's receptive field
formula; and state growth over the whole registry."""

from __future__ import annotations

import math

import pytest
import torch

from seqmem import mixers
from seqmem.ops.attention import (
    EMPTY,
    AarenState,
    aaren_scan,
    aaren_step,
    attention_own_key,
    attention_own_key_banded,
    attention_parallel,
    attention_step,
    is_filled,
    rotary,
)

F64 = torch.float64


def softmax_oracle(q, k, v, log_m, window):
    """Query i (the key at s - t + i) over its visible keys, one scalar at a time."""
    b, t, h, _ = q.shape
    s = k.shape[1]
    y = torch.zeros(b, t, h, v.shape[-1], dtype=F64)
    for bi in range(b):
        for i in range(t):
            me = s - t + i
            seen = [j for j in range(s) if j <= me and (window == 0 or j > me - window)]
            for hi in range(h):
                logits = [float(q[bi, i, hi] @ k[bi, j, hi]) / math.sqrt(q.shape[-1])
                          + float(log_m[bi, j]) for j in seen]
                top = max(logits)
                w = [math.exp(x - top) for x in logits]
                for wj, j in zip(w, seen, strict=True):
                    y[bi, i, hi] += wj / sum(w) * v[bi, j, hi]
    return y


@pytest.mark.parametrize("window", [0, 1, 3])
def test_attention_parallel_and_step_equal_softmax_oracle(window):
    gen = torch.Generator().manual_seed(0)
    b, t, s, h, d = 2, 5, 8, 2, 3
    q = torch.randn(b, t, h, d, generator=gen, dtype=F64)
    k = torch.randn(b, s, h, d, generator=gen, dtype=F64)
    v = torch.randn(b, s, h, 4, generator=gen, dtype=F64)
    log_m = torch.randn(b, s, generator=gen, dtype=F64)
    log_m[:, :2] = EMPTY  # two empty cache slots
    y_ref = softmax_oracle(q, k, v, log_m, window)
    y = attention_parallel(q, k, v, log_m, window=window)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    for i in range(t):
        lo = 0 if window == 0 else max(0, s - t + i + 1 - window)
        hi = s - t + i + 1
        y_i = attention_step(q[:, i], k[:, lo:hi], v[:, lo:hi], log_m[:, lo:hi])
        torch.testing.assert_close(y_i, y_ref[:, i], rtol=0, atol=1e-12)
    # no cache and no window: the fused causal path
    y_c = attention_parallel(q, k[:, -t:], v[:, -t:])
    y_c_ref = softmax_oracle(q, k[:, -t:], v[:, -t:], torch.zeros(b, t, dtype=F64), 0)
    torch.testing.assert_close(y_c, y_c_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("t,window", [(1, 3), (9, 3), (10, 3), (7, 1), (11, 4), (12, 12)])
def test_sliding_window_blocks_equal_softmax_oracle(t, window):
    """No cache and a window shorter than the sequence: the blocked O(t window) path."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, t, 2, 3, generator=gen, dtype=F64) for _ in range(3))
    y = attention_parallel(q, k, v, window=window)
    y_ref = softmax_oracle(q, k, v, torch.zeros(2, t, dtype=F64), window)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)


def test_rotary_closed_form_and_relative_positions():
    gen = torch.Generator().manual_seed(1)
    d, base = 6, 10000.0
    q = torch.randn(1, 1, 1, d, generator=gen, dtype=F64)
    k = torch.randn(1, 1, 1, d, generator=gen, dtype=F64)
    p = d // 2
    freq = [base ** (-c / p) for c in range(p)]
    for m, n in [(0, 0), (3, 1), (1, 3), (10, 7), (107, 104)]:
        got = float((rotary(q, m) * rotary(k, n)).sum())
        want = 0.0
        for c in range(p):  # pair (c, c + p) rotated by (m - n) freq_c relative to each other
            a = (m - n) * freq[c]
            q1, q2, k1, k2 = q[0, 0, 0, c], q[0, 0, 0, c + p], k[0, 0, 0, c], k[0, 0, 0, c + p]
            want += float((q1 * k1 + q2 * k2) * math.cos(a) + (q1 * k2 - q2 * k1) * math.sin(a))
        assert got == pytest.approx(want, abs=1e-9)
    # the norm is kept, position 0 is the identity, an odd last channel is left alone
    x = torch.randn(2, 4, 3, 5, generator=gen, dtype=F64)
    torch.testing.assert_close(rotary(x, 0)[:, 0], x[:, 0])
    torch.testing.assert_close(rotary(x, 9).norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotary(x, 9)[..., -1], x[..., -1])


def test_aaren_scan_equals_softmax_over_each_prefix():
    gen = torch.Generator().manual_seed(2)
    b, t, h, d = 2, 11, 3, 4
    s = 3 * torch.randn(b, t, h, generator=gen, dtype=F64)
    v = torch.randn(b, t, h, d, generator=gen, dtype=F64)
    empty = AarenState(torch.full((b, h), EMPTY, dtype=F64), torch.zeros(b, h, dtype=F64),
                       torch.zeros(b, h, d, dtype=F64))
    y, state = aaren_scan(s, v, empty)
    for i in range(t):
        w = s[:, : i + 1].softmax(dim=1)  # (b, i+1, h)
        torch.testing.assert_close(y[:, i], (w[..., None] * v[:, : i + 1]).sum(1), rtol=0,
                                   atol=1e-12)
    # carried state: the second half from the first half's state, and one step at a time
    y1, s1 = aaren_scan(s[:, :4], v[:, :4], empty)
    y2, _ = aaren_scan(s[:, 4:], v[:, 4:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=0, atol=1e-12)
    st = empty
    for i in range(t):
        y_i, st = aaren_step(s[:, i], v[:, i], st)
        torch.testing.assert_close(y_i, y[:, i], rtol=0, atol=1e-12)
    for a, c in zip(st, state, strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-12)


def test_attention_mixer_is_full_causal_attention():
    """Within max_len, the mixer (from an empty cache, whole or in two pieces) is plain causal
    softmax attention of its own projections."""
    gen = torch.Generator().manual_seed(3)
    m = mixers.build("attention", 8, n_heads=2, rotary=False, max_len=32).double()
    x = torch.randn(2, 12, 8, generator=gen, dtype=F64)
    q, k, v = (z.reshape(2, 12, 2, 4) for z in m.qkv(x).detach().chunk(3, dim=-1))
    y_ref = m.out(softmax_oracle(q, k, v, torch.zeros(2, 12, dtype=F64), 0).reshape(2, 12, 8))
    with torch.no_grad():
        y, _ = m(x)
        y1, s1 = m(x[:, :5], m.init_state(2))
        y2, _ = m(x[:, 5:], s1)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_ref, rtol=0, atol=1e-12)


def test_rat_equals_its_chunk_definition():
    gen = torch.Generator().manual_seed(4)
    L, d, h, t = 3, 8, 2, 10
    m = mixers.build("rat", d, n_heads=h, rat_chunk=L, max_len=64).double()
    x = torch.randn(1, t, d, generator=gen, dtype=F64)
    with torch.no_grad():
        y, _ = m(x)
        q, k, v, g, z = m._inputs(x)  # (1, t, h, dh)
        k_run, v_run, summaries, ys = [], [], [], []
        for i in range(t):
            if i % L == 0:
                kr, vr = (1 - g[:, i]) * k[:, i], (1 - g[:, i]) * v[:, i]
            else:
                kr = g[:, i] * k_run[-1] + (1 - g[:, i]) * k[:, i]
                vr = g[:, i] * v_run[-1] + (1 - g[:, i]) * v[:, i]
            k_run.append(kr)
            v_run.append(vr)
            keys = torch.stack([s[0] for s in summaries] + [kr], dim=1)  # (1, n, h, dh)
            vals = torch.stack([s[1] for s in summaries] + [vr], dim=1)
            w = (torch.einsum("bhd,bnhd->bnh", q[:, i], keys) / math.sqrt(d // h)).softmax(1)
            ys.append((w[..., None] * vals).sum(1).reshape(1, d))
            if i % L == L - 1:
                summaries.append((kr, vr))
        y_ref = m.out(z * torch.stack(ys, dim=1))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("t,group,span,s", [
    (10, 3, 2, 6),  # 4 groups, blocks of 2: no padding; exactly the keys needed
    (11, 3, 2, 4),  # 4 groups; fewer keys than the last groups could see
    (17, 2, 4, 20),  # 9 groups in 3 blocks of 3 (padded); more keys than any group sees
    (7, 1, 3, 9),  # one token per group
    (5, 8, 3, 3),  # one group, shorter than `group`
    (13, 4, 1, 4),  # span 1: each group sees one key
])
def test_attention_own_key_banded_equals_full_mask(t, group, span, s):
    """The blocked computation equals the same softmax over a full (t, s) mask that lets the
    query i see keys i // group .. i // group + span - 1, in values and gradients."""
    gen = torch.Generator().manual_seed(7)
    b, h, d = 2, 2, 3
    q, k_own, v_own = (torch.randn(b, t, h, d, generator=gen, dtype=F64, requires_grad=True)
                       for _ in range(3))
    k, v = (torch.randn(b, s, h, d, generator=gen, dtype=F64, requires_grad=True)
            for _ in range(2))
    log_m = torch.randn(b, s, generator=gen, dtype=F64)
    log_m[0, :2] = EMPTY  # empty cache slots
    log_m.requires_grad_(True)
    c = torch.arange(t)[:, None] // group
    j = torch.arange(s)[None, :]
    bias = torch.where((j >= c) & (j < c + span), log_m[:, None, :], -torch.inf)  # (b, t, s)
    y_ref = attention_own_key(q, k, v, bias, k_own, v_own)
    y = attention_own_key_banded(q, k, v, log_m, k_own, v_own, group=group, span=span)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    w = torch.randn(y.shape, generator=gen, dtype=F64)
    leaves = (q, k, v, log_m, k_own, v_own)
    g = torch.autograd.grad((y * w).sum(), leaves)
    g_ref = torch.autograd.grad((y_ref * w).sum(), leaves)
    for gi, gi_ref in zip(g, g_ref, strict=True):
        torch.testing.assert_close(gi, gi_ref, rtol=0, atol=1e-12)


RAT_LONG = [  # (rat_chunk, max_len): cache of 4, 1, 4 and 2 summaries, all far below t
    (3, 12), (4, 5), (1, 4), (5, 11),
]


@pytest.mark.parametrize("L,max_len", RAT_LONG)
@pytest.mark.parametrize("prefix,t", [(0, 48), (0, 47), (7, 40), (26, 53)])
def test_rat_parallel_equals_step_loop_over_many_blocks(L, max_len, prefix, t):
    """Over many blocks of chunks, with summaries evicted inside the sequence, t not a multiple
    of rat_chunk, and from the state after `prefix` steps (part-way through a chunk, with a
    full cache): the parallel form equals the loop of `step`, outputs and state."""
    gen = torch.Generator().manual_seed(8)
    m = mixers.build("rat", 8, n_heads=2, rat_chunk=L, max_len=max_len).double()
    x = torch.randn(2, prefix + t, 8, generator=gen, dtype=F64)
    with torch.no_grad():
        s0 = m.init_state(2)
        if prefix:
            _, s0 = mixers.step_loop(m, x[:, :prefix], s0)
        y_ref, s_ref = mixers.step_loop(m, x[:, prefix:], s0)
        y, s = m(x[:, prefix:], s0, mode="parallel")
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    for a, c in zip(s, s_ref, strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("prefix", [0, 5])
def test_rat_empty_sequence_keeps_the_state(prefix):
    """No tokens: an empty output and the state unchanged, from an empty state or mid-chunk."""
    gen = torch.Generator().manual_seed(11)
    m = mixers.build("rat", 8, n_heads=2, rat_chunk=3, max_len=12).double()
    with torch.no_grad():
        s0 = m.init_state(2)
        if prefix:
            _, s0 = mixers.step_loop(m, torch.randn(2, prefix, 8, generator=gen, dtype=F64), s0)
        y, s = m(torch.zeros(2, 0, 8, dtype=F64), s0, mode="parallel")
    assert y.shape == (2, 0, 8)
    for a, c in zip(s, s0, strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=0)


@pytest.mark.parametrize("L,max_len", RAT_LONG)
def test_rat_parallel_gradients_equal_step_loop_over_many_blocks(L, max_len):
    """Gradients w.r.t. the input, the initial state (mid-chunk, full cache) and the
    parameters agree between the parallel form and the step loop over many blocks."""
    gen = torch.Generator().manual_seed(9)
    m = mixers.build("rat", 8, n_heads=2, rat_chunk=L, max_len=max_len).double()
    x = torch.randn(1, 50, 8, generator=gen, dtype=F64)
    with torch.no_grad():
        _, s0 = mixers.step_loop(m, x[:, :22], m.init_state(1))
    x = x[:, 22:].clone().requires_grad_(True)
    s0 = type(s0)(*(z.clone().requires_grad_(True) for z in s0))
    wrt = [x, *s0, *m.parameters()]

    def grads(route):
        y, s = route(x, s0)
        g = torch.Generator().manual_seed(10)
        loss = (y * torch.randn(y.shape, generator=g, dtype=F64)).sum()
        for z in s[:5]:  # the clock is piecewise constant: no gradient
            loss = loss + (z * torch.randn(z.shape, generator=g, dtype=F64)).sum()
        return torch.autograd.grad(loss, wrt, allow_unused=True)

    g = grads(lambda x, s: m(x, s, mode="parallel"))
    g_ref = grads(lambda x, s: mixers.step_loop(m, x, s))
    assert g[0].abs().max() > 0 and g[1].abs().max() > 0
    for gi, gi_ref in zip(g, g_ref, strict=True):
        if gi is None or gi_ref is None:
            assert gi is None and gi_ref is None
            continue
        torch.testing.assert_close(gi, gi_ref, rtol=0, atol=1e-10)


def test_tcn_receptive_field_formula():
    """With positive weights, zero biases and positive inputs every ReLU is active, so the last
    output depends on exactly the last receptive_field() inputs."""
    for n_layers, k, base in [(3, 3, 2), (2, 2, 3), (1, 4, 2)]:
        m = mixers.build("tcn", 3, n_layers=n_layers, kernel_size=k, dilation_base=base).double()
        with torch.no_grad():
            for conv in m.convs:
                conv.weight.fill_(0.1)
                conv.bias.zero_()
        r = m.receptive_field()
        assert r == 1 + 2 * (k - 1) * sum(base ** i for i in range(n_layers))
        t = r + 5
        x = torch.rand(1, t, 3, dtype=F64) + 0.5
        with torch.no_grad():
            y, _ = m(x)
            for lag, changes in [(r - 1, True), (r, False)]:
                x2 = x.clone()
                x2[:, t - 1 - lag] += 1.0
                y2, _ = m(x2)
                assert bool((y2[:, -1] - y[:, -1]).abs().max() > 1e-9) is changes, (r, lag)


def _numel(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel()
    return sum(_numel(s) for s in state)


@pytest.mark.parametrize("name", mixers.names())
def test_state_growth(name):
    """A cache mixer (state_grows) holds more tokens after 20 steps than after 1, as its
    state_size(t) says and its cache's filled slots show; every other mixer's state keeps its
    size. State tensors keep their shapes throughout (the contract)."""
    gen = torch.Generator().manual_seed(5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = mixers.build(name, 8).double()
    state = m.init_state(1)
    n0 = _numel(state)
    assert n0 == m.state_size()
    sizes = {}
    with torch.no_grad():
        for t in range(1, 21):
            _, state = m.step(torch.randn(1, 8, generator=gen, dtype=F64), state)
            assert _numel(state) == n0
            if t in (1, 20):
                sizes[t] = state
    if not m.state_grows:
        return
    held = {t: m.state_size(t) for t in sizes}
    assert held[1] < held[20] <= m.state_size()
    for t, s in sizes.items():  # independent count: the filled cache slots
        filled = int(is_filled(s.log_m).sum())
        assert held[t] - m.state_size(0) == filled * (2 * m.d_model + 1)


def test_growing_mixers_are_marked():
    assert mixers.get("attention").state_grows and mixers.get("rat").state_grows
    assert not mixers.get("aaren").state_grows and not mixers.get("tcn").state_grows
