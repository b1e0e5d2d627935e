"""Causal softmax attention, rotary positions and the prefix-scan softmax of Attention as an RNN.

    y_i = sum_j softmax_j(q_i . k_j * scale + log_m_j) v_j,   j over the keys query i may see

`log_m` is an additive log-weight per key. A cache slot that holds no token carries
`EMPTY` (a large negative number standing in for -inf, so a state stays finite): its weight
exp(EMPTY - max) is exactly zero, and an empty cache needs no separate length or position
counter. `attention_step` is the specification; `attention_parallel` computes every query of a
sequence at once (Vaswani et al. 2017), optionally within a sliding window;
`attention_own_key_banded`, RAT's attention over chunk summaries, in blocks.

Attention as an RNN (Feng et al. 2024, "Attention as an RNN"): with one query q, the softmax
over a prefix is carried by (m, u, w): m the running max score, u = sum_j exp(s_j - m) and
w = sum_j exp(s_j - m) v_j, so that y_t = w_t / u_t. Two summaries combine associatively,

    (m1, u1, w1) + (m2, u2, w2) = (m, u1 e^{m1-m} + u2 e^{m2-m}, w1 e^{m1-m} + w2 e^{m2-m}),
    m = max(m1, m2),

so every prefix is computed by a parallel scan (`aaren_scan`) and one token costs O(1)
(`aaren_step`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from seqmem.ops.scan import associative_scan

EMPTY = -1.0e9  # log-weight of a slot that holds no token (exp underflows to exactly 0)


def is_filled(log_m: Tensor) -> Tensor:
    """Which slots hold a token: log-weight above EMPTY / 2 (robust to any perturbation of
    the log-weights far smaller than 1e8)."""
    return log_m > EMPTY / 2


# ---- rotary position embedding --------------------------------------------------------------
def rotary(x: Tensor, offset: int = 0, *, base: float = 10000.0) -> Tensor:
    """Rotary position embedding (Su et al. 2021, RoFormer) at positions offset, offset+1, ...

    x (b, t, h, d). Channel pairs (c, c + d//2) for c < d//2 are rotated by the angle
    pos * base^(-c / (d//2)); an odd last channel is left as is. The rotation makes
    rotary(q, m) . rotary(k, n) a function of q, k and m - n only.
    """
    t, d = x.shape[1], x.shape[-1]
    n_pairs = d // 2
    if n_pairs == 0:
        return x
    cos, sin = rotary_table(t, offset, n_pairs, base, x.device, x.dtype)  # (1, t, 1, p)
    if torch.is_grad_enabled() and x.requires_grad:
        return _Rotary.apply(x, cos, sin)
    return _rotate(x, cos, sin, 1.0)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, sign: float) -> Tensor:
    """x's channel pairs rotated by the angles of (cos, sign * sin), into one output: four
    fused passes, no concatenation; an odd last channel copied."""
    n_pairs = cos.shape[-1]
    x1, x2 = x[..., :n_pairs], x[..., n_pairs:2 * n_pairs]
    out = torch.empty_like(x)
    o1, o2 = out[..., :n_pairs], out[..., n_pairs:2 * n_pairs]
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin, value=sign)
    if x.shape[-1] % 2:
        out[..., -1] = x[..., -1]
    return out


class _Rotary(torch.autograd.Function):
    """The rotation and its backward, the rotation by the opposite angles (a rotation's
    transpose is its inverse)."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, g: Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(g, cos, sin, -1.0), None, None


_ROTARY_TABLES: dict[tuple, tuple[Tensor, Tensor]] = {}


def rotary_table(t: int, offset: int, n_pairs: int, base: float, device, dtype
                 ) -> tuple[Tensor, Tensor]:
    """cos and sin (1, t, 1, n_pairs) of the rotary angles (offset + i) base^(-c / n_pairs),
    cached per (t, offset, n_pairs, base, device, dtype): a decode step and every training
    batch of one length reuse them (a small table per length; the cache is cleared past 64
    entries)."""
    key = (t, offset, n_pairs, float(base), torch.device(device), dtype)
    table = _ROTARY_TABLES.get(key)
    if table is None:
        with torch.inference_mode(False), torch.no_grad():  # plain tensors, in any mode
            table = _angles(t, offset, n_pairs, base, device, dtype)
        if len(_ROTARY_TABLES) >= 64:
            _ROTARY_TABLES.clear()
        _ROTARY_TABLES[key] = table
    return table


def _angles(t: int, offset: int, n_pairs: int, base: float, device, dtype
            ) -> tuple[Tensor, Tensor]:
    # the angles in float32 at least: a bf16 position is off by 2 past 256 (8 bits of mantissa)
    work = torch.promote_types(dtype, torch.float32)
    freq = base ** (-torch.arange(n_pairs, device=device, dtype=work) / n_pairs)  # (p,)
    pos = torch.arange(t, device=device, dtype=work) + offset  # (t,)
    angle = pos[:, None] * freq  # (t, p)
    return (angle.cos().to(dtype)[None, :, None],
            angle.sin().to(dtype)[None, :, None])  # (1, t, 1, p)


# ---- softmax attention ------------------------------------------------------------------------
def attention_step(q_t: Tensor, k: Tensor, v: Tensor, log_m: Tensor | None = None,
                   scale: float | None = None) -> Tensor:
    """One query against all the keys it sees (the specification).

    q_t (b, h, d_k); k (b, s, h, d_k); v (b, s, h, d_v); log_m (b, s) or None -> (b, h, d_v).
    """
    scale = q_t.shape[-1] ** -0.5 if scale is None else scale
    # products and sums rather than einsum: a batched matmul of one query is slow on CPU
    scores = (k * q_t[:, None]).sum(dim=-1) * scale  # (b, s, h)
    if log_m is not None:
        scores = scores + log_m[:, :, None]
    return (scores.softmax(dim=1)[..., None] * v).sum(dim=1)  # (b, h, d_v)


def causal_mask(t: int, s: int, window: int = 0, *, device=None) -> Tensor:
    """Which of s keys each of t queries sees, (t, s) bool: the queries are the last t keys;
    query i sees key j iff j <= s - t + i and (window == 0 or j > s - t + i - window)."""
    i = torch.arange(t, device=device)[:, None] + (s - t)  # (t, 1) the query's own key
    j = torch.arange(s, device=device)[None, :]  # (1, s)
    allowed = j <= i
    if window > 0:
        allowed = allowed & (j > i - window)
    return allowed  # (t, s)


def attention_parallel(q: Tensor, k: Tensor, v: Tensor, log_m: Tensor | None = None, *,
                       window: int = 0, scale: float | None = None) -> Tensor:
    """Every query of a sequence at once, causal, optionally within a sliding window.

    q (b, t, h, d_k); k (b, s, h, d_k), v (b, s, h, d_v) with s >= t: the first s - t keys
    come before the sequence (a cache), the last t are the queries' own tokens; log_m (b, s)
    or None; window: each query sees its own key and the window - 1 before it (0 = all).
    Returns (b, t, h, d_v).
    """
    t, s = q.shape[1], k.shape[1]
    qh, kh, vh = (z.transpose(1, 2) for z in (q, k, v))  # (b, h, ., d)
    if log_m is None and s == t and (window == 0 or window >= t):
        y = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale)
        return y.transpose(1, 2)
    if log_m is None and s == t:
        return _sliding_window(qh, kh, vh, window, scale).transpose(1, 2)
    allowed = causal_mask(t, s, window, device=q.device)  # (t, s)
    bias = torch.zeros(t, s, device=q.device, dtype=q.dtype).masked_fill(~allowed, -torch.inf)
    bias = bias[None, None]  # (1, 1, t, s)
    if log_m is not None:
        bias = bias + log_m[:, None, None, :]  # (b, 1, t, s)
    y = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias, scale=scale)  # (b, h, t, d)
    return y.transpose(1, 2)  # (b, t, h, d_v)


def _sliding_window(qh: Tensor, kh: Tensor, vh: Tensor, window: int, scale: float | None
                    ) -> Tensor:
    """Causal sliding-window attention in blocks of `window` queries, each against the keys of
    its own block and the block before (2 window keys, masked): O(t window) rather than the
    O(t^2) of a full masked score matrix. qh, kh, vh (b, h, t, d) -> (b, h, t, d_v)."""
    t, W = qh.shape[2], window
    n = -(-t // W)  # query blocks
    pad = n * W - t
    q = F.pad(qh, (0, 0, 0, pad)).unflatten(2, (n, W))  # (b, h, n, W, d)
    k, v = (F.pad(z, (0, 0, W, pad)).unflatten(2, (n + 1, W)) for z in (kh, vh))  # (b,h,n+1,W,d)
    k, v = (torch.cat([z[:, :, :-1], z[:, :, 1:]], dim=3) for z in (k, v))  # (b, h, n, 2W, d)
    a = torch.arange(W, device=qh.device)[:, None]  # (W, 1) query within its block
    c = torch.arange(2 * W, device=qh.device)[None, :]  # (1, 2W) key, from the block before
    allowed = (c > a) & (c <= a + W)  # key - query in (-W, 0]
    first = allowed & (c >= W)  # the first block has no block before it
    allowed = torch.stack([first] + [allowed] * (n - 1))  # (n, W, 2W)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)  # (b,h,n,W,d)
    return y.flatten(2, 3)[:, :, :t]


def attention_own_key(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, k_own: Tensor,
                      v_own: Tensor, scale: float | None = None) -> Tensor:
    """Softmax over shared keys plus one key of each query's own:

        y_i = (sum_j e^{s_ij + bias_ij} v_j + e^{q_i . k_own_i} v_own_i) / (same weights summed)

    q, k_own, v_own (b, t, h, d); k, v (b, s, h, d); bias (b, t, s) additive (-inf hides a
    key). The shape of RAT's inter-chunk attention, where the own key is the query's running
    chunk summary (`attention_own_key_banded` computes it in blocks). Returns (b, t, h, d_v).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bthd,bshd->bhts", q, k) * scale + bias[:, None]  # (b, h, t, s)
    own = torch.einsum("bthd,bthd->bht", q, k_own)[..., None] * scale  # (b, h, t, 1)
    p = torch.cat([scores, own], dim=-1).softmax(dim=-1)  # (b, h, t, s + 1)
    y = torch.einsum("bhts,bshd->bthd", p[..., :-1], v)  # (b, t, h, d_v)
    return y + p[..., -1].transpose(1, 2)[..., None] * v_own


def attention_own_key_banded(q: Tensor, k: Tensor, v: Tensor, log_m: Tensor, k_own: Tensor,
                             v_own: Tensor, *, group: int, span: int,
                             scale: float | None = None) -> Tensor:
    """`attention_own_key` where the queries come in groups of `group` consecutive tokens and
    group c = i // group sees the keys c, ..., c + span - 1 of k (those that exist), weighted
    by log_m, beside each query's own key:

        y_i = softmax([q_i K_{c:c+span}^T * scale + log_m_{c:c+span} ; q_i . k_own_i * scale])
              [V_{c:c+span} ; v_own_i]

    q, k_own, v_own (b, t, h, d); k, v (b, s, h, d); log_m (b, s). RAT's inter-chunk
    attention: group = rat_chunk, span = the summary cache, k = the cached summaries followed
    by the sequence's. Computed in blocks of n <= span groups, each against the n + span - 1
    keys any of its groups sees (as `_sliding_window`): O(t span) time and memory, not the
    O(t s) of a full score matrix. Returns (b, t, h, d_v).
    """
    b, t = q.shape[:2]
    n_groups = -(-t // group)
    n_blocks = -(-n_groups // span)
    n = -(-n_groups // n_blocks)  # groups per block: balanced, so padding is < n_blocks groups
    W = n + span - 1  # keys a block sees
    pad = n_blocks * n * group - t
    if pad:
        q, k_own, v_own = (F.pad(z, (0, 0, 0, 0, 0, pad)) for z in (q, k_own, v_own))
    # key windows of W, one every n keys; missing keys are empty slots
    s_need = n_blocks * n + span - 1
    if k.shape[1] < s_need:
        extra = s_need - k.shape[1]
        k, v = (F.pad(z, (0, 0, 0, 0, 0, extra)) for z in (k, v))
        log_m = F.pad(log_m, (0, extra), value=EMPTY)
    k, v = (rearrange(z[:, :s_need].unfold(1, W, n), "b m h d w -> (b m) w h d")
            for z in (k, v))  # (b n_blocks, W, h, d)
    m_win = log_m[:, :s_need].unfold(1, W, n)[:, :, None, :]  # (b, n_blocks, 1, W)
    r = torch.arange(n * group, device=q.device)[:, None] // group  # (n group, 1) its group
    j = torch.arange(W, device=q.device)[None, :]  # (1, W) the key, from the block's first
    visible = (j >= r) & (j < r + span)  # (n group, W)
    bias = torch.where(visible, m_win, -torch.inf)  # (b, n_blocks, n group, W)
    q, k_own, v_own = (rearrange(z, "b (m i) h d -> (b m) i h d", m=n_blocks)
                       for z in (q, k_own, v_own))  # (b n_blocks, n group, h, d)
    y = attention_own_key(q, k, v, bias.flatten(0, 1), k_own, v_own, scale)
    return rearrange(y, "(b m) i h d -> b (m i) h d", b=b)[:, :t]  # (b, t, h, d_v)


# ---- attention as an RNN ------------------------------------------------------------------------
class AarenState(NamedTuple):
    """Softmax of one query over a prefix: m (b, h) running max score, u (b, h) sum of
    exp(s - m), w (b, h, d) sum of exp(s - m) v. Empty: m = EMPTY, u = 0, w = 0."""

    m: Tensor
    u: Tensor
    w: Tensor


def aaren_combine(x: tuple[Tensor, ...], y: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The associative combination of two prefix summaries (x earlier, y later)."""
    m = torch.maximum(x[0], y[0])
    ex, ey = torch.exp(x[0] - m), torch.exp(y[0] - m)
    return m, x[1] * ex + y[1] * ey, x[2] * ex[..., None] + y[2] * ey[..., None]


def aaren_step(s_t: Tensor, v_t: Tensor, state: AarenState) -> tuple[Tensor, AarenState]:
    """One token (the specification): score s_t (b, h), value v_t (b, h, d) -> y_t (b, h, d)."""
    m, u, w = aaren_combine(tuple(state), (s_t, torch.ones_like(s_t), v_t))
    return w / u[..., None], AarenState(m, u, w)


def aaren_scan(s: Tensor, v: Tensor, state: AarenState) -> tuple[Tensor, AarenState]:
    """Every prefix at once by a parallel scan: s (b, t, h), v (b, t, h, d) -> y (b, t, h, d)
    and the final state."""
    prefixes = associative_scan(aaren_combine, (s, torch.ones_like(s), v), dim=1)
    m, u, w = aaren_combine(tuple(z[:, None] for z in state), prefixes)  # (b, t, h, ...)
    return w / u[..., None], AarenState(m[:, -1], u[:, -1], w[:, -1])
