"""S4's ops against independent routes: the NPLR forms against the dense HiPPO matrices, the
Cauchy + Woodbury kernel and the Woodbury step against the dense bilinear system of
`ops.ssm.discretize_bilinear`, the discretised LegT / FouT recurrences against projections of
a signal computed by quadrature, PTD against its definition, and the S4D / S5 / S4
initialisations against eigenvalues computed from the dense matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import legendre

from seqmem import mixers
from seqmem.errors import SeqmemError
from seqmem.ops.s4 import (
    MEASURES,
    PTD_EPS,
    hippo,
    hippo_low_rank,
    normal_eig,
    nplr,
    ptd,
    s4,
    s4_kernel,
    s4_step,
)
from seqmem.ops.ssm import discretize_bilinear, hippo_legs, hippo_legt


@pytest.fixture(autouse=True)
def _float64():
    """Every tensor of these tests in float64 (the default dtype restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _real_system(measure: str, N: int, shift: float):
    """The HiPPO system of `measure` shifted by -shift I, dense in the original basis, and
    its DPLR halves (Lambda - shift, P, B) with V: A_real = V_f (Lambda_f - P_f P_f^*) V_f^H."""
    A, B = hippo(measure, N)
    Lam, P, Bh, V = nplr(measure, N)
    return A - shift * torch.eye(N), B, Lam - shift, P, Bh, V


# FouT's normal part has a zero eigenvalue, a pole of the Cauchy kernel at z = 1; shifted by
# -0.05 I (the mixer keeps Re(Lambda) <= -0.01) the system is the same kind of DPLR matrix
SHIFT = {"legs": 0.0, "legt": 0.0, "fout": 0.05}


# ---- NPLR ----------------------------------------------------------------------------------
@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("N", [6, 8])
def test_nplr_reconstructs_the_hippo_matrix(measure, N):
    A, B = hippo(measure, N)
    P = hippo_low_rank(measure, N)
    A_N = A + P.T @ P
    assert torch.allclose(A_N @ A_N.T, A_N.T @ A_N, atol=1e-10)  # normal
    Lam, Pt, Bt, V = nplr(measure, N)
    Vf = torch.cat([V, V.conj()], 1)
    eye = torch.eye(N, dtype=Vf.dtype)
    torch.testing.assert_close(Vf.conj().T @ Vf, eye, rtol=0, atol=1e-12)  # unitary
    Pf, Lf = torch.cat([Pt, Pt.conj()], 1), torch.cat([Lam, Lam.conj()])
    dense = Vf @ (torch.diag(Lf) - Pf.T @ Pf.conj()) @ Vf.conj().T
    torch.testing.assert_close(dense, A.to(dense.dtype), rtol=0, atol=1e-11)
    torch.testing.assert_close(Vf @ torch.cat([Bt, Bt.conj()]), B.to(Vf.dtype), rtol=0,
                               atol=1e-12)
    assert (Lam.imag >= 0).all()


def test_normal_eig_refuses_what_it_cannot_pair():
    with pytest.raises(SeqmemError, match="even size"):
        normal_eig(torch.zeros(3, 3))
    with pytest.raises(SeqmemError, match="skew-symmetric"):
        normal_eig(hippo_legs(4)[0])


# ---- the kernel and the step against the dense bilinear system ----------------------------
def _dense_reference(measure, N, h, L, gen):
    A, B, Lam, P, Bh, V = _real_system(measure, N, SHIFT[measure])
    C_real = torch.randn(h, N, generator=gen)
    dt = torch.tensor([0.3, 0.05, 0.01])[:h]
    A_bar, B_bar = discretize_bilinear(A, B, dt)  # (h, N, N), (h, N)
    K, x = [], B_bar
    for _ in range(L):
        K.append((C_real * x).sum(-1))
        x = torch.einsum("hnm,hm->hn", A_bar, x)
    halves = (Lam.repeat(h, 1), P[:, None].repeat(1, h, 1), Bh.repeat(h, 1),
              (C_real.to(V.dtype) @ V), dt)  # C_half = C_real V: 2 Re(C s) = C_real x
    return torch.stack(K, -1), halves, (A_bar, B_bar, C_real, V)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("L", [1, 7, 16])
def test_kernel_by_cauchy_woodbury_equals_the_dense_powers(measure, L):
    """K_k = C A_bar^k B_bar, k < L, from the bilinear A_bar, B_bar of the dense HiPPO matrix
    in the original basis (a loop of matrix products) equals S4's generating-function kernel
    of the DPLR halves."""
    gen = torch.Generator().manual_seed(0)
    K_ref, halves, _ = _dense_reference(measure, 8, 3, L, gen)
    torch.testing.assert_close(s4_kernel(*halves, L), K_ref, rtol=0, atol=1e-11)
    assert K_ref.abs().max() > 1e-2


@pytest.mark.parametrize("measure", MEASURES)
def test_step_and_forms_equal_the_dense_recurrence(measure):
    """x_t = A_bar x_{t-1} + B_bar u_t, y_t = C x_t in the original basis, from an initial
    state: s4_step (Woodbury) and both forms of `s4` give the same outputs and final state."""
    gen = torch.Generator().manual_seed(1)
    _, halves, (A_bar, B_bar, C_real, V) = _dense_reference(measure, 8, 3, 1, gen)
    b, t = 2, 11
    u = torch.randn(b, t, 3, generator=gen)
    x0 = x = torch.randn(b, 3, 8, generator=gen)  # real-basis state
    s0 = torch.einsum("nm,bhn->bhm", V.conj(), x.to(V.dtype))  # s = V^H x
    ys = []
    for k in range(t):
        x = torch.einsum("hnm,bhm->bhn", A_bar, x) + B_bar * u[:, k, :, None]
        ys.append((C_real * x).sum(-1))
    y_ref, s_ref = torch.stack(ys, 1), torch.einsum("nm,bhn->bhm", V.conj(), x.to(V.dtype))
    y1, s1 = s4_step(u[:, 0], *halves, s0)
    torch.testing.assert_close(y1, y_ref[:, 0], rtol=0, atol=1e-11)
    x1 = torch.einsum("hnm,bhm->bhn", A_bar, x0) + B_bar * u[:, 0, :, None]
    torch.testing.assert_close(s1, torch.einsum("nm,bhn->bhm", V.conj(), x1.to(V.dtype)),
                               rtol=0, atol=1e-11)
    for mode in ("conv", "recurrent"):
        y, s = s4(u, *halves, state=s0, mode=mode)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(s, s_ref, rtol=0, atol=1e-10)


def test_rank_zero_is_the_diagonal_system():
    """With no low-rank term the kernel is S4D's bilinear Vandermonde kernel, 2 Re sum_n C_n
    a_n^k b_n with a = (1 + dt lambda/2) / (1 - dt lambda/2), b = 2 B / (2/dt - lambda)."""
    gen = torch.Generator().manual_seed(2)
    Lam = torch.complex(-torch.rand(2, 3, generator=gen), 5 * torch.rand(2, 3, generator=gen))
    B, C = (torch.complex(*torch.randn(2, 2, 3, generator=gen)) for _ in range(2))
    dt = torch.tensor([0.1, 0.7])
    a = (1 + dt[:, None] * Lam / 2) / (1 - dt[:, None] * Lam / 2)
    bb = 2 * B / (2 / dt[:, None] - Lam)
    k = torch.arange(9)
    K_ref = 2 * (C[..., None] * a[..., None] ** k * bb[..., None]).sum(1).real
    torch.testing.assert_close(s4_kernel(Lam, B.new_zeros(0, 2, 3), B, C, dt, 9), K_ref,
                               rtol=0, atol=1e-12)


# ---- LegT / FouT: the discretised recurrence holds the projection coefficients ------------
GL_X, GL_W = legendre.leggauss(60)


def _legt_coeffs(f, t: float, n: int) -> np.ndarray:
    """c_k(t) = int_{t-1}^t f(s) sqrt(2k+1) P_k(x(s)) ds, x: [t-1, t] -> [-1, 1]."""
    s = t - 1 + (GL_X + 1) / 2
    P = np.stack([legendre.legval(GL_X, np.eye(n)[k]) for k in range(n)])
    return 0.5 * (P * np.sqrt(2 * np.arange(n) + 1)[:, None] * f(s)) @ GL_W


def _fout_coeffs(f, t: float, n: int) -> np.ndarray:
    """c_j(t) = int_{t-1}^t f(s) p_j(s - t) ds in the basis 1, sqrt2 cos(2 pi k r),
    sqrt2 sin(2 pi k r)."""
    s = t - 1 + (GL_X + 1) / 2
    r = s - t
    basis = [np.ones_like(r)]
    for k in range(1, n):
        basis += [math.sqrt(2) * np.cos(2 * math.pi * k * r),
                  math.sqrt(2) * np.sin(2 * math.pi * k * r)]
    return 0.5 * np.stack(basis[:n]) @ (GL_W * f(s))


def _run_discrete(measure, N, f, coeffs, t0, t1, dt):
    """The bilinear DPLR recurrence (`s4_step`) from the exact coefficients at t0 to t1, fed
    f at the midpoints of the steps (second order), read back in the original basis."""
    Lam, P, B, V = nplr(measure, N)
    steps = round((t1 - t0) / dt)
    s = (V.conj().T @ torch.tensor(coeffs(f, t0, N)).to(V.dtype))[None, None]  # (1, 1, n)
    mid = t0 + (np.arange(steps) + 0.5) * dt
    u = torch.tensor(f(mid))[None, :, None]  # (1, steps, 1)
    halves = (Lam[None], P[:, None], B[None], torch.zeros_like(B)[None],
              torch.tensor([dt]))
    _, s = s4(u, *halves, state=s, mode="recurrent")
    return (2 * (V @ s[0, 0]).real).numpy()  # x_real = V_f s_f = 2 Re(V s)


@pytest.mark.parametrize("measure", ["legt", "fout"])
def test_discretised_sliding_window_bases_hold_the_projection(measure):
    """Run on a smooth signal, the discretised LegT (a polynomial of degree 3 < N) and FouT
    (1-periodic of bandwidth 2 < N/2) recurrences hold the signal's coefficients on the
    window [t - 1, t], computed independently by Gauss-Legendre quadrature."""
    N = 6
    if measure == "legt":
        p = np.array([0.2, 1.0, -0.8, 0.3])

        def f(s):
            return np.polyval(p[::-1], s)
        coeffs = _legt_coeffs
    else:
        def f(s):
            return (0.3 + np.cos(2 * math.pi * s) - 0.5 * np.sin(2 * math.pi * s)
                    + 0.4 * np.cos(4 * math.pi * s) + 0.8 * np.sin(4 * math.pi * s))
        coeffs = _fout_coeffs
    t0, t1 = 0.3, 1.7
    x = _run_discrete(measure, N, f, coeffs, t0, t1, 1e-3)
    want = coeffs(f, t1, N)
    np.testing.assert_allclose(x, want, rtol=0, atol=1e-4)
    assert np.abs(want).max() > 0.3
    # the other window basis holds something else
    other = "fout" if measure == "legt" else "legt"
    assert np.abs(_run_discrete(other, N, f, coeffs, t0, t1, 1e-3) - want).max() > 1e-2


def test_lssl_measure_uses_the_basis_matrices():
    m = mixers.build("lssl", 2, d_state=5, measure="legt")
    torch.testing.assert_close(m.A, hippo_legt(5)[0])
    with pytest.raises(SeqmemError, match=r"lssl measure.*legs.*legt.*fout"):
        mixers.build("lssl", 2, measure="legx")


# ---- PTD -----------------------------------------------------------------------------------
def _kappa(V: torch.Tensor) -> float:
    s = torch.linalg.svdvals(V)
    return float(s[0] / s[-1])


@pytest.mark.parametrize("N", [8, 16])
def test_ptd_diagonalises_a_nearby_matrix_with_well_conditioned_eigenvectors(N):
    A, _ = hippo_legs(N)
    _, V0 = torch.linalg.eig(A)
    assert _kappa(V0) > 1e4 * (N / 8) ** 10  # LegS's own eigenvectors: ~1e5 (8), ~1e11 (16)
    lam, V, E = ptd(A)
    # V diag(lam) V^-1 reconstructs the perturbed matrix A + E
    rec = V @ torch.diag(lam) @ torch.linalg.inv(V)
    torch.testing.assert_close(rec, (A + E).to(rec.dtype), rtol=0, atol=1e-9)
    # E is real, of the chosen relative size, and small
    norm_A = torch.linalg.matrix_norm(A, 2)
    rel = float(torch.linalg.matrix_norm(E, 2) / norm_A)
    assert min(abs(rel - e) for e in PTD_EPS) < 1e-9 * rel
    assert rel <= 1e-2
    assert not E.is_complex()
    # far better conditioned than the unperturbed eigenvectors, and stable
    assert _kappa(V) < 1e4 and _kappa(V) < 1e-2 * _kappa(V0)
    assert (lam.real < 0).all()
    assert (lam.imag[:-1] >= lam.imag[1:]).all()  # sorted by Im, descending


def test_ptd_minimises_the_objective_on_its_grid():
    """The chosen perturbation is the grid's minimiser of kappa(V) + gamma ||E|| / ||A|| over
    the stable candidates (recomputed here by a plain loop), and a larger gamma buys a smaller
    perturbation with a worse condition number."""
    A, _ = hippo_legs(12)
    G = torch.randn(12, 12, generator=torch.Generator().manual_seed(0))
    G = G / torch.linalg.matrix_norm(G, 2)
    nA = torch.linalg.matrix_norm(A, 2)
    found = {}
    for gamma in (1e3, 1e6, 1e9):
        best = None
        for eps in (0.0, *PTD_EPS):
            lam, V = torch.linalg.eig(A + eps * nA * G)
            if (lam.real < 0).all():
                phi = _kappa(V) + gamma * eps
                best = min(best or (phi, eps), (phi, eps))
        lam, V, E = ptd(A, gamma=gamma)
        torch.testing.assert_close(E, best[1] * nA * G, rtol=0, atol=1e-12)
        found[gamma] = (float(torch.linalg.matrix_norm(E, 2)), _kappa(V))
    (e3, k3), (e6, k6), (e9, k9) = found[1e3], found[1e6], found[1e9]
    assert e3 > e6 > e9 and k3 < k6 < k9


# ---- the initialisations of the mixers -----------------------------------------------------
def _top_half(lam: torch.Tensor) -> torch.Tensor:
    return lam[torch.argsort(lam.imag, descending=True)][: lam.numel() // 2]


def test_s4d_legs_takes_the_eigenvalues_of_the_normal_part():
    N = 8
    A, _ = hippo_legs(N)
    p = (torch.arange(N) + 0.5).sqrt()
    want = _top_half(torch.linalg.eigvals(A + torch.outer(p, p)))  # a general eig solver
    m = mixers.build("s4d", 3, d_state=N, init="legs").double()
    got = m.A()
    for h in range(3):
        torch.testing.assert_close(got[h], want, rtol=0, atol=1e-10)
    torch.testing.assert_close(want.real, torch.full((N // 2,), -0.5))


def test_ptd_inits_take_the_perturbed_eigenvalues():
    N = 8
    A, B = hippo_legs(N)
    _, V, E = ptd(A)
    want = _top_half(torch.linalg.eigvals(A + E))
    s4d = mixers.build("s4d", 2, d_state=N, init="ptd").double()
    torch.testing.assert_close(s4d.A()[0], want, rtol=0, atol=1e-9)
    s5 = mixers.build("s5", 2, d_state=N, init="ptd").double()
    torch.testing.assert_close(torch.complex(-s5.log_neg_A_real.exp(), s5.A_imag), want,
                               rtol=0, atol=1e-9)
    s4m = mixers.build("s4", 2, d_state=N, init="ptd").double()
    Lam, P, Bt, _, _ = s4m.params()
    torch.testing.assert_close(Lam[1], want, rtol=0, atol=1e-9)
    assert P.shape[0] == 0  # S4-PTD is diagonal
    # B~ = V~^-1 B: the kept rows of the inverse eigenvector matrix read B
    torch.testing.assert_close(Bt[0], (torch.linalg.inv(V) @ B.to(V.dtype))[: N // 2],
                               rtol=0, atol=1e-9)


def test_s4_nplr_init_is_the_hippo_system():
    """The layer's dense A (in its DPLR basis) has the HiPPO matrix's spectrum."""
    for measure in MEASURES:
        m = mixers.build("s4", 2, d_state=6, measure=measure).double()
        Lam, P, _, _, _ = m.params()
        Lf, Pf = torch.cat([Lam[0], Lam[0].conj()]), torch.cat([P[:, 0], P[:, 0].conj()], 1)
        dense = torch.diag(Lf) - Pf.T @ Pf.conj()
        A, _ = hippo(measure, 6)
        shift = 0.0 if measure == "legs" else 0.01  # Re(Lambda) starts at <= -0.01
        ev = torch.linalg.eigvals(dense)
        ref = torch.linalg.eigvals(A.to(ev.dtype) - shift * torch.eye(6))
        dist = (ev[:, None] - ref[None]).abs().amin(1).max()
        assert dist < 1e-6, measure
        assert (ev.real < 0).all()


def test_s4_rejects_bad_options():
    with pytest.raises(SeqmemError, match=r"s4 measure.*legs"):
        mixers.build("s4", 2, measure="cheb")
    with pytest.raises(SeqmemError, match=r"s4 init.*nplr.*ptd"):
        mixers.build("s4", 2, init="lin")
    with pytest.raises(SeqmemError, match="multiple of 2"):
        mixers.build("s4", 2, d_state=5)
    with pytest.raises(SeqmemError, match=r"s5 init.*hippo_n.*ptd"):
        mixers.build("s5", 2, init="legs")


@pytest.mark.parametrize("name,kw", [("s4", {}), ("s4", {"init": "ptd", "measure": "fout"}),
                                     ("s4d", {"init": "legs"}), ("s4d", {"init": "ptd"}),
                                     ("s5", {"init": "ptd"}), ("lssl", {"measure": "legt"})])
def test_the_initialisations_build_on_the_meta_device(name, kw):
    """A config is validated by building its mixer on the meta device: the HiPPO and PTD
    matrices are computed on the CPU and only the parameters land on meta."""
    with torch.device("meta"):
        m = mixers.build(name, 4, **kw)
    assert all(p.device.type == "meta" for p in m.parameters())
