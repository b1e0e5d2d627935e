"""The defining properties of lightnet2d and plstm, each against an independent route, and the
model path of 2-D mixers (SequenceModel(grid=), the builder's refusal on sequence tasks).

- LightNet (Qin et al. 2024): the additive recurrence's state after one raster scan equals the
  explicit multi-directional sum (the rows above, summed column by column, plus the row so
  far), and a set of cells gives the same state whichever order visits it, unlike a
  multiplicative decay; MD-LRPE reads cells through the cosine of their relative phase only.
- pLSTM (Pöppel et al. 2025): the scan equals the explicit sum over the grid DAG's paths of
  the products of Source, Transition and Mark gates; P-mode keeps the propagated norm bounded
  on long grids where unconstrained transitions explode; D-mode spreads one source as the
  binomial (diffusion) kernel.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqmem.bench import BenchConfig
from seqmem.bench.grid import grid_markdown, run_grid
from seqmem.build import build_model
from seqmem.config import load_config
from seqmem.errors import ConfigError, SeqmemError
from seqmem.mixers.grid import build_2d
from seqmem.models import SequenceModel
from seqmem.ops.attention import EMPTY
from seqmem.ops.lightnet2d import grid_phase, lightnet2d_chunk, lightnet2d_step, tpe_grid
from seqmem.ops.plstm import (
    d_mode_transitions,
    p_mode_transitions,
    plstm_parallel,
    plstm_rows,
    plstm_scan,
)
from seqmem.train.loop import model_state_size

F64 = torch.float64


def _g(seed):
    return torch.Generator().manual_seed(seed)


# ---- LightNet ---------------------------------------------------------------------------------
def _lightnet_visit(k, v, order):
    """The additive recurrence's (S, z) after visiting cells of k (H, W, d_k), v (H, W, d_v) in
    `order` (a list of (i, j)), by lightnet2d_step (one head, batch 1)."""
    S = torch.zeros(1, 1, k.shape[-1], v.shape[-1], dtype=F64)
    z = torch.full((1, 1, k.shape[-1]), EMPTY, dtype=F64)
    q = torch.zeros(1, 1, k.shape[-1], dtype=F64)
    for i, j in order:
        _, S, z = lightnet2d_step(q, k[i, j][None, None], v[i, j][None, None], None, S, z)
    return S[0, 0], z[0, 0]


def test_lightnet_one_scan_equals_the_multi_directional_sum():
    H, W, dk, dv = 4, 5, 3, 2
    k = torch.randn(H, W, dk, generator=_g(0), dtype=F64)
    v = torch.randn(H, W, dv, generator=_g(1), dtype=F64)
    q = torch.randn(H, W, dk, generator=_g(2), dtype=F64)
    o, _, _ = lightnet2d_chunk(q.reshape(1, -1, 1, dk), k.reshape(1, -1, 1, dk),
                               v.reshape(1, -1, 1, dv), None, torch.zeros(1, 1, dk, dv, dtype=F64),
                               torch.full((1, 1, dk), EMPTY, dtype=F64), 7)
    o = o.reshape(H, W, dv)
    e = torch.exp(k)[..., :, None] * v[..., None, :]  # (H, W, d_k, d_v) unnormalised terms
    for i in range(H):
        for j in range(W):
            # directions: down the columns over the rows above, then along row i up to j
            above = e[:i].sum(dim=(0, 1)) if i else torch.zeros(dk, dv, dtype=F64)
            left = e[i, :j + 1].sum(dim=0)
            Z = torch.exp(k[:i]).sum(dim=(0, 1)) + torch.exp(k[i, :j + 1]).sum(dim=0)
            want = q[i, j] @ ((above + left) / Z[:, None])
            assert torch.allclose(o[i, j], want, atol=1e-12), (i, j)


def test_lightnet_state_is_the_same_in_every_scan_order_unlike_a_decay():
    H, W, dk, dv = 3, 4, 2, 2
    k = torch.randn(H, W, dk, generator=_g(3), dtype=F64)
    v = torch.randn(H, W, dv, generator=_g(4), dtype=F64)
    raster = [(i, j) for i in range(H) for j in range(W)]
    orders = {"column-major": [(i, j) for j in range(W) for i in range(H)],
              "reversed": raster[::-1], "snake": [(i, j if i % 2 == 0 else W - 1 - j)
                                                   for i in range(H) for j in range(W)]}
    S_ref, z_ref = _lightnet_visit(k, v, raster)
    for name, order in orders.items():
        S, z = _lightnet_visit(k, v, order)
        assert torch.allclose(S, S_ref, atol=1e-12) and torch.allclose(z, z_ref, atol=1e-12), name

    def decayed(order, lam=0.7):  # a multiplicative recurrence S = lam S + k v^T
        S = torch.zeros(dk, dv, dtype=F64)
        for i, j in order:
            S = lam * S + k[i, j][:, None] * v[i, j][None, :]
        return S

    assert (decayed(orders["column-major"]) - decayed(raster)).abs().max() > 1e-3


def test_lightnet_lrpe_reads_the_relative_phase():
    H, W, dk, dv = 3, 3, 2, 2
    theta = torch.rand(2, 1, dk, generator=_g(5), dtype=F64) * 2
    phase = grid_phase(theta, H, W).reshape(H * W, 1, dk)  # (t, h, d_k)
    q, k = (torch.randn(1, H * W, 1, dk, generator=_g(s), dtype=F64) for s in (6, 7))
    v = torch.randn(1, H * W, 1, dv, generator=_g(8), dtype=F64)
    S0 = torch.zeros(1, 1, 2 * dk, dv, dtype=F64)
    z0 = torch.full((1, 1, dk), EMPTY, dtype=F64)
    o, _, _ = lightnet2d_chunk(q, k, v, phase, S0, z0, 4)
    for t in range(H * W):
        w = torch.softmax(k[0, :t + 1, 0], dim=0)  # e^{k_j - z_t} per channel
        rel = torch.cos(phase[t, 0] - phase[:t + 1, 0])  # (t + 1, d_k)
        want = ((q[0, t, 0] * w * rel).sum(-1)[:, None] * v[0, :t + 1, 0]).sum(0)
        assert torch.allclose(o[0, t, 0], want, atol=1e-12), t
    # the phase difference of cells (i, j), (i', j') is (i - i') theta_row + (j - j') theta_col
    p = grid_phase(theta, H, W)
    assert torch.allclose(p[2, 1] - p[1, 0], p[1, 2] - p[0, 1], atol=1e-14)


def test_lightnet_tpe_is_a_causal_toeplitz_convolution():
    b, H, W, d, K = 2, 5, 6, 3, 3
    x = torch.randn(b, H, W, d, generator=_g(9), dtype=F64)
    r, c = (torch.randn(K, d, generator=_g(s), dtype=F64) for s in (10, 11))
    u, rows = tpe_grid(x, torch.zeros(b, K - 1, W, d, dtype=F64), r, c)
    xc = x.permute(0, 3, 1, 2)  # (b, d, H, W)
    # depthwise convolutions padded on the top / left only: causal along both axes
    ur = F.conv2d(F.pad(xc, (0, 0, K - 1, 0)), r.flip(0).T[:, None, :, None], groups=d)
    c0 = torch.cat([torch.zeros(1, d, dtype=F64), c[1:]])  # the own cell is counted once
    uc = F.conv2d(F.pad(xc, (K - 1, 0, 0, 0)), c0.flip(0).T[:, None, None, :], groups=d)
    assert torch.allclose(u, (ur + uc).permute(0, 2, 3, 1), atol=1e-12)
    assert torch.equal(rows, x[:, H - (K - 1):])  # the rows above the next block


# ---- pLSTM ------------------------------------------------------------------------------------
def _plstm_parts(H, W, seed, mode="P"):
    g = _g(seed)
    dk, dv = 2, 3
    q, k = (torch.randn(1, H, W, 1, dk, generator=g, dtype=F64) for _ in range(2))
    v = torch.randn(1, H, W, 1, dv, generator=g, dtype=F64)
    S, M = (torch.rand(1, H, W, 1, 2, generator=g, dtype=F64) for _ in range(2))
    D = torch.rand(1, H, W, 1, generator=g, dtype=F64)
    if mode == "P":
        T = p_mode_transitions(torch.randn(1, H, W, 1, 2, 2, generator=g, dtype=F64))
    else:
        T = d_mode_transitions(torch.rand(1, H, W, 1, generator=g, dtype=F64))
    return q, k, v, S, T, M, D


def _path_gate(S, T, M, D, src, dst):
    """The sum over the DAG's paths from cell src to cell dst of Source x Transitions x Mark
    (D at dst itself), enumerated edge by edge; gates of one batch element and head."""
    if src == dst:
        return float(D[src])
    (si, sj), (ti, tj) = src, dst
    if si > ti or sj > tj:
        return 0.0

    def arrive(cell, came):  # weight of the paths from `cell`, entered by `came`, to dst
        if cell == dst:
            return float(M[cell][came])
        i, j = cell
        total = 0.0
        if j + 1 <= tj:  # out to the right: enters (i, j+1) from the left (0)
            total += float(T[cell][0, came]) * arrive((i, j + 1), 0)
        if i + 1 <= ti:  # out down: enters (i+1, j) from above (1)
            total += float(T[cell][1, came]) * arrive((i + 1, j), 1)
        return total

    out = 0.0
    if sj + 1 <= tj:
        out += float(S[src][0]) * arrive((si, sj + 1), 0)
    if si + 1 <= ti:
        out += float(S[src][1]) * arrive((si + 1, sj), 1)
    return out


@pytest.mark.parametrize("mode", ["P", "D"])
def test_plstm_scan_equals_the_sum_over_paths(mode):
    H, W = 3, 4
    q, k, v, S, T, M, D = _plstm_parts(H, W, 11, mode)
    o, _ = plstm_scan(q, k, v, S, T, M, D, torch.zeros(1, W, 1, 2, 3, dtype=F64))
    o_rows, _ = plstm_rows(q, k, v, S, T, M, D, torch.zeros(1, W, 1, 2, 3, dtype=F64))
    o_par, _ = plstm_parallel(q, k, v, S, T, M, D, torch.zeros(1, W, 1, 2, 3, dtype=F64))
    gates = [a[0, :, :, 0] for a in (S, T, M, D)]
    cells = [(i, j) for i in range(H) for j in range(W)]
    for c in cells:
        want = sum(_path_gate(*gates, s, c) * float(q[0, c[0], c[1], 0] @ k[0, s[0], s[1], 0])
                   * v[0, s[0], s[1], 0] for s in cells)
        assert torch.allclose(o[0, c[0], c[1], 0], want, atol=1e-12), c
        assert torch.allclose(o_rows[0, c[0], c[1], 0], want, atol=1e-12), c
        assert torch.allclose(o_par[0, c[0], c[1], 0], want, atol=1e-12), c


def _propagate(T, H, W):
    """|incoming edges| summed over each anti-diagonal, from one unit source at (0, 0) split
    evenly, for transitions T (H, W, 2, 2), scalar states (by plstm_scan with marks reading
    the left or the upper edge)."""
    ones = torch.ones(1, H, W, 1, 1, dtype=F64)
    k = torch.zeros(1, H, W, 1, 1, dtype=F64)
    k[0, 0, 0] = 1.0
    S = torch.full((1, H, W, 1, 2), 0.5, dtype=F64)
    D = torch.zeros(1, H, W, 1, dtype=F64)
    edges = []
    for mark in ([1.0, 0.0], [0.0, 1.0]):
        M = torch.tensor(mark, dtype=F64).expand(1, H, W, 1, 2)
        o, _ = plstm_rows(ones, k, ones, S, T[None, :, :, None], M, D,
                          torch.zeros(1, W, 1, 1, 1, dtype=F64))
        edges.append(o[0, :, :, 0, 0])
    left, up = edges
    n = torch.arange(H)[:, None] + torch.arange(W)[None, :]
    mass = torch.zeros(H + W - 1, dtype=F64).index_add_(0, n.flatten(),
                                                        (left.abs() + up.abs()).flatten())
    return left + up, mass[1:]  # (0, 0) receives nothing


def test_plstm_p_mode_keeps_the_propagated_norm_bounded():
    H = W = 24
    raw = torch.randn(H, W, 2, 2, generator=_g(12), dtype=F64) * 3  # columns summing to ~4
    _, free = _propagate(raw, H, W)
    _, bounded = _propagate(p_mode_transitions(raw), H, W)
    assert bounded.max() <= 1.0 + 1e-12  # never more than the source's unit
    assert (bounded[1:] <= bounded[:-1] + 1e-12).all()  # non-increasing with distance
    assert free.max() > 1e6  # what P-mode prevents: paths multiply
    # directed propagation: straight-through transitions carry the source along a row
    straight = torch.zeros(H, W, 2, 2, dtype=F64)
    straight[..., 0, 0] = straight[..., 1, 1] = 1.0
    node, _ = _propagate(p_mode_transitions(straight), H, W)
    assert torch.allclose(node[0, 1:], torch.full((W - 1,), 0.5, dtype=F64))  # no decay
    assert torch.allclose(node[1:, 1:], torch.zeros(H - 1, W - 1, dtype=F64))


def test_plstm_d_mode_spreads_as_the_binomial_kernel():
    H = W = 12
    for tau in (1.0, 0.8):
        node, mass = _propagate(d_mode_transitions(torch.full((H, W), tau, dtype=F64)), H, W)
        for i in range(H):
            for j in range(W):
                if i + j:
                    want = tau ** (i + j - 1) * math.comb(i + j, i) / 2 ** (i + j)
                    assert abs(node[i, j].item() - want) < 1e-13, (tau, i, j)
        if tau == 1.0:  # mass conserved on each anti-diagonal inside the grid
            assert torch.allclose(mass[:H - 1], torch.ones(H - 1, dtype=F64), atol=1e-12)


# ---- the model path ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lightnet2d", "plstm"])
def test_model_reshapes_around_a_2d_block(name):
    H, W, d = 3, 4, 8
    torch.manual_seed(0)
    model = SequenceModel(2, d, mixer=name, grid=(H, W), block="residual").double()
    x = torch.randn(2, H * W, 2, dtype=F64)
    h, _ = model.features(x)
    blk = model.blocks[0]
    u = blk.norm(model.encoder(x)).reshape(2, H, W, d)
    y, s = blk.mixer(u)
    assert torch.allclose(h, model.encoder(x) + y.reshape(2, H * W, d), atol=1e-12)
    fresh = model.init_state(2)[0]
    assert type(fresh) is type(s) and all(
        a.shape == b.shape for a, b in zip(*(t if isinstance(t, tuple) else (t,)
                                             for t in (fresh, s)), strict=True))
    floats = sum(t.numel() for t in (fresh if isinstance(fresh, tuple) else (fresh,))) // 2
    assert model_state_size(model, None) == blk.mixer.state_size(W) == floats
    with pytest.raises(SeqmemError, match="12 cells"):
        model.features(torch.randn(2, 10, 2, dtype=F64))
    with pytest.raises(SeqmemError, match="needs the grid"):
        SequenceModel(2, d, mixer=name)
    one_d = SequenceModel(2, d, mixer="gru", grid=(H, W)).double()  # 1-D mixers ignore grid
    ref = SequenceModel(2, d, mixer="gru").double()
    ref.load_state_dict(one_d.state_dict())
    assert torch.allclose(one_d.features(x)[0], ref.features(x)[0])


def test_build_refuses_a_2d_mixer_on_a_sequence_task():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["model.mixer.kind=plstm", "task.kind=n_parity"])
    msg = str(e.value)
    assert "\n" not in msg and "lightnet2d" in msg and "pathfinder" in msg
    cfg = load_config(overrides=["model.mixer.kind=plstm", "task.kind=pathfinder",
                                 "task.height=4", "task.width=5", "model.d_model=8"])
    model = build_model(cfg)
    assert model.grid == (4, 5) and model.blocks[0].mixer.name == "plstm"


def test_2d_options_are_checked():
    with pytest.raises(SeqmemError, match="propagation"):
        build_2d("plstm", 8, propagation="Q")
    with pytest.raises(SeqmemError, match="unknown option"):
        build_2d("lightnet2d", 8, no_such=1)
    with pytest.raises(SeqmemError, match=r"n_heads|divisor"):
        build_2d("lightnet2d", 8, n_heads=3)


def test_bench_grid_rows():
    cfg = BenchConfig(mixers=("plstm", "gru"), forms=("parallel", "rows"), repeats=1,
                      shapes="quick", memory=False, batch=1)
    ctx, rows = run_grid(cfg)
    assert [(r["mixer"], r["form"], r["grid"], r["cells"]) for r in rows] == [
        ("plstm", "parallel", "8x8", 64), ("plstm", "rows", "8x8", 64),
        ("plstm", "parallel", "16x16", 256), ("plstm", "rows", "16x16", 256)]
    for r in rows:
        assert r["fwdbwd_ms_low"] <= r["fwdbwd_ms"] <= r["fwdbwd_ms_high"]
        assert r["cells_s"] == pytest.approx(r["cells"] / (r["fwdbwd_ms"] / 1e3))
    assert ctx["threads"] == 1 and "| plstm | rows | 8x8 |" in grid_markdown(
        rows, ctx, command="seqmem bench --grid")
