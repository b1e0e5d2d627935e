"""Deep neural memory trained at test time: Titans' long-term memory (Behrouz, Zhong & Mirrokni
2025, "Titans: Learning to Memorize at Test Time", section 3) with the attentional biases and
retention gates of Miras (Behrouz, Razaviyayn, Zhong & Mirrokni 2025, "It's All Connected: A
Journey Through Test-Time Memorization, Attentional Bias, Retention, and Online Optimization").

Per head, the memory is an MLP M(x; W) whose weights W (all layers, flattened to P floats) are
learned while the sequence is read. With row vectors q_t, k_t (d_k), v_t (d_v):

    depth 1 (linear):  M(x) = x W_1                                    (d_k, d_v)
    depth L >= 2:      M(x) = x + z_L,  z_1 = x W_1,  z_l = SiLU(z_{l-1}) W_l  (residual MLP,
                       hidden width memory_width * d_k; needs d_k = d_v)
    loss_t(W)   = bias(M(k_t; W) - v_t)                                (attentional bias)
        l2:     sum_j e_j^2
        lp:     sum_j |e_j|^p                                          (Moneta's l_p, p >= 1)
        huber:  sum_j h(e_j), h(e) = e^2 if |e| <= delta else 2 delta |e| - delta^2
                (the coordinate-wise Huber loss, scaled to equal l2 where |e| <= delta)
    g_t         = d loss_t / dW at W_{t-1}                 (gradient="token", the exact rule)
                  or at W_s, the weights before the first token of t's chunk of `chunk`
                  tokens (gradient="chunk", the paper's mini-batch form; chunks at the absolute
                  positions 0, C, 2C, ... of the stream)
    S_t         = eta_t S_{t-1} - theta_t g_t                          (momentum: surprise)
    A_t         = (1 - alpha_t) A_{t-1} + S_t                          (forgetting)
    W_t         = phi(A_t)                                             (retention gate)
        l2:     phi(A) = A                                 (Titans' weight decay; Yaad)
        lq:     phi(A) = A / (||A||_q^q + eps)^((q - 2) / q) per weight matrix (Moneta's l_q
                retention, W_t = A_t / ||A_t||_q^(q-2); eps keeps A = 0 finite)
        kl:     phi(A) = softmax of each row of each weight matrix (Memora's KL retention,
                W_t = softmax(alpha log W_{t-1} - theta g_t): log W_{t-1} is A_{t-1} up to a
                per-row constant, which the softmax ignores, so A carries the logits)
    o_t         = scale * M(q_t; W_t)                      (read from the updated memory)

The accumulator starts at learned weights A_0 = `init` (h, P), or at 0 for init=None; the
state carries D = A - A_0 (zero at the start), the momentum S, the chunk-start D_s and the
position within the chunk, `NeuralMemoryState(D, S, D_start, pos)`: D, S, D_start (b, h, P),
pos (b,) (a count stored in the state's dtype). `neural_memory_step` is the specification.

Forms. "recurrent" is the loop of the step. "chunk" with gradient="chunk" computes every
chunk in parallel: the gradients of its tokens at its start weights in one batched backward
pass written out by hand (`mlp_grads`), then both linear recurrences by cumulative-decay
matrices, S_i = E(i,0) S_0 + sum_j E(i,j) u_j and A_i = F(i,0) A_0 + sum_j F(i,j) S_j with
E(i,j) = prod_{j<l<=i} eta_l, F(i,j) = prod_{j<l<=i} (1 - alpha_l), and the read-outs of all
tokens with their own weights. For l2 retention the per-token weights are never formed: they
differ from the chunk's start by a sum of outer products a_j^T d_j (layer input times output
gradient), so each layer's read-out is a masked attention over the chunk (`_chunk_dual`, the
dual form of test-time training, Sun et al. 2024); lq and kl build every token's weights.
With gradient="token" the rule is not linear in W for a deep memory or a non-l2 bias, and
"chunk" is the loop of the step (the linear l2 memory has the exact chunked form of
`seqmem.ops.titans`). Layout (b, t, h, d); alpha, eta, theta (b, t, h).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmem.errors import SeqmemError, check_choice, check_int
from seqmem.ops.loops import float32_recurrence, step_loop

BIASES = ("l2", "lp", "huber")
RETENTIONS = ("l2", "lq", "kl")
GRADIENTS = ("token", "chunk")
NEURAL_MEMORY_MODES = ("chunk", "recurrent")
LQ_EPS = 1e-6


class NeuralMemoryState(NamedTuple):
    """D = A - A_0, momentum S, chunk-start D_start, each (b, h, P); position in chunk (b,)."""

    D: Tensor
    S: Tensor
    D_start: Tensor
    pos: Tensor


class MemorySpec(NamedTuple):
    """What a memory is: layer shapes [(d_in, d_out), ...], residual, attentional bias (with p
    and delta), retention (with q), gradient point and chunk length."""

    shapes: tuple[tuple[int, int], ...]
    residual: bool = False
    bias: str = "l2"
    p: float = 2.0
    delta: float = 1.0
    retention: str = "l2"
    q: float = 2.0
    gradient: str = "token"
    chunk: int = 16


def mlp_shapes(d_k: int, d_v: int, depth: int = 1, width: int = 2
               ) -> tuple[tuple[int, int], ...]:
    """Layer shapes of a memory of `depth` layers, hidden width width * d_k."""
    check_int("memory_depth", depth)
    check_int("memory_width", width)
    if depth == 1:
        return ((d_k, d_v),)
    if d_k != d_v:
        raise SeqmemError(f"a deep memory is residual and needs d_k == d_v, got {d_k}, {d_v}")
    w = width * d_k
    return ((d_k, w), *[(w, w)] * (depth - 2), (w, d_v))


def n_weights(shapes) -> int:
    """P, the floats of one head's memory weights."""
    return sum(i * o for i, o in shapes)


