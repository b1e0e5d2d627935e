"""Titans (Behrouz, Zhong & Mirrokni 2025, "Titans: Learning to Memorize at Test Time") and the
Miras models Moneta, Yaad and Memora (Behrouz, Razaviyayn, Zhong & Mirrokni 2025, "It's All
Connected"): a neural long-term memory trained at test time (`seqmem.ops.neural_memory`,
linear memories also `seqmem.ops.titans`), alone or with attention (MAC, MAG, MAL).

The memory branch is a layer of the linear-attention family: q/k/v projections, a short
causal convolution and SiLU, L2-normalised q and k per head, the memory op, then a per-head
RMSNorm gated by SiLU(W_g x) and an output projection.
"""

from __future__ import annotations

import inspect
import math
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from seqmem.errors import SeqmemError, check_choice, check_int
from seqmem.mixers.base import Mixer, register
from seqmem.mixers.parts import (
    SHORT_CONV_LEGACY_NAMES,
    ShortConv,
    check_conv_size,
    check_eps,
    check_heads,
    gated_rms_norm,
    merge_heads,
    rms_norm,
    split_heads,
)
from seqmem.ops import tuning
from seqmem.ops.attention import EMPTY
from seqmem.ops.neural_memory import (
    BIASES,
    GRADIENTS,
    RETENTIONS,
    MemorySpec,
    by_position,
    memory_read,
    mlp_shapes,
    n_weights,
    neural_memory,
    neural_memory_step,
    positions,
)
from seqmem.ops.titans import TitansState, titans, titans_step

PROBE_BATCH, PROBE_SEED = 4096, 0
MEMORIES = ("linear", "mlp")
VARIANTS = ("lmm", "mac", "mag", "mal")


def _probe(d_model: int, like: Tensor) -> Tensor:
    """A fixed N(0, 1) probe input (PROBE_BATCH, d_model) for data-dependent timescales."""
    gen = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn(PROBE_BATCH, d_model, generator=gen, dtype=torch.float64).to(like)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _number(owner: str, name: str, value, low: float = 0.0, *, strict: bool = True) -> float:
    """value as a float if it is a finite number > low (>= low if not strict)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value < math.inf
    if not (ok and (value > low if strict else value >= low)):
        raise SeqmemError(f"{owner}: {name} must be a finite number {'>' if strict else '>='} "
                          f"{low:g}, got {value!r}")
    return float(value)


class TitansMixerState(NamedTuple):
    """The memory: D = A - A_0 and momentum S (b, h, P), chunk-start D_start (b, h, P; P = 0
    for gradient="token") and position in the chunk pos (b,); the short conv's inputs (b, k-1,
    3 d); the attention cache of raw tokens (b, n, d) (MAC: also the memory read-outs h), its
    log-weights (b, n), and MAC's segment-start memory (b, h, P) and position in segment (b,)."""

    D: Tensor
    S: Tensor
    D_start: Tensor
    pos: Tensor
    conv: Tensor
    cache: Tensor
    cache_h: Tensor
    cache_log_m: Tensor
    seg_start: Tensor
    seg_pos: Tensor


