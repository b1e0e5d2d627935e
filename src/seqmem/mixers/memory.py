"""Memories routed at test time: Mixture of Memories (Du et al. 2025); Titans and the Miras
models live in `seqmem.mixers.titans`.

A layer of the linear-attention family: q/k/v projections, a short causal depthwise
convolution and SiLU on each, L2-normalised q and k, matrix memories per head updated once per
token by an op of `seqmem.ops`, then a per-head RMSNorm gated by SiLU(W_g x) and an output
projection (the output gate and norm of Gated DeltaNet, which the paper uses).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from seqmem.errors import SeqmemError, check_choice, check_int
from seqmem.mixers.base import Mixer, checkpointed_segments, register
from seqmem.mixers.parts import (
    SHORT_CONV_LEGACY_NAMES,
    A_log_init,
    ShortConv,
    check_conv_size,
    check_eps,
    check_heads,
    dt_bias_init,
    gated_rms_norm,
    merge_heads,
    split_heads,
)
from seqmem.ops.linear_attention import (
    gated_delta_rule,
    gated_delta_rule_step,
    linear_attention,
    linear_attention_step,
)

PROBE_BATCH, PROBE_SEED = 4096, 0


def _probe(d_model: int, like: Tensor) -> Tensor:
    """A fixed N(0, 1) probe input (PROBE_BATCH, d_model) for data-dependent timescales."""
    gen = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn(PROBE_BATCH, d_model, generator=gen, dtype=torch.float64).to(like)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


MEMORY_KINDS = ("gated_delta", "linear")


class MoMState(NamedTuple):
    """Memories (b, n_memories [+ 1 shared], h, d_head, d_head); short conv inputs (b, k-1, c)."""

    memories: Tensor
    conv: Tensor


@register("mom")
class MoM(Mixer):
    """Mixture of Memories (Du, Sun, Lan, Hu & Cheng 2025, "MoM: Linear Sequence Modeling with
    Mixture-of-Memories"): a router sends each token to its top-k of M memories; each memory
    has its own key and value projections and is updated only by the tokens routed to it; the
    output reads the selected memories with one shared query, weighted by the router.

        p_t = softmax(W_r x_t) (M,),  I_t = top-k(p_t),  w_t^m = p_t^m / sum_{j in I_t} p_t^j
        memory m, if m in I_t:  gated delta rule (default)
            S^m_t = exp(g^m_t) (I - beta^m_t k^m_t^T k^m_t) S^m_{t-1} + beta^m_t k^m_t^T v^m_t
        or linear:  S^m_t = S^m_{t-1} + k^m_t^T v^m_t;         otherwise S^m_t = S^m_{t-1}
        o_t = sum_{m in I_t} w^m_t q_t S^m_t / sqrt(d_head)  (+ q_t S^shared_t / sqrt(d_head))
        y_t = W_o (RMSNorm(o_t) * SiLU(W_g x_t))

    with q = SiLU(conv(W_q x)), k^m = SiLU(conv(W_k^m x)), v^m = SiLU(conv(W_v^m x)), q and k
    L2-normalised per head, beta^m = sigmoid(W_b^m x), g^m = -exp(A_log) softplus(W_a^m x +
    dt_bias) (Gated DeltaNet's gates, A_log and dt_bias shared by the memories, as in the
    authors' code). A token not routed to memory m leaves it unchanged exactly (its decay is 1
    and its write 0), so the chunked form of the memory op runs over the whole sequence. The
    optional shared memory sees every token and is added with weight 1. The short convolutions
    run over the whole token sequence (not over each memory's routed tokens), so a memory's
    keys and values are a function of the token stream alone.

    Args:
        d_model: input and output width.
        n_heads: heads per memory; d_model must be a multiple.
        n_memories: routed memories M (>= 1).
        top_k: memories per token (1 <= top_k <= n_memories).
        shared_memory: add a memory that every token updates and reads.
        memory: "gated_delta" (default, the paper's main model) or "linear".
        conv_size: width of the short causal convolutions (>= 2).
        norm_eps: epsilon of the output RMSNorm.
        checkpoint_segment: when a chunked forward that needs gradients is longer than this
            many tokens, run it in segments of this length under activation checkpointing
            (`checkpointed_segments`: the same numbers, about one extra forward, training
            memory bounded by one segment's activations; M memories make them M + 1 times a
            Gated DeltaNet's); 0: never.
        aux_loss_weight: weight of the router's load-balancing loss added to the training
            loss (`aux_loss`; 0: none). It does not change the outputs.
    """

    modes = ("chunk", "recurrent")
    legacy_names = SHORT_CONV_LEGACY_NAMES

    def __init__(self, d_model: int, *, n_heads: int = 2, n_memories: int = 4, top_k: int = 2,
                 shared_memory: bool = True, memory: str = "gated_delta", conv_size: int = 4,
                 norm_eps: float = 1e-5, checkpoint_segment: int = 8192,
                 aux_loss_weight: float = 0.0):
        super().__init__(d_model)
        self.d_head = check_heads("mom", d_model, n_heads)
        self.conv_size = check_conv_size("mom", conv_size)
        self.n_memories = check_int("mom: n_memories", n_memories)
        if check_int("mom: top_k", top_k) > n_memories:
            raise SeqmemError(f"mom: top_k must be <= n_memories={n_memories}, got {top_k!r}")
        self.norm_eps = check_eps("mom", norm_eps)
        self.memory = check_choice("mom memory", memory, MEMORY_KINDS)
        self.n_heads, self.top_k, self.shared_memory = n_heads, top_k, bool(shared_memory)
        self.checkpoint_segment = check_int("mom: checkpoint_segment (0: never)",
                                            checkpoint_segment, low=0)
        self.n_slots = n_memories + int(self.shared_memory)  # memories in the state
        if not (isinstance(aux_loss_weight, int | float) and not isinstance(aux_loss_weight, bool)
                and 0 <= aux_loss_weight < float("inf")):
            raise SeqmemError(f"mom: aux_loss_weight must be a number >= 0, got "
                              f"{aux_loss_weight!r}")
        self.aux_loss_weight = float(aux_loss_weight)
        d, h, s = d_model, n_heads, self.n_slots
        self.router = nn.Linear(d, n_memories, bias=False)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.kv_proj = nn.Linear(d, 2 * s * d, bias=False)  # every memory's keys and values
        self.conv = ShortConv(d + 2 * s * d, conv_size)  # over q and every memory's k, v
        if self.memory == "gated_delta":
            self.ab_proj = nn.Linear(d, 2 * s * h, bias=False)  # every memory's a and b
            # Gated DeltaNet's initialisation: A ~ U(1, 16) and dt log-uniform in [1e-3, 1e-1]
            self.A_log = nn.Parameter(A_log_init(h))
            self.dt_bias = nn.Parameter(dt_bias_init(h))  # softplus^-1(dt)
        self.g_proj = nn.Linear(d, d, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(self.d_head))
        self.o_proj = nn.Linear(d, d, bias=False)

    # ---- pieces shared by forward and step ------------------------------------------------
    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Router weights w and the routing mask (..., n_memories) from x (..., d): w is the
        softmax renormalised over each token's top-k memories and 0 elsewhere."""
        p = torch.softmax(self.router(x), dim=-1)  # (..., M)
        top, idx = p.topk(self.top_k, dim=-1)  # (..., k)
        w = torch.zeros_like(p).scatter(-1, idx, top / top.sum(-1, keepdim=True))  # (..., M)
        routed = torch.zeros_like(p, dtype=torch.bool).scatter(-1, idx, True)  # (..., M)
        return w, routed

    def aux_loss(self, x: Tensor) -> Tensor | None:
        """The router's load-balancing loss on the tokens x (b, t, d), times
        `aux_loss_weight` (None when 0), the Switch Transformer's loss over top-k routing as
        MoM uses it: M sum_m f_m P_m, f_m the fraction of the t b k routing assignments that
        go to memory m, P_m the mean router probability of m; 1 for uniform routing."""
        if not self.aux_loss_weight:
            return None
        p = torch.softmax(self.router(x), dim=-1).reshape(-1, self.n_memories)  # (n, M)
        _, routed = self.route(x)
        f = routed.reshape(-1, self.n_memories).to(p.dtype).mean(0) / self.top_k  # (M,)
        return self.aux_loss_weight * self.n_memories * (f * p.mean(0)).sum()

    def _inputs(self, x: Tensor, u: Tensor):
        """The memory op's inputs over all slots (memories, then the shared one), heads folded:
        q, k, v (..., s h, d_head), g, beta (..., s h) (None for linear memories), and the
        read-out weights (..., s)."""
        d, s, h = self.d_model, self.n_slots, self.n_heads
        u = F.silu(u)
        q = F.normalize(split_heads(u[..., :d], h), dim=-1)
        k, v = rearrange(u[..., d:], "... (two s h e) -> two ... s h e", two=2, s=s, h=h)
        k = F.normalize(k, dim=-1)  # (..., s, h, e)
        w, routed = self.route(x)  # (..., M)
        if self.shared_memory:
            w = torch.cat([w, torch.ones_like(w[..., :1])], dim=-1)  # (..., s)
            routed = torch.cat([routed, torch.ones_like(routed[..., :1])], dim=-1)
        on = routed[..., None]  # (..., s, 1)
        g = beta = None
        if self.memory == "gated_delta":
            a, b = rearrange(self.ab_proj(x), "... (two s h) -> two ... s h", two=2, s=s)
            g = -self.A_log.exp() * F.softplus(a + self.dt_bias)  # (..., s, h)
            g, beta = torch.where(on, g, 0.0), torch.where(on, b.sigmoid(), 0.0)  # (..., s, h)
            g, beta = (rearrange(z, "... s h -> ... (s h)") for z in (g, beta))
        else:
            k = torch.where(on[..., None], k, 0.0)  # an unrouted token writes nothing
        q = q.unsqueeze(-3).expand(*k.shape)  # (..., s, h, e): one query reads every memory
        q, k, v = (rearrange(z, "... s h e -> ... (s h) e") for z in (q, k, v))
        return q, k, v, g, beta, w

    def _out(self, o: Tensor, w: Tensor, x: Tensor) -> Tensor:
        """Mix the memories' reads o (..., s h, e) with weights w (..., s), normalise, gate and
        project to (..., d)."""
        o = torch.einsum("...she,...s->...he",
                         rearrange(o, "... (s h) e -> ... s h e", s=self.n_slots), w)
        gate = split_heads(self.g_proj(x), self.n_heads)  # (..., h, e)
        o = gated_rms_norm(o, self.norm_weight, gate, self.norm_eps)  # (..., h, e)
        return self.o_proj(merge_heads(o))

    def _projections(self, x: Tensor) -> Tensor:
        return torch.cat([self.q_proj(x), self.kv_proj(x)], dim=-1)  # (..., d + 2 s d)

    # ---- the contract ---------------------------------------------------------------------
    def _forward(self, x, state, mode, chunk_size):
        seg = self.checkpoint_segment
        if mode == "chunk" and seg and x.shape[1] > seg and torch.is_grad_enabled():
            return checkpointed_segments(
                lambda xs, st: self._forward_all(xs, st, mode, chunk_size), x, state, seg)
        return self._forward_all(x, state, mode, chunk_size)

    def _forward_all(self, x, state, mode, chunk_size):
        u, conv = self.conv(self._projections(x), state.conv)
        q, k, v, g, beta, w = self._inputs(x, u)
        S0 = rearrange(state.memories, "b s h k v -> b (s h) k v")
        if self.memory == "gated_delta":
            o, S = gated_delta_rule(q, k, v, g=g, beta=beta, state=S0, mode=mode,
                                    chunk_size=chunk_size)
        else:
            o, S = linear_attention(q, k, v, state=S0, mode=mode, chunk_size=chunk_size)
        S = rearrange(S, "b (s h) k v -> b s h k v", s=self.n_slots)
        return self._out(o, w, x), MoMState(S, conv)

    def _step(self, x_t, state):
        u, conv = self.conv.step(self._projections(x_t), state.conv)
        q, k, v, g, beta, w = self._inputs(x_t, u)
        S0 = rearrange(state.memories, "b s h k v -> b (s h) k v")
        if self.memory == "gated_delta":
            o, S = gated_delta_rule_step(q, k, v, S0, g=g, beta=beta)
        else:
            o, S = linear_attention_step(q, k, v, S0)
        S = rearrange(S, "b (s h) k v -> b s h k v", s=self.n_slots)
        return self._out(o, w, x_t), MoMState(S, conv)

    def init_state(self, batch_size, *, device=None, dtype=None):
        kw = self.state_options(device, dtype)
        e = self.d_head
        memories = torch.zeros(batch_size, self.n_slots, self.n_heads, e, e, **kw)
        conv = self.conv.init_state(batch_size, **kw)
        return MoMState(memories, conv)

    def state_size(self):
        return self.n_slots * self.n_heads * self.d_head ** 2 + self.conv.state_size()

    @torch.no_grad()
    def timescales(self) -> Tensor | None:
        """Gated-delta memories: per channel (head-major), -1 / (mean log-decay per token) of
        its head, the mean taken over a fixed N(0, 1) probe input and over the memories, a
        memory's log-decay being 0 on the tokens not routed to it (so rarely chosen memories
        remember longer). Linear memories do not decay: None."""
        if self.memory != "gated_delta":
            return None
        x = _probe(self.d_model, self.o_proj.weight)  # (n, d)
        _, routed = self.route(x)  # (n, M)
        if self.shared_memory:
            routed = torch.cat([routed, torch.ones_like(routed[:, :1])], dim=-1)  # (n, s)
        a, _ = rearrange(self.ab_proj(x), "n (two s h) -> two n s h", two=2, s=self.n_slots)
        g = -self.A_log.exp() * F.softplus(a + self.dt_bias) * routed[..., None]  # (n, s, h)
        mean = g.double().mean(dim=(0, 1)).clamp(max=-1e-12)  # (h,)
        return (-1 / mean).to(g.dtype).repeat_interleave(self.d_head)  # (d,)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_memories={self.n_memories}, "
                f"top_k={self.top_k}, shared_memory={self.shared_memory}, memory={self.memory}")
