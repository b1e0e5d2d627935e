"""Time-invariant state-space models: HiPPO matrices, discretisation, long convolutions and the
diagonal recurrences of LSSL, S4D and S5.

A continuous SSM  x'(s) = A x(s) + B u(s),  y = C x + D u  is discretised with step dt to

    x_t = A_bar x_{t-1} + B_bar u_t,   y_t = C x_t                      (D u_t added by mixers)
    zoh       A_bar = exp(dt A),  B_bar = A^-1 (exp(dt A) - I) B
    bilinear  A_bar = (I - dt/2 A)^-1 (I + dt/2 A),  B_bar = (I - dt/2 A)^-1 dt B

and, being time-invariant, unrolls to a causal convolution with the kernel K_l = C A_bar^l B_bar:
y_t = sum_{s<=t} K_{t-s} u_s + C A_bar^{t+1} x_{-1}, the last term carrying an initial state.

HiPPO (Gu, Dao, Ermon, Rudra & Re 2020; Gu, Johnson, Timalsina, Rudra & Re 2022, "How to Train
Your HiPPO"): A and B such that x(s) holds the coefficients of the input's history projected
onto orthonormal functions under a measure: LegS (Legendre, uniform on [0, s], here in its
time-invariant form, i.e. in log time), LegT (Legendre, a sliding window of length theta) and
FouT (Fourier, a sliding window of length 1). HiPPO-N is the normal part of LegS,
A = A_N - P P^T, diagonalised as A_N = V diag(Lambda) V^H with Re(Lambda) = -1/2 (S5).

Families of ops, each with its `_step` as the specification and a `mode`:

    ssm               dense per-channel SISO SSM (LSSL): x_t (b, h, n) = A_bar_h x + B_bar_h u_t,
                      y_t = C_h . x_t;  modes "conv" (kernel from blocked Krylov sequences,
                      O(t h) memory, + FFT) and "recurrent"; `ssm_bilinear_step` is the step
                      of a bilinear-discretised (A, B, dt) without forming A_bar (decoding).
    diag_ssm          diagonal complex per-channel SISO SSM (S4D): x_t = a_h * x + b_h u_t,
                      y_t = Re(C_h . x_t);  modes "conv" (Vandermonde kernel + FFT), "recurrent".
    diag_recurrence   x_t = a * x_{t-1} + v_t, a diagonal complex (S5); returns every x_t;
                      modes "parallel" (Hillis-Steele scan), "chunk", "recurrent".

Complex tensors use torch's complex dtypes; outputs y are real. Shapes: u (b, t, h) real,
states (b, h, n) (or (b, n) for diag_recurrence), every op returns (y, final state), and a
`state` of None means zeros.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmem.errors import SeqmemError, check_choice, check_int
from seqmem.ops.loops import float32_recurrence, step_loop
from seqmem.ops.scan import linear_recurrence

SSM_MODES = ("conv", "recurrent")
SCAN_MODES = ("parallel", "chunk", "recurrent")


# ---- HiPPO matrices ------------------------------------------------------------------------
def hippo_legs(n: int, *, dtype=torch.float64, device=None) -> tuple[Tensor, Tensor]:
    """HiPPO-LegS (Gu et al. 2020, eq. (2.1) / Thm 2): A (n, n), B (n,) with

        A_nk = -sqrt(2n+1) sqrt(2k+1) (n > k),  -(n+1) (n = k),  0 (n < k);  B_n = sqrt(2n+1).

    Time-invariant, x' = A x + B u holds in x(tau) the coefficients of u(e^s), s <= tau, in the
    orthonormal Legendre basis of the uniform measure on [0, e^tau] (LegS in log time)."""
    q = torch.arange(check_int("HiPPO size n", n), dtype=dtype, device=device)
    r = (2 * q + 1).sqrt()  # (n,)
    A = -(r[:, None] * r[None, :]).tril(-1) - torch.diag(q + 1)  # (n, n)
    return A, r.clone()


def hippo_legt(n: int, *, theta: float = 1.0, dtype=torch.float64, device=None
               ) -> tuple[Tensor, Tensor]:
    """HiPPO-LegT (Gu et al. 2020, Appendix D.1), orthonormal Legendre on the window
    [s - theta, s] with the uniform measure of density 1/theta:

        A_nk = -(1/theta) sqrt(2n+1) sqrt(2k+1) (1 if k <= n else (-1)^(n-k)),
        B_n = (1/theta) sqrt(2n+1).

    Exact (x = the window's coefficients) when the input is a polynomial of degree < n, since
    u(s - theta) enters through its reconstruction from x."""
    if not theta > 0:
        raise SeqmemError(f"hippo_legt theta must be > 0, got {theta!r}")
    q = torch.arange(check_int("HiPPO size n", n), dtype=dtype, device=device)
    r = (2 * q + 1).sqrt()  # (n,)
    diff = q[:, None] - q[None, :]  # n - k
    sign = torch.where(diff >= 0, torch.ones_like(diff), 1 - 2 * (diff.abs() % 2))
    return -(r[:, None] * r[None, :]) * sign / theta, r / theta


def hippo_fout(n: int, *, dtype=torch.float64, device=None) -> tuple[Tensor, Tensor]:
    """HiPPO-FouT (Gu et al. 2022, "How to Train Your HiPPO", sec. 3): the Fourier basis on
    the window [s - 1, s], in the order p_0 = 1, p_{2k-1} = sqrt(2) cos(2 pi k r),
    p_{2k} = sqrt(2) sin(2 pi k r), r = (time - s) in [-1, 0]:

        A = R - B B^T,  R[cos_k, sin_k] = 2 pi k,  R[sin_k, cos_k] = -2 pi k,
        B = (p_j(0))_j = (1, sqrt 2, 0, sqrt 2, 0, ...).

    The rank-one term is the window's far end u(s - 1) read back from x (B^T x); exact for
    1-periodic inputs of bandwidth below n/2."""
    j = torch.arange(check_int("HiPPO size n", n), device=device)
    k = (j + 1) // 2  # frequency of basis function j
    is_cos = (j % 2 == 1)
    B = is_cos.to(dtype) * math.sqrt(2)  # (n,)
    B[0] = 1.0
    R = torch.zeros(n, n, dtype=dtype, device=device)
    c = j[is_cos]  # cos rows
    s = c + 1
    keep = s < n  # the last cos has no sin partner when n is even
    c, s = c[keep], s[keep]
    w = 2 * math.pi * k[c].to(dtype)
    R[c, s], R[s, c] = w, -w
    return R - B[:, None] * B[None, :], B


def hippo_legs_normal(n: int, *, dtype=torch.float64, device=None
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """The normal-plus-low-rank split of LegS (Gu et al. 2022; S5 sec. 4.1):
    A_LegS = A_N - P P^T with P_n = sqrt(n + 1/2), so A_N = -I/2 + S, S skew-symmetric.
    Returns (A_N (n, n), P (n,), B (n,))."""
    A, B = hippo_legs(n, dtype=dtype, device=device)
    P = (torch.arange(n, dtype=dtype, device=device) + 0.5).sqrt()
    return A + P[:, None] * P[None, :], P, B


def hippo_n(n: int, *, dtype=torch.float64, device=None) -> tuple[Tensor, Tensor]:
    """HiPPO-N diagonalised (S5, Smith, Warrington & Linderman 2023): A_N = V diag(Lambda) V^H
    with V unitary, Lambda = -1/2 + i lambda (lambda the eigenvalues of the Hermitian -i S).
    Eigenvalues sorted by imaginary part, descending (conjugate pairs: the first n // 2 have
    Im >= 0). Returns (Lambda (n,) complex, V (n, n) complex)."""
    A_N, _, _ = hippo_legs_normal(n, dtype=dtype, device=device)
    S = A_N + 0.5 * torch.eye(n, dtype=dtype, device=device)  # skew-symmetric
    lam, V = torch.linalg.eigh(-1j * S.to(torch.promote_types(dtype, torch.complex64)))
    order = torch.argsort(lam, descending=True)
    lam, V = lam[order], V[:, order]
    return torch.complex(torch.full_like(lam, -0.5), lam), V


# ---- discretisation ------------------------------------------------------------------------
def _is_diagonal(A: Tensor, diagonal: bool | None) -> bool:
    if diagonal is None:
        return A.ndim == 1
    if not diagonal and (A.ndim < 2 or A.shape[-1] != A.shape[-2]):
        raise SeqmemError(f"a dense A must be (..., n, n), got shape {tuple(A.shape)}")
    return diagonal


def _diag_input(factor: Tensor, A: Tensor, B: Tensor) -> Tensor:
    """factor (..., n) times B: elementwise for B (..., n), rows of B for B (..., n, m)."""
    return factor[..., None] * B if B.ndim == A.ndim + 1 else factor * B


@float32_recurrence
def discretize_zoh(A: Tensor, B: Tensor, dt: Tensor | float, *, diagonal: bool | None = None
                   ) -> tuple[Tensor, Tensor]:
    """Zero-order hold: A_bar = exp(dt A), B_bar = A^-1 (exp(dt A) - I) B = int_0^dt e^{sA} ds B.

    Dense A (..., n, n), B (..., n) or (..., n, m), dt (...) (a batch of steps): the exact
    exponential of the block matrix dt [[A, B], [0, 0]], whose top blocks are A_bar, B_bar (A
    may be singular). Diagonal A (..., n) (complex allowed; `diagonal=True` for a batch, else
    A.ndim == 1), B (..., n) or (..., n, m), dt broadcasting against A: a_bar = exp(dt a),
    b_bar = (a_bar - 1) / a * b (a != 0)."""
    dt = torch.as_tensor(dt, dtype=A.real.dtype, device=A.device)
    if _is_diagonal(A, diagonal):
        A_bar = torch.exp(dt * A)
        return A_bar, _diag_input((A_bar - 1) / A, A, B)
    n, vec = A.shape[-1], B.ndim == A.ndim - 1
    Bm = B[..., None] if vec else B  # (..., n, m)
    m = Bm.shape[-1]
    batch = torch.broadcast_shapes(A.shape[:-2], Bm.shape[:-2], dt.shape)
    dtype = torch.promote_types(A.dtype, Bm.dtype)
    M = torch.zeros(*batch, n + m, n + m, dtype=dtype, device=A.device)
    M[..., :n, :n] = A
    M[..., :n, n:] = Bm
    E = torch.linalg.matrix_exp(dt[..., None, None] * M)  # (..., n + m, n + m)
    A_bar, B_bar = E[..., :n, :n], E[..., :n, n:]
    return A_bar, (B_bar[..., 0] if vec else B_bar)


def _triangular_ok(A: Tensor) -> bool:
    """Whether A is lower triangular (HiPPO-LegS is) and no gradient is wanted for it, so that
    a triangular solve may stand in for a general one: its gradient with respect to the
    matrix keeps only the lower triangle, and A's upper entries, though zero, may be trained."""
    if torch.is_grad_enabled() and A.requires_grad:
        return False
    return not bool(A.triu(1).any())


@float32_recurrence
def discretize_bilinear(A: Tensor, B: Tensor, dt: Tensor | float, *,
                        diagonal: bool | None = None) -> tuple[Tensor, Tensor]:
    """Bilinear (Tustin; LSSL's GBT with alpha = 1/2): A_bar = (I - dt/2 A)^-1 (I + dt/2 A),
    B_bar = (I - dt/2 A)^-1 dt B. Shapes as in `discretize_zoh`; diagonal: a_bar =
    (1 + dt a / 2) / (1 - dt a / 2), b_bar = dt b / (1 - dt a / 2).

    Dense A: one inverse M = (I - dt/2 A)^-1, then A_bar = 2 M - I (as I + dt/2 A =
    2 I - (I - dt/2 A)); M and B_bar by one triangular solve when A is lower triangular and
    needs no gradient (`_triangular_ok`), else M by `torch.linalg.inv` and B_bar = M dt B:
    on a CPU cheaper, forward and backward, than solving for A_bar with n right-hand sides."""
    dt = torch.as_tensor(dt, dtype=A.real.dtype, device=A.device)
    if _is_diagonal(A, diagonal):
        den = 1 - dt * A / 2
        return (1 + dt * A / 2) / den, _diag_input(dt / den, A, B)
    n = A.shape[-1]
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    lhs = torch.addcmul(eye, dt[..., None, None] / 2, A, value=-1)  # (..., n, n): I - dt/2 A
    vec = B.ndim == A.ndim - 1
    Bm = dt[..., None, None] * (B[..., None] if vec else B)  # (..., n, m)
    if _triangular_ok(A):  # one solve for both, B_bar as accurate as by its own solve
        batch = torch.broadcast_shapes(lhs.shape[:-2], Bm.shape[:-2])
        rhs = torch.cat([eye.expand(*batch, n, n), Bm.expand(*batch, *Bm.shape[-2:])], -1)
        M, B_bar = torch.linalg.solve_triangular(lhs, rhs, upper=False).split([n, Bm.shape[-1]], -1)
    else:
        M = torch.linalg.inv(lhs)
        B_bar = M @ Bm  # batch dimensions broadcast
    return 2 * M - eye, (B_bar[..., 0] if vec else B_bar)


# ---- long convolution and kernels ----------------------------------------------------------
@float32_recurrence
def fft_conv(u: Tensor, K: Tensor) -> Tensor:
    """Causal convolution y[b, t, d] = sum_{s<=t} K[d, t-s] u[b, s, d] by FFT (zero-padded to
    2t, so nothing wraps around). u (b, t, d) real, K (d, L) real; a kernel shorter than t is
    zero beyond L, a longer one is cut. Returns (b, t, d)."""
    t = u.shape[1]
    if t == 0:
        return u.clone()
    K = K[..., :t]
    n = 2 * t
    U = torch.fft.rfft(u, n=n, dim=1)  # (b, n/2 + 1, d)
    Kf = torch.fft.rfft(K, n=n, dim=-1).transpose(0, 1)  # (n/2 + 1, d)
    return torch.fft.irfft(U * Kf, n=n, dim=1)[:, :t]  # (b, t, d)


def _squarings(M: Tensor, m: int) -> list[Tensor]:
    """[M, M^2, M^4, ..., M^(2^m)]: M (..., n, n), m repeated squarings (none for m < 1)."""
    Ms = [M]
    for _ in range(m):
        Ms.append(Ms[-1] @ Ms[-1])
    return Ms


def _row_krylov(L: int, Ms: list[Tensor], V: Tensor) -> Tensor:
    """The rows [V, V M, V M^2, ..., V M^(L-1)] by doubling, from Ms = [M, M^2, M^4, ...]
    (at least ceil(log2 L) of them): V (..., m, n), M (..., n, n) -> (..., L, m, n). Step k
    appends the rows so far times M^(2^k), doubling their number; each step is one batched
    matmul over the batch dimensions of M (the m rows side by side, so M is not broadcast)."""
    m = V.shape[-2]
    K = V  # (..., l m, n): V M^j for j < l
    for Mk in Ms:
        if K.shape[-2] >= L * m:
            break
        K = torch.cat([K, K @ Mk], dim=-2)
    return K[..., : L * m, :].unflatten(-2, (L, m))


def _ceil_log2(L: int) -> int:
    return max(L - 1, 0).bit_length()


def _blocks(t: int) -> tuple[int, int]:
    """The block length L0 = 2^ceil(log2(t) / 2) ~ sqrt(t) of `ssm`'s "conv" form and the number
    of blocks J = ceil(t / L0) (t >= 1)."""
    L0 = 1 << ((_ceil_log2(t) + 1) // 2)
    return L0, -(-t // L0)


@float32_recurrence
def krylov(L: int, A: Tensor, b: Tensor) -> Tensor:
    """The Krylov sequence [b, A b, ..., A^{L-1} b]: A (..., n, n), b (..., n) -> (..., L, n),
    by doubling (LSSL sec. 3.2): [K, A^k K] for k = 1, 2, 4, ..., log2(L) matrix squarings."""
    Ms = _squarings(A.transpose(-1, -2), _ceil_log2(L) - 1)
    return _row_krylov(L, Ms, b[..., None, :])[..., 0, :]


@float32_recurrence
def vandermonde(a: Tensor, L: int, *, start: int = 0, step: int = 1) -> Tensor:
    """a^p for p = start, start + step, ..., start + (L - 1) step, as exp(p log a): a (..., n)
    complex -> (..., n, L). The powers of a diagonal transition (exact powers, no repeated
    products)."""
    ps = torch.arange(L, device=a.device, dtype=a.real.dtype) * step + start
    return torch.exp(torch.log(a)[..., None] * ps)


def _power_blocks(a: Tensor, L: int) -> tuple[Tensor, Tensor, int]:
    """The powers a^p, p < L, in blocks: p = j L0 + l with L0 ~ sqrt(L) (`_blocks`),
    a^p = hi[..., j] lo[..., l]: lo (..., n, L0) = a^l, hi (..., n, J) = a^{j L0}. A product
    over n of the two (one batched matmul) gives any Vandermonde product of length L with
    O(n sqrt(L)) intermediates instead of the (..., n, L) matrix."""
    L0, J = _blocks(L)
    return vandermonde(a, L0), vandermonde(a, J, step=L0), L0


def _power_sum(w: Tensor, lo: Tensor, hi: Tensor, L: int) -> Tensor:
    """sum_n w[..., h, n] a[h, n]^p for p < L from `_power_blocks`' lo (h, n, L0) and
    hi (h, n, J): w (..., h, n) -> (..., h, L), one batched matmul over the blocks."""
    blocks = (w[..., None] * hi).transpose(-1, -2) @ lo  # (..., h, J, L0)
    return blocks.flatten(-2)[..., :L]


@float32_recurrence
def s4d_kernel(a: Tensor, b: Tensor, C: Tensor, L: int) -> Tensor:
    """The S4D convolution kernel of a diagonal SSM (Gu, Gupta, Goel & Re 2022, sec. 3.2):

        K[h, l] = Re sum_n C[h, n] a[h, n]^l b[h, n],  l = 0, ..., L - 1,

    a Vandermonde matrix product (blocked, `_power_blocks`): a, b, C (h, n) complex -> K (h, L)
    real."""
    if L == 0:
        return a.real.new_zeros(a.shape[0], 0)
    return _power_sum(C * b, *_power_blocks(a, L)[:2], L).real


# ---- dense SSM (LSSL) ----------------------------------------------------------------------
def _check_mode(op: str, mode: str, modes) -> str:
    return check_choice(f"{op} mode", mode, modes)


@float32_recurrence
def ssm_step(u_t: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, state: Tensor | None = None
             ) -> tuple[Tensor, Tensor]:
    """x_t = A_bar x_{t-1} + B_bar u_t, y_t = C . x_t per channel: u_t (b, h), A_bar (h, n, n),
    B_bar, C (h, n), state (b, h, n) -> y_t (b, h), x_t."""
    x = u_t.new_zeros(u_t.shape[0], *B_bar.shape) if state is None else state
    x = torch.einsum("hnm,bhm->bhn", A_bar, x) + B_bar * u_t[..., None]  # (b, h, n)
    return (C * x).sum(-1), x


@float32_recurrence
def ssm_bilinear_step(u_t: Tensor, A: Tensor, B: Tensor, dt: Tensor, C: Tensor,
                      state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """`ssm_step` with (A_bar, B_bar) = discretize_bilinear(A, B, dt), without forming them:

        x_t = (I - dt/2 A)^-1 ((I + dt/2 A) x_{t-1} + dt B u_t),   y_t = C . x_t.

    u_t (b, h), A (n, n) or (h, n, n), B (n,) or (h, n), dt (h,), C (h, n), state (b, h, n)
    -> y_t (b, h), x_t. One solve with b right-hand sides per channel (triangular where A is
    lower triangular and needs no gradient, as HiPPO-LegS) instead of the inverse that forms
    A_bar: LSSL's decode step, computed afresh from the parameters at every call."""
    x = u_t.new_zeros(u_t.shape[0], *C.shape) if state is None else state
    half = (dt / 2)[:, None]  # (h, 1)
    Ax = (x[..., None, :] @ A.transpose(-1, -2))[..., 0, :]  # (b, h, n): A x_{t-1}
    rhs = x + half * Ax + (dt[:, None] * B) * u_t[..., None]  # (b, h, n)
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    lhs = torch.addcmul(eye, half[..., None], A, value=-1)  # (h, n, n): I - dt/2 A
    rhs = rhs.permute(1, 2, 0)  # (h, n, b): right-hand sides as columns
    if _triangular_ok(A):
        x = torch.linalg.solve_triangular(lhs, rhs, upper=False)
    else:
        x = torch.linalg.solve(lhs, rhs)
    x = x.permute(2, 0, 1).contiguous()  # (b, h, n)
    return (C * x).sum(-1), x


@float32_recurrence
def ssm(u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, *, state: Tensor | None = None,
        mode: str = "conv") -> tuple[Tensor, Tensor]:
    """The loop of `ssm_step` over u (b, t, h) -> y (b, t, h) and the final state (b, h, n).

    "conv": y_t = sum_s K_{t-s} u_s + (C A_bar^{t+1}) x_{-1}, K_l = C A_bar^l B_bar, the
    convolution by FFT; the final state x_T = A_bar^T x_{-1} + sum_l A_bar^l B_bar u_{T-1-l}.
    The powers are blocked so that nothing of size (h, t, n) is ever formed: with a block
    length L0 = 2^ceil(log2(t) / 2) ~ sqrt(t), J = ceil(t / L0) blocks and P = A_bar^L0,

        K_{j L0 + l} = (C P^j) . (A_bar^l B_bar),    C A_bar^{j L0 + l + 1} x_{-1} likewise,

    from the short Krylov sequences A_bar^l [B_bar, A_bar x_{-1}] (l < L0) and the strided one
    C P^j (j < J), both by doubling (about log2(t) squarings of (h, n, n) in all). The final
    state sums each block with the short sequence, S_j = sum_l A_bar^l B_bar u_{T-1-j L0-l}
    (A_bar^T x_{-1} = P^j A_bar^l (A_bar x_{-1}) joining the block of T - 1 = j L0 + l), and
    combines x_T = sum_j P^j S_j as a tree of pairs S_{2i} + P^{2^k} S_{2i+1}. Memory is
    O(b t h + (b + 1) h sqrt(t) n + h n^2 log t)."""
    mode = _check_mode("ssm", mode, SSM_MODES)
    x = u.new_zeros(u.shape[0], *B_bar.shape) if state is None else state
    b, t, h = u.shape
    n = B_bar.shape[-1]
    if mode == "recurrent" or t == 0:
        return step_loop(lambda u_t, x: ssm_step(u_t, A_bar, B_bar, C, x), (u,), x)
    L0, J = _blocks(t)
    A_pows = _squarings(A_bar, L0.bit_length() - 1)  # A_bar^(2^k), up to P = A_bar^L0
    P_pows = _squarings(A_pows[-1], _ceil_log2(J) - 1) if J > 1 else []  # P^(2^k)
    Ax = torch.einsum("hnm,bhm->hbn", A_bar, x)  # (h, b, n): A_bar x_{-1}
    V = torch.cat([B_bar[:, None], Ax], 1)  # (h, 1 + b, n)
    W = _row_krylov(L0, [M.transpose(-1, -2) for M in A_pows[:-1]], V)  # (h, L0, 1 + b, n)
    AB, AAx = W[:, :, 0], W[:, :, 1:]  # A_bar^l B_bar (h, L0, n), A_bar^(l+1) x_{-1}
    CP = _row_krylov(J, P_pows, C[:, None])[:, :, 0]  # (h, J, n): C P^j
    K = torch.einsum("hjn,hln->hjl", CP, AB).reshape(h, J * L0)[:, :t]  # (h, t)
    y0 = torch.einsum("hjn,hlbn->bjlh", CP, AAx).reshape(b, J * L0, h)[:, :t]  # (b, t, h)
    y = fft_conv(u, K) + y0
    ur = u.flip(1)  # u_{T-1-l}
    if t < J * L0:
        ur = torch.cat([ur, ur.new_zeros(b, J * L0 - t, h)], 1)
    S = torch.einsum("hln,bjlh->hjbn", AB, ur.reshape(b, J, L0, h))  # (h, J, b, n)
    j, l = divmod(t - 1, L0)
    S[:, j] = S[:, j] + AAx[:, l]  # + A_bar^t x_{-1} = P^j A_bar^l (A_bar x_{-1})
    # level k: S_i <- S_2i + P^(2^k) S_2i+1, so that S_i = sum_{r < 2^(k+1)} P^r S_{i 2^(k+1) + r}
    for Pk in P_pows:
        if S.shape[1] % 2:  # an odd count: a zero block to pair the last one with
            S = torch.cat([S, torch.zeros_like(S[:, :1])], 1)
        odd = S[:, 1::2].reshape(h, -1, n) @ Pk.transpose(-1, -2)  # (h, J' / 2 * b, n)
        S = S[:, 0::2] + odd.reshape(h, -1, b, n)
    return y, S[:, 0].transpose(0, 1).contiguous()


# ---- diagonal SSM (S4D) --------------------------------------------------------------------
@float32_recurrence
def diag_ssm_step(u_t: Tensor, a: Tensor, b: Tensor, C: Tensor, state: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
    """x_t = a * x_{t-1} + b u_t, y_t = Re(C . x_t) per channel: u_t (b, h) real, a, b, C (h, n)
    complex, state (b, h, n) complex -> y_t (b, h) real, x_t."""
    x = torch.zeros(u_t.shape[0], *a.shape, dtype=a.dtype, device=a.device) if state is None \
        else state
    x = a * x + b * u_t[..., None]  # (b, h, n)
    return (C * x).sum(-1).real, x


@float32_recurrence
def diag_ssm(u: Tensor, a: Tensor, b: Tensor, C: Tensor, *, state: Tensor | None = None,
             mode: str = "conv") -> tuple[Tensor, Tensor]:
    """The loop of `diag_ssm_step` over u (b, t, h) -> y (b, t, h) and the final state.

    "conv": y = fft_conv(u, s4d_kernel) + Re sum_n C a^{t+1} x_{-1}; the final state
    x_T = a^T x_{-1} + b sum_l a^l u_{T-1-l}, all by Vandermonde products in blocks of about
    sqrt(t) powers (`_power_blocks`): memory O(b h t + h n sqrt(t)), never (h, n, t)."""
    mode = _check_mode("diag_ssm", mode, SSM_MODES)
    x = torch.zeros(u.shape[0], *a.shape, dtype=a.dtype, device=a.device) if state is None \
        else state
    t = u.shape[1]
    if mode == "recurrent" or t == 0:
        return step_loop(lambda u_t, x: diag_ssm_step(u_t, a, b, C, x), (u,), x)
    lo, hi, L0 = _power_blocks(a, t)  # a^{j L0 + l} = hi[..., j] lo[..., l]
    J = hi.shape[-1]
    y = fft_conv(u, _power_sum(C * b, lo, hi, t).real)  # the kernel = s4d_kernel(a, b, C, t)
    # the initial state read at step l: Re sum_n C a^{l+1} x_{-1}
    y = y + _power_sum(C * a * x, lo, hi, t).real.transpose(1, 2)  # (b, t, h)
    # the final state: a^t x_{-1} + b sum_l a^l u_{t-1-l}, summed by blocks of the reversed u
    ur = F.pad(u.flip(1), (0, 0, 0, J * L0 - t)).to(a.dtype).unflatten(1, (J, L0))  # (b,J,L0,h)
    within = torch.einsum("hnl,bjlh->bhnj", lo, ur)  # (b, h, n, J)
    x = vandermonde(a, 1, start=t)[..., 0] * x + b * (within * hi).sum(-1)
    return y, x


# ---- diagonal linear recurrence (S5) -------------------------------------------------------
@float32_recurrence
def diag_recurrence_step(a: Tensor, v_t: Tensor, state: Tensor | None = None) -> Tensor:
    """x_t = a * x_{t-1} + v_t: a (n,), v_t (b, n), state (b, n), complex -> x_t (b, n)."""
    return v_t if state is None else a * state + v_t


@float32_recurrence
def diag_recurrence(a: Tensor, v: Tensor, *, state: Tensor | None = None,
                    mode: str = "parallel", chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """Every x_t of x_t = a * x_{t-1} + v_t: a (n,) complex, v (b, t, n) complex, state (b, n)
    (zeros if None) -> x (b, t, n) and the final state.

    "parallel": the Hillis-Steele prefix scan of the affine maps (a, v_t) (`ops.scan`);
    "chunk": inside chunks of `chunk_size`, x_j = a^{j+1} x_start + sum_{i<=j} a^{j-i} v_i as
    one (C, C) lower-triangular Toeplitz product per state (exponents masked to 0 above the
    diagonal before the exponential), the state carried from chunk to chunk;
    "recurrent": the loop of `diag_recurrence_step`."""
    mode = _check_mode("diag_recurrence", mode, SCAN_MODES)
    check_int("chunk_size", chunk_size)
    b, t, n = v.shape
    x0 = v.new_zeros(b, n) if state is None else state
    if t == 0:
        return v.clone(), x0
    if mode == "recurrent":
        def step(v_t, x):
            x = diag_recurrence_step(a, v_t, x)
            return x, x  # every state is an output

        return step_loop(step, (v,), x0)
    if mode == "parallel":
        x = linear_recurrence(a.expand(1, t, n), v, x0, dim=1)  # (b, t, n)
        return x, x[:, -1]
    C = min(chunk_size, t)
    n_chunks = -(-t // C)
    pad = n_chunks * C - t
    V = torch.cat([v, v.new_zeros(b, pad, n)], 1) if pad else v
    V = V.reshape(b, n_chunks, C, n)  # (b, k, C, n)
    idx = torch.arange(C, device=v.device, dtype=a.real.dtype)
    diff = idx[:, None] - idx[None, :]  # (C, C): j - i
    mask = (diff >= 0).to(a.real.dtype)
    T = torch.exp(torch.log(a)[:, None, None] * (diff * mask)) * mask  # (n, C, C)
    intra = torch.einsum("nji,bkin->bkjn", T, V)  # (b, k, C, n)
    powers = vandermonde(a, C, start=1).transpose(0, 1)  # (C, n): a^{j+1}
    xs, x = [], x0
    for part in intra.unbind(1):
        part = part + powers * x[:, None]  # (b, C, n)
        xs.append(part)
        x = part[:, -1]
    x = torch.cat(xs, 1)[:, :t]
    return x, x[:, -1]