@register("titans")
class Titans(Mixer):
    """Titans neural long-term memory (Behrouz, Zhong & Mirrokni 2025, sections 3-4), with the
    attentional biases and retention gates of Miras (Behrouz et al. 2025).

        q, k, v = SiLU(conv(W_{q,k,v} x)),  q, k L2-normalised per head
        alpha = sigmoid(w_alpha x + b_alpha), eta = sigmoid(w_eta x + b_eta) (0 without
        momentum), theta = theta_max * sigmoid(w_theta x + b_theta)    (per token and head)
        S_t = eta_t S_{t-1} - theta_t grad bias(M(k_t) - v_t),  A_t = (1 - alpha_t) A_{t-1} + S_t,
        W_t = phi(A_t),  m_t = W_o (RMSNorm(M(q_t; W_t)) * SiLU(W_g x_t))

    (`seqmem.ops.neural_memory` gives M, the biases, the retention gates phi and the gradient
    point.) Variants, with persistent memory P (n_persistent learned tokens, projected to keys
    and values and visible to every query) and softmax attention over [P, ...] (no positions):

        lmm  y = m (the memory alone)
        mac  per segment of `segment` tokens: h_t = M(W_Q' x_t; W at the segment's start),
             u_t = Attn(x_t; [P, h_{s..t}, x_{s..t}]), m_t the memory branch on u,
             y = W_out(RMSNorm(u) * sigmoid(RMSNorm(m)))       (memory as context)
        mag  u = sliding-window Attn(x; [P, x_{t-window+1..t}]), m the memory branch on x,
             y = W_out(RMSNorm(u) * sigmoid(RMSNorm(m)))       (memory as gate)
        mal  y = W_out sliding-window Attn(m; [P, m_{t-window+1..t}])   (memory as layer; a
             plain `titans` layer before an `attention` layer of a hybrid pattern is the same
             idea across layers)

    The persistent tokens are keys and values of the attention, not inputs of the memory, so
    that a fresh state is data- and parameter-independent. The state carries the attention's
    cache (MAC: the current segment) and the memory at the segment's start.

    Args:
        d_model: input and output width.
        n_heads: memory and attention heads; d_model must be a multiple.
        conv_size: width of the short causal convolutions (>= 2).
        theta_max: largest test-time learning rate theta (> 0); None: 0.5 for the linear
            memory (stable for unit keys), 0.05 for the mlp memory (whose curvature grows with
            its weights; 0.5 diverges within a few dozen tokens).
        norm_eps: epsilon of the RMSNorms.
        memory: "linear" (one matrix per head, the default) or "mlp" (a residual MLP).
        memory_depth: layers of the mlp memory (>= 2).
        memory_width: hidden width of the mlp memory, in multiples of the head width.
        gradient: "token" (every token's gradient at the memory just before it, the exact
            rule) or "chunk" (all tokens of a chunk of memory_chunk tokens take it at the
            chunk's start weights, the paper's parallel training form).
        memory_chunk: chunk length of gradient="chunk".
        bias: attentional bias "l2", "lp" (sum |e|^p) or "huber" (coordinate-wise, delta).
        p: exponent of the lp bias (>= 1).
        delta: threshold of the huber bias (> 0).
        retention: retention gate "l2" (weight decay), "lq" (A / ||A||_q^(q-2), Moneta) or
            "kl" (row softmax, Memora).
        q: exponent of the lq retention (>= 2).
        momentum: keep the momentum (surprise) S; False: plain gradient descent (eta = 0).
        variant: "lmm" (memory only), "mac", "mag" or "mal" (see above).
        n_persistent: persistent memory tokens (needs an attention variant).
        window: sliding-window span of mag and mal, the token itself included (>= 1).
        segment: segment length of mac (>= 1).
    """

    modes = ("chunk", "recurrent")
    legacy_names = SHORT_CONV_LEGACY_NAMES

    def __init__(self, d_model: int, *, n_heads: int = 2, conv_size: int = 4,
                 theta_max: float | None = None, norm_eps: float = 1e-5,
                 memory: str = "linear",
                 memory_depth: int = 2, memory_width: int = 2, gradient: str = "token",
                 memory_chunk: int = 16, bias: str = "l2", p: float = 3.0, delta: float = 1.0,
                 retention: str = "l2", q: float = 4.0, momentum: bool = True,
                 variant: str = "lmm", n_persistent: int = 0, window: int = 8,
                 segment: int = 16):
        super().__init__(d_model)
        who = self.name or "titans"
        self.d_head = e = check_heads(who, d_model, n_heads)
        self.conv_size = check_conv_size(who, conv_size)
        self.norm_eps = check_eps(who, norm_eps)
        self.memory = check_choice(f"{who} memory", memory, MEMORIES)
        if theta_max is None:
            theta_max = 0.5 if self.memory == "linear" else 0.05
        self.n_heads, self.theta_max = n_heads, _number(who, "theta_max", theta_max)
        self.variant = check_choice(f"{who} variant", variant, VARIANTS)
        depth = 1
        if self.memory == "mlp":
            depth = check_int(f"{who}: memory_depth", memory_depth, low=2)
        check_int(f"{who}: memory_width", memory_width)
        self.memory_depth, self.memory_width = depth, memory_width
        self.momentum = bool(momentum)
        self.spec = MemorySpec(
            mlp_shapes(e, e, depth, memory_width), residual=depth > 1,
            bias=check_choice(f"{who} bias", bias, BIASES),
            p=_number(who, "p", p, 1.0, strict=False),
            delta=_number(who, "delta", delta),
            retention=check_choice(f"{who} retention", retention, RETENTIONS),
            q=_number(who, "q", q, 2.0, strict=False),
            gradient=check_choice(f"{who} gradient", gradient, GRADIENTS),
            chunk=check_int(f"{who}: memory_chunk", memory_chunk))
        self.n_params = n_weights(self.spec.shapes)
        self.scale = e ** -0.5 if depth == 1 else 1.0
        # the linear l2 memory with per-token gradients has the exact chunked form of ops.titans
        self.exact_linear = (depth == 1 and self.spec.bias == "l2"
                             and self.spec.retention == "l2" and self.spec.gradient == "token")
        self.n_persistent = check_int(f"{who}: n_persistent", n_persistent, low=0)
        if self.n_persistent and self.variant == "lmm":
            raise SeqmemError(f"{who}: n_persistent needs an attention variant (mac, mag, mal), "
                              f"got variant='lmm'")
        self.window = check_int(f"{who}: window", window)
        self.segment = check_int(f"{who}: segment", segment)

        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=False)
        self.conv = ShortConv(3 * d_model, conv_size)  # over q, k, v
        self.gate_proj = nn.Linear(d_model, 3 * n_heads)  # alpha, eta, theta logits
        # forgetting rates alpha log-spaced over [1e-3, 1e-1] across heads, momentum 0.9,
        # learning rate theta_max / 2
        alphas = [math.exp(math.log(1e-3) + (math.log(1e-1) - math.log(1e-3)) * i
                           / max(n_heads - 1, 1)) for i in range(n_heads)]
        gbias = [_logit(a) for a in alphas] + [_logit(0.9)] * n_heads + [0.0] * n_heads
        with torch.no_grad():
            self.gate_proj.bias.copy_(torch.tensor(gbias))
        self.g_proj = nn.Linear(d_model, d_model, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(e))
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        if depth > 1:  # learned initial weights A_0 of the deep memory, per head
            init = [torch.randn(n_heads, i * o) / math.sqrt(i) for i, o in self.spec.shapes]
            self.memory_init = nn.Parameter(torch.cat(init, dim=-1))  # (h, P)
        if self.variant != "lmm":
            self.attn_q = nn.Linear(d_model, d_model, bias=False)
            self.attn_kv = nn.Linear(d_model, 2 * d_model, bias=False)
            self.attn_out = nn.Linear(d_model, d_model, bias=False)
            self.persistent = nn.Parameter(torch.randn(self.n_persistent, d_model))
        if self.variant in ("mac", "mag"):
            self.u_norm = nn.Parameter(torch.ones(d_model))
            self.m_norm = nn.Parameter(torch.ones(d_model))
        if self.variant == "mac":
            self.mac_q = nn.Linear(d_model, d_model, bias=False)
        self.n_cache = {"lmm": 0, "mac": self.segment - 1}.get(self.variant, self.window - 1)

    # ---- the memory branch ----------------------------------------------------------------
    def _gates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """alpha, eta, theta (..., h) from x (..., d)."""
        alpha, eta, theta = self.gate_proj(x).chunk(3, dim=-1)  # (..., h) each
        eta = eta.sigmoid() if self.momentum else torch.zeros_like(eta)
        return alpha.sigmoid(), eta, self.theta_max * theta.sigmoid()

    def _qkv(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (..., h, d_head) from the convolved projections u (..., 3 d)."""
        q, k, v = rearrange(F.silu(u), "... (three h d) -> three ... h d", three=3,
                            h=self.n_heads)
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v

    def _out(self, o: Tensor, x: Tensor) -> Tensor:
        """W_o (RMSNorm(o) * SiLU(W_g x)): o (..., h, d_head), x (..., d) -> (..., d)."""
        gate = split_heads(self.g_proj(x), self.n_heads)  # (..., h, d_head)
        o = gated_rms_norm(o, self.norm_weight, gate, self.norm_eps)
        return self.o_proj(merge_heads(o))

    def _init(self) -> Tensor | None:
        return self.memory_init if self.memory_depth > 1 else None

    def _memory(self, x: Tensor, st: TitansMixerState, mode: str | None, chunk_size: int = 64):
        """The memory branch over x (b, t, d) -> m (b, t, d), state; mode None: x is one token
        (t = 1), run by the step."""
        if mode is None:
            x = x[:, 0]
        proj = self.qkv_proj(x)
        u, conv = self.conv.step(proj, st.conv) if mode is None else self.conv(proj, st.conv)
        q, k, v = self._qkv(u)  # (b, [t,] h, d_head)
        alpha, eta, theta = self._gates(x)  # (b, [t,] h)
        b, h, e = x.shape[0], self.n_heads, self.d_head
        mem = (st.D, st.S, st.D_start, st.pos)
        if self.exact_linear:
            M0 = TitansState(st.D.view(b, h, e, e), st.S.view(b, h, e, e))
            if mode is None:
                o, (M, S) = titans_step(q, k, v, alpha, eta, theta, M0)
            else:
                o, (M, S) = titans(q, k, v, alpha, eta, theta, state=M0, mode=mode,
                                   chunk_size=tuning.resolve("titans", chunk_size))
            mem = (M.flatten(-2), S.flatten(-2), st.D_start, st.pos)
        elif mode is None:
            o, mem = neural_memory_step(q, k, v, alpha, eta, theta, mem, spec=self.spec,
                                        init=self._init(), scale=self.scale)
        else:
            o, mem = neural_memory(q, k, v, alpha, eta, theta, spec=self.spec, state=mem,
                                   init=self._init(), scale=self.scale, mode=mode)
        m = self._out(o, x)
        return (m[:, None] if mode is None else m), st._replace(
            D=mem[0], S=mem[1], D_start=mem[2], pos=mem[3], conv=conv)

    # ---- attention ------------------------------------------------------------------------
    def _attend(self, xq: Tensor, tokens: Tensor, log_m: Tensor) -> Tensor:
        """softmax attention of queries W_q xq (b, t, d) over [P, tokens (b, s, d)] with
        log-weights log_m (b, t, s) on the tokens (EMPTY: unseen) -> (b, t, d)."""
        b = xq.shape[0]
        keys = torch.cat([self.persistent.to(tokens).expand(b, -1, -1), tokens], dim=1)
        bias = F.pad(log_m, (self.n_persistent, 0))  # persistent tokens always seen
        q = split_heads(self.attn_q(xq), self.n_heads)  # (b, t, h, e)
        k, v = (split_heads(z, self.n_heads) for z in self.attn_kv(keys).chunk(2, dim=-1))
        scores = torch.einsum("bthe,bshe->bhts", q, k) * self.d_head ** -0.5
        w = torch.softmax(scores + bias[:, None], dim=-1)  # (b, h, t, n_p + s)
        return merge_heads(torch.einsum("bhts,bshe->bthe", w, v))

    def _keep(self, cache: Tensor, log_m: Tensor, new: Tensor) -> tuple[Tensor, Tensor]:
        """The last n_cache slots of the cache (b, n, d) and its log-weights (b, n) after
        appending new (b, t, d)."""
        c = torch.cat([cache, new], dim=1)
        m = torch.cat([log_m, new.new_zeros(new.shape[:2])], dim=1)
        return c[:, c.shape[1] - self.n_cache:], m[:, m.shape[1] - self.n_cache:]

    def _window(self, x: Tensor, st: TitansMixerState) -> tuple[Tensor, TitansMixerState]:
        """Sliding-window attention of x (b, t, d) over [P, cache, x] -> (b, t, d), state."""
        b, t, _ = x.shape
        n = self.n_cache
        i = torch.arange(t, device=x.device)[:, None]  # query positions 0..t-1
        j = torch.arange(-n, t, device=x.device)[None]  # key positions, the cache before 0
        seen = (j <= i) & (j > i - self.window)  # (t, n + t)
        keys_m = torch.cat([st.cache_log_m, x.new_zeros(b, t)], dim=1)  # (b, n + t)
        log_m = torch.where(seen, keys_m[:, None], EMPTY)  # (b, t, n + t)
        y = self._attend(x, torch.cat([st.cache, x], dim=1), log_m)
        cache, cache_log_m = self._keep(st.cache, st.cache_log_m, x)
        return y, st._replace(cache=cache, cache_log_m=cache_log_m)

    def _gate(self, u: Tensor, m: Tensor) -> Tensor:
        return self.attn_out(rms_norm(u, self.u_norm, self.norm_eps)
                             * torch.sigmoid(rms_norm(m, self.m_norm, self.norm_eps)))

    def _mac_part(self, x: Tensor, st: TitansMixerState, mode: str | None, chunk_size: int):
        """MAC over x (b, L, d), L tokens inside one segment from position st.seg_pos."""
        b, L, _ = x.shape
        at = int(positions(st.seg_pos[:1], self.segment))
        if at == 0:  # a segment begins: its memory, an empty cache
            st = st._replace(seg_start=st.D, cache=torch.zeros_like(st.cache),
                             cache_log_m=torch.full_like(st.cache_log_m, EMPTY))
        A = st.seg_start if self._init() is None else st.seg_start + self._init()
        hq = F.normalize(split_heads(self.mac_q(x), self.n_heads), dim=-1)  # (b, L, h, e)
        hr = merge_heads(memory_read(A[:, None], hq, self.spec, self.scale))  # (b, L, d)
        n = self.n_cache
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        cache_m = st.cache_log_m[:, None].expand(b, L, n)
        part_m = torch.where(causal, 0.0, EMPTY).to(x).expand(b, L, L)
        log_m = torch.cat([cache_m, part_m, cache_m, part_m], dim=-1)  # (b, L, 2 (n + L))
        u = self._attend(x, torch.cat([st.cache_h, hr, st.cache, x], dim=1), log_m)
        m, st = self._memory(u, st, mode, chunk_size)
        y = self._gate(u, m)
        end = (at + L) % self.segment
        if end == 0:  # the segment is complete: its cache is emptied
            cache, cache_h = torch.zeros_like(st.cache), torch.zeros_like(st.cache_h)
            cache_log_m = torch.full_like(st.cache_log_m, EMPTY)
        else:
            cache, cache_log_m = self._keep(st.cache, st.cache_log_m, x)
            cache_h, _ = self._keep(st.cache_h, st.cache_log_m, hr)
        return y, st._replace(cache=cache, cache_h=cache_h, cache_log_m=cache_log_m,
                              seg_pos=torch.full_like(st.seg_pos, float(end)))

    # ---- the contract ---------------------------------------------------------------------
    def _run(self, x: Tensor, st: TitansMixerState, mode: str | None, chunk_size: int = 64):
        """Every variant over x (b, t, d); mode None: x is one token (b, 1, d), by the step."""
        if self.variant == "mac":  # sequences at different positions in a segment: groups
            return by_position(partial(self._mac, mode=mode, chunk_size=chunk_size),
                               positions(st.seg_pos, self.segment), (x,), st)
        m, st = self._memory(x, st, mode, chunk_size)
        if self.variant == "lmm":
            return m, st
        if self.variant == "mal":
            y, st = self._window(m, st)
            return self.attn_out(y), st
        u, st = self._window(x, st)
        return self._gate(u, m), st

    def _mac(self, x: Tensor, st: TitansMixerState, *, mode, chunk_size):
        """MAC over x (b, t, d), the sequences all at one position in their segment."""
        ys, s, t = [], 0, x.shape[1]
        while s < t:  # one part per segment
            e = min(t, s + self.segment - int(positions(st.seg_pos[:1], self.segment)))
            y, st = self._mac_part(x[:, s:e], st, mode, chunk_size)
            ys.append(y)
            s = e
        return torch.cat(ys, dim=1), st

    def _forward(self, x, state, mode, chunk_size):
        return self._run(x, state, mode, chunk_size)

    def _step(self, x_t, state):
        y, st = self._run(x_t[:, None], state, None)
        return y[:, 0], st

    def init_state(self, batch_size, *, device=None, dtype=None):
        kw = self.state_options(device, dtype)
        b, h, P, d = batch_size, self.n_heads, self.n_params, self.d_model
        z = torch.zeros(b, h, P, **kw)
        chunked = self.spec.gradient == "chunk"
        mac = self.variant == "mac"
        return TitansMixerState(
            z, z.clone(), torch.zeros(b, h, P if chunked else 0, **kw),
            torch.zeros(b, **kw), self.conv.init_state(b, **kw),
            torch.zeros(b, self.n_cache, d, **kw),
            torch.zeros(b, self.n_cache if mac else 0, d, **kw),
            torch.full((b, self.n_cache), EMPTY, **kw),
            torch.zeros(b, h, P if mac else 0, **kw), torch.zeros(b, **kw))

    def state_size(self):
        s = self.init_state(1, device="meta")
        return sum(z.numel() for z in s)

    @torch.no_grad()
    def timescales(self) -> Tensor:
        """Per channel (of the memory read-out, head-major), the memory time constant of its
        head: -1 / mean log max(1 - alpha, eta) over a fixed N(0, 1) probe input, i.e. the
        e-folding time of the slower of forgetting and momentum, in steps."""
        alpha, eta, _ = self._gates(_probe(self.d_model, self.o_proj.weight))  # (n, h)
        keep = torch.maximum(1 - alpha, eta).double().clamp(1e-300, 1.0)  # (n, h)
        ts = (-1 / torch.log(keep).mean(0)).clamp(max=1e12)  # (h,)
        return ts.to(alpha.dtype).repeat_interleave(self.d_head)  # (d,)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, memory={self.memory}, "
                f"gradient={self.spec.gradient}, bias={self.spec.bias}, "
                f"retention={self.spec.retention}, variant={self.variant}")


def _preset(name: str, paper: str, **defaults) -> type[Titans]:
    """A registered Titans whose defaults are a Miras model's choices."""
    sig = inspect.signature(Titans.__init__)
    params = [p.replace(default=defaults[p.name]) if p.name in defaults else p
              for p in sig.parameters.values()]

    def __init__(self, d_model, **kw):
        Titans.__init__(self, d_model, **{**defaults, **kw})

    __init__.__signature__ = sig.replace(parameters=params)
    __init__.__annotations__ = dict(Titans.__init__.__annotations__)
    choices = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
    doc = Titans.__doc__ or ""
    cls = type(name.capitalize(), (Titans,), {
        "__init__": __init__, "__module__": __name__,
        "__doc__": f"{paper}: the Titans mixer with {choices}.\n\n    "
                   + doc[doc.index("Args:"):]})
    return register(name)(cls)


MIRAS = dict(memory="mlp", momentum=False, theta_max=0.1, gradient="chunk")
Moneta = _preset("moneta", "Moneta (Miras, Behrouz et al. 2025): l_p bias, l_q retention",
                 bias="lp", p=3.0, retention="lq", q=4.0, **MIRAS)
Yaad = _preset("yaad", "Yaad (Miras, Behrouz et al. 2025): Huber bias, l2 retention",
               bias="huber", retention="l2", **MIRAS)
Memora = _preset("memora", "Memora (Miras, Behrouz et al. 2025): l2 bias, KL retention",
                 bias="l2", retention="kl", **MIRAS)
