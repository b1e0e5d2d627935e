"""The state-space ops against independent routes.

HiPPO matrices by their defining property: the ODE x' = A x + B u, integrated exactly (the
matrix exponential of the system augmented with a linear generator of the input signal),
carries the coefficients of the input's history that quadrature computes directly (LegS,
LegT: polynomial inputs; FouT: 1-periodic band-limited inputs). HiPPO-N: normal, unitarily
diagonalised, A_N - P P^T = LegS. Discretisation against scipy's expm, quadrature and the
scalar closed forms, dense against diagonal through an eigendecomposition. fft_conv against a
direct sum, kernels against the unrolled recurrence, every form against the loop of its step
(float64 to 1e-10, float32 to a relative 1e-4), with an initial state in, the final state out
and gradients through inputs, state and parameters.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from numpy.polynomial import legendre

from seqmem.errors import SeqmemError
from seqmem.ops.ssm import (
    diag_recurrence,
    diag_recurrence_step,
    diag_ssm,
    diag_ssm_step,
    discretize_bilinear,
    discretize_zoh,
    fft_conv,
    hippo_fout,
    hippo_legs,
    hippo_legs_normal,
    hippo_legt,
    hippo_n,
    krylov,
    s4d_kernel,
    ssm,
    ssm_bilinear_step,
    ssm_step,
)

ssm_ops = importlib.import_module("seqmem.ops.ssm")  # the module (seqmem.ops.ssm is the op)
B, H, N, N_DENSE = 2, 3, 4, 6
ATOL64 = 1e-10
RTOL32 = 1e-4  # float32 forms against the float64 loop, relative to the largest value


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def crandn(*shape, g) -> torch.Tensor:
    return torch.complex(torch.randn(*shape, generator=g, dtype=torch.float64),
                         torch.randn(*shape, generator=g, dtype=torch.float64))


# ---- HiPPO: the ODE carries the projection coefficients ------------------------------------
GL_X, GL_W = legendre.leggauss(60)  # Gauss-Legendre on [-1, 1], exact to degree 119


def legendre_coeffs(f, lo: float, hi: float, n: int) -> np.ndarray:
    """c_k = (1 / (hi - lo)) int_lo^hi f(s) sqrt(2k+1) P_k(x(s)) ds, x: [lo, hi] -> [-1, 1]."""
    s = lo + (GL_X + 1) * (hi - lo) / 2
    P = np.stack([legendre.legval(GL_X, np.eye(n)[k]) for k in range(n)])  # (n, m)
    return 0.5 * (P * np.sqrt(2 * np.arange(n) + 1)[:, None] * f(s)) @ GL_W


def evolve(A, Bv, w, G, z0_c, z0_g, span):
    """Exact solution of c' = A c + B (w . g), g' = G g over `span`: the matrix exponential
    of the augmented system. Returns c at the end."""
    n, m = A.shape[0], G.shape[0]
    M = np.zeros((n + m, n + m))
    M[:n, :n], M[:n, n:], M[n:, n:] = A, np.outer(Bv, w), G
    z = scipy.linalg.expm(M * span) @ np.concatenate([z0_c, z0_g])
    return z[:n]


def test_hippo_legs_holds_legendre_coefficients():
    """LegS in log time: dc/dtau = A c + B f(e^tau) carries the coefficients of f on [0, t],
    t = e^tau, for any f; f a polynomial of degree 4 makes f(e^tau) = sum_k p_k e^{k tau}."""
    n = 8
    p = np.array([0.3, -1.2, 0.7, 0.5, -0.4])
    A, Bv = (z.numpy() for z in hippo_legs(n))
    G = np.diag(np.arange(5.0))  # g_k = e^{k tau}
    t0, t1 = 0.5, 3.0

    def f(s):
        return np.polyval(p[::-1], s)

    c0 = legendre_coeffs(f, 0, t0, n)
    c1 = evolve(A, Bv, p, G, c0, t0 ** np.arange(5.0), math.log(t1 / t0))
    np.testing.assert_allclose(c1, legendre_coeffs(f, 0, t1, n), rtol=0, atol=1e-9)
    assert abs(c1[1]) > 0.1  # a non-trivial history
    # and the wrong sign of the off-diagonal part does not hold them
    c_bad = evolve(A - 2 * np.tril(A, -1), Bv, p, G, c0, t0 ** np.arange(5.0),
                   math.log(t1 / t0))
    assert np.abs(c_bad - legendre_coeffs(f, 0, t1, n)).max() > 1e-2


@pytest.mark.parametrize("theta", [1.0, 2.5])
def test_hippo_legt_holds_window_coefficients(theta):
    """LegT: c' = A c + B f carries the Legendre coefficients of f on [t - theta, t], exactly
    for a polynomial f of degree < n (f(t - theta) is read back from c)."""
    n = 6
    p = np.array([0.2, 1.0, -0.8, 0.3])
    A, Bv = (z.numpy() for z in hippo_legt(n, theta=theta))
    G = np.diag(np.arange(1.0, 4.0), -1)  # g = (1, s, s^2, s^3), g_k' = k g_{k-1}
    t0, t1 = 0.3, 1.7

    def f(s):
        return np.polyval(p[::-1], s)

    c0 = legendre_coeffs(f, t0 - theta, t0, n)
    c1 = evolve(A, Bv, p, G, c0, t0 ** np.arange(4.0), t1 - t0)
    np.testing.assert_allclose(c1, legendre_coeffs(f, t1 - theta, t1, n), rtol=0, atol=1e-9)


@pytest.mark.parametrize("n", [6, 7])
def test_hippo_fout_holds_fourier_coefficients(n):
    """FouT: c' = A c + B f carries the coefficients of f on [t - 1, t] in the basis 1,
    sqrt2 cos(2 pi k r), sqrt2 sin(2 pi k r), r = s - t, for 1-periodic f of bandwidth 2."""
    A, Bv = (z.numpy() for z in hippo_fout(n))
    w = np.array([0.3, 1.0, -0.5, 0.4, 0.8])  # f = w . (1, cos 2pi s, sin 2pi s, cos 4pi s, ..)
    G = np.zeros((5, 5))
    for k in (1, 2):
        G[2 * k - 1, 2 * k], G[2 * k, 2 * k - 1] = -2 * math.pi * k, 2 * math.pi * k

    def g(s):
        return np.stack([np.ones_like(s), np.cos(2 * math.pi * s), np.sin(2 * math.pi * s),
                         np.cos(4 * math.pi * s), np.sin(4 * math.pi * s)])

    def coeffs(t):
        s = t - 1 + (GL_X + 1) / 2
        r = s - t
        basis = [np.ones_like(r)]
        for k in range(1, n):
            basis += [math.sqrt(2) * np.cos(2 * math.pi * k * r),
                      math.sqrt(2) * np.sin(2 * math.pi * k * r)]
        return 0.5 * np.stack(basis[:n]) @ (GL_W * (w @ g(s)))

    t0, t1 = 0.2, 1.55
    c1 = evolve(A, Bv, w, G, coeffs(t0), g(np.array(t0)), t1 - t0)
    np.testing.assert_allclose(c1, coeffs(t1), rtol=0, atol=1e-9)


def test_hippo_n_is_the_normal_part_of_legs():
    n = 8
    A_N, P, Bv = hippo_legs_normal(n)
    A, B_legs = hippo_legs(n)
    torch.testing.assert_close(A_N - P[:, None] * P[None, :], A, rtol=0, atol=1e-12)
    torch.testing.assert_close(Bv, B_legs)
    torch.testing.assert_close(A_N @ A_N.T, A_N.T @ A_N, rtol=0, atol=1e-12)  # normal
    Lam, V = hippo_n(n)
    eye = torch.eye(n, dtype=V.dtype)
    torch.testing.assert_close(V.conj().T @ V, eye, rtol=0, atol=1e-12)  # unitary
    torch.testing.assert_close(V @ torch.diag(Lam) @ V.conj().T, A_N.to(V.dtype), rtol=0,
                               atol=1e-12)
    torch.testing.assert_close(Lam.real, torch.full((n,), -0.5, dtype=torch.float64))
    torch.testing.assert_close(Lam.flip(0), Lam.conj(), rtol=0, atol=1e-12)  # conjugate pairs
    assert (Lam.imag[: n // 2] > 0).all()


def test_hippo_rejects_bad_sizes():
    with pytest.raises(SeqmemError, match=r"HiPPO size n must be an integer >= 1, got 0"):
        hippo_legs(0)
    with pytest.raises(SeqmemError, match="theta"):
        hippo_legt(4, theta=0.0)


# ---- discretisation ------------------------------------------------------------------------
def test_zoh_scalar_closed_form():
    a = torch.tensor([-0.7 + 2.0j, -0.1 - 0.5j], dtype=torch.complex128)
    b = torch.tensor([0.3 - 1.0j, 1.0 + 0.0j], dtype=torch.complex128)
    dt = 0.13
    a_bar, b_bar = discretize_zoh(a, b, dt)
    torch.testing.assert_close(a_bar, torch.exp(dt * a), rtol=0, atol=1e-14)
    torch.testing.assert_close(b_bar, (torch.exp(dt * a) - 1) / a * b, rtol=0, atol=1e-14)
    for i in range(2):  # the same through the dense (block-exponential) route
        A1, B1 = discretize_zoh(a[i].reshape(1, 1), b[i].reshape(1), dt)
        torch.testing.assert_close(A1[0, 0], a_bar[i], rtol=0, atol=1e-14)
        torch.testing.assert_close(B1[0], b_bar[i], rtol=0, atol=1e-14)


def test_bilinear_scalar_closed_form():
    a, b, dt = torch.tensor([-0.7 + 2.0j]), torch.tensor([0.3 - 1.0j]), 0.2
    a, b = a.to(torch.complex128), b.to(torch.complex128)
    a_bar, b_bar = discretize_bilinear(a, b, dt)
    torch.testing.assert_close(a_bar, (1 + dt * a / 2) / (1 - dt * a / 2), rtol=0, atol=1e-14)
    torch.testing.assert_close(b_bar, dt * b / (1 - dt * a / 2), rtol=0, atol=1e-14)
    A1, B1 = discretize_bilinear(a.reshape(1, 1), b, dt)
    torch.testing.assert_close(A1[0], a_bar, rtol=0, atol=1e-14)
    torch.testing.assert_close(B1, b_bar, rtol=0, atol=1e-14)


def test_zoh_dense_against_expm_and_quadrature():
    """A_bar = expm(dt A) (scipy), B_bar = int_0^dt expm(s A) ds B (Gauss-Legendre), for a
    singular A too (where A^-1 does not exist)."""
    A, Bm = hippo_legs(5)
    A_sing = A.clone()
    A_sing[:, 0] = 0  # a singular A
    dt = 0.3
    x, w = legendre.leggauss(30)
    for A_ in (A, A_sing):
        Bv = torch.stack([Bm, -Bm], -1)  # (n, m = 2)
        A_bar, B_bar = discretize_zoh(A_, Bv, dt)
        An = A_.numpy()
        np.testing.assert_allclose(A_bar.numpy(), scipy.linalg.expm(dt * An), rtol=0,
                                   atol=1e-12)
        integral = sum(wi * scipy.linalg.expm((xi + 1) * dt / 2 * An)
                       for xi, wi in zip(x, w, strict=True))
        np.testing.assert_allclose(B_bar.numpy(), dt / 2 * integral @ Bv.numpy(), rtol=0,
                                   atol=1e-12)


def test_bilinear_dense_against_inverse():
    A, Bv = hippo_legs(5)
    dt = torch.tensor([0.01, 0.5])  # a batch of steps
    A_bar, B_bar = discretize_bilinear(A, Bv, dt)
    assert A_bar.shape == (2, 5, 5) and B_bar.shape == (2, 5)
    for i, d in enumerate(dt.tolist()):
        inv = np.linalg.inv(np.eye(5) - d / 2 * A.numpy())
        np.testing.assert_allclose(A_bar[i].numpy(), inv @ (np.eye(5) + d / 2 * A.numpy()),
                                   rtol=0, atol=1e-12)
        np.testing.assert_allclose(B_bar[i].numpy(), inv @ (d * Bv.numpy()), rtol=0,
                                   atol=1e-12)


@pytest.mark.parametrize("fn", [discretize_zoh, discretize_bilinear])
def test_dense_and_diagonal_agree(fn):
    """A = W diag(lam) W^-1: discretising A equals W diag(a_bar) W^-1, B_bar = W b~_bar with
    b~ = W^-1 B, for a batch of steps."""
    g = gen(0)
    n = 4
    lam = torch.complex(-torch.rand(n, generator=g, dtype=torch.float64) - 0.1,
                        3 * torch.randn(n, generator=g, dtype=torch.float64))
    W = crandn(n, n, g=g)
    A = W @ torch.diag(lam) @ torch.linalg.inv(W)
    Bv = crandn(n, 2, g=g)
    dt = torch.tensor([0.05, 0.4], dtype=torch.float64)
    A_bar, B_bar = fn(A, Bv, dt)  # (2, n, n), (2, n, 2)
    a_bar, b_bar = fn(lam.expand(2, n), torch.linalg.solve(W, Bv).expand(2, n, 2), dt[:, None],
                      diagonal=True)
    torch.testing.assert_close(A_bar, W @ torch.diag_embed(a_bar) @ torch.linalg.inv(W),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(B_bar, W @ b_bar, rtol=0, atol=1e-12)


# ---- convolution and kernels ---------------------------------------------------------------
@pytest.mark.parametrize("L", [7, 3, 12])
def test_fft_conv_is_the_direct_sum(L):
    g = gen(1)
    t, d = 7, 3
    u = torch.randn(B, t, d, generator=g, dtype=torch.float64)
    K = torch.randn(d, L, generator=g, dtype=torch.float64)
    y = torch.zeros(B, t, d, dtype=torch.float64)
    for i in range(t):
        for s in range(i + 1):
            if i - s < L:
                y[:, i] += K[:, i - s] * u[:, s]
    torch.testing.assert_close(fft_conv(u, K), y, rtol=0, atol=1e-12)


def test_krylov_is_the_powers():
    g = gen(2)
    A = torch.randn(H, 5, 5, generator=g, dtype=torch.float64) / 3
    b = torch.randn(H, 5, generator=g, dtype=torch.float64)
    for L in (1, 2, 5, 8):
        K = krylov(L, A, b)
        ref, v = [], b
        for _ in range(L):
            ref.append(v)
            v = torch.einsum("hnm,hm->hn", A, v)
        torch.testing.assert_close(K, torch.stack(ref, 1), rtol=0, atol=1e-12)


def test_s4d_kernel_is_the_impulse_response():
    """K[h, l] = Re sum_n C a^l b: the recurrence unrolled from an impulse."""
    a, b, C = diag_inputs()[1:]
    L = 9
    K = s4d_kernel(a, b, C, L)
    u = torch.zeros(1, L, H, dtype=torch.float64)
    u[:, 0] = 1.0
    ys, x = [], None
    for u_t in u.unbind(1):
        y_t, x = diag_ssm_step(u_t, a, b, C, x)
        ys.append(y_t[0])
    torch.testing.assert_close(K, torch.stack(ys, 1), rtol=0, atol=1e-12)
    torch.testing.assert_close(K[:, 2], (C * a ** 2 * b).sum(-1).real, rtol=0, atol=1e-12)


# ---- every form equals the loop of its step ------------------------------------------------
def dense_inputs(t: int = 13, seed: int = 3):
    g = gen(seed)
    A, Bv = hippo_legs(N_DENSE)
    dt = torch.exp(torch.rand(H, generator=g, dtype=torch.float64) * 4 - 5)  # e^[-5, -1]
    A_bar, B_bar = discretize_bilinear(A, Bv, dt)  # (h, n, n), (h, n)
    C = torch.randn(H, N_DENSE, generator=g, dtype=torch.float64)
    u = torch.randn(B, t, H, generator=g, dtype=torch.float64)
    x0 = torch.randn(B, H, N_DENSE, generator=g, dtype=torch.float64)
    return (u, A_bar, B_bar, C), x0


def diag_inputs(t: int = 13, seed: int = 4):
    g = gen(seed)
    A = torch.complex(-torch.rand(H, N, generator=g, dtype=torch.float64) - 0.05,
                      3 * torch.randn(H, N, generator=g, dtype=torch.float64))
    a, b = discretize_zoh(A, torch.ones_like(A), 0.3, diagonal=True)
    u = torch.randn(B, t, H, generator=g, dtype=torch.float64)
    return u, a, b, crandn(H, N, g=g)


def diag_state(seed: int = 5):
    return crandn(B, H, N, g=gen(seed))


def scan_inputs(t: int = 13, seed: int = 6):
    g = gen(seed)
    a = torch.exp(torch.complex(-torch.rand(N, generator=g, dtype=torch.float64) - 0.05,
                                torch.randn(N, generator=g, dtype=torch.float64)))
    return (a, crandn(B, t, N, g=g)), crandn(B, N, g=g)


def grads(fn, args, state, **kw):
    """Gradients of a fixed random real functional of (y, final state) w.r.t. args, state."""
    args = [a.detach().requires_grad_(True) for a in args]
    state = state.detach().requires_grad_(True)
    y, s = fn(*args, state=state, **kw)
    g = gen(7)
    loss = sum((z * (crandn(*z.shape, g=g) if z.is_complex() else crandn(*z.shape, g=g).real)
                ).real.sum() for z in (y, s))
    return torch.autograd.grad(loss, [*args, state])


OPS = {
    "ssm": (ssm, dense_inputs, [("conv", {})]),
    "diag_ssm": (diag_ssm, lambda t=13: (diag_inputs(t), diag_state()), [("conv", {})]),
    "diag_recurrence": (diag_recurrence, scan_inputs,
                        [("parallel", {})] + [("chunk", {"chunk_size": c}) for c in
                                              (1, 3, 4, 5, 64)]),
}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("t", [1, 4, 13, 37])
def test_forms_equal_recurrent_float64(op, t):
    fn, make, forms = OPS[op]
    args, x0 = make(t)
    y_ref, s_ref = fn(*args, state=x0, mode="recurrent")
    g_ref = grads(fn, args, x0, mode="recurrent")
    for mode, kw in forms:
        y, s = fn(*args, state=x0, mode=mode, **kw)
        assert y.shape == y_ref.shape and s.shape == x0.shape and y.dtype == y_ref.dtype
        torch.testing.assert_close(y, y_ref, rtol=0, atol=ATOL64)
        torch.testing.assert_close(s, s_ref, rtol=0, atol=ATOL64)
        for gi, gi_ref in zip(grads(fn, args, x0, mode=mode, **kw), g_ref, strict=True):
            assert gi_ref.abs().max() > 0
            torch.testing.assert_close(gi, gi_ref, rtol=0, atol=ATOL64)


@pytest.mark.parametrize("op", list(OPS))
def test_forms_float32(op):
    """float32 forms against the float64 loop: max error <= RTOL32 * max |value|."""
    fn, make, forms = OPS[op]
    args, x0 = make(40)
    y_ref, s_ref = fn(*args, state=x0, mode="recurrent")
    low = {torch.float64: torch.float32, torch.complex128: torch.complex64}
    args32, x32 = [a.to(low[a.dtype]) for a in args], x0.to(low[x0.dtype])
    for mode, kw in [("recurrent", {}), *forms]:
        y, s = fn(*args32, state=x32, mode=mode, **kw)
        assert y.dtype in (torch.float32, torch.complex64)
        assert (y.to(y_ref.dtype) - y_ref).abs().max() <= RTOL32 * y_ref.abs().max()
        assert (s.to(s_ref.dtype) - s_ref).abs().max() <= RTOL32 * s_ref.abs().max()


@pytest.mark.parametrize("op", list(OPS))
def test_split_sequence_and_zero_default(op):
    """Two calls passing the state equal one call; state=None is the zero state."""
    fn, make, forms = OPS[op]
    args, x0 = make(11)
    u, rest = args[-1] if op == "diag_recurrence" else args[0], args
    for mode, kw in [("recurrent", {}), *forms]:
        y, s = fn(*args, state=x0, mode=mode, **kw)

        def part(sl, state, mode=mode, kw=kw):
            parts = [a[:, sl] if a is u else a for a in rest]
            return fn(*parts, state=state, mode=mode, **kw)

        y1, s1 = part(slice(0, 6), x0)
        y2, s2 = part(slice(6, None), s1)
        torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=0, atol=ATOL64)
        torch.testing.assert_close(s2, s, rtol=0, atol=ATOL64)
        y0, s0 = fn(*args, mode=mode, **kw)
        y_zero, s_zero = fn(*args, state=torch.zeros_like(x0), mode=mode, **kw)
        torch.testing.assert_close(y0, y_zero, rtol=0, atol=0)
        torch.testing.assert_close(s0, s_zero, rtol=0, atol=0)


# ---- the dense SSM's blocked "conv" form and its bilinear decode step ------------------------
# (t, forced block length or None for the default): t = 1; t within one block (5 in 8, 2 in 2);
# a short last block (13 in 4s, 17 in 8s, 100 and 257 by default); whole blocks (16 in 4s);
# blocks of one (5: every power through the tree); odd block counts (17 in 4s: 5 blocks, 100:
# 7, 257: 9) that the tree of block sums pads.
BLOCK_CASES = [(1, None), (1, 4), (2, None), (5, 8), (5, 1), (5, None), (13, 4), (16, 4),
               (17, 4), (17, 8), (100, None), (257, None)]


@pytest.mark.parametrize("t,block", BLOCK_CASES)
def test_ssm_conv_blocks_equal_recurrent(t, block, monkeypatch):
    """"conv" against the loop of ssm_step in float64, with an initial state: outputs, final
    state and the gradients of both w.r.t. u, A_bar, B_bar, C and the state."""
    if block is not None:
        monkeypatch.setattr(ssm_ops, "_blocks", lambda t: (block, -(-t // block)))
    L0, J = ssm_ops._blocks(t)
    assert L0 & (L0 - 1) == 0 and (J - 1) * L0 < t <= J * L0
    args, x0 = dense_inputs(t, seed=11)
    y_ref, s_ref = ssm(*args, state=x0, mode="recurrent")
    y, s = ssm(*args, state=x0, mode="conv")
    torch.testing.assert_close(y, y_ref, rtol=0, atol=ATOL64)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=ATOL64)
    assert (s_ref - ssm(*args, mode="recurrent")[1]).abs().max() > 1e-3  # the state matters
    for gi, gi_ref in zip(grads(ssm, args, x0, mode="conv"),
                          grads(ssm, args, x0, mode="recurrent"), strict=True):
        assert gi_ref.abs().max() > 0
        torch.testing.assert_close(gi, gi_ref, rtol=0, atol=ATOL64)


@pytest.mark.parametrize("block", [1, 2, 8])
def test_ssm_conv_gradcheck(block, monkeypatch):
    """The blocked form's gradients against finite differences (independent of the loop)."""
    monkeypatch.setattr(ssm_ops, "_blocks", lambda t: (block, -(-t // block)))
    (u, A_bar, B_bar, C), x0 = dense_inputs(5, seed=12)
    inputs = [z[:1, :, :2].clone() if z is u else z[:2].clone()
              for z in (u, A_bar, B_bar, C)] + [x0[:1, :2].clone()]  # h = 2, b = 1

    def fn(u, A_bar, B_bar, C, x0):
        return ssm(u, A_bar, B_bar, C, state=x0, mode="conv")

    assert torch.autograd.gradcheck(fn, [z.requires_grad_() for z in inputs])


def test_krylov_keeps_its_shapes():
    """krylov over a batch of matrices and vectors, and L = 1 (no matrix used)."""
    g = gen(13)
    A = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) / 2
    b = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    K = krylov(6, A, b)
    assert K.shape == (2, 3, 6, 4)
    torch.testing.assert_close(K[:, :, 5], (torch.linalg.matrix_power(A, 5) @ b[..., None])[..., 0],
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(krylov(1, A, b), b[..., None, :], rtol=0, atol=0)


def legs_inputs(seed: int, dense: bool = False):
    """LegS (A lower triangular) or a dense stable A, B, dt (h,), C, u_t (b, h), x (b, h, n)."""
    g = gen(seed)
    A, Bv = hippo_legs(N_DENSE)
    if dense:
        A = A + 0.3 * torch.randn(N_DENSE, N_DENSE, generator=g, dtype=torch.float64)
    dt = torch.exp(torch.rand(H, generator=g, dtype=torch.float64) * 4 - 5)
    C = torch.randn(H, N_DENSE, generator=g, dtype=torch.float64)
    u_t = torch.randn(B, H, generator=g, dtype=torch.float64)
    x = torch.randn(B, H, N_DENSE, generator=g, dtype=torch.float64)
    return [A, Bv, dt, C, u_t, x]


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("grad_A", [False, True])
def test_ssm_bilinear_step_is_ssm_step_of_the_discretisation(dense, grad_A):
    """One decode step, a solve with (I - dt/2 A), equals ssm_step with discretize_bilinear's
    A_bar, B_bar (formed by an inverse): values and gradients, for LegS (lower triangular: a
    triangular solve unless A needs a gradient) and a dense A (a general solve)."""
    A, Bv, dt, C, u_t, x = legs_inputs(14, dense)
    assert ssm_ops._triangular_ok(A) == (not dense)
    leaves = [A, Bv, dt, C, u_t, x]
    for z in leaves:
        z.requires_grad_(grad_A or z is not A)
    y, s = ssm_bilinear_step(u_t, A, Bv, dt, C, x)
    y_ref, s_ref = ssm_step(u_t, *discretize_bilinear(A, Bv, dt), C, x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=1e-12)
    g = gen(15)
    w_y, w_s = torch.randn(y.shape, generator=g, dtype=y.dtype), torch.randn(
        s.shape, generator=g, dtype=s.dtype)
    wanted = [z for z in leaves if z.requires_grad]
    got = torch.autograd.grad((w_y * y).sum() + (w_s * s).sum(), wanted)
    ref = torch.autograd.grad((w_y * y_ref).sum() + (w_s * s_ref).sum(), wanted)
    for gi, gi_ref in zip(got, ref, strict=True):
        assert gi_ref.abs().max() > 0
        torch.testing.assert_close(gi, gi_ref, rtol=0, atol=1e-10)
    if grad_A:  # why a triangular solve must not stand in when A is trained
        assert got[0].triu(1).abs().max() > 1e-3


def test_discretize_bilinear_triangular_and_general_agree():
    """LegS A: the triangular route (A needs no gradient) equals the general one (A needs a
    gradient); dt's gradient through the triangular route and A's through the general one
    against finite differences."""
    A, Bv, dt = legs_inputs(16)[:3]
    assert ssm_ops._triangular_ok(A)
    tri = discretize_bilinear(A, Bv, dt)
    gen_ = discretize_bilinear(A.clone().requires_grad_(), Bv, dt)
    for a, b in zip(tri, gen_, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    assert torch.autograd.gradcheck(lambda d: discretize_bilinear(A, Bv, d),
                                    [dt.clone().requires_grad_()])
    assert torch.autograd.gradcheck(lambda a: discretize_bilinear(a, Bv, dt),
                                    [A.clone().requires_grad_()])


def test_lssl_step_follows_parameter_updates():
    """The decode step reads the parameters at every call: after an optimizer step, stepping
    equals the forward pass of the updated layer (nothing stale is kept)."""
    from seqmem import mixers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        m = mixers.build("lssl", 3, d_state=5).double()
    x = torch.randn(2, 6, 3, generator=gen(17), dtype=torch.float64)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(2):
        with torch.no_grad():
            y, s = m(x)
            ys, st = [], m.init_state(2)
            for x_t in x.unbind(1):
                y_t, st = m.step(x_t, st)
                ys.append(y_t)
        torch.testing.assert_close(torch.stack(ys, 1), y, rtol=0, atol=1e-12)
        torch.testing.assert_close(st, s, rtol=0, atol=1e-12)
        opt.zero_grad()
        m(x)[0].square().sum().backward()
        opt.step()


def test_steps_are_their_equations():
    (u, A_bar, B_bar, C), x0 = dense_inputs(1)
    y, x = ssm_step(u[:, 0], A_bar, B_bar, C, x0)
    x_ref = torch.stack([x0[:, h] @ A_bar[h].T for h in range(H)], 1) + B_bar * u[:, 0, :, None]
    torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(y, (C * x_ref).sum(-1), rtol=0, atol=1e-12)
    (a, v), s0 = scan_inputs(1)
    torch.testing.assert_close(diag_recurrence_step(a, v[:, 0], s0), a * s0 + v[:, 0])


@pytest.mark.parametrize("op", list(OPS))
def test_unknown_mode_raises(op):
    fn, make, forms = OPS[op]
    args, x0 = make(3)
    with pytest.raises(SeqmemError) as info:
        fn(*args, state=x0, mode="fused")
    for mode in ("recurrent", *(m for m, _ in forms)):
        assert mode in str(info.value)


# ---- the mixers' timescales from their discretised transitions -----------------------------
def test_mixer_timescales_from_the_transitions():
    """timescales() against -1 / log|eigenvalue| of the discretised transition: lssl and s4d
    the slowest mode per channel, s5 the |C~|^2-weighted mean; and the S4D inits."""
    from seqmem import mixers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lssl, s5 = mixers.build("lssl", 3, d_state=5).double(), mixers.build("s5", 3).double()
        s4d = {i: mixers.build("s4d", 3, d_state=8, init=i).double() for i in ("lin", "inv")}
    with torch.no_grad():
        A_bar, _ = lssl.discrete()
        eig = torch.linalg.eigvals(A_bar).abs().amax(-1)  # (h,)
        torch.testing.assert_close(lssl.timescales(), -1 / eig.log(), rtol=1e-10, atol=0)
        a, _, _ = s4d["lin"].discrete()
        torch.testing.assert_close(s4d["lin"].timescales(), (-1 / a.abs().log()).amax(-1),
                                   rtol=1e-10, atol=0)
        a, _, C = s5.discrete()
        w = C.abs() ** 2
        torch.testing.assert_close(s5.timescales(), (w * -1 / a.abs().log()).sum(-1) / w.sum(-1),
                                   rtol=1e-10, atol=0)
    n = torch.arange(4, dtype=torch.float64)
    torch.testing.assert_close(s4d["lin"].A()[0], torch.complex(torch.full_like(n, -0.5),
                                                                math.pi * n))
    torch.testing.assert_close(s4d["inv"].A()[0].imag, 8 / math.pi * (8 / (2 * n + 1) - 1))
