"""Linear attention and its decayed, gated and delta-rule relatives: matrix-state RNNs read by
a query. Per head, with row vectors q_t, k_t (d_k), v_t (d_v) and state S (d_k, d_v):

    linear_attention   S_t = S_{t-1} + k_t^T v_t                      (Katharopoulos et al. 2020)
    retention          S_t = gamma S_{t-1} + k_t^T v_t,  gamma = exp(log_decay) per head
                                                                       (Sun et al. 2023, RetNet)
    gla                S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,  g_t (d_k) a log forget gate
                                                                       (Yang et al. 2023, GLA)
    delta_rule         S_t = (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t
                                                                       (Schlag et al. 2021)
    gated_delta_rule   S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t
                                                           (Yang, Kautz & Hatamizadeh 2025)
    and in every op    o_t = (scale q_t) S_t,  scale = d_k^-0.5 unless given.

Layout: q, k (b, t, h, d_k), v (b, t, h, d_v), o (b, t, h, d_v); state (b, h, d_k, d_v), zeros
when None; every op returns (o, final state). `<op>_step` is the specification; `mode` picks
the form: "recurrent" (the loop of the step), "parallel" (the whole sequence as one masked
quadratic form) or "chunk" (the default: a quadratic form inside chunks of `chunk_size`
tokens, the state carried from chunk to chunk, so the cost is linear in t and dominated by
matrix products).

The gates of the delta rules are keyword-only: `delta_rule(q, k, v, *, beta)`,
`gated_delta_rule(q, k, v, *, g, beta)` (and their `_step`, `_recurrent`, `_chunk` forms), because
g and beta have the same shape (b, t, h) and fla's kernels have taken them in the other order,
`(..., beta, g)`: a positional call raises TypeError instead of silently swapping the two.

Numerics. Cumulative log decays b_t = sum_{l<=t} g_l only ever enter as exp(b_t - b_s) with
s <= t (masked to exactly 0 elsewhere before the exponential), so no exponent is positive when
the gates are forget gates (g <= 0): nothing overflows, however strong the decay. (The scalar
decays of linear attention and retention, `ops.scalar_decay_chunk`, with its hand-written
backward, are factored as exp(b_t) exp(-b_s) into one product's operands where every |b_t|
in a chunk is at most 30, and masked as above where it is not.) For `gla`,
whose decay differs per key channel, the scores inside a chunk are built from dyadic blocks
(halves, quarters, ... of the chunk): a pair of tokens s < t meets at the midpoint r of the
smallest block holding both, as q_t exp(B_t - B_r) . k_s exp(B_r - B_s), both factors <= 1,
and each block is one matrix product (the secondary chunking of Yang et al. 2023, taken down to
single tokens; it never materialises a (t, s, d_k) tensor). Its backward is hand-written
(`ops.gla_chunk`): the forward keeps the chunked inputs, the cumulative gates and the state at
every chunk's start, never a block of scores; the backward recomputes the blocks level by level
over groups of chunks sized for the cache and runs the reverse state pass.

Delta rules in chunks (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta
Rule over Sequence Length", the WY / UT transform). With gamma_t = exp(b_t) the decay since the
chunk's start and the pseudo-values u_t = beta_t (v_t - exp(g_t) k_t S_{t-1}),
S_t = exp(g_t) S_{t-1} + k_t^T u_t, so inside a chunk starting from S_0

    S_t = gamma_t S_0 + sum_{i<=t} (gamma_t / gamma_i) k_i^T u_i,
    (I + L) U = diag(beta) V - diag(beta gamma) K S_0,
    L[t, i] = beta_t (gamma_t / gamma_i) k_t . k_i  for i < t (0 elsewhere),

one unit lower-triangular system per chunk, inverted for all chunks at once before the
sequential pass: U = U~ - W S_0 with [U~, W] = (I + L)^-1 [diag(beta) V, diag(beta gamma) K].
The outputs are o_t = gamma_t q_t S_0 + sum_{i<=t} (gamma_t / gamma_i) (q_t . k_i) u_i. The
"parallel" form of the delta rules is this algorithm with one chunk holding the whole sequence.
Its backward is hand-written (`ops.delta_chunk`): the forward keeps the inputs and the state
at every chunk's start (memory linear in t, never a (C, C) block); the backward recomputes the
blocks and (I + L)^-1 for all chunks at once, runs the reverse state pass and differentiates
through the transform by products with the inverse's transpose.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from seqmem.errors import check_choice, check_int
from seqmem.ops import backends, tuning
from seqmem.ops.delta_chunk import delta_chunk
from seqmem.ops.gla_chunk import GlaChunk
from seqmem.ops.loops import float32_recurrence, step_loop
from seqmem.ops.scalar_decay_chunk import scalar_decay_chunked

LINEAR_ATTENTION_MODES = ("chunk", "parallel", "recurrent")


# ---- shared plumbing -----------------------------------------------------------------------
def _scale(q: Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else scale


def _initial(k: Tensor, v: Tensor, state: Tensor | None) -> Tensor:
    """The state passed in, or when it is None the zero state (b, h, d_k, d_v) for inputs
    k (b, [t,] h, d_k), v (b, [t,] h, d_v)."""
    if state is not None:
        return state
    return torch.zeros(k.shape[0], k.shape[-2], k.shape[-1], v.shape[-1], device=v.device,
                       dtype=v.dtype)


def _outer(k_t: Tensor, v_t: Tensor) -> Tensor:
    """k_t^T v_t: (b, h, d_k), (b, h, d_v) -> (b, h, d_k, d_v)."""
    return k_t[..., :, None] * v_t[..., None, :]


def _read(q_t: Tensor, S: Tensor) -> Tensor:
    """q_t S: (b, h, d_k), (b, h, d_k, d_v) -> (b, h, d_v)."""
    return (q_t[..., None, :] @ S)[..., 0, :]


def _dispatch(op: str, mode: str, t: int, chunk_size: int) -> int | None:
    """Check mode and chunk_size; the chunk length to use (t for "parallel"), None for
    "recurrent"."""
    mode = check_choice(f"{op} mode", mode, LINEAR_ATTENTION_MODES)
    check_int("chunk_size", chunk_size)
    if mode == "recurrent":
        return None
    return max(t, 1) if mode == "parallel" else chunk_size


def _empty(q: Tensor, v: Tensor) -> Tensor:
    """The output o (b, 0, h, d_v) of a sequence of no tokens (the state stays as it is)."""
    return v.new_zeros(q.shape[0], 0, q.shape[2], v.shape[-1])


# ---- steps: the specification --------------------------------------------------------------
@float32_recurrence
def linear_attention_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, state: Tensor | None = None, *,
                          scale: float | None = None) -> tuple[Tensor, Tensor]:
    """S_t = S_{t-1} + k_t^T v_t, o_t = scale q_t S_t: q_t, k_t (b, h, d_k), v_t (b, h, d_v),
    state (b, h, d_k, d_v) -> o_t (b, h, d_v), S_t."""
    S = _initial(k_t, v_t, state)
    S = S + _outer(k_t, v_t)  # (b, h, d_k, d_v)
    return _read(q_t * _scale(q_t, scale), S), S


@float32_recurrence
def retention_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, log_decay: Tensor,
                   state: Tensor | None = None, *, scale: float | None = None
                   ) -> tuple[Tensor, Tensor]:
    """S_t = exp(log_decay) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t; log_decay (h,)."""
    S = _initial(k_t, v_t, state)
    S = log_decay.exp()[:, None, None] * S + _outer(k_t, v_t)  # (b, h, d_k, d_v)
    return _read(q_t * _scale(q_t, scale), S), S


@float32_recurrence
def gla_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, g_t: Tensor, state: Tensor | None = None, *,
             scale: float | None = None) -> tuple[Tensor, Tensor]:
    """S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t; g_t (b, h, d_k)."""
    S = _initial(k_t, v_t, state)
    S = g_t.exp()[..., None] * S + _outer(k_t, v_t)  # (b, h, d_k, d_v)
    return _read(q_t * _scale(q_t, scale), S), S


@float32_recurrence
def delta_rule_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, state: Tensor | None = None, *,
                    beta: Tensor, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """S_t = (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t, o_t = scale q_t S_t;
    beta = beta_t (b, h), keyword-only (see the module docstring)."""
    S = _initial(k_t, v_t, state)
    u = beta[..., None] * (v_t - _read(k_t, S))  # (b, h, d_v)
    S = S + _outer(k_t, u)  # (b, h, d_k, d_v)
    return _read(q_t * _scale(q_t, scale), S), S


@float32_recurrence
def gated_delta_rule_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, state: Tensor | None = None,
                          *, g: Tensor, beta: Tensor, scale: float | None = None
                          ) -> tuple[Tensor, Tensor]:
    """S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t, o_t = scale q_t S_t;
    g = g_t, beta = beta_t (b, h), keyword-only (see the module docstring)."""
    S = _initial(k_t, v_t, state)
    S = g.exp()[..., None, None] * S  # (b, h, d_k, d_v)
    u = beta[..., None] * (v_t - _read(k_t, S))  # (b, h, d_v)
    S = S + _outer(k_t, u)
    return _read(q_t * _scale(q_t, scale), S), S


# ---- recurrent: the loop of the step -------------------------------------------------------
@float32_recurrence
def linear_attention_recurrent(q, k, v, *, scale=None, state=None):
    """The loop of `linear_attention_step`."""
    return step_loop(partial(linear_attention_step, scale=scale), (q, k, v),
                     _initial(k, v, state), empty=_empty(q, v))


@float32_recurrence
def retention_recurrent(q, k, v, log_decay, *, scale=None, state=None):
    """The loop of `retention_step`."""
    def step(q_t, k_t, v_t, S):
        return retention_step(q_t, k_t, v_t, log_decay, S, scale=scale)

    return step_loop(step, (q, k, v), _initial(k, v, state), empty=_empty(q, v))


@float32_recurrence
def gla_recurrent(q, k, v, g, *, scale=None, state=None):
    """The loop of `gla_step`."""
    return step_loop(partial(gla_step, scale=scale), (q, k, v, g), _initial(k, v, state),
                     empty=_empty(q, v))


@float32_recurrence
def delta_rule_recurrent(q, k, v, *, beta, scale=None, state=None):
    """The loop of `delta_rule_step`."""
    def step(q_t, k_t, v_t, beta_t, S):
        return delta_rule_step(q_t, k_t, v_t, S, beta=beta_t, scale=scale)

    return step_loop(step, (q, k, v, beta), _initial(k, v, state), empty=_empty(q, v))


@float32_recurrence
def gated_delta_rule_recurrent(q, k, v, *, g, beta, scale=None, state=None):
    """The loop of `gated_delta_rule_step`."""
    def step(q_t, k_t, v_t, g_t, beta_t, S):
        return gated_delta_rule_step(q_t, k_t, v_t, S, g=g_t, beta=beta_t, scale=scale)

    return step_loop(step, (q, k, v, g, beta), _initial(k, v, state), empty=_empty(q, v))


# ---- chunked forms -------------------------------------------------------------------------
@float32_recurrence
def scalar_decay_chunk(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, *,
                       scale: float | None = None, state: Tensor | None = None,
                       chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """S_t = exp(g_t) S_{t-1} + k_t^T v_t with a scalar log decay g (b, t, h) per token and
    head (None: no decay), in chunks of chunk_size (one chunk = the masked quadratic form):

        o_t = exp(b_t) q_t S_0 + sum_{s<=t} exp(b_t - b_s) (q_t . k_s) v_s,  b the cumulative
        log decay since the chunk's start; the state is carried from chunk to chunk.

    The backward is hand-written (`ops.scalar_decay_chunk`): the forward keeps the inputs and
    the state at every chunk's start, the backward recomputes the (C, C) score blocks of all
    chunks at once and runs the reverse state pass."""
    t = q.shape[1]
    S = _initial(k, v, state)
    if t == 0:
        return _empty(q, v), S
    C = min(check_int("chunk_size", chunk_size), t)
    return scalar_decay_chunked(q, k, v, g, S, C, scale=_scale(q, scale))


@float32_recurrence
def gla_chunk(q: Tensor, k: Tensor, v: Tensor, g: Tensor, *, scale: float | None = None,
              state: Tensor | None = None, chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """`gla` in chunks. Inside a chunk (padded with identity tokens to a power of two) the
    scores sum_c q_tc k_sc exp(B_tc - B_sc), B the cumulative log gate since the chunk's
    start, are built by dyadic blocks so that no exponent is positive; the state is carried
    from chunk to chunk:

        o_t = (q_t * exp(B_t)) S_0 + intra_t,
        S_C = diag(exp(B_C)) S_0 + sum_s (k_s * exp(B_C - B_s))^T v_s.

    The backward is hand-written (`ops.gla_chunk.GlaChunk`): the forward keeps the inputs,
    the cumulative gates and the state at every chunk's start; the backward recomputes the
    dyadic blocks of all chunks at once, level by level, and runs the reverse state pass."""
    t = q.shape[1]
    S = _initial(k, v, state)
    if t == 0:
        return _empty(q, v), S
    C = min(check_int("chunk_size", chunk_size), t)
    return GlaChunk.apply(q, k, v, g, S, _scale(q, scale), C)


@float32_recurrence
def gla_parallel(q: Tensor, k: Tensor, v: Tensor, g: Tensor, *, scale: float | None = None,
                 state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """`gla` as one masked quadratic form over the sequence, memory O(t^2 d_k):

        o_t = (q_t * exp(B_t)) S_0 + sum_{s<=t} sum_c q_tc k_sc exp(B_tc - B_sc) v_s,
        S_t = diag(exp(B_t)) S_0 + sum_{s<=t} (k_s * exp(B_t - B_s))^T v_s,  B = cumsum(g)."""
    t = q.shape[1]
    S = _initial(k, v, state)
    if t == 0:
        return _empty(q, v), S
    q = q * _scale(q, scale)
    B = g.cumsum(1)  # (b, t, h, d_k)
    tri = torch.ones(t, t, dtype=q.dtype, device=q.device).tril()[:, :, None, None]  # (t, s)
    E = ((B[:, :, None] - B[:, None, :]) * tri).exp() * tri  # (b, t, s, h, d_k)
    A = torch.einsum("bthk,bshk,btshk->bhts", q, k, E)  # (b, h, t, s)
    o = torch.einsum("bhts,bshv->bthv", A, v) + torch.einsum("bthk,bhkv->bthv", q * B.exp(), S)
    B_last = B[:, -1]  # (b, h, d_k)
    S = B_last.exp()[..., None] * S + torch.einsum(
        "bshk,bshv->bhkv", k * (B_last[:, None] - B).exp(), v)  # (b, h, d_k, d_v)
    return o, S


@float32_recurrence
def delta_rule_chunk(q: Tensor, k: Tensor, v: Tensor, *, beta: Tensor, g: Tensor | None = None,
                     scale: float | None = None, state: Tensor | None = None,
                     chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """The (gated) delta rule in chunks by the WY / UT transform (see the module docstring):
    beta (b, t, h), g (b, t, h) a log decay or None (no decay)."""
    t = q.shape[1]
    S = _initial(k, v, state)
    if t == 0:
        return _empty(q, v), S
    C = min(check_int("chunk_size", chunk_size), t)
    return delta_chunk(q, k, v, beta, g, S, scale=_scale(q, scale), chunk_size=C)


# ---- the ops -------------------------------------------------------------------------------
@float32_recurrence
def linear_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None,
                     state: Tensor | None = None, mode: str = "chunk", chunk_size: int | None = None
                     ) -> tuple[Tensor, Tensor]:
    """Linear attention (Katharopoulos et al. 2020): S_t = S_{t-1} + k_t^T v_t,
    o_t = scale q_t S_t. q, k (b, t, h, d_k), v (b, t, h, d_v) -> o (b, t, h, d_v), S_T."""
    kernel = backends.kernel("linear_attention", mode, q, inputs=(q, k, v))
    if kernel is not None:  # a CUDA kernel (ops.backends); else seqmem's own forms
        return backends.fla_linear_attention(kernel, q, k, v, scale=scale, state=state)
    chunk_size = tuning.resolve("linear_attention", chunk_size)  # None: this machine's best
    C = _dispatch("linear_attention", mode, q.shape[1], chunk_size)
    if C is None:
        return linear_attention_recurrent(q, k, v, scale=scale, state=state)
    return scalar_decay_chunk(q, k, v, None, scale=scale, state=state, chunk_size=C)


@float32_recurrence
def retention(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, *, scale: float | None = None,
              state: Tensor | None = None, mode: str = "chunk", chunk_size: int | None = None
              ) -> tuple[Tensor, Tensor]:
    """Retention (Sun et al. 2023, RetNet): S_t = gamma S_{t-1} + k_t^T v_t with a fixed decay
    gamma = exp(log_decay) per head, log_decay (h,); o_t = scale q_t S_t."""
    kernel = backends.kernel("retention", mode, q, inputs=(q, k, v), gates=(log_decay,))
    if kernel is not None:  # a CUDA kernel (ops.backends); else seqmem's own forms
        return backends.fla_retention(kernel, q, k, v, log_decay, scale=scale, state=state)
    chunk_size = tuning.resolve("retention", chunk_size)  # None: this machine's best
    C = _dispatch("retention", mode, q.shape[1], chunk_size)
    if C is None:
        return retention_recurrent(q, k, v, log_decay, scale=scale, state=state)
    g = log_decay.expand(q.shape[0], q.shape[1], q.shape[2])  # (b, t, h)
    return scalar_decay_chunk(q, k, v, g, scale=scale, state=state, chunk_size=C)


@float32_recurrence
def gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor, *, scale: float | None = None,
        state: Tensor | None = None, mode: str = "chunk", chunk_size: int | None = None
        ) -> tuple[Tensor, Tensor]:
    """Gated linear attention (Yang et al. 2023): S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t with
    g (b, t, h, d_k) a log forget gate (<= 0); o_t = scale q_t S_t."""
    kernel = backends.kernel("gla", mode, q, inputs=(q, k, v), gates=(g,))
    if kernel is not None:  # a CUDA kernel (ops.backends); else seqmem's own forms
        return backends.fla_gla(kernel, q, k, v, g, scale=scale, state=state)
    chunk_size = tuning.resolve("gla", chunk_size)  # None: this machine's best
    C = _dispatch("gla", mode, q.shape[1], chunk_size)
    if C is None:
        return gla_recurrent(q, k, v, g, scale=scale, state=state)
    if mode == "parallel":
        return gla_parallel(q, k, v, g, scale=scale, state=state)
    return gla_chunk(q, k, v, g, scale=scale, state=state, chunk_size=C)


@float32_recurrence
def delta_rule(q: Tensor, k: Tensor, v: Tensor, *, beta: Tensor, scale: float | None = None,
               state: Tensor | None = None, mode: str = "chunk", chunk_size: int | None = None
               ) -> tuple[Tensor, Tensor]:
    """The delta rule (Schlag et al. 2021; chunked as in Yang et al. 2024):
    S_t = (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t, beta (b, t, h), k normalised by
    the caller; o_t = scale q_t S_t."""
    kernel = backends.kernel("delta_rule", mode, q, inputs=(q, k, v), gates=(beta,))
    if kernel is not None:  # a CUDA kernel (ops.backends); else seqmem's own forms
        return backends.fla_delta_rule(kernel, q, k, v, beta=beta, scale=scale, state=state)
    chunk_size = tuning.resolve("delta_rule", chunk_size)  # None: this machine's best
    C = _dispatch("delta_rule", mode, q.shape[1], chunk_size)
    if C is None:
        return delta_rule_recurrent(q, k, v, beta=beta, scale=scale, state=state)
    return delta_rule_chunk(q, k, v, beta=beta, scale=scale, state=state, chunk_size=C)


@float32_recurrence
def gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, *, g: Tensor, beta: Tensor,
                     scale: float | None = None, state: Tensor | None = None, mode: str = "chunk",
                     chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """The gated delta rule (Yang, Kautz & Hatamizadeh 2025, Gated DeltaNet):
    S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t, g, beta (b, t, h);
    o_t = scale q_t S_t."""
    kernel = backends.kernel("gated_delta_rule", mode, q, inputs=(q, k, v), gates=(g, beta))
    if kernel is not None:  # a CUDA kernel (ops.backends); else seqmem's own forms
        return backends.fla_gated_delta_rule(kernel, q, k, v, g=g, beta=beta, scale=scale,
                                             state=state)
    chunk_size = tuning.resolve("gated_delta_rule", chunk_size)  # None: this machine's best
    C = _dispatch("gated_delta_rule", mode, q.shape[1], chunk_size)
    if C is None:
        return gated_delta_rule_recurrent(q, k, v, g=g, beta=beta, scale=scale, state=state)
    return delta_rule_chunk(q, k, v, beta=beta, g=g, scale=scale, state=state, chunk_size=C)
