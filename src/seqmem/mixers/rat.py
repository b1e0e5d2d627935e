"""RAT (Wei et al. 2025, "RAT: Bridging RNN Efficiency and Attention Accuracy in Language
Modeling"): a gated linear recurrence inside chunks of `rat_chunk` tokens, softmax attention
across the chunks' summaries.

Token t is (c, l): chunk c, position l. With gates g = sigmoid(W_g x + b_g), z = sigmoid(W_z x):

    k~_{c,l} = g_{c,l} * k~_{c,l-1} + (1 - g_{c,l}) * k_{c,l}     (k~_{c,-1} = 0; same for v~)
    y_{c,l}  = W_o (z * softmax([q K~_{<c}^T ; q k~_{c,l}] / sqrt(d)) [V~_{<c} ; v~_{c,l}])

K~_{<c} are the summaries k~_{c',L-1} of the completed chunks c' < c. rat_chunk = 1 is
attention, rat_chunk = t a gated RNN. The state: a cache of the last `n_cache` summaries (as the
attention cache: slots with log-weight 0 or EMPTY), the running k~, v~, and a clock of
rat_chunk - 1 slots whose filled count is the position l in the current chunk. No positional
encoding (the paper's inter-chunk rotary variant is not included).

The parallel form scans the recurrence within chunks only and attends in blocks of chunks, each
against the summaries it can see (`attention_own_key_banded`): time and memory linear in t for
a given cache, O(t n_cache) for the attention.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from seqmem.errors import check_int
from seqmem.mixers.base import Mixer, register
from seqmem.mixers.parts import check_heads, chunk_phase, merge_heads, split_heads
from seqmem.ops.attention import EMPTY, attention_own_key_banded, attention_step, is_filled
from seqmem.ops.scan import linear_recurrence


class RATState(NamedTuple):
    """k, v (b, n_cache, h, d) and log_m (b, n_cache): chunk summaries, oldest first;
    k_run, v_run (b, h, d): the current chunk's running k~, v~; clock (b, rat_chunk - 1)."""

    k: Tensor
    v: Tensor
    log_m: Tensor
    k_run: Tensor
    v_run: Tensor
    clock: Tensor