def unflatten(W: Tensor, shapes) -> list[Tensor]:
    """(..., P) -> [(..., d_in, d_out) per layer]."""
    out, start = [], 0
    for i, o in shapes:
        out.append(W[..., start:start + i * o].unflatten(-1, (i, o)))
        start += i * o
    return out


def _silu_grad(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def mlp_read(Ws: list[Tensor], x: Tensor, residual: bool) -> Tensor:
    """M(x; W): x (..., d_in), weights [(..., d_in, d_out)] (broadcast) -> (..., d_out)."""
    h = x
    for i, W in enumerate(Ws):
        h = torch.einsum("...i,...io->...o", F.silu(h) if i else h, W)
    return x + h if residual else h


def mlp_backprop(Ws: list[Tensor], x: Tensor, dy: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """The backward pass of <dy, M(x; W)> written out: per layer its input a_l (..., d_in)
    and the gradient at its output d_l (..., d_out), so that dW_l = a_l^T d_l (the residual
    adds no weight gradient). x (..., d_in), dy (..., d_out), Ws [(..., d_in, d_out)]."""
    hs, zs, h = [], [], x  # inputs of each layer, pre-activations before them
    for i, W in enumerate(Ws):
        if i:
            zs.append(h)
            h = F.silu(h)
        hs.append(h)
        h = torch.einsum("...i,...io->...o", h, W)
    ds, d = [dy], dy
    for i in range(len(Ws) - 1, 0, -1):
        d = torch.einsum("...o,...io->...i", d, Ws[i]) * _silu_grad(zs[i - 1])
        ds.append(d)
    return hs, ds[::-1]


def mlp_grads(Ws: list[Tensor], x: Tensor, dy: Tensor) -> Tensor:
    """d <dy, M(x; W)> / dW, flattened (..., P)."""
    hs, ds = mlp_backprop(Ws, x, dy)
    return torch.cat([torch.einsum("...i,...o->...io", a, d).flatten(-2)
                      for a, d in zip(hs, ds, strict=True)], dim=-1)


def bias_grad(e: Tensor, bias: str, p: float = 2.0, delta: float = 1.0) -> Tensor:
    """d bias(e) / de for the error e = M(k) - v (see the module docstring)."""
    if bias == "l2":
        return 2 * e
    if bias == "lp":
        return p * e.abs() ** (p - 1) * torch.sign(e)
    return 2 * e.clamp(-delta, delta)


def retain(A: Tensor, spec: MemorySpec) -> Tensor:
    """The retention gate W = phi(A), (..., P) -> (..., P), per weight matrix."""
    if spec.retention == "l2":
        return A
    out = []
    for Ai in unflatten(A, spec.shapes):
        if spec.retention == "kl":
            out.append(torch.softmax(Ai, dim=-1).flatten(-2))
        else:
            norm = (Ai.abs() ** spec.q).sum(dim=(-2, -1), keepdim=True) + LQ_EPS
            out.append((Ai / norm ** ((spec.q - 2) / spec.q)).flatten(-2))
    return torch.cat(out, dim=-1)


def memory_read(A: Tensor, x: Tensor, spec: MemorySpec, scale: float = 1.0) -> Tensor:
    """scale * M(x; phi(A)): A (..., P), x (..., d_in) -> (..., d_out)."""
    return scale * mlp_read(unflatten(retain(A, spec), spec.shapes), x, spec.residual)


def memory_grad(A: Tensor, k: Tensor, v: Tensor, spec: MemorySpec) -> Tensor:
    """g = d bias(M(k; W) - v) / dW at W = phi(A), flattened (..., P) (the retention gate is
    where the gradient is taken, not differentiated through)."""
    Ws = unflatten(retain(A, spec), spec.shapes)
    e = mlp_read(Ws, k, spec.residual) - v
    return mlp_grads(Ws, k, bias_grad(e, spec.bias, spec.p, spec.delta))


def neural_memory_init_state(batch_size: int, n_heads: int, n_params: int, *, device=None,
                             dtype=None) -> NeuralMemoryState:
    """The zero state: D = S = D_start = 0 (b, h, P), pos = 0 (b,)."""
    z = torch.zeros(batch_size, n_heads, n_params, device=device, dtype=dtype)
    return NeuralMemoryState(z, z.clone(), z.clone(),
                             torch.zeros(batch_size, device=device, dtype=dtype))


def positions(pos: Tensor, period: int) -> Tensor:
    """The integer positions (b,) in a cycle of `period` that a state's pos (b,) stands for:
    pos rounded, modulo the period (so any perturbed or wrapped count reads as a position)."""
    return torch.remainder(torch.round(pos).long(), period)


def by_position(fn, pos: Tensor, args: tuple[Tensor, ...], state: tuple):
    """fn(*args, state) -> (out, state) run once per group of sequences at one position:
    args are tensors with the batch first, state a NamedTuple of them; the results are put
    back in batch order. `pos` (b,) holds the integer positions."""
    values = pos.unique()
    if len(values) == 1:
        return fn(*args, state)
    groups = [(pos == u).nonzero()[:, 0] for u in values]
    results = [fn(*(a[g] for a in args), type(state)(*(z[g] for z in state))) for g in groups]
    inverse = torch.argsort(torch.cat(groups))
    out = torch.cat([r[0] for r in results])[inverse]
    parts = zip(*(r[1] for r in results), strict=True)
    return out, type(state)(*(torch.cat(z)[inverse] for z in parts))


def _start(init: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if init is None else init.to(like).expand_as(like)


@float32_recurrence
def neural_memory_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, alpha_t: Tensor, eta_t: Tensor,
                       theta_t: Tensor, state: NeuralMemoryState, *, spec: MemorySpec,
                       init: Tensor | None = None, scale: float = 1.0
                       ) -> tuple[Tensor, NeuralMemoryState]:
    """One token (the specification): q_t, k_t (b, h, d_k), v_t (b, h, d_v), alpha_t, eta_t,
    theta_t (b, h), state -> o_t (b, h, d_v), the next state. init: A_0 (h, P) or None."""
    D, S, D_start, pos = state
    A0 = _start(init, D)  # (b, h, P)
    if spec.gradient == "chunk":
        at = positions(pos, spec.chunk)  # (b,)
        D_start = torch.where((at == 0)[:, None, None], D, D_start)  # a chunk begins
        g = memory_grad(A0 + D_start, k_t, v_t, spec)  # (b, h, P)
        pos = torch.remainder(at + 1, spec.chunk).to(pos)
    else:
        g = memory_grad(A0 + D, k_t, v_t, spec)
    S = eta_t[..., None] * S - theta_t[..., None] * g
    A = (1 - alpha_t)[..., None] * (A0 + D) + S  # (b, h, P)
    o = memory_read(A, q_t, spec, scale)  # (b, h, d_v)
    return o, NeuralMemoryState(A - A0, S, D_start, pos)


@float32_recurrence
def neural_memory_recurrent(q, k, v, alpha, eta, theta, *, spec, state, init=None, scale=1.0):
    """The loop of `neural_memory_step` over time: o (b, t, h, d_v), final state."""
    b, _, h, _ = k.shape
    o, state = step_loop(partial(neural_memory_step, spec=spec, init=init, scale=scale),
                         (q, k, v, alpha, eta, theta), state,
                         empty=v.new_zeros(b, 0, h, spec.shapes[-1][1]))
    return o, NeuralMemoryState(*state)


def _cum_decay(a: Tensor) -> Tensor:
    """P[..., i, j] = prod_{j < l <= i} a[..., l] for i >= j, 0 above the diagonal."""
    C = a.shape[-1]
    lower = torch.ones(C, C, dtype=torch.bool, device=a.device).tril(-1)  # i > j
    Z = torch.where(lower, a[..., :, None], torch.ones_like(a)[..., :, None])  # (..., C, C)
    return torch.cumprod(Z, dim=-2).tril()


@float32_recurrence
def neural_memory_chunk(q, k, v, alpha, eta, theta, *, spec, state, init=None, scale=1.0):
    """The parallel chunk form of gradient="chunk" (see the module docstring): o (b, t, h,
    d_v), final state; sequences at different positions in their chunk run as groups."""
    fn = partial(_chunk_at, spec=spec, init=init, scale=scale)
    state = NeuralMemoryState(*state)
    return by_position(fn, positions(state.pos, spec.chunk), (q, k, v, alpha, eta, theta),
                       state)


def _chunk_at(q, k, v, alpha, eta, theta, state, *, spec, init, scale):
    """`neural_memory_chunk` for sequences that are all at one position in their chunk."""
    D, S, D_start, pos = state
    t, C = k.shape[1], spec.chunk
    at = int(positions(pos[:1], C))
    A0 = _start(init, D)  # (b, h, P)
    outs, s = [], 0
    while s < t:
        e = min(t, s + C - at)  # this chunk: tokens s..e-1
        if at == 0:
            D_start = D
        qc, kc, vc = (z[:, s:e].movedim(1, 2) for z in (q, k, v))  # (b, h, L, d)
        ac, ec, tc = (z[:, s:e].movedim(1, 2) for z in (alpha, eta, theta))  # (b, h, L)
        E, keep = _cum_decay(ec), 1 - ac  # (b, h, L, L), (b, h, L)
        Fd = _cum_decay(keep)  # (b, h, L, L)
        e0, f0 = torch.cumprod(ec, -1), torch.cumprod(keep, -1)  # (b, h, L)
        if spec.retention == "l2":
            o_c, D, S = _chunk_dual(qc, kc, vc, tc, E, Fd, e0, f0, A0 + D_start, A0 + D, S,
                                    spec, scale)
            D = D - A0
        else:  # phi is not linear: every token's weights, then phi
            g = memory_grad((A0 + D_start)[:, :, None], kc, vc, spec)  # (b, h, L, P)
            Sc = E @ (-tc[..., None] * g) + e0[..., None] * S[:, :, None]  # (b, h, L, P)
            Ac = Fd @ Sc + f0[..., None] * (A0 + D)[:, :, None]  # (b, h, L, P)
            o_c = memory_read(Ac, qc, spec, scale)  # (b, h, L, d_v)
            D, S = Ac[:, :, -1] - A0, Sc[:, :, -1]
        outs.append(o_c)
        at = (at + e - s) % C
        s = e
    o = torch.cat(outs, dim=2).movedim(2, 1)  # (b, t, h, d_v)
    return o, NeuralMemoryState(D, S, D_start, torch.full_like(pos, float(at)))


def _chunk_dual(q, k, v, theta, E, Fd, e0, f0, A_grad, A, S, spec, scale):
    """One chunk of l2 retention without per-token weights (the dual form): with a_l, d_l the
    layer inputs and output gradients of the chunk's tokens at A_grad, the weights of token i
    are W_l(i) = f0_i A_l + g0_i S_l - sum_j G(i, j) theta_j a_lj^T d_lj, G = F E, g0 = F e0,
    so x W_l(i) = f0_i x A_l + g0_i x S_l - sum_j G(i, j) theta_j (x . a_lj) d_lj: attention
    over the chunk. Returns the read-outs (b, h, L, d_v) and the end's A and S (b, h, P)."""
    Wg = unflatten(A_grad, spec.shapes)  # [(b, h, d_in, d_out)]
    Wg_t = [W[:, :, None] for W in Wg]
    err = mlp_read(Wg_t, k, spec.residual) - v  # (b, h, L, d_v)
    acts, grads = mlp_backprop(Wg_t, k, bias_grad(err, spec.bias, spec.p, spec.delta))
    G = Fd @ E  # (b, h, L, L)
    g0 = (Fd @ e0[..., None])[..., 0]  # (b, h, L)
    mix = G * -theta[..., None, :]  # (b, h, L, L): G(i, j) (-theta_j)
    Al, Sl = unflatten(A, spec.shapes), unflatten(S, spec.shapes)
    h = q
    for i, (a, d, Ai, Si) in enumerate(zip(acts, grads, Al, Sl, strict=True)):
        x = F.silu(h) if i else h  # (b, h, L, d_in)
        h = (f0[..., None] * (x @ Ai) + g0[..., None] * (x @ Si)
             + (mix * (x @ a.transpose(-1, -2))) @ d)  # (b, h, L, d_out)
    o = scale * (q + h if spec.residual else h)
    w_A, w_S = mix[..., -1, :, None], E[..., -1, :, None] * -theta[..., None]  # (b, h, L, 1)
    A_end = [f0[..., -1, None, None] * Ai + g0[..., -1, None, None] * Si
             + a.transpose(-1, -2) @ (w_A * d) for a, d, Ai, Si in zip(acts, grads, Al, Sl,
                                                                      strict=True)]
    S_end = [e0[..., -1, None, None] * Si + a.transpose(-1, -2) @ (w_S * d)
             for a, d, Si in zip(acts, grads, Sl, strict=True)]
    flat = lambda Ws: torch.cat([W.flatten(-2) for W in Ws], dim=-1)  # noqa: E731
    return o, flat(A_end), flat(S_end)


@float32_recurrence
def neural_memory(q: Tensor, k: Tensor, v: Tensor, alpha: Tensor, eta: Tensor, theta: Tensor,
                  *, spec: MemorySpec, state: NeuralMemoryState | None = None,
                  init: Tensor | None = None, scale: float = 1.0, mode: str = "chunk"
                  ) -> tuple[Tensor, NeuralMemoryState]:
    """A neural memory over a sequence: q, k (b, t, h, d_k), v (b, t, h, d_v), alpha, eta,
    theta (b, t, h) -> o (b, t, h, d_v), final state. Modes: "chunk", "recurrent"."""
    mode = check_choice("neural memory mode", mode, NEURAL_MEMORY_MODES)
    if state is None:
        state = neural_memory_init_state(k.shape[0], k.shape[2], n_weights(spec.shapes),
                                         device=k.device, dtype=k.dtype)
    if k.shape[1] == 0:
        return v.new_zeros(*v.shape[:3], spec.shapes[-1][1]), state
    if mode == "chunk" and spec.gradient == "chunk":
        return neural_memory_chunk(q, k, v, alpha, eta, theta, spec=spec, state=state,
                                   init=init, scale=scale)
    return neural_memory_recurrent(q, k, v, alpha, eta, theta, spec=spec, state=state,
                                   init=init, scale=scale)
