"""The linear long-term memory of Titans: a matrix memory trained at test time by gradient
descent with momentum and weight decay (Behrouz, Zhong & Mirrokni 2025, "Titans: Learning to
Memorize at Test Time", section 3.1, linear memory).

Per head, with row vectors q_t, k_t (d_k) and v_t (d_v), memory M (d_k, d_v) and momentum
S (d_k, d_v):

    loss_t(M)  = || k_t M - v_t ||^2              (associative memory loss)
    grad_t     = d loss_t / dM at M_{t-1} = 2 k_t^T (k_t M_{t-1} - v_t)
    S_t        = eta_t S_{t-1} - theta_t grad_t   (momentum: "past surprise")
    M_t        = (1 - alpha_t) M_{t-1} + S_t       (weight decay: forgetting)
    o_t        = scale * q_t M_t                   (retrieval from the updated memory)

alpha_t, eta_t (in [0, 1]) and theta_t (>= 0) are data-dependent, one per token and head.

Exact semantics. The gradient of every token is taken at the memory just before it, M_{t-1}
(the per-token recurrence above, which `titans_step` specifies). The paper trains with a
chunk-wise form in which all gradients of a chunk are taken at the memory of the chunk's
start; that form depends on the chunk size and is not a loop of any step, so it is not used
here. Instead, because the loss is quadratic, the per-token recurrence is linear in (M, S):

    [M_t; S_t] = [[(1 - alpha_t) I - 2 theta_t k_t^T k_t, eta_t I],
                  [-2 theta_t k_t^T k_t,                   eta_t I]] [M_{t-1}; S_{t-1}]
                 + 2 theta_t [k_t^T v_t; k_t^T v_t]

and `titans(..., mode="chunk")` computes it exactly, chunk by chunk, with a triangular solve
(the WY / UT idea of the chunked delta rule, Yang et al. 2024, extended to the momentum pair):
within a chunk, with the surprise delta_t = 2 theta_t (v_t - k_t M_{t-1}) (so that
-theta_t grad_t = k_t^T delta_t),

    S_t = E(t, 0) S_0 + sum_{i<=t} E(t, i) k_i^T delta_i,        E(t, i) = prod_{i<l<=t} eta_l
    M_t = A(t, 0) M_0 + G(t, 0) S_0 + sum_{i<=t} G(t, i) k_i^T delta_i,
          A(t, j) = prod_{j<l<=t} (1 - alpha_l),  G(t, i) = sum_{i<=j<=t} A(t, j) E(j, i)

and the deltas of a chunk solve one unit lower-triangular system. Every form equals the loop of
`titans_step` to rounding. Layout: (b, t, h, d); state `TitansState(M, S)`, each (b, h, d_k,
d_v); `scale` defaults to d_k^-0.5, as in every op of the linear-attention family.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmem.errors import check_choice, check_int
from seqmem.ops.loops import chunk, float32_recurrence, step_loop

TITANS_MODES = ("chunk", "recurrent")


class TitansState(NamedTuple):
    """Memory M and momentum S, each (b, h, d_k, d_v)."""

    M: Tensor
    S: Tensor


def titans_init_state(batch_size: int, n_heads: int, d_k: int, d_v: int, *, device=None,
                      dtype=None) -> TitansState:
    """The zero state: M = S = 0, each (b, h, d_k, d_v)."""
    z = torch.zeros(batch_size, n_heads, d_k, d_v, device=device, dtype=dtype)
    return TitansState(z, z.clone())


@float32_recurrence
def titans_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, alpha_t: Tensor, eta_t: Tensor,
                theta_t: Tensor, state: TitansState, *, scale: float | None = None
                ) -> tuple[Tensor, TitansState]:
    """One token (the specification): q_t, k_t (b, h, d_k), v_t (b, h, d_v), alpha_t, eta_t,
    theta_t (b, h), state (M, S) -> o_t (b, h, d_v), the next state."""
    M, S = state
    scale = q_t.shape[-1] ** -0.5 if scale is None else scale
    pred = torch.einsum("bhk,bhkv->bhv", k_t, M)  # (b, h, d_v): k_t M_{t-1}
    grad = 2 * torch.einsum("bhk,bhv->bhkv", k_t, pred - v_t)  # (b, h, d_k, d_v)
    S = eta_t[..., None, None] * S - theta_t[..., None, None] * grad
    M = (1 - alpha_t)[..., None, None] * M + S
    o = scale * torch.einsum("bhk,bhkv->bhv", q_t, M)  # (b, h, d_v)
    return o, TitansState(M, S)


@float32_recurrence
def titans_recurrent(q, k, v, alpha, eta, theta, *, scale=None, state=None
                     ) -> tuple[Tensor, TitansState]:
    """The loop of `titans_step` over time: (b, t, h, d) inputs -> o (b, t, h, d_v), state."""
    b, _, h, d_k = k.shape
    if state is None:
        state = titans_init_state(b, h, d_k, v.shape[-1], device=v.device, dtype=v.dtype)
    o, state = step_loop(partial(titans_step, scale=scale), (q, k, v, alpha, eta, theta), state,
                         empty=v.new_zeros(b, 0, h, v.shape[-1]))
    return o, TitansState(*state)


def _decay_matrix(a: Tensor) -> Tensor:
    """P[..., t, j] = prod_{j < l <= t} a[..., l] for t >= j (1 on the diagonal), 0 above.

    A masked cumulative product: exact for any a (zeros included), no logs, no division."""
    C = a.shape[-1]
    lower = torch.ones(C, C, dtype=torch.bool, device=a.device).tril(-1)  # (C, C): t > j
    Z = torch.where(lower, a[..., :, None], torch.ones_like(a)[..., :, None])  # (..., C, C)
    return torch.cumprod(Z, dim=-2).tril()  # (..., C, C)


@float32_recurrence
def titans_chunk(q, k, v, alpha, eta, theta, *, scale=None, state=None, chunk_size=64
                 ) -> tuple[Tensor, TitansState]:
    """The exact chunked form (see the module docstring): o (b, t, h, d_v), final state."""
    b, t, h, d_k = k.shape
    d_v = v.shape[-1]
    scale = d_k ** -0.5 if scale is None else scale
    if state is None:
        state = titans_init_state(b, h, d_k, d_v, device=v.device, dtype=v.dtype)
    check_int("chunk_size", chunk_size)
    if t == 0:
        return v.new_zeros(b, 0, h, d_v), TitansState(*state)
    C = min(chunk_size, t)
    n = -(-t // C)
    r = t - (n - 1) * C  # length of the last chunk
    # padded tokens come after the last real one: no input, decay factors 1
    Q, K, V = chunk(q * scale, C), chunk(k, C), chunk(v, C)  # (b, h, n, C, d)
    a, e = chunk(1 - alpha, C, fill=1.0), chunk(eta, C, fill=1.0)  # (b, h, n, C)
    c = chunk(2 * theta, C)  # (b, h, n, C)

    A = _decay_matrix(a)  # (b, h, n, C, C): A[t, j] = prod_{j<l<=t} a_l
    E = _decay_matrix(e)  # (b, h, n, C, C)
    G = A @ E  # (b, h, n, C, C)
    a0 = torch.cumprod(a, dim=-1)  # (b, h, n, C): A(t, 0)
    e0 = torch.cumprod(e, dim=-1)  # (b, h, n, C): E(t, 0)
    g0 = (A @ e0[..., None])[..., 0]  # (b, h, n, C): G(t, 0)
    ones, zeros = torch.ones_like(a0[..., :1]), torch.zeros_like(g0[..., :1])
    a0_prev = torch.cat([ones, a0[..., :-1]], dim=-1)  # (b, h, n, C): A(t-1, 0)
    g0_prev = torch.cat([zeros, g0[..., :-1]], dim=-1)  # (b, h, n, C): G(t-1, 0)
    G_prev = F.pad(G[..., :-1, :], (0, 0, 1, 0))  # (b, h, n, C, C): G(t-1, i), strictly lower

    # (I + diag(c) L) delta = diag(c) (V - A(t-1, 0) K M_0 - G(t-1, 0) K S_0)
    eye = torch.eye(C, dtype=v.dtype, device=v.device)
    system = eye + c[..., None] * G_prev * (K @ K.transpose(-1, -2))  # (b, h, n, C, C)
    rhs = torch.cat([c[..., None] * V, (c * a0_prev)[..., None] * K,
                     (c * g0_prev)[..., None] * K], dim=-1)  # (b, h, n, C, d_v + 2 d_k)
    sol = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
    U, W_M, W_S = sol.split([d_v, d_k, d_k], dim=-1)  # delta = U - W_M M_0 - W_S S_0
    QK = G * (Q @ K.transpose(-1, -2))  # (b, h, n, C, C)

    M, S = state
    # the final state is read at the last real token: row r - 1 of the last chunk
    chunks, last = torch.arange(n, device=v.device), torch.full((n,), C - 1, device=v.device)
    last[-1] = r - 1
    G_last, E_last = G[:, :, chunks, last], E[:, :, chunks, last]  # (b, h, n, C)
    a0_last, g0_last, e0_last = (z[:, :, chunks, last][..., None, None] for z in (a0, g0, e0))
    # per chunk by unbind (one backward node each; indexing [:, :, i] costs O(t) per chunk)
    per_chunk = zip(*(z.unbind(2) for z in (U, W_M, W_S, Q, K, QK, a0[..., None],
                                            g0[..., None], G_last[..., None], E_last[..., None],
                                            a0_last, g0_last, e0_last)), strict=True)
    outs = []
    for U_i, WM_i, WS_i, Q_i, K_i, QK_i, a0_i, g0_i, G_i, E_i, a_end, g_end, e_end in per_chunk:
        delta = U_i - WM_i @ M - WS_i @ S  # (b, h, C, d_v)
        outs.append(a0_i * (Q_i @ M) + g0_i * (Q_i @ S) + QK_i @ delta)  # (b, h, C, d_v)
        M_new = a_end * M + g_end * S + (G_i * K_i).transpose(-1, -2) @ delta
        S = e_end * S + (E_i * K_i).transpose(-1, -2) @ delta  # (b, h, d_k, d_v)
        M = M_new
    o = torch.cat(outs, dim=2)[:, :, :t]  # (b, h, t, d_v)
    return o.movedim(2, 1), TitansState(M, S)


@float32_recurrence
def titans(q: Tensor, k: Tensor, v: Tensor, alpha: Tensor, eta: Tensor, theta: Tensor, *,
           scale: float | None = None, state: TitansState | None = None, mode: str = "chunk",
           chunk_size: int = 64) -> tuple[Tensor, TitansState]:
    """Titans linear memory over a sequence: q, k (b, t, h, d_k), v (b, t, h, d_v), alpha, eta,
    theta (b, t, h) -> o (b, t, h, d_v), final `TitansState`. Modes: "chunk", "recurrent"."""
    mode = check_choice("titans mode", mode, TITANS_MODES)
    if mode == "recurrent":
        return titans_recurrent(q, k, v, alpha, eta, theta, scale=scale, state=state)
    return titans_chunk(q, k, v, alpha, eta, theta, scale=scale, state=state,
                        chunk_size=chunk_size)