@register("rat")
class RAT(Mixer):
    """Recurrence within chunks, attention across chunks.

    Args:
        d_model: model width.
        n_heads: heads (a divisor of d_model).
        rat_chunk: tokens per chunk L.
        max_len: tokens the summary cache covers: it holds max_len // rat_chunk summaries
            (at least 1); older chunks leave it.
    """

    modes = ("parallel", "recurrent")
    state_grows = True  # one summary per completed chunk, up to the cache's capacity

    def __init__(self, d_model: int, *, n_heads: int = 2, rat_chunk: int = 16,
                 max_len: int = 1024):
        super().__init__(d_model)
        self.n_heads = n_heads
        self.d_head = check_heads("rat", d_model, n_heads)
        self.rat_chunk = check_int("rat: rat_chunk", rat_chunk)
        self.max_len = check_int("rat: max_len", max_len)
        self.n_cache = max(1, max_len // rat_chunk)
        self.proj = nn.Linear(d_model, 5 * d_model, bias=False)  # q, k, v, g, z
        # forget-gate bias: sigmoid(b) = u / (1 + u), u ~ U(1, L-1): memory 2..L tokens at init
        u = torch.empty(d_model).uniform_(1.0, max(1.0, rat_chunk - 1.0))
        self.gate_logit_bias = nn.Parameter(u.log())
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _inputs(self, x: Tensor):
        """q, k, v, g (..., h, d) and the output gate z (..., d_model)."""
        q, k, v, g, z = self.proj(x).chunk(5, dim=-1)
        g = torch.sigmoid(g + self.gate_logit_bias)
        q, k, v, g = (split_heads(a, self.n_heads) for a in (q, k, v, g))  # (..., h, d_head)
        return q, k, v, g, torch.sigmoid(z)

    def _forward(self, x, state, mode, chunk_size):
        if mode == "recurrent":
            return self._step_loop(x, state)
        b, t, _ = x.shape
        if t == 0:  # nothing to attend with, nothing to remember
            return x.new_zeros(x.shape), state
        L, C, p0 = self.rat_chunk, self.n_cache, chunk_phase("rat", state.clock)
        n_chunks = -(-(p0 + t) // L)  # chunks the sequence touches, the current one first
        n_new = (p0 + t) // L  # of which it completes
        # whole chunks: the current chunk's p0 past tokens in front (their k~, v~ come in
        # state.k_run, state.v_run), the last chunk's missing tokens after
        pad = (p0, n_chunks * L - p0 - t)
        xp = F.pad(x, (0, 0, *pad)) if any(pad) else x  # (b, n_chunks L, d)
        q, k, v, g, z = self._inputs(xp)  # (b, n_chunks L, h, d)
        pos = torch.arange(n_chunks * L, device=x.device)[:, None, None]  # since chunk 0 began
        front = pos < p0  # the padding in front: a = 1, no input, to carry the state through
        a = torch.where(front, 1.0, g * (pos % L != 0))  # a chunk's first token resets
        ig = (1 - g).masked_fill(front, 0.0)  # the input's weight 1 - g
        # the recurrence restarts every chunk: scan within chunks only
        k_run, v_run = (linear_recurrence(
            rearrange(a, "b (n l) h d -> b n l h d", l=L),
            rearrange(ig * u, "b (n l) h d -> b n l h d", l=L), h0[:, None], dim=2)
            for u, h0 in ((k, state.k_run), (v, state.v_run)))  # (b, n_chunks, L, h, d)
        keys = torch.cat([state.k, k_run[:, :n_new, -1]], dim=1)  # (b, C + n_new, h, d)
        values = torch.cat([state.v, v_run[:, :n_new, -1]], dim=1)
        log_m = torch.cat([state.log_m, x.new_zeros(b, n_new)], dim=1)  # (b, C + n_new)
        k_run, v_run = (rearrange(r, "b n l h d -> b (n l) h d") for r in (k_run, v_run))
        # a query in chunk c (c = 0: the current one) sees the summaries c .. C + c - 1
        y = attention_own_key_banded(q, keys, values, log_m, k_run, v_run, group=L, span=C)
        y = y[:, p0:p0 + t]  # (b, t, h, d)
        y = self.out(z[:, p0:p0 + t] * merge_heads(y))
        done = (p0 + t) // L * L - p0  # tokens up to the last chunk boundary
        clock = torch.cat([state.clock if done <= 0 else torch.full_like(state.clock, EMPTY),
                           x.new_zeros(b, t - max(done, 0))], dim=1)
        new = RATState(keys[:, n_new:], values[:, n_new:], log_m[:, n_new:],
                       k_run[:, p0 + t - 1], v_run[:, p0 + t - 1],
                       clock[:, clock.shape[1] - (L - 1):])
        return y, new

    def _step(self, x_t, state):
        q, k, v, g, z = self._inputs(x_t)  # (b, h, d)
        phase = is_filled(state.clock).sum(dim=-1)  # (b,)
        a = g * (phase != 0).to(x_t.dtype)[:, None, None]
        k_run = a * state.k_run + (1 - g) * k  # (b, h, d)
        v_run = a * state.v_run + (1 - g) * v
        keys = torch.cat([state.k, k_run[:, None]], dim=1)  # (b, C + 1, h, d)
        values = torch.cat([state.v, v_run[:, None]], dim=1)
        log_m = torch.cat([state.log_m, x_t.new_zeros(x_t.shape[0], 1)], dim=1)
        y = attention_step(q, keys, values, log_m)  # (b, h, d)
        complete = (phase == self.rat_chunk - 1)[:, None]  # (b, 1): push the summary
        clock = torch.cat([state.clock, x_t.new_zeros(x_t.shape[0], 1)], dim=1)[:, 1:]
        new = RATState(
            torch.where(complete[..., None, None], keys[:, 1:], state.k),
            torch.where(complete[..., None, None], values[:, 1:], state.v),
            torch.where(complete, log_m[:, 1:], state.log_m),
            k_run, v_run,
            torch.where(complete, EMPTY, clock),
        )
        return self.out(z * merge_heads(y)), new

    def init_state(self, batch_size, *, device=None, dtype=None):
        kw = self.state_options(device, dtype)
        cache = (batch_size, self.n_cache, self.n_heads, self.d_head)
        run = (batch_size, self.n_heads, self.d_head)
        return RATState(
            torch.zeros(cache, **kw), torch.zeros(cache, **kw),
            torch.full((batch_size, self.n_cache), EMPTY, **kw),
            torch.zeros(run, **kw), torch.zeros(run, **kw),
            torch.full((batch_size, self.rat_chunk - 1), EMPTY, **kw),
        )

    def state_size(self, t: int | None = None) -> int:
        """Floats of state per sequence: n_cache summaries of 2 d_model + 1 floats, the running
        k~, v~ (2 d_model) and the clock (rat_chunk - 1). With t: the floats that hold
        information after t tokens, (min(t // rat_chunk, n_cache) + 1) (2 d_model) plus the
        summaries' log-weights, which grows with t up to the capacity."""
        if t is None:
            return self.n_cache * (2 * self.d_model + 1) + 2 * self.d_model + self.rat_chunk - 1
        n = min(t // self.rat_chunk, self.n_cache)
        return n * (2 * self.d_model + 1) + 2 * self.d_model

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, rat_chunk={self.rat_chunk}, "
                f"max_len={self.max_len}")
