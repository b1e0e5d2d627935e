"""Parallel-in-time evaluation of a nonlinear recurrence by Newton's method (DEER, Lim et al.
2024; ParaRNN, Danieli et al. 2025).

The whole sequence h_1..h_T of h_t = f(h_{t-1}, u_t) is the root of the system
h_t - f(h_{t-1}, u_t) = 0. Newton's method linearises f around the current guess H^k:

    h_t^{k+1} = J_t h_{t-1}^{k+1} + (f(h_{t-1}^k, u_t) - J_t h_{t-1}^k),   J_t = df/dh at h_{t-1}^k

a linear recurrence in h^{k+1}, solved for all t at once by a parallel associative scan
(log2 T rounds of batched matrix products). After k iterations the first k steps are exact,
so at most T iterations reach the sequential answer; in practice far fewer do.

Gradients: the iterations run without a graph; one more Newton step from the converged
solution, with J held fixed, is differentiated. Its tangent recurrence dh_t = J_t dh_{t-1} +
df/dtheta is exactly the sequential RNN's, so the gradients are those of the step loop (the
implicit-function derivative of the fixed point).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jacrev, vmap

from seqmem.ops.loops import float32_recurrence

Cell = Callable[[Tensor, Tensor], Tensor]  # (u (b, k), h (b, n)) -> h' (b, n)


@float32_recurrence
def linear_scan(A: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """All states of h_t = A_t h_{t-1} + b_t, t = 1..T, by a parallel (Hillis-Steele) scan.

    A (B, T, n, n), b (B, T, n), h0 (B, n) -> H (B, T, n). Pairs compose as
    (A2, b2) o (A1, b1) = (A2 A1, A2 b1 + b2); log2 T rounds, each one batched product.
    """
    T = A.shape[1]
    b = torch.cat([(A[:, :1] @ h0[:, None, :, None])[..., 0] + b[:, :1], b[:, 1:]], dim=1)
    A = torch.cat([torch.zeros_like(A[:, :1]), A[:, 1:]], dim=1)  # h0 is folded into b_1
    shift = 1
    while shift < T:
        A_hi, b_hi = A[:, shift:], b[:, shift:]  # (B, T - s, n, n), (B, T - s, n)
        b = torch.cat([b[:, :shift], (A_hi @ b[:, :-shift, :, None])[..., 0] + b_hi], dim=1)
        A = torch.cat([A[:, :shift], A_hi @ A[:, :-shift]], dim=1)
        shift *= 2
    return b


def _jacobians(cell: Cell, H_prev: Tensor, u: Tensor) -> Tensor:
    """df/dh at every (h_{t-1}, u_t): H_prev (B, T, n), u (B, T, k) -> (B, T, n, n)."""
    B, T, n = H_prev.shape

    def one(h, x):
        return cell(x[None], h[None])[0]

    J = vmap(jacrev(one))(H_prev.reshape(B * T, n), u.reshape(B * T, -1))
    return J.reshape(B, T, n, n)


def _cell_all(cell: Cell, H_prev: Tensor, u: Tensor) -> Tensor:
    """f(h_{t-1}, u_t) for all t at once: (B, T, n)."""
    B, T, n = H_prev.shape
    return cell(u.reshape(B * T, -1), H_prev.reshape(B * T, n)).reshape(B, T, n)


def default_tol(dtype: torch.dtype) -> float:
    """Convergence threshold on max |H^{k+1} - H^k| / (1 + max |H|): 1e-13 in float64,
    1e-6 in float32."""
    return 1e-13 if dtype == torch.float64 else 1e-6


@float32_recurrence
def newton_recurrent(cell: Cell, u: Tensor, h0: Tensor, *, tol: float | None = None,
                     max_iter: int | None = None) -> tuple[Tensor, Tensor, int]:
    """The states of h_t = cell(u_t, h_{t-1}) for u (B, T, k), h0 (B, n), solved by Newton
    iterations, each a parallel linear scan. Returns (H (B, T, n), h_T (B, n), iterations).

    Stops when the update is below `tol` (relative, see `default_tol`) or after `max_iter`
    iterations (default T + 1, enough for the exact answer).
    """
    B, T, _ = u.shape
    if T == 0:
        return u.new_zeros(B, 0, h0.shape[-1]), h0, 0
    tol = default_tol(u.dtype) if tol is None else tol
    max_iter = T + 1 if max_iter is None else max_iter
    with torch.no_grad():
        ud, h0d = u.detach(), h0.detach()
        H = h0d[:, None].expand(B, T, h0.shape[-1]).contiguous()  # guess: the state held
        iters = 0
        for iters in range(1, max_iter + 1):  # noqa: B007  (the count is returned)
            H_prev = torch.cat([h0d[:, None], H[:, :-1]], dim=1)
            J = _jacobians(cell, H_prev, ud)
            F = _cell_all(cell, H_prev, ud)
            H_new = linear_scan(J, F - (J @ H_prev[..., None])[..., 0], h0d)
            delta = (H_new - H).abs().max() / (1 + H_new.abs().max())
            H = H_new
            if delta <= tol:
                break
        H_prev = torch.cat([h0d[:, None], H[:, :-1]], dim=1)
        J = _jacobians(cell, H_prev, ud)
    # one differentiable Newton step from the solution (J fixed): exact gradients
    F = _cell_all(cell, H_prev, u)
    H = linear_scan(J, F - (J @ H_prev[..., None])[..., 0], h0)
    return H, H[:, -1], iters
