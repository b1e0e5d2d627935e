"""The defining properties of chimera and convs5, against independent routes: Chimera's 2-D
recurrence against its closed form (the sum over monotone lattice paths), its bounded
transitions; ConvS5's scan over frames against the parallel scan and against a causal
spatiotemporal convolution by torch's conv2d, its zero-order hold against scipy's ODE solver."""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqmem.mixers.grid import build_2d, names_2d
from seqmem.ops.chimera import ChimeraState, chimera_read, chimera_rows
from seqmem.ops.convs5 import convs5_discretise, convs5_parallel, convs5_step


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_both_mixers_are_registered_2d():
    assert {"chimera", "convs5"} <= set(names_2d())


# ---- chimera -------------------------------------------------------------------------------
def path_sum(a1, a2, a3, a4, u1, u2, h1_0, h2_0):
    """Chimera's closed form on one sample, scalar channel and state coordinate: s[i, j] =
    sum over sources (p, q) and monotone paths (p, q) -> (i, j) of the step matrices
    (T entering from above, L from the left) applied to u[p, q]; the given row -1 enters
    through T of row 0."""
    H, W = a1.shape

    def T(i, j):
        return np.array([[a1[i, j], a2[i, j]], [0.0, 0.0]])

    def L(i, j):
        return np.array([[0.0, 0.0], [a3[i, j], a4[i, j]]])

    def carry(vec, p, q, i, j):  # sum over every ordering of the down and right moves
        n_down, n_right = i - p, j - q
        total = np.zeros(2)
        for downs in itertools.combinations(range(n_down + n_right), n_down):
            r, c, v = p, q, vec.copy()
            for k in range(n_down + n_right):
                if k in downs:
                    r += 1
                    v = T(r, c) @ v
                else:
                    c += 1
                    v = L(r, c) @ v
            total += v
        return total

    s = np.zeros((H, W, 2))
    for i, j in itertools.product(range(H), range(W)):
        for p, q in itertools.product(range(i + 1), range(j + 1)):
            s[i, j] += carry(np.array([u1[p, q], u2[p, q]]), p, q, i, j)
        for q in range(j + 1):  # the given row -1: its first move is down into (0, q)
            s[i, j] += carry(T(0, q) @ np.array([h1_0[q], h2_0[q]]), 0, q, i, j)
    return s


@pytest.mark.parametrize("grid", [(3, 3), (2, 4), (4, 1)])
def test_chimera_rows_and_scan_equal_the_lattice_path_sum(grid):
    H, W = grid
    g = gen(1)
    a1, a2, a3, a4 = (torch.rand(1, H, W, 1, 1, generator=g, dtype=torch.float64) * 1.6 - 0.8
                      for _ in range(4))
    u1, u2 = (torch.randn(1, H, W, 1, 1, generator=g, dtype=torch.float64) for _ in range(2))
    h0 = ChimeraState(*(torch.randn(1, W, 1, 1, generator=g, dtype=torch.float64)
                        for _ in range(2)))
    C1, C2 = torch.ones(1, H, W, 1, dtype=torch.float64), torch.zeros(1, H, W, 1,
                                                                      dtype=torch.float64)
    want = path_sum(*(v[0, ..., 0, 0].numpy() for v in (a1, a2, a3, a4, u1, u2)),
                    h0.h1[0, :, 0, 0].numpy(), h0.h2[0, :, 0, 0].numpy())  # (H, W, 2)
    y1, last = chimera_rows(a1, a2, a3, a4, u1, u2, C1, C2, h0)  # reads h1
    y2, _ = chimera_rows(a1, a2, a3, a4, u1, u2, C2, C1, h0)  # reads h2
    np.testing.assert_allclose(y1[0, ..., 0].numpy(), want[..., 0], atol=1e-12)
    np.testing.assert_allclose(y2[0, ..., 0].numpy(), want[..., 1], atol=1e-12)
    np.testing.assert_allclose(last.h1[0, :, 0, 0].numpy(), want[-1, :, 0], atol=1e-12)
    np.testing.assert_allclose(last.h2[0, :, 0, 0].numpy(), want[-1, :, 1], atol=1e-12)


def test_chimera_mixer_equals_the_path_sum_of_its_own_coefficients():
    torch.manual_seed(0)
    m = build_2d("chimera", 3, d_state=2).double()
    with torch.no_grad():
        m.coupling.normal_()  # cross terms on: paths that turn between h1 and h2 count
    x = torch.randn(1, 3, 3, 3, generator=gen(2), dtype=torch.float64)
    with torch.no_grad():
        coef, C1, C2 = m._coefficients(x)
        y, _ = m(x, mode="scan")
    # undo the output map and the skip: what the 2-D SSM read out
    ssm = torch.linalg.solve(m.out_proj.weight, y.reshape(-1, 3).T).T.reshape(y.shape) - m.D * x
    want = torch.zeros(1, 3, 3, 3, dtype=torch.float64)
    for c, n in itertools.product(range(3), range(2)):
        s = path_sum(*(v[0, ..., c, n].numpy() for v in coef), np.zeros(3), np.zeros(3))
        want[0, ..., c] += torch.from_numpy(s[..., 0]) * C1[0, ..., n] \
            + torch.from_numpy(s[..., 1]) * C2[0, ..., n]
    torch.testing.assert_close(ssm, want, atol=1e-10, rtol=1e-10)
    assert chimera_read(C1[:, 0, 0], C2[:, 0, 0], *(v[:, 0, 0] for v in coef[4:])).shape \
        == (1, 3)


