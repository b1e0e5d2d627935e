"""Softmax attention mixers: causal multi-head attention with a KV cache, and Attention as an
RNN (Aaren).

- `attention` (Vaswani et al. 2017): y_t = W_o concat_h softmax_j(q_t . k_j / sqrt(d)) v_j over
  the tokens j in its span, with rotary positions (Su et al. 2021) and an optional sliding window.
- `aaren` (Feng et al. 2024, "Attention as an RNN"): one learned query per head, so the output
  y_t = W_o concat_h sum_{j<=t} softmax_j(q . k_j / sqrt(d)) v_j of every prefix is a parallel
  prefix scan, and a step costs O(1).

The KV cache is a state of fixed shape: `n_cache` slots of (key, value, log-weight), oldest
first, slots without a token carrying the log-weight EMPTY (zero attention weight). A new token
shifts the cache by one. Keys are cached before rotation and rotated by their slot index at use,
so attention sees only relative positions and the state needs no position counter.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from seqmem.errors import SeqmemError, check_int
from seqmem.mixers.base import Mixer, register
from seqmem.mixers.parts import check_heads, merge_heads
from seqmem.ops.attention import (
    EMPTY,
    AarenState,
    aaren_scan,
    aaren_step,
    attention_parallel,
    attention_step,
    is_filled,
    rotary,
)


class AttentionState(NamedTuple):
    """The KV cache: k (b, n_cache, h, d) keys before rotation, v (b, n_cache, h, d) values,
    log_m (b, n_cache) log-weights (0 for a cached token, EMPTY for an empty slot)."""

    k: Tensor
    v: Tensor
    log_m: Tensor


@register("attention")
class Attention(Mixer):
    """Causal multi-head softmax attention whose state is its KV cache.

    Args:
        d_model: model width.
        n_heads: heads (a divisor of d_model).
        window: each token sees itself and the window - 1 tokens before it (sliding-window
            attention); 0 = full attention over up to `max_len` tokens.
        max_len: the span of full attention (window = 0): the cache holds max_len - 1 tokens;
            older tokens leave it, so attention is exact full attention on sequences (and
            streams carried by the state) of up to max_len tokens. The state is a cache of
            max_len - 1 slots whatever the sequence length; a training batch (forward with
            final_state=False from the empty state, as the training loop calls it) builds no
            cache at all, so max_len costs nothing there. The recorded state size of a run
            (`state_size(t)` at the task's length) counts the slots that t tokens fill,
            min(t, max_len - 1), not the capacity.
        rotary: rotary position embedding on queries and keys (otherwise no positions).
        rotary_base: the rotary frequency base.
    """

    modes = ("parallel", "recurrent")
    state_grows = True  # the cache fills one slot per token, up to its capacity

    def __init__(self, d_model: int, *, n_heads: int = 2, window: int = 0, max_len: int = 1024,
                 rotary: bool = True, rotary_base: float = 10000.0):
        super().__init__(d_model)
        self.n_heads = n_heads
        self.d_head = check_heads("attention", d_model, n_heads)
        self.window = check_int("attention: window (0: full attention)", window, low=0)
        self.max_len = check_int("attention: max_len", max_len)
        if not rotary_base > 1:
            raise SeqmemError(f"attention: rotary_base must be > 1, got {rotary_base!r}")
        self.rotary, self.rotary_base = bool(rotary), float(rotary_base)
        self.span = self.window or self.max_len  # tokens each query sees, itself included
        self.n_cache = self.span - 1
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (..., h, d) of x (..., d_model)."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, self.d_head)).unbind(-3)
        return q, k, v

    def _rotate(self, z: Tensor, offset: int) -> Tensor:
        return rotary(z, offset, base=self.rotary_base) if self.rotary else z

    def forward(self, x, state=None, *, mode=None, chunk_size=None, final_state=True):
        """As Mixer.forward. From the empty cache (state None) the sequence attends to itself
        alone, and with final_state=False (a training batch) no cache is built at all: the
        cost of a forward is then that of its t tokens, whatever max_len is."""
        if self.check_mode(mode) != "parallel":
            return super().forward(x, state, mode=mode, chunk_size=chunk_size,
                                   final_state=final_state)
        self.check_input(x, ndim=3)
        if chunk_size is not None:
            check_int("attention: chunk_size", chunk_size)
        if x.shape[1] == 0 or state is not None:
            state = self._given_state(x, state)
            if x.shape[1] == 0:
                return x.new_zeros(x.shape), (state if final_state else None)
            return self._parallel(x, state, final_state)
        q, k, v = self._project(x)  # (b, t, h, d)
        y = attention_parallel(self._rotate(q, 0), self._rotate(k, 0), v, window=self.span)
        return self.out(merge_heads(y)), (self._keep(None, k, v) if final_state else None)

    def _keep(self, state: AttentionState | None, k: Tensor, v: Tensor) -> AttentionState:
        """The cache after appending the tokens k, v (b, t, h, d) to `state` (None: the empty
        cache): its last n_cache slots, in the state's dtype (k, v are bf16 under autocast)."""
        dtype = self.state_options()["dtype"] if state is None else state.k.dtype
        k, v = k.to(dtype), v.to(dtype)
        n, t = self.n_cache, k.shape[1]
        if t >= n:  # the new tokens alone fill the cache
            log_m = k.new_zeros(k.shape[0], n)
            return AttentionState(k[:, t - n:], v[:, t - n:], log_m)
        b, old = k.shape[0], n - t  # slots kept from before
        keys, values = k.new_empty(b, n, *k.shape[2:]), v.new_empty(b, n, *v.shape[2:])
        log_m = k.new_empty(b, n)
        if state is None:
            keys[:, :old], values[:, :old], log_m[:, :old] = 0.0, 0.0, EMPTY
        else:
            keys[:, :old], values[:, :old] = state.k[:, t:], state.v[:, t:]
            log_m[:, :old] = state.log_m[:, t:]
        keys[:, old:], values[:, old:], log_m[:, old:] = k, v, 0.0
        return AttentionState(keys, values, log_m)

    def _forward(self, x, state, mode, chunk_size):
        if mode == "recurrent":
            return self._step_loop(x, state)
        return self._parallel(x, state, True)

    def _parallel(self, x: Tensor, state: AttentionState, final_state: bool):
        """The parallel form from a cache; final_state=False: the new cache is not built."""
        b, t, _ = x.shape
        q, k, v = self._project(x)  # (b, t, h, d)
        # cache slots empty in every sequence (the leading ones) carry no weight: skip them,
        # keeping every key's rotary position
        filled = is_filled(state.log_m).any(0).nonzero()  # (n_filled, 1)
        first = int(filled[0, 0]) if len(filled) else self.n_cache
        if first == self.n_cache:  # an empty cache: the sequence alone (positions relative)
            y = attention_parallel(self._rotate(q, 0), self._rotate(k, 0), v, window=self.span)
        else:
            keys = torch.cat([state.k[:, first:], k], dim=1)  # (b, n_cache - first + t, h, d)
            values = torch.cat([state.v[:, first:], v], dim=1)
            log_m = torch.cat([state.log_m[:, first:], x.new_zeros(b, t)], dim=1)
            # positions relative to the first kept slot: rotary depends on differences only
            y = attention_parallel(self._rotate(q, self.n_cache - first),
                                   self._rotate(keys, 0), values, log_m,
                                   window=self.span)  # (b, t, h, d)
        new = self._keep(state, k, v) if final_state else None
        return self.out(merge_heads(y)), new

    def _step(self, x_t, state):
        q, k, v = self._project(x_t)  # (b, h, d)
        keys = torch.cat([state.k, k[:, None]], dim=1)  # (b, n_cache + 1, h, d)
        values = torch.cat([state.v, v[:, None]], dim=1)
        log_m = torch.cat([state.log_m, x_t.new_zeros(x_t.shape[0], 1)], dim=1)
        # slots empty in every sequence (the leading ones) carry no weight: attend from the
        # first filled one, each key keeping its slot's rotary position
        filled = is_filled(state.log_m).any(0).nonzero()  # (n_filled, 1)
        first = int(filled[0, 0]) if len(filled) else self.n_cache
        q = self._rotate(q[:, None], self.n_cache - first)[:, 0]  # the query after the cache
        y = attention_step(q, self._rotate(keys[:, first:], 0), values[:, first:],
                           log_m[:, first:])  # (b, h, d)
        new = AttentionState(keys[:, 1:], values[:, 1:], log_m[:, 1:])
        return self.out(merge_heads(y)), new

    def init_state(self, batch_size, *, device=None, dtype=None):
        kw = self.state_options(device, dtype)
        shape = (batch_size, self.n_cache, self.n_heads, self.d_head)
        return AttentionState(torch.zeros(shape, **kw), torch.zeros(shape, **kw),
                              torch.full((batch_size, self.n_cache), EMPTY, **kw))

    def state_size(self, t: int | None = None) -> int:
        """Floats of state per sequence: the cache's n_cache slots of 2 d_model + 1 floats.
        With t: the floats that hold tokens after t tokens, min(t, n_cache) (2 d_model + 1),
        which grows with t up to the capacity."""
        slots = self.n_cache if t is None else min(t, self.n_cache)
        return slots * (2 * self.d_model + 1)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, window={self.window}, "
                f"max_len={self.max_len}, rotary={self.rotary}")


