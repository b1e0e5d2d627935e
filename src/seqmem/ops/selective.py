"""Selective state spaces: Mamba's selective scan (Gu & Dao 2023) and Mamba-2's state-space
duality, SSD (Dao & Gu 2024).

    selective_scan   per channel d and state index n, with dt = softplus?(delta + delta_bias):
                     h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] B_t[n] u_t[d]
                     y_t[d] = sum_n C_t[n] h_t[d, n] + D[d] u_t[d],  then y * silu(z) if z given
    ssd              per head, a scalar log decay a_t (<= 0) and a (p, n) state:
                     h_t = exp(a_t) h_{t-1} + x_t^T B_t,   y_t = h_t C_t

Layout: selective_scan takes u, delta, z (b, t, d), A (d, n), B, C (b, t, n), D, delta_bias
(d,), state (b, d, n); ssd takes x (b, t, h, p), a (b, t, h), B, C (b, t, h, n), state
(b, h, p, n). States are zeros when None; every op returns (y, final state). `<op>_step` is the
specification; `mode` picks the form.

Negative eigenvalues (Grazzi et al. 2025, "Unlocking State-Tracking in Linear RNNs Through
Negative Eigenvalues"): the `_signed` variants take the same inputs but use the transition
2 exp(.) - 1, in (-1, 1], instead of exp(.), in (0, 1]. A transition that can be negative has
no logarithm, so every form below handles it exactly: the chunked scan multiplies transitions
directly, and the SSD forms split a product of transitions into a log-magnitude (summed) and a
sign (a parity of the count of negative factors).

Forms of `selective_scan`. Its decay differs per (d, n), so any exact form touches t * d * n
transitions; a masked (L, L) quadratic form per d would multiply that work by the chunk length
(and by log L for the dyadic blocks of `ops.linear_attention.gla_chunk`). On a CPU the step
loop is already close to that floor, except for autograd's per-step bookkeeping, so "chunk"
is Mamba's own hardware-aware algorithm written for the CPU: the scan runs chunk by chunk
without recording a graph, keeping only the state at every chunk's start, and a hand-written
backward recomputes each chunk's states from its start and runs the reverse scan
(dL/dh_{t-1} = a_t dL/dh_t + C_{t-1} dL/dy_{t-1}). No logarithm or positive exponent is
ever formed: transitions |a| <= 1 are multiplied, so nothing overflows however strong the
decay. "recurrent" is the loop of the step, differentiated by autograd. Measured at d = 512,
n = 16, t = 2048, batch 4, float32 on a 2-core CPU (experiments/speed/mamba_speed.py), the
chunked scan runs forward + backward 2 to 3 times faster than the loop; the exponentials and
the passes over (t, d, n) that any exact form needs bound it from going much further.

Forms of `ssd` (scalar decay per head, so the chunked form is matrix products): "recurrent"
(the loop), "quadratic" (one masked attention-like form over the whole sequence, plus the
initial state's contribution) and "chunk" (the SSD algorithm: the quadratic form inside chunks,
the (p, n) state carried from chunk to chunk). Both are `ops.scalar_decay_chunk` (q = C,
k = B, v = x, the state transposed), with its hand-written backward: the forward keeps the
inputs and the state at every chunk's start, the backward recomputes the (L, L) blocks of all
chunks at once and runs the reverse state pass. Decays whose cumulative logs stay within
+-30 in a chunk are factored into the products' operands; stronger ones enter as
exp(c_t - c_s) with s <= t, masked before the exponential: no exponent is positive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmem.errors import check_choice, check_int
from seqmem.ops import backends, tuning
from seqmem.ops.loops import float32_recurrence, step_loop
from seqmem.ops.scalar_decay_chunk import scalar_decay_chunked

SELECTIVE_SCAN_MODES = ("chunk", "recurrent")
SSD_MODES = ("chunk", "quadratic", "recurrent")


def _transition(log_decay: Tensor, signed: bool) -> Tensor:
    """exp(log_decay), or 2 exp(log_decay) - 1 with negative eigenvalues."""
    return 2 * log_decay.exp() - 1 if signed else log_decay.exp()


def _delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    """dt = softplus?(delta + delta_bias)."""
    if delta_bias is not None:
        delta = delta + delta_bias
    return F.softplus(delta) if delta_softplus else delta


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """y + D u, then gated by silu(z)."""
    if D is not None:
        y = y + D * u
    if z is not None:
        y = y * F.silu(z)
    return y


# ---- selective scan: steps -----------------------------------------------------------------
def _selective_step(u_t, delta_t, A, B_t, C_t, D, z_t, delta_bias, delta_softplus, state,
                    signed):
    dt = _delta(delta_t, delta_bias, delta_softplus)  # (b, d)
    if state is None:
        state = u_t.new_zeros(*u_t.shape, A.shape[-1])
    a = _transition(dt[..., None] * A, signed)  # (b, d, n)
    h = a * state + (dt * u_t)[..., None] * B_t[:, None, :]  # (b, d, n)
    y = torch.einsum("bdn,bn->bd", h, C_t)  # (b, d)
    return _finish(y, u_t, D, z_t), h


@float32_recurrence
def selective_scan_step(u_t: Tensor, delta_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor,
                        D: Tensor | None = None, z_t: Tensor | None = None, *,
                        delta_bias: Tensor | None = None, delta_softplus: bool = False,
                        state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One step of Mamba's selective scan (the specification): u_t, delta_t, z_t (b, d), A (d, n),
    B_t, C_t (b, n), state (b, d, n) -> y_t (b, d), h_t (b, d, n), with

        dt = softplus?(delta_t + delta_bias),  h_t = exp(dt A) h_{t-1} + dt B_t u_t,
        y_t = <C_t, h_t> + D u_t,  y_t * silu(z_t) if z_t is given."""
    return _selective_step(u_t, delta_t, A, B_t, C_t, D, z_t, delta_bias, delta_softplus,
                           state, False)


