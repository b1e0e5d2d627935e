"""S4: state-space models with a diagonal-plus-low-rank (DPLR) state matrix, their HiPPO
initialisations (the NPLR form of LegS, LegT and FouT) and the perturb-then-diagonalise
initialisation (PTD).

S4 (Gu, Goel & Re 2022, "Efficiently Modeling Long Sequences with Structured State Spaces")
writes a HiPPO matrix as normal plus low rank, A = A_N - P P^T, and, diagonalising the normal
part by a unitary V (A_N = V diag(Lambda) V^H), works in that basis with the DPLR matrix

    A = diag(Lambda) - P P^*,     P (N, r) = V^H P_HiPPO,  B = V^H B_HiPPO.

Conjugate symmetry. A real system's modes come in conjugate pairs, so only half of them are
stored: Lambda, P, B, C (..., n) with n = N / 2 stand for the full vectors [v, conj(v)] of
length N, and a state s (b, h, n) for the full state [s, conj(s)]. Every sum over the full
modes is then a sum over the stored half of v + conj(v) terms, the output y = C_full . x_full
= 2 Re(C . s), and the low-rank coupling P_full^* x_full = 2 Re(conj(P) . s) is real.

Bilinear discretisation with step dt (per channel h):

    x_t = A_bar x_{t-1} + B_bar u_t,   A_bar = (2/dt - A)^-1 (2/dt + A),
    B_bar = (2/dt - A)^-1 2 B,   y_t = 2 Re(C . x_t),

where (2/dt - A)^-1 = (diag(2/dt - Lambda) + P P^*)^-1 is applied by the Woodbury identity:
`s4_step`, the specification, needs O(n r + r^3) per token and never forms A_bar.

The convolution kernel K_l = C A_bar^l B_bar (l < L) comes from its truncated generating
function at the L-th roots of unity z_k = exp(-2 pi i k / L):

    sum_{l<L} K_l z^l = C (I - A_bar^L) (I - z A_bar)^-1 B_bar
                      = 2 C~ (D_z + (1 + z) P P^*)^-1 B,     C~ = C (I - A_bar^L),
    D_z = diag((2/dt)(1 - z) - (1 + z) Lambda),

a Cauchy kernel (sums v_n / D_z,n) plus the Woodbury correction of the rank-r term, then an
inverse FFT (`s4_kernel`). Forming A_bar densely (h, N, N) is left to what the generating
function cannot do well: the correction (I - A_bar^L) (the z^L = 1 truncation) by repeated
squaring, and the output of an initial state (`_initial_output`, blocked powers). The Cauchy
kernel needs Re(lambda) < 0 (a mode with lambda = 0 is a pole at z = 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from seqmem.errors import SeqmemError, check_choice, check_int
from seqmem.ops.loops import float32_recurrence, step_loop
from seqmem.ops.ssm import (
    _blocks,
    _ceil_log2,
    _row_krylov,
    _squarings,
    fft_conv,
    hippo_fout,
    hippo_legs,
    hippo_legt,
)

MEASURES = ("legs", "legt", "fout")
S4_MODES = ("conv", "recurrent")


# ---- HiPPO measures in normal-plus-low-rank form -------------------------------------------
def hippo(measure: str, n: int, *, dtype=torch.float64, device=None) -> tuple[Tensor, Tensor]:
    """The HiPPO matrices (A (n, n), B (n,)) of `measure`: "legs" (`ops.ssm.hippo_legs`),
    "legt" (`hippo_legt`, window theta = 1) or "fout" (`hippo_fout`)."""
    measure = check_choice("HiPPO measure", measure, MEASURES)
    fn = {"legs": hippo_legs, "legt": hippo_legt, "fout": hippo_fout}[measure]
    return fn(n, dtype=dtype, device=device)


def hippo_low_rank(measure: str, n: int, *, dtype=torch.float64, device=None) -> Tensor:
    """The low-rank factor P (r, n) with A + P^T P normal (S4, sec. 3.1 and Appendix C.1):

        legs  r = 1, P_k = sqrt(k + 1/2):          A + P P^T = -I/2 + skew-symmetric;
        legt  r = 2, P = sqrt(2k+1) on the odd / on the even k:  A + P^T P skew-symmetric;
        fout  r = 1, P = B:                        A + P P^T = the rotation generator R."""
    measure = check_choice("HiPPO measure", measure, MEASURES)
    k = torch.arange(check_int("HiPPO size n", n), dtype=dtype, device=device)
    if measure == "legs":
        return (k + 0.5).sqrt()[None]
    if measure == "fout":
        return hippo_fout(n, dtype=dtype, device=device)[1][None]
    r = (2 * k + 1).sqrt()
    odd = (k % 2 == 1).to(dtype)
    return torch.stack([r * odd, r * (1 - odd)])


def normal_eig(M: Tensor, *, tol: float = 1e-9) -> tuple[Tensor, Tensor]:
    """Eigendecomposition of a real normal matrix M = c I + S (S skew-symmetric) of even size
    N into conjugate pairs: M V = V diag(Lambda) for the half Lambda (N/2,) with Im >= 0 and
    V (N, N/2), so that [V, conj(V)] is unitary. Zero modes of S (eigenvalue c, which has
    no partner) are paired as (q_1 + i q_2) / sqrt 2 from a real orthonormal basis of that
    eigenspace. Raises if M is not of that form or N is odd."""
    N = M.shape[-1]
    if N % 2:
        raise SeqmemError(f"a conjugate-pair diagonalisation needs an even size, got {N}")
    c = torch.diagonal(M).mean()
    S = M - c * torch.eye(N, dtype=M.dtype, device=M.device)
    scale = max(float(S.abs().max()), 1.0)
    if float((S + S.T).abs().max()) > tol * scale:
        raise SeqmemError("normal_eig needs M = c I + S with S skew-symmetric")
    cdt = torch.promote_types(M.dtype, torch.complex64)
    lam, U = torch.linalg.eigh(-1j * S.to(cdt))  # S U = i lam U, lam ascending
    pos = lam > tol * scale
    zero = lam.abs() <= tol * scale
    m = int(zero.sum())
    if m % 2:
        raise SeqmemError("normal_eig: an odd number of zero modes cannot be paired")
    order = torch.argsort(lam[pos], descending=True)
    Vs, lams = [U[:, pos][:, order]], [lam[pos][order]]
    if m:
        Z = U[:, zero]  # spans a real subspace: a real orthonormal basis of it
        Q = torch.linalg.svd(torch.cat([Z.real, Z.imag], 1), full_matrices=False)[0][:, :m]
        Vs.append((Q[:, 0::2] + 1j * Q[:, 1::2]).to(cdt) / math.sqrt(2))
        lams.append(lam.new_zeros(m // 2))
    V = torch.cat(Vs, 1)
    lam = torch.cat(lams)
    return torch.complex(torch.full_like(lam, float(c)), lam), V


def nplr(measure: str, N: int, *, dtype=torch.float64, device=None
         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """S4's DPLR form of a HiPPO matrix, conjugate half stored: Lambda (n,), P (r, n), B (n,)
    and V (N, n) (n = N / 2) with

        A_HiPPO = V_f (diag(Lambda_f) - P_f P_f^*) V_f^H,   B_HiPPO = V_f B_f,

    V_f = [V, conj(V)] unitary and v_f = [v, conj(v)] the full vectors."""
    A, B = hippo(measure, N, dtype=dtype, device=device)
    P = hippo_low_rank(measure, N, dtype=dtype, device=device)
    Lam, V = normal_eig(A + P.T @ P)
    Vh = V.conj().T  # (n, N)
    return Lam, (Vh @ P.T.to(V.dtype)).T, Vh @ B.to(V.dtype), V


# ---- perturb-then-diagonalise --------------------------------------------------------------
PTD_EPS = tuple(10.0 ** (e / 2) for e in range(-24, 1))  # 1e-12, 3e-12, ..., 1


def ptd(A: Tensor, *, gamma: float = 1e6, eps_grid=PTD_EPS, seed: int = 0
        ) -> tuple[Tensor, Tensor, Tensor]:
    """Perturb-then-diagonalise (Yu, Nigmetov, Morozov, Mahoney & Erichson 2024,
    "Robustifying State-space Models for Long Sequences via Approximate Diagonalization",
    sec. 4.2): diagonalise A~ = A + E = V~ diag(Lambda~) V~^-1 for a perturbation E chosen to
    minimise the paper's objective

        Phi(E) = kappa(V~) + gamma ||E|| / ||A||,     (2-norms, columns of V~ of unit norm)

    the trade-off between the eigenvector condition number (how stably the diagonal system
    can be formed) and the distance to the original A (how far its transfer function moves).
    E is searched along one direction, E = eps ||A|| G / ||G|| with G a fixed real Gaussian
    matrix (drawn from a generator seeded by `seed`; Gaussian regularisation of the
    pseudospectrum), for eps in `eps_grid` (half decades); eps = 0 (no perturbation) is a
    candidate too, and a perturbation that makes A~ unstable (an eigenvalue with Re >= 0) is
    not. kappa(V~) of LegS falls about as 1 / eps (from ~1e20 at N = 64), so the default
    gamma = 1e6 settles at ||E|| = 1e-3 ||A|| (kappa ~ 5e3 at N = 64, ~700 at N = 8).
    A (N, N) real -> (Lambda~ (N,), V~ (N, N), E (N, N)), eigenvalues sorted by imaginary
    part, descending (a real A~ has conjugate pairs: their Im >= 0 halves come first)."""
    N = A.shape[-1]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    G = torch.randn(N, N, generator=gen, dtype=torch.float64, device="cpu").to(A.device, A.dtype)
    G = G / torch.linalg.matrix_norm(G, 2)
    norm_A = torch.linalg.matrix_norm(A, 2)
    best = None
    for eps in (0.0, *eps_grid):
        E = eps * norm_A * G
        lam, V = torch.linalg.eig(A + E)
        s = torch.linalg.svdvals(V)
        kappa = float(s[0] / s[-1])
        phi = kappa + gamma * eps
        if bool((lam.real < 0).all()) and math.isfinite(phi) and (best is None or phi < best[0]):
            best = (phi, lam, V, E)
    if best is None:
        raise SeqmemError("ptd: no perturbation of the grid gives a stable diagonalisable matrix")
    _, lam, V, E = best
    order = torch.argsort(lam.imag, descending=True, stable=True)
    return lam[order], V[:, order], E


def ptd_half(measure: str, N: int, **kw) -> tuple[Tensor, Tensor, Tensor]:
    """The PTD diagonalisation of the HiPPO matrix of `measure`, conjugate half kept:
    Lambda (N/2,) (the eigenvalues of largest imaginary part), V (N, N/2) and the rows
    V^-1 (N/2, N) that read those modes, with Re(Lambda) clipped to at most -1e-4 so that
    the diagonal system starts stable; computed on the CPU in float64."""
    A, _ = hippo(measure, N, device="cpu")
    lam, V, _ = ptd(A, **kw)
    Vinv = torch.linalg.inv(V)
    n = N // 2
    lam = torch.complex(lam.real.clamp(max=-1e-4), lam.imag)
    return lam[:n], V[:, :n], Vinv[:n]


# ---- the DPLR system -----------------------------------------------------------------------
def _full(v: Tensor) -> Tensor:
    """[v, conj(v)] along the last dimension."""
    return torch.cat([v, v.conj()], -1)


def dplr_dense(Lam: Tensor, P: Tensor) -> Tensor:
    """The full state matrix A_f = diag(Lambda_f) - P_f P_f^* (h, N, N) from the halves
    Lambda (h, n) and P (r, h, n)."""
    Pf = _full(P)  # (r, h, N)
    return torch.diag_embed(_full(Lam)) - torch.einsum("rhn,rhm->hnm", Pf, Pf.conj())


def s4_discrete(Lam: Tensor, P: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """The bilinear A_bar (h, N, N) and B_bar (h, N) of the full system, formed densely (the
    reference of the kernel and the (I - A_bar^L) correction)."""
    A = dplr_dense(Lam, P)
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    two = (2 / dt).to(A.dtype)[:, None, None]  # (h, 1, 1)
    lhs = two * eye - A
    A_bar = torch.linalg.solve(lhs, two * eye + A)
    B_bar = torch.linalg.solve(lhs, 2 * _full(B)[..., None])[..., 0]
    return A_bar, B_bar


def _re2(v: Tensor) -> Tensor:
    """The full-mode sum of a conjugate-symmetric product, 2 Re(sum_n v_n)."""
    return 2 * v.sum(-1).real


@float32_recurrence
def s4_step(u_t: Tensor, Lam: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor,
            state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One bilinear step of the DPLR SSM, by the Woodbury identity:

        w = (2/dt + A) x_{t-1} + 2 B u_t,    x_t = (2/dt - A)^-1 w
          = E w - E P (I + P^* E P)^-1 P^* E w,   E = diag(2/dt - Lambda)^-1,
        y_t = 2 Re(C . x_t).

    u_t (b, h) real, Lam, B, C (h, n), P (r, h, n) complex, dt (h,) real, state (b, h, n)
    complex (zeros if None) -> y_t (b, h) real, x_t (b, h, n)."""
    x = torch.zeros(u_t.shape[0], *Lam.shape, dtype=Lam.dtype, device=Lam.device) \
        if state is None else state
    two = (2 / dt)[:, None]  # (h, 1)
    w = (two + Lam) * x + 2 * B * u_t[..., None]  # (b, h, n)
    if P.shape[0]:
        Px = _re2(P.conj()[:, None] * x)  # (r, b, h): P_f^* x_f, real
        w = w - torch.einsum("rhn,rbh->bhn", P, Px.to(P.dtype))
    E = 1 / (two - Lam)  # (h, n)
    x = E * w
    if P.shape[0]:
        r = P.shape[0]
        G = torch.eye(r, dtype=dt.dtype, device=dt.device) + _re2(
            P.conj()[:, None] * (E * P)[None]).permute(2, 0, 1)  # (h, r, r)
        Pw = _re2(P.conj()[:, None] * x).permute(2, 0, 1)  # (h, r, b): P_f^* E w_f
        beta = torch.linalg.solve(G, Pw)  # (h, r, b)
        x = x - torch.einsum("rhn,hrb->bhn", E * P, beta.to(P.dtype))
    return _re2(C * x), x