@register("aaren")
class Aaren(Mixer):
    """Attention as an RNN: softmax attention of a learned query over every prefix.

    s_t = q . k_t / sqrt(d) per head, y_t = W_o (sum_{j<=t} e^{s_j} v_j / sum_{j<=t} e^{s_j});
    the state is (m, u, w) per head (see `seqmem.ops.attention`).

    Args:
        d_model: model width.
        n_heads: heads (a divisor of d_model), each with its own learned query.
    """

    modes = ("parallel", "recurrent")

    def __init__(self, d_model: int, *, n_heads: int = 2):
        super().__init__(d_model)
        self.n_heads = n_heads
        self.d_head = check_heads("aaren", d_model, n_heads)
        self.query = nn.Parameter(torch.randn(n_heads, self.d_head))  # (h, d)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _scores_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(x).unflatten(-1, (2, self.n_heads, self.d_head)).unbind(-3)
        s = (k * self.query).sum(-1) * self.d_head ** -0.5
        return s, v  # (..., h), (..., h, d)

    def _forward(self, x, state, mode, chunk_size):
        if mode == "recurrent":
            return self._step_loop(x, state)
        s, v = self._scores_values(x)  # (b, t, h), (b, t, h, d)
        y, state = aaren_scan(s, v, state)
        return self.out(merge_heads(y)), state

    def _step(self, x_t, state):
        s, v = self._scores_values(x_t)  # (b, h), (b, h, d)
        y, state = aaren_step(s, v, state)
        return self.out(merge_heads(y)), state

    def init_state(self, batch_size, *, device=None, dtype=None):
        kw = self.state_options(device, dtype)
        h = (batch_size, self.n_heads)
        return AarenState(torch.full(h, EMPTY, **kw), torch.zeros(h, **kw),
                          torch.zeros(*h, self.d_head, **kw))

    def state_size(self):
        return self.n_heads * (2 + self.d_head)

    def extra_repr(self):
        return f"d_model={self.d_model}, n_heads={self.n_heads}"