@float32_recurrence
def selective_scan_signed_step(u_t: Tensor, delta_t: Tensor, A: Tensor, B_t: Tensor,
                               C_t: Tensor, D: Tensor | None = None, z_t: Tensor | None = None,
                               *, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                               state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """`selective_scan_step` with negative eigenvalues: h_t = (2 exp(dt A) - 1) h_{t-1} + ..."""
    return _selective_step(u_t, delta_t, A, B_t, C_t, D, z_t, delta_bias, delta_softplus,
                           state, True)


# ---- selective scan: the chunked scan with a hand-written backward --------------------------
def _chunk_states(dt: Tensor, A: Tensor, B: Tensor, v: Tensor, h: Tensor, signed: bool,
                  a: Tensor, hs: Tensor) -> None:
    """A chunk's transitions a_l and states h_l = a_l h_{l-1} + v_l B_l from h, written into
    the buffers a, hs (l, b, d, n): dt, v (l, b, d), B (l, b, n), A (d, n), h (b, d, n).

    Buffers are reused from chunk to chunk: a fresh tensor of this size costs more in page
    faults than the arithmetic done on it."""
    torch.mul(dt[..., None], A, out=a).exp_()
    if signed:
        a.mul_(2).sub_(1)
    torch.mul(v[..., None], B[:, :, None, :], out=hs)  # v B, then h in place
    hs[0].addcmul_(a[0], h)
    for i in range(1, a.shape[0]):
        hs[i].addcmul_(a[i], hs[i - 1])


def _buffers(k: int, like: Tensor, shape) -> list[Tensor]:
    return [like.new_empty(shape) for _ in range(k)]


class _ChunkedScan(torch.autograd.Function):
    """h_t = a_t h_{t-1} + v_t B_t, y_t = <C_t, h_t>, a_t = exp(dt_t A) (2 exp(dt_t A) - 1 when
    signed); time-first inputs dt, v (t, b, d), B, C (t, b, n), A (d, n), h0 (b, d, n)."""

    @staticmethod
    def forward(ctx, dt, A, B, C, v, h0, chunk_size, signed):
        t = dt.shape[0]
        y = v.new_empty(v.shape)  # (t, b, d)
        a_buf, hs_buf, w_buf = _buffers(3, v, (chunk_size, *h0.shape))  # (L, b, d, n)
        n_chunks = -(-t // chunk_size)
        starts = h0.new_empty(n_chunks, *h0.shape)  # the state at every chunk's start
        starts[0].copy_(h0)
        for i in range(n_chunks):
            s, e = i * chunk_size, min((i + 1) * chunk_size, t)
            a, hs, W = a_buf[:e - s], hs_buf[:e - s], w_buf[:e - s]
            _chunk_states(dt[s:e], A, B[s:e], v[s:e], starts[i], signed, a, hs)
            # <C, h> as a product and a sum: a batched matrix-vector product with n = 16 columns
            # is three times slower
            torch.sum(torch.mul(hs, C[s:e, :, None, :], out=W), -1, out=y[s:e])
            if i + 1 < n_chunks:
                starts[i + 1].copy_(hs[-1])
        h = hs[-1].clone()
        ctx.save_for_backward(dt, A, B, C, v, starts)
        ctx.chunk_size, ctx.signed = chunk_size, signed
        return y, h

    @staticmethod
    @float32_recurrence
    def backward(ctx, gy, gh):
        dt, A, B, C, v, starts = ctx.saved_tensors
        L, signed, t = ctx.chunk_size, ctx.signed, dt.shape[0]
        gy = torch.zeros_like(v) if gy is None else gy.contiguous()
        g = torch.zeros_like(starts[0]) if gh is None else gh  # dL/dh at the chunk's end
        gdt, gv = torch.empty_like(dt), torch.empty_like(v)
        gB, gC, gA = torch.empty_like(B), torch.empty_like(C), torch.zeros_like(A)
        bufs = _buffers(4, v, (L, *starts.shape[1:]))  # (L, b, d, n)
        for i in reversed(range(starts.shape[0])):
            s, e = i * L, min((i + 1) * L, t)
            a, hs, G, W = (buf[:e - s] for buf in bufs)
            _chunk_states(dt[s:e], A, B[s:e], v[s:e], starts[i], signed, a, hs)  # recomputed
            torch.matmul(gy[s:e, :, None, :], hs, out=gC[s:e, :, None, :])
            # G_l = dL/dh_l by every path: C_l gy_l + a_{l+1} G_{l+1} (the reverse scan)
            torch.mul(gy[s:e, :, :, None], C[s:e, :, None, :], out=G)  # (l, b, d, n)
            G[-1] += g
            for j in reversed(range(e - s - 1)):
                G[j].addcmul_(a[j + 1], G[j + 1])
            g = a[0] * G[0]  # dL/dh at the chunk's start
            torch.sum(torch.mul(G, B[s:e, :, None, :], out=W), -1, out=gv[s:e])
            torch.matmul(v[s:e, :, None, :], G, out=gB[s:e, :, None, :])
            # dL/d(dt A) = G_l h_{l-1} da/d(dt A), da/d(dt A) = a (a + 1 when signed), into G
            G[1:].mul_(hs[:-1])
            G[0].mul_(starts[i])
            if signed:
                G.addcmul_(G, a)
            else:
                G.mul_(a)
            torch.sum(torch.mul(G, A, out=W), -1, out=gdt[s:e])
            gA += torch.mul(G, dt[s:e, :, :, None], out=W).sum((0, 1))
        return gdt, gA, gB, gC, gv, g, None, None


# floats per buffer of the chunked scan (chunk length * b * d * n): a working set that stays in
# a CPU's cache (at b = 64, d = 128, n = 16 a chunk of 64 tokens makes 33 MB buffers, which
# spill to memory at every pass; 4 tokens a chunk stay in cache and ran fastest)
SCAN_WORKING_SET = 1 << 19


def scan_chunk(chunk_size: int | None, t: int, state_floats: int) -> int:
    """The chunk length of the chunked selective scan: at most chunk_size (None: no bound) and
    t, and at most SCAN_WORKING_SET // state_floats tokens (at least 1), so that its (chunk,
    b, d, n) buffers stay in cache. Any length gives the same result."""
    fit = max(1, SCAN_WORKING_SET // max(1, state_floats))
    return max(1, min(t, fit if chunk_size is None else min(chunk_size, fit)))


def _selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, state, mode,
                    chunk_size, signed, op):
    check_choice(f"{op} mode", mode, SELECTIVE_SCAN_MODES)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size)
    b, t, d = u.shape
    if state is None:
        state = u.new_zeros(b, d, A.shape[-1])
    if t == 0:
        return u.new_zeros(b, 0, d), state
    if mode == "recurrent":
        def step(u_t, delta_t, B_t, C_t, h):
            return _selective_step(u_t, delta_t, A, B_t, C_t, None, None, delta_bias,
                                   delta_softplus, h, signed)

        y, h = step_loop(step, (u, delta, B, C), state)  # (b, t, d)
        return _finish(y, u, D, z), h
    dt = _delta(delta, delta_bias, delta_softplus)  # (b, t, d)
    y, h = _ChunkedScan.apply(
        dt.transpose(0, 1).contiguous(), A.contiguous(), B.transpose(0, 1).contiguous(),
        C.transpose(0, 1).contiguous(), (dt * u).transpose(0, 1).contiguous(), state,
        scan_chunk(chunk_size, t, state.numel()), signed)
    return _finish(y.transpose(0, 1), u, D, z), h


@float32_recurrence
def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Tensor | None = None, z: Tensor | None = None, *,
                   delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   state: Tensor | None = None, mode: str = "chunk",
                   chunk_size: int | None = 64) -> tuple[Tensor, Tensor]:
    """Mamba's selective scan (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with
    Selective State Spaces"), the loop of `selective_scan_step`: u, delta, z (b, t, d),
    A (d, n), B, C (b, t, n), D, delta_bias (d,), state (b, d, n) -> y (b, t, d), h_T.

    mode "chunk" (default): the chunked scan with a hand-written backward (module docstring),
    in chunks of at most chunk_size tokens (None: no bound) and at most as many as keep a
    (chunk, b, d, n) buffer within SCAN_WORKING_SET floats (`scan_chunk`): the length only
    sets the working set, never the result; "recurrent": the step loop, differentiated by
    autograd."""
    kernel = backends.kernel("selective_scan", mode, u, inputs=(u, delta, B, C, z),
                             state=state)
    if kernel is not None:  # a CUDA kernel (ops.backends); else seqmem's own forms
        return backends.mamba_selective_scan(kernel, u, delta, A, B, C, D, z,
                                             delta_bias=delta_bias,
                                             delta_softplus=delta_softplus)
    if chunk_size is None:  # this machine's measured best, else only the working-set bound
        chunk_size = tuning.measured("selective_scan")
    return _selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, state, mode,
                           chunk_size, False, "selective_scan")


