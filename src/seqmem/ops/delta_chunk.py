"""The chunked (gated) delta rule with a hand-written backward: the WY / UT transform of Yang
et al. 2024 ("Parallelizing Linear Transformers with the Delta Rule over Sequence Length"),
S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t, o_t = q_t S_t, per head.

Inside a chunk of C tokens starting from the state S_0, with b the cumulative log decay since
the chunk's start, gamma = exp(b), D[t, s] = exp(b_t - b_s) for s <= t (0 above), all chunks at
once (one batched product or solve each):

    (1)  (I + L) [U~, W] = [diag(beta) V, diag(beta gamma) K],  L = tril_{-1}(diag(beta) D * K K^T)
    (2)  P = D * Q K^T,   K_end = diag(D[C, :]) K  (k_s gamma_C / gamma_s)
    (3)  M = gamma_C I - K_end^T W (d_k, d_k),   H = K_end^T U~ (d_k, d_v)

then one product per chunk in sequence, S_end = M S_0 + H (the chunk's transition applied to
its start, instead of the two products U = U~ - W S_0 and S_end = gamma_C S_0 + K_end^T U), and
again all chunks at once:

    (4)  U = U~ - W S_0,   o = diag(gamma) Q S_0 + P U.

The forward saves its inputs and the chunk-start states S_0 (n_chunks x d_k x d_v per head:
memory linear in t), never the (C, C) blocks. The backward recomputes (1)-(3) for all chunks,
runs the reverse state pass dL/dS_0 = M^T dL/dS_end + E, E = (diag(gamma) Q - P W)^T dL/do,
one product per chunk, and differentiates the rest all chunks at once: through the solve by
one batched triangular solve with the transposed system, [dX~, dX_K] = (I + L)^-T [dU~, dW],
dL = -tril_{-1}([dX~, dX_K] [U~, W]^T). The gradient of the cumulative log decay b collects
every exp(b_t - b_s) it enters as Z[t, s] = dL/dD[t, s] D[t, s] (rows + , columns -), so no
quotient of decays is formed: nothing overflows, however strong the decay. First-order
gradients only (no double backward).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from seqmem.ops.loops import causal_decay


def _blocks(Q: Tensor, K: Tensor, V: Tensor, beta: Tensor, b_cum: Tensor | None):
    """Steps (1)-(2) for all chunks: Q, K (N, C, d_k), V (N, C, d_v), beta, b_cum (N, C) or
    None (no decay). Returns D (N, C, C) or None (the causal mask), gamma (N, C) or None,
    KD = tril_{-1}(D * K K^T), the system I + L, Y = [U~, W] (N, C, d_v + d_k), P, K_end."""
    if b_cum is None:
        D = gamma = None
        KD = (K @ K.mT).tril_(-1)  # (N, C, C)
        P = (Q @ K.mT).tril_()
        bk, K_end = K * beta[..., None], K
    else:
        D, gamma = causal_decay(b_cum), b_cum.exp()  # (N, C, C), (N, C)
        KD = (K @ K.mT).mul_(D).tril_(-1)
        P = (Q @ K.mT).mul_(D)
        bk, K_end = K * (beta * gamma)[..., None], K * D[:, -1, :, None]
    system = KD * beta[..., None]
    system.diagonal(dim1=-2, dim2=-1).fill_(1)  # I + L, unit lower triangular
    Y = torch.linalg.solve_triangular(system, torch.cat([V * beta[..., None], bk], dim=-1),
                                      upper=False, unitriangular=True)  # (N, C, d_v + d_k)
    return D, gamma, KD, system, Y, P, K_end


def _transitions(K_end: Tensor, Y: Tensor, gamma: Tensor | None, d_v: int, n: int):
    """Step (3): M (n, b h, d_k, d_k) and H (n, b h, d_k, d_v), chunk-major so that the
    sequential pass reads contiguous matrices; chunks flattened as (b h n) in N."""
    KY = K_end.mT @ Y  # (N, d_k, d_v + d_k)
    H, M = KY.split([d_v, KY.shape[-1] - d_v], dim=-1)
    M = M.neg()
    diag = M.diagonal(dim1=-2, dim2=-1)  # (N, d_k)
    diag += 1 if gamma is None else gamma[:, -1:]
    return (M.unflatten(0, (-1, n)).transpose(0, 1).contiguous(),
            H.unflatten(0, (-1, n)).transpose(0, 1).contiguous())


def _chunk_major(x: Tensor, n: int) -> Tensor:
    """(N = bh n, ...) -> (n, bh, ...) contiguous."""
    return x.unflatten(0, (-1, n)).transpose(0, 1).contiguous()


def _chunk_minor(x: Tensor) -> Tensor:
    """(n, bh, ...) -> (N = bh n, ...) contiguous."""
    return x.transpose(0, 1).reshape(-1, *x.shape[2:])


class _DeltaChunk(torch.autograd.Function):
    """The chunked delta rule on chunked inputs: Q, K (b, h, n, C, d_k) (Q already scaled),
    V (b, h, n, C, d_v), beta (b, h, n, C), b_cum (b, h, n, C) the cumulative log decay since
    each chunk's start or None, S0 (b, h, d_k, d_v) -> o (b, h, n, C, d_v), the final state."""

    @staticmethod
    def forward(ctx, Q, K, V, beta, b_cum, S0):
        b, h, n, C, d_k = K.shape
        d_v = V.shape[-1]
        Qf, Kf, Vf, bf = (z.reshape(b * h * n, C, -1) for z in (Q, K, V, beta[..., None]))
        cf = None if b_cum is None else b_cum.reshape(-1, C)
        bf = bf[..., 0]
        _, gamma, _, _, Y, P, K_end = _blocks(Qf, Kf, Vf, bf, cf)
        M, H = _transitions(K_end, Y, gamma, d_v, n)  # (n, bh, ...)
        states = S0.new_empty(n + 1, b * h, d_k, d_v)
        states[0] = S0.reshape(b * h, d_k, d_v)
        for i in range(n):  # S_end = M S_0 + H
            torch.baddbmm(H[i], M[i], states[i], out=states[i + 1])
        starts = _chunk_minor(states[:n])  # (N, d_k, d_v)
        U_t, W = Y.split([d_v, d_k], dim=-1)
        U = torch.baddbmm(U_t, W, starts, alpha=-1)  # (N, C, d_v): the pseudo-values
        Qg = Qf if gamma is None else Qf * gamma[..., None]
        o = torch.baddbmm(P @ U, Qg, starts)  # (N, C, d_v)
        ctx.save_for_backward(Q, K, V, beta, b_cum, starts)
        return o.view(b, h, n, C, d_v), states[n].view(b, h, d_k, d_v).clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_o, d_S):
        Q, K, V, beta, b_cum, starts = ctx.saved_tensors
        b, h, n, C, d_k = K.shape
        d_v = V.shape[-1]
        N = b * h * n
        Qf, Kf, Vf = (z.reshape(N, C, -1) for z in (Q, K, V))
        bf = beta.reshape(N, C)
        cf = None if b_cum is None else b_cum.reshape(N, C)
        dO = d_o.reshape(N, C, d_v)
        D, gamma, KD, system, Y, P, K_end = _blocks(Qf, Kf, Vf, bf, cf)  # recomputed
        M, _ = _transitions(K_end, Y, gamma, d_v, n)
        U_t, W = Y.split([d_v, d_k], dim=-1)
        U = torch.baddbmm(U_t, W, starts, alpha=-1)  # (N, C, d_v)
        Qg = Qf if gamma is None else Qf * gamma[..., None]

        # the reverse state pass: dL/dS_0 = M^T dL/dS_end + E, E = (Qg - P W)^T dO
        dU = P.mT @ dO  # (N, C, d_v): the outputs' part of dL/dU
        E = _chunk_major(torch.baddbmm(Qg.mT @ dO, W.mT, dU, alpha=-1), n)  # (n, bh, k, v)
        grads = starts.new_empty(n + 1, b * h, d_k, d_v)  # grads[i] = dL/d(start of chunk i)
        grads[n] = d_S.reshape(b * h, d_k, d_v)
        for i in reversed(range(n)):
            torch.baddbmm(E[i], M[i].mT, grads[i + 1], out=grads[i])
        G = _chunk_minor(grads[1:])  # (N, d_k, d_v): dL/dS_end of every chunk

        dU = torch.baddbmm(dU, K_end, G)  # (N, C, d_v)
        dQg = dO @ starts.mT  # (N, C, d_k)
        dP = dO @ U.mT  # (N, C, C), only s <= t is used
        dK_end = U @ G.mT  # (N, C, d_k)
        dW = -(dU @ starts.mT)  # (N, C, d_k)
        # through the solve: (I + L) Y = R  =>  dR = (I + L)^-T dY, dL = -dR Y^T (below the
        # diagonal)
        dR = torch.linalg.solve_triangular(system.mT, torch.cat([dU, dW], dim=-1), upper=True,
                                           unitriangular=True)  # (N, C, d_v + d_k)
        dA = (dR @ Y.mT).tril_(-1).neg_()  # (N, C, C)
        dRv, dRk = dR.split([d_v, d_k], dim=-1)
        X = dA * KD  # (N, C, C): dL/dL[t, s] L[t, s] / beta_t
        d_beta = X.sum(-1) + (dRv * Vf).sum(-1)  # (N, C)
        dV = dRv * bf[..., None]
        dKK = dA.mul_(bf[..., None])  # dL/d(K K^T) below the diagonal, before the decay
        if D is None:
            dPm = dP.tril_()
            dK = dRk * bf[..., None]
            d_beta += (dRk * Kf).sum(-1)
            dQ = torch.baddbmm(dQg, dPm, Kf)
        else:
            dKK.mul_(D)
            dPm = dP * D
            bg = bf * gamma
            dK = dRk * bg[..., None]
            kR = (dRk * Kf).sum(-1)  # (N, C)
            d_beta += gamma * kR
            dQ = torch.baddbmm(dQg * gamma[..., None], dPm, Kf)
        dK = torch.baddbmm(dK, dPm.mT, Qf)
        dK = torch.baddbmm(dK, dKK + dKK.mT, Kf)
        dK += dK_end if D is None else dK_end * D[:, -1, :, None]

        d_b = None
        if D is not None and ctx.needs_input_grad[4]:
            # every exp(b_t - b_s): Z[t, s] = dL/dD[t, s] D[t, s], + to b_t and - to b_s
            Z = X.mul_(bf[..., None]).add_(dP.mul_(P))  # from L and from P (P carries D)
            Z[:, -1, :] += (dK_end * K_end).sum(-1)  # from K_end = D[C, :] K
            d_b = Z.sum(-1) - Z.sum(-2)  # (N, C)
            d_b += (dQg * Qg).sum(-1) + bg * kR  # from gamma = exp(b) in Qg and in R
            d_b[:, -1] += (starts * G).sum((-1, -2)) * gamma[:, -1]  # from gamma_C S_0
            d_b = d_b.view(b, h, n, C)
        d_S0 = grads[0].view(b, h, d_k, d_v) if ctx.needs_input_grad[5] else None
        return (dQ.view(Q.shape), dK.view(K.shape), dV.view(V.shape),
                d_beta.view(beta.shape), d_b, d_S0)


def delta_chunk(Q: Tensor, K: Tensor, V: Tensor, beta: Tensor, b_cum: Tensor | None,
                S0: Tensor) -> tuple[Tensor, Tensor]:
    """The chunked (gated) delta rule on chunked inputs (module docstring), differentiated by
    the hand-written backward: Q (scaled), K (b, h, n, C, d_k), V (b, h, n, C, d_v), beta
    (b, h, n, C), b_cum (b, h, n, C) the cumulative log decay since each chunk's start (None:
    no decay), S0 (b, h, d_k, d_v) the state before the first chunk -> o (b, h, n, C, d_v),
    the state after the last chunk. Padded tokens (k = v = beta = 0, log decay 0) change
    nothing."""
    return _DeltaChunk.apply(Q, K, V, beta, b_cum, S0)