def _cauchy(Lam: Tensor, dt: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """1 / D_z for the stored modes and their conjugates, (h, L, n) each, and s = 1 + z (L,):
    D_z = (2/dt)(1 - z) - (1 + z) lambda."""
    two = (2 / dt).to(Lam.dtype)[:, None, None]  # (h, 1, 1)
    zz = z[None, :, None]
    r1 = 1 / (two * (1 - zz) - (1 + zz) * Lam[:, None])
    r2 = 1 / (two * (1 - zz) - (1 + zz) * Lam.conj()[:, None])
    return r1, r2, 1 + z


def _csum(v: Tensor, r1: Tensor, r2: Tensor) -> Tensor:
    """The full-mode Cauchy sum sum_n v_f,n / D_z,n of a conjugate-symmetric v_f = [v,
    conj(v)] at every node: v (..., h, n) -> (..., h, L)."""
    return torch.einsum("...hn,hln->...hl", v, r1) + torch.einsum("...hn,hln->...hl",
                                                                   v.conj(), r2)


def _woodbury(x: Tensor, y: Tensor, P: Tensor, r1, r2, s) -> Tensor:
    """x_f^T (D_z + s P_f P_f^*)^-1 y_f at every node z: x (h, n), y (..., h, n) -> (..., h, L)

        = x^T D^-1 y - s (x^T D^-1 P) (I + s P^* D^-1 P)^-1 (P^* D^-1 y)."""
    out = _csum(x * y, r1, r2)
    r = P.shape[0]
    if not r:
        return out
    xP = _csum(x * P, r1, r2)  # (r, h, L)
    PP = _csum(P.conj()[:, None] * P[None], r1, r2)  # (r, r, h, L)
    Pc = P.conj().reshape(r, *[1] * (y.ndim - 2), *P.shape[1:])  # (r, 1.., h, n)
    Py = _csum(Pc * y, r1, r2)  # (r, ..., h, L)
    eye = torch.eye(r, dtype=PP.dtype, device=PP.device)
    G = eye + s[:, None, None] * PP.permute(2, 3, 0, 1)  # (h, L, r, r)
    rhs = Py.movedim(0, -1)  # (..., h, L, r)
    sol = torch.linalg.solve(G, rhs[..., None])[..., 0]  # (..., h, L, r)
    return out - s * (xP.permute(1, 2, 0) * sol).sum(-1)


def _nodes(L: int, like: Tensor) -> Tensor:
    k = torch.arange(L, dtype=like.real.dtype, device=like.device)
    return torch.exp(-2j * math.pi * k / L)


@float32_recurrence
def s4_kernel(Lam: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int) -> Tensor:
    """The convolution kernel K_l = 2 Re(C A_bar^l B_bar)_full, l < L (S4, Algorithm 1):
    C~ = C (I - A_bar^L), the generating function 2 C~ (D_z + (1 + z) P P^*)^-1 B at the
    L-th roots of unity by the Cauchy kernel with the Woodbury correction, and an inverse
    FFT. Shapes as in `s4_step`; returns K (h, L) real."""
    if L == 0:
        return dt.new_zeros(Lam.shape[0], 0)
    A_bar, _ = s4_discrete(Lam, P, B, dt)
    C_t = _tilde_C(C, A_bar, L)
    r1, r2, s = _cauchy(Lam, dt, _nodes(L, Lam))
    return torch.fft.ifft(2 * _woodbury(C_t, B, P, r1, r2, s), dim=-1).real


def _tilde_C(C: Tensor, A_bar: Tensor, L: int) -> Tensor:
    """C~ = C (I - A_bar^L), half stored: C (h, n), A_bar (h, N, N) -> (h, n)."""
    Cf = _full(C)  # (h, N)
    CA = torch.einsum("hn,hnm->hm", Cf, torch.linalg.matrix_power(A_bar, L))
    return (Cf - CA)[..., : C.shape[-1]]


def _initial_output(A_bar: Tensor, Cf: Tensor, x0f: Tensor, t: int) -> Tensor:
    """The initial state's part of the output, y0_t = Re(C_f A_bar^{t+1} x_f) for t < T, in
    blocks as `ops.ssm.ssm`'s "conv": t = j L0 + l, y0_t = (C P^j) . (A_bar^l A_bar x), P =
    A_bar^L0, from two Krylov sequences of length ~ sqrt(T) by doubling. (Its generating
    function would need C~ = C (I - A_bar^T), of order T dt, against a resolvent of order
    1 / (dt |lambda|) applied to (2/dt + A) x: about log10(1 / dt) digits lost, which float32
    cannot spare.) A_bar (h, N, N), Cf (h, N), x0f (b, h, N) -> (b, t, h) real."""
    b, h = x0f.shape[:2]
    L0, J = _blocks(t)
    A_pows = _squarings(A_bar, L0.bit_length() - 1)  # A_bar^(2^k), up to P = A_bar^L0
    P_pows = _squarings(A_pows[-1], _ceil_log2(J) - 1) if J > 1 else []
    Ax = torch.einsum("hnm,bhm->hbn", A_bar, x0f)  # (h, b, N)
    W = _row_krylov(L0, [M.transpose(-1, -2) for M in A_pows[:-1]], Ax)  # (h, L0, b, N)
    CP = _row_krylov(J, P_pows, Cf[:, None])[:, :, 0]  # (h, J, N): C P^j
    y0 = torch.einsum("hjn,hlbn->bjlh", CP, W).reshape(b, J * L0, h)[:, :t]
    return y0.real


@float32_recurrence
def s4(u: Tensor, Lam: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor, *,
       state: Tensor | None = None, mode: str = "conv") -> tuple[Tensor, Tensor]:
    """The loop of `s4_step` over u (b, t, h) -> y (b, t, h) and the final state (b, h, n).

    "conv": y = fft_conv(u, s4_kernel) + y0, with the initial state's part
    y0_t = 2 Re(C A_bar^{t+1} x_{-1}) from blocked powers of A_bar (`_initial_output`); the
    final state

        x_T = A_bar^T x_{-1} + sum_{l<T} A_bar^l B_bar u_{T-1-l}
            = A_bar^T x_{-1} + (I - A_bar^T) (2/T) sum_k (D_k + s_k P P^*)^-1 B conj(U_k),

    U = FFT of the reversed input (Parseval on the generating function of A_bar^l B_bar):
    the node weights M_k = D_k^-1 (B - s_k P alpha_k) carry no batch dimension, and one
    batched product with conj(U) sums them. An initial state of zeros that needs no gradient
    skips its (vanishing) terms."""
    mode = check_choice("s4 mode", mode, S4_MODES)
    x0 = torch.zeros(u.shape[0], *Lam.shape, dtype=Lam.dtype, device=Lam.device) \
        if state is None else state
    t = u.shape[1]
    if mode == "recurrent" or t == 0:
        return step_loop(lambda u_t, x: s4_step(u_t, Lam, P, B, C, dt, x), (u,), x0)
    n = Lam.shape[-1]
    A_bar, _ = s4_discrete(Lam, P, B, dt)
    AT = torch.linalg.matrix_power(A_bar, t)  # (h, N, N)
    Cf = _full(C)
    C_t = (Cf - torch.einsum("hn,hnm->hm", Cf, AT))[..., :n]  # (h, n)
    r1, r2, s = _cauchy(Lam, dt, _nodes(t, Lam))
    K = torch.fft.ifft(2 * _woodbury(C_t, B, P, r1, r2, s), dim=-1).real  # (h, t)
    y = fft_conv(u, K)
    x0f = _full(x0)
    zero = not x0.requires_grad and not bool(x0.any())  # its terms vanish exactly
    if not zero:
        y = y + _initial_output(A_bar, Cf, x0f, t)
    # the final state: the node weights of B, M_k = D_k^-1 (B - s_k P alpha_k), have no batch
    M = r1 * B[:, None]  # (h, t, n)
    if P.shape[0]:
        Pr = _csum(P.conj() * B, r1, r2)  # (r, h, t): P_f^* D^-1 B_f
        PP = _csum(P.conj()[:, None] * P[None], r1, r2)  # (r, r, h, t)
        eye = torch.eye(P.shape[0], dtype=PP.dtype, device=PP.device)
        alpha = torch.linalg.solve(eye + s[:, None, None] * PP.permute(2, 3, 0, 1),
                                   Pr.permute(1, 2, 0)[..., None])[..., 0]  # (h, t, r)
        M = M - r1 * torch.einsum("rhn,hkr->hkn", P, s[:, None] * alpha)
    c = torch.fft.fft(u.flip(1).to(Lam.dtype), dim=1).conj().transpose(1, 2)  # (b, h, t)
    g = _full(2 / t * (c.transpose(0, 1) @ M).transpose(0, 1))  # (b, h, N)
    # x_T = A_bar^T x_{-1} + (I - A_bar^T) g = g + A_bar^T (x_{-1} - g)
    xT = g + torch.einsum("hnm,bhm->bhn", AT, x0f - g)
    return y, xT[..., :n]