@float32_recurrence
def selective_scan_signed(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                          D: Tensor | None = None, z: Tensor | None = None, *,
                          delta_bias: Tensor | None = None, delta_softplus: bool = False,
                          state: Tensor | None = None, mode: str = "chunk",
                          chunk_size: int | None = 64) -> tuple[Tensor, Tensor]:
    """`selective_scan` with negative eigenvalues (Grazzi et al. 2025): the transition is
    2 exp(dt A) - 1 in (-1, 1]; the loop of `selective_scan_signed_step`."""
    if chunk_size is None:  # this machine's measured best, else only the working-set bound
        chunk_size = tuning.measured("selective_scan_signed")
    return _selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, state, mode,
                           chunk_size, True, "selective_scan_signed")


# ---- SSD -------------------------------------------------------------------------------------
def _ssd_step(x_t, a_t, B_t, C_t, state, signed):
    if state is None:
        state = x_t.new_zeros(*x_t.shape, B_t.shape[-1])
    h = _transition(a_t, signed)[..., None, None] * state + x_t[..., :, None] * B_t[..., None, :]
    return torch.einsum("bhpn,bhn->bhp", h, C_t), h  # (b, h, p), (b, h, p, n)


@float32_recurrence
def ssd_step(x_t: Tensor, a_t: Tensor, B_t: Tensor, C_t: Tensor, state: Tensor | None = None
             ) -> tuple[Tensor, Tensor]:
    """One SSD step (the specification): x_t (b, h, p), a_t (b, h), B_t, C_t (b, h, n),
    state (b, h, p, n) -> y_t (b, h, p), h_t, with h_t = exp(a_t) h_{t-1} + x_t^T B_t,
    y_t = h_t C_t."""
    return _ssd_step(x_t, a_t, B_t, C_t, state, False)