def test_chimera_transitions_are_bounded_and_states_stay_bounded_on_long_grids():
    torch.manual_seed(0)
    m = build_2d("chimera", 4, d_state=3).double()
    with torch.no_grad():
        m.coupling.fill_(1.0)  # strong cross terms: tanh(1) = 0.76
    x = torch.ones(1, 64, 32, 4, dtype=torch.float64) * 3
    with torch.no_grad():
        (a1, a2, a3, a4, u1, u2), _, _ = m._coefficients(x)
        _, state = m(x)
    assert ((a1.abs() + a2.abs()) < 1).all() and ((a3.abs() + a4.abs()) < 1).all()
    # per channel and coordinate (constant input: the same coefficients in every cell),
    # ||s||_inf <= max|u| / (1 - rho), rho the largest absolute row sum of the transitions
    rho = torch.maximum(a1.abs() + a2.abs(), a3.abs() + a4.abs()).amax((0, 1, 2))  # (d, n)
    bound = torch.maximum(u1.abs(), u2.abs()).amax((0, 1, 2)) / (1 - rho)
    assert torch.isfinite(state.h1).all()
    reached = torch.maximum(state.h1.abs(), state.h2.abs()).amax((0, 1)) / bound  # (d, n)
    assert (reached <= 1 + 1e-12).all() and reached.max() > 0.05  # bounded, not trivially
    # the same grid with unconstrained cross terms (rows summing to 1.8) blows up: the
    # lattice paths multiply
    a = torch.full_like(a1, 0.9)
    _, free = chimera_rows(a, a, a, a, u1, u2, torch.zeros_like(x[..., :3]),
                           torch.zeros_like(x[..., :3]), m.init_state(1, 32, dtype=x.dtype))
    assert free.h1.abs().max() > 1e6 * bound.max()


# ---- convs5 --------------------------------------------------------------------------------
def convs5_parts(P=3, d=2, k=3, seed=3):
    g = gen(seed)
    Lambda = -torch.rand(P, generator=g, dtype=torch.float64) * 2 - 0.1
    log_dt = torch.log(torch.rand(P, generator=g, dtype=torch.float64) * 0.5 + 0.05)
    A_bar, gamma = convs5_discretise(Lambda, log_dt)
    B = torch.randn(P, d, k, generator=g, dtype=torch.float64)
    C = torch.randn(d, P, k, generator=g, dtype=torch.float64)
    D = torch.randn(d, generator=g, dtype=torch.float64)
    return A_bar, gamma, B, C, D


@pytest.mark.parametrize("H", [1, 5, 37])
def test_convs5_parallel_scan_over_time_equals_the_frame_by_frame_scan(H):
    A_bar, gamma, B, C, D = convs5_parts()
    u = torch.randn(2, H, 6, 2, generator=gen(4), dtype=torch.float64)
    x0 = torch.randn(2, 6, 3, generator=gen(5), dtype=torch.float64)
    y, xH = convs5_parallel(u, x0, A_bar, gamma, B, C, D)
    x, ys = x0, []
    for k in range(H):
        y_k, x = convs5_step(u[:, k], x, A_bar, gamma, B, C, D)
        ys.append(y_k)
    torch.testing.assert_close(y, torch.stack(ys, 1), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(xH, x, atol=1e-12, rtol=1e-12)


def test_convs5_is_a_causal_spatiotemporal_convolution():
    # x_i = sum_m A_bar^m B_bar conv u_{i-m}: one conv2d over (time, width) with the kernel
    # A_bar^m gamma B (time-causal: padded with H - 1 earlier frames), then C conv along W.
    A_bar, gamma, B, C, D = convs5_parts(P=3, d=2, k=5)
    H, W = 7, 9
    u = torch.randn(2, H, W, 2, generator=gen(6), dtype=torch.float64)
    y, _ = convs5_parallel(u, torch.zeros(2, W, 3, dtype=torch.float64), A_bar, gamma, B, C, D)
    m = torch.arange(H - 1, -1, -1, dtype=torch.float64)  # kernel rows: lags H-1 .. 0
    K = (A_bar[None, :] ** m[:, None] * gamma).T[:, None, :, None] * B[:, :, None, :]
    x = F.conv2d(F.pad(u.permute(0, 3, 1, 2), (2, 2, H - 1, 0)), K)  # (b, P, H, W)
    want = F.conv2d(x, C[:, :, None, :], padding=(0, 2)) + D[None, :, None, None] \
        * u.permute(0, 3, 1, 2)
    torch.testing.assert_close(y, want.permute(0, 2, 3, 1), atol=1e-12, rtol=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="needs scipy")
def test_convs5_zero_order_hold_against_the_ode_solution():
    from scipy.integrate import solve_ivp

    Lambda = torch.tensor([-0.3, -2.0, -7.5], dtype=torch.float64)
    log_dt = torch.log(torch.tensor([0.05, 0.2, 0.01], dtype=torch.float64))
    A_bar, gamma = convs5_discretise(Lambda, log_dt)
    for p in range(3):
        lam, dt, x0, bu = Lambda[p].item(), log_dt[p].exp().item(), 0.7, -1.3
        sol = solve_ivp(lambda _, v, lam=lam, bu=bu: lam * v + bu, (0.0, dt), [x0],
                        rtol=1e-12, atol=1e-12)
        assert abs(A_bar[p].item() * x0 + gamma[p].item() * bu - sol.y[0, -1]) < 1e-9


def test_convs5_kernel_size_must_be_odd():
    from seqmem.errors import SeqmemError

    with pytest.raises(SeqmemError, match=r"kernel_size must be odd.*got 4") as e:
        build_2d("convs5", 4, kernel_size=4)
    assert "\n" not in str(e.value)
