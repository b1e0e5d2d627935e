"""Newton (DEER) evaluation of nonlinear recurrences: the parallel linear scan against a loop,
convergence to the sequential answer, the iteration count, and exactness after T steps."""

from __future__ import annotations

import pytest
import torch

from seqmem import mixers
from seqmem.mixers.parts import NewtonInfo
from seqmem.ops.newton import linear_scan, newton_recurrent
from seqmem.ops.rnn import gru_step


@pytest.mark.parametrize("T", [1, 2, 5, 8, 13])
def test_linear_scan_matches_loop(T):
    g = torch.Generator().manual_seed(T)
    B, n = 2, 3
    A = 0.5 * torch.randn(B, T, n, n, generator=g, dtype=torch.float64)
    b = torch.randn(B, T, n, generator=g, dtype=torch.float64)
    h = torch.randn(B, n, generator=g, dtype=torch.float64)
    H = linear_scan(A, b, h)
    for t in range(T):
        h = A[:, t] @ h[..., None]
        h = h[..., 0] + b[:, t]
        torch.testing.assert_close(H[:, t], h, rtol=0, atol=1e-12)


def test_newton_converges_to_the_loop_and_counts_iterations():
    g = torch.Generator().manual_seed(0)
    d, T = 6, 40
    W = 0.3 * torch.randn(3 * d, d, generator=g, dtype=torch.float64)
    bh = torch.randn(3 * d, generator=g, dtype=torch.float64)
    u = torch.randn(2, T, 3 * d, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, d, generator=g, dtype=torch.float64)

    def cell(u_t, h):
        return gru_step(u_t, h, W, bh)[0]

    H, hT, iters = newton_recurrent(cell, u, h0)
    h, ref = h0, []
    for t in range(T):
        h = cell(u[:, t], h)
        ref.append(h)
    torch.testing.assert_close(H, torch.stack(ref, 1), rtol=0, atol=1e-12)
    torch.testing.assert_close(hT, h, rtol=0, atol=1e-12)
    assert 1 <= iters < T  # converged well before the T-iteration worst case
    # with k iterations the first k steps are already exact (DEER's guarantee)
    H3, _, it3 = newton_recurrent(cell, u, h0, max_iter=3)
    assert it3 == 3
    torch.testing.assert_close(H3[:, :3], torch.stack(ref, 1)[:, :3], rtol=0, atol=1e-12)


def _leaves(state) -> list[torch.Tensor]:
    return [state] if isinstance(state, torch.Tensor) else list(state)


@pytest.mark.parametrize("name", ["leaky_rnn", "gru", "lstm", "plrnn"])
def test_mixer_newton_mode_returns_its_diagnostics(name):
    torch.manual_seed(0)
    m = mixers.build(name, 8).double()
    x = torch.randn(2, 30, 8, dtype=torch.float64)
    s0 = m.init_state(2)
    y, s = m(x, s0, mode="newton")
    y_ref, s_ref = m(x, s0, mode="recurrent")
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    for a, b in zip(_leaves(s), _leaves(s_ref), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    y_info, s_info, info = m.newton(x, s0)  # the same forward, with its diagnostics
    torch.testing.assert_close(y_info, y, rtol=0, atol=0)
    for a, b in zip(_leaves(s_info), _leaves(s), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert isinstance(info, NewtonInfo) and 1 <= info.iterations <= 31
    assert not hasattr(m, "newton_iterations")  # nothing is kept on the module
    # max_iter caps the iterations; after k of them the first k steps are exact
    y3, _, info3 = m.newton(x, s0, max_iter=3)
    assert info3.iterations == 3
    torch.testing.assert_close(y3[:, :3], y_ref[:, :3], rtol=0, atol=1e-10)
    assert m.newton(x[:, :0], s0)[2].iterations == 0  # no tokens: no iteration