@float32_recurrence
def ssd_signed_step(x_t: Tensor, a_t: Tensor, B_t: Tensor, C_t: Tensor,
                    state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """`ssd_step` with negative eigenvalues: h_t = (2 exp(a_t) - 1) h_{t-1} + x_t^T B_t."""
    return _ssd_step(x_t, a_t, B_t, C_t, state, True)


def _log_and_sign(a: Tensor, signed: bool) -> tuple[Tensor, Tensor | None]:
    """The transition as log|alpha| and a 0/1 flag of negative alpha (None when unsigned)."""
    if not signed:
        return a, None
    alpha = 2 * a.exp() - 1
    tiny = torch.finfo(a.dtype).tiny  # |alpha| = 0 taken as tiny: its log stays finite
    return alpha.abs().clamp(min=tiny).log(), (alpha < 0).to(a.dtype)


def _ssd_chunk(x: Tensor, a: Tensor, B: Tensor, C: Tensor, S: Tensor, L: int, signed: bool):
    """SSD in chunks of L tokens (the quadratic form when L >= t). Inside a chunk, with c the
    cumulative log|transition| and sg the cumulative sign since the chunk's start:

        y_t = sg_t exp(c_t) C_t S_0^T + sum_{s<=t} sg_t sg_s exp(c_t - c_s) (C_t . B_s) x_s,
        S_L = sg_L exp(c_L) S_0 + sum_s sg_L sg_s exp(c_L - c_s) x_s^T B_s.

    This is the scalar-decay recurrence of `ops.scalar_decay_chunk` with q = C, k = B, v = x
    and the state transposed, (p, n) -> (n, p), and its hand-written backward: the forward
    keeps the inputs and the state at every chunk's start, the backward recomputes the (L, L)
    blocks of all chunks at once and runs the reverse state pass."""
    log_a, neg = _log_and_sign(a, signed)
    y, S = scalar_decay_chunked(C, B, x, log_a, S.transpose(-1, -2), L, neg=neg)
    return y, S.transpose(-1, -2).contiguous()  # (b, t, h, p), (b, h, p, n)


def _ssd(x, a, B, C, state, chunk_size, mode, signed, op):
    check_choice(f"{op} mode", mode, SSD_MODES)
    check_int("chunk_size", chunk_size)
    b, t, h, p = x.shape
    S = x.new_zeros(b, h, p, B.shape[-1]) if state is None else state
    if t == 0:
        return x.new_zeros(b, 0, h, p), S
    if mode == "recurrent":
        return step_loop(lambda x_t, a_t, B_t, C_t, S: _ssd_step(x_t, a_t, B_t, C_t, S, signed),
                         (x, a, B, C), S)
    L = t if mode == "quadratic" else min(chunk_size, t)
    return _ssd_chunk(x, a, B, C, S, L, signed)


@float32_recurrence
def ssd(x: Tensor, a: Tensor, B: Tensor, C: Tensor, *, state: Tensor | None = None,
        chunk_size: int | None = None, mode: str = "chunk") -> tuple[Tensor, Tensor]:
    """Mamba-2's state-space duality (Dao & Gu 2024, "Transformers are SSMs"), the loop of
    `ssd_step`: x (b, t, h, p), a (b, t, h) log decays, B, C (b, t, h, n), state (b, h, p, n)
    -> y (b, t, h, p), h_T. Modes "chunk" (default), "quadratic", "recurrent"."""
    kernel = backends.kernel("ssd", mode, x, inputs=(x, B, C), gates=(a,))
    if kernel is not None:  # a CUDA kernel (ops.backends); else seqmem's own forms
        return backends.fla_ssd(kernel, x, a, B, C, state=state)
    chunk_size = tuning.resolve("ssd", chunk_size)  # None: this machine's best
    return _ssd(x, a, B, C, state, chunk_size, mode, False, "ssd")


@float32_recurrence
def ssd_signed(x: Tensor, a: Tensor, B: Tensor, C: Tensor, *, state: Tensor | None = None,
               chunk_size: int | None = None, mode: str = "chunk") -> tuple[Tensor, Tensor]:
    """`ssd` with negative eigenvalues (Grazzi et al. 2025): the transition is 2 exp(a_t) - 1
    in (-1, 1]; the loop of `ssd_signed_step`."""
    chunk_size = tuning.resolve("ssd_signed", chunk_size)  # None: this machine's best
    return _ssd(x, a, B, C, state, chunk_size, mode, True, "ssd_signed")

