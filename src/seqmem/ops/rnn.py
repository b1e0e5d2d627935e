"""Recurrences of the classic RNN family, as pure functions.

Each `<family>_step` is the specification; `<family>_recurrent` is the loop of it over time
with the input-side work (which does not depend on the state) done for all steps at once.
Layout: batch-first, time-second, features-last.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmem.errors import check_choice
from seqmem.ops.loops import float32_recurrence, step_loop

PHIS = {
    "leaky_relu": F.leaky_relu,  # negative slope 0.01, as torch.nn.LeakyReLU()
    "tanh": torch.tanh,
    "relu": torch.relu,
}
LEAKY_RULES = ("default", "mod")


def activation(name: str):
    """The nonlinearity phi by name: leaky_relu, tanh or relu."""
    return PHIS[check_choice("activation phi", name, PHIS)]


# ---- leaky (timescale) RNN ----------------------------------------------------------------
@float32_recurrence
def leaky_rnn_step(
    u_t: Tensor, h: Tensor, W: Tensor, inv_tau: Tensor, *, rule: str = "default",
    phi: str = "leaky_relu",
) -> Tensor:
    """One step of the leaky RNN of Khajehabdollahi et al. (ICLR 2024).

    u_t (b, d) is the input drive U x_t + b, h (b, d) the state, W (d, d) the recurrent
    weights, inv_tau (d,) = 1 / tau. With a = 1 / tau:

    - rule "default": h' = phi((1 - a) h + a (W h + u_t))
    - rule "mod":     h' = (1 - a) h + a phi(W h + u_t)
    """
    f = activation(phi)
    pre = h @ W.T + u_t  # (b, d)
    if rule == "default":
        return f((1 - inv_tau) * h + inv_tau * pre)
    if rule == "mod":
        return (1 - inv_tau) * h + inv_tau * f(pre)
    check_choice("leaky_rnn rule", rule, LEAKY_RULES)
    raise AssertionError  # unreachable


@float32_recurrence
def leaky_rnn_recurrent(
    u: Tensor, h: Tensor, W: Tensor, inv_tau: Tensor, *, rule: str = "default",
    phi: str = "leaky_relu",
) -> tuple[Tensor, Tensor]:
    """Loop of `leaky_rnn_step` over u (b, t, d). Returns (h_all (b, t, d), h_final (b, d)).

    Three tensor ops per step: (1 - a) h + a p is one `lerp(h, p, a)`."""
    check_choice("leaky_rnn rule", rule, LEAKY_RULES)
    f = activation(phi)
    if u.shape[1] and _fused(u, h, W, inv_tau):
        H = _LeakyBPTT.apply(u, h, W, inv_tau, rule, phi)
        return H, H[:, -1]
    Wt = W.T
    hs = []
    for u_t in u.unbind(1):  # unbind: one backward for all steps (indexing u[:, t] costs O(t))
        pre = torch.addmm(u_t, h, Wt)  # (b, d)
        h = f(torch.lerp(h, pre, inv_tau)) if rule == "default" else torch.lerp(h, f(pre),
                                                                                 inv_tau)
        hs.append(h)
    if not hs:
        return u.new_zeros(u.shape), h
    return torch.stack(hs, dim=1), h


# ---- Elman RNN ----------------------------------------------------------------------------
@float32_recurrence
def elman_step(u_t: Tensor, h: Tensor, W_hh: Tensor, b_hh: Tensor | None, *,
               phi: str = "tanh") -> Tensor:
    """Elman RNN, as torch.nn.RNN: h' = phi(u_t + W_hh h + b_hh), u_t = W_ih x_t + b_ih."""
    pre = h @ W_hh.T + u_t
    if b_hh is not None:
        pre = pre + b_hh
    return activation(phi)(pre)


@float32_recurrence
def elman_recurrent(u: Tensor, h: Tensor, W_hh: Tensor, b_hh: Tensor | None, *,
                    phi: str = "tanh") -> tuple[Tensor, Tensor]:
    """Loop of `elman_step` over u (b, t, d). Returns (h_all (b, t, d), h_final (b, d))."""
    activation(phi)  # checks the name
    if u.shape[1] and _fused(u, h, W_hh, b_hh):
        H = _ElmanBPTT.apply(u if b_hh is None else u + b_hh, h, W_hh, phi)
        return H, H[:, -1]
    def step(u_t, h):
        h = elman_step(u_t, h, W_hh, b_hh, phi=phi)
        return h, h  # the output is the state

    return step_loop(step, (u,), h)


# ---- GRU ----------------------------------------------------------------------------------
@float32_recurrence
def gru_step(u_t: Tensor, h: Tensor, W_hh: Tensor, b_hh: Tensor | None) -> tuple[Tensor, Tensor]:
    """GRU (Cho et al. 2014) in torch.nn.GRU's convention. Returns (h', z).

    u_t (b, 3d) = W_ih x_t + b_ih, gates ordered r, z, n:
    r = sigma(u_r + W_hr h + b_hr), z = sigma(u_z + W_hz h + b_hz),
    n = tanh(u_n + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h.
    """
    g = h @ W_hh.T  # (b, 3d)
    if b_hh is not None:
        g = g + b_hh
    u_r, u_z, u_n = u_t.chunk(3, dim=-1)
    g_r, g_z, g_n = g.chunk(3, dim=-1)
    r = torch.sigmoid(u_r + g_r)
    z = torch.sigmoid(u_z + g_z)
    n = torch.tanh(u_n + r * g_n)
    return (1 - z) * n + z * h, z


@float32_recurrence
def gru_recurrent(u: Tensor, h: Tensor, W_hh: Tensor, b_hh: Tensor | None, *,
                  gates: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """Loop of `gru_step` over u (b, t, 3d). Returns (h_all, h_final, z_all or None); z_all
    (the update gates) only if `gates`.

    Six tensor ops per step: r and z in one sigmoid, r * g_n + u_n as one addcmul and
    (1 - z) n + z h as one lerp."""
    d = h.shape[-1]
    if u.shape[1] and not gates and _fused(u, h, W_hh, b_hh):
        H = _GRUBPTT.apply(u, h, W_hh, b_hh)
        return H, H[:, -1], None
    Wt = W_hh.T
    hs, zs = [], []
    for u_t in u.unbind(1):
        g = torch.addmm(b_hh, h, Wt) if b_hh is not None else h @ Wt  # (b, 3d)
        rz = torch.sigmoid(u_t[:, : 2 * d] + g[:, : 2 * d])  # (b, 2d)
        r, z = rz[:, :d], rz[:, d:]
        n = torch.tanh(torch.addcmul(u_t[:, 2 * d :], r, g[:, 2 * d :]))
        h = torch.lerp(n, h, z)
        hs.append(h)
        if gates:
            zs.append(z)
    if not hs:
        empty = u.new_zeros(*u.shape[:2], d)
        return empty, h, (empty if gates else None)
    return torch.stack(hs, dim=1), h, (torch.stack(zs, dim=1) if gates else None)


# ---- LSTM ---------------------------------------------------------------------------------
class LSTMState(NamedTuple):
    h: Tensor  # (b, d)
    c: Tensor  # (b, d)


@float32_recurrence
def lstm_step(u_t: Tensor, state: LSTMState, W_hh: Tensor, b_hh: Tensor | None
              ) -> tuple[LSTMState, Tensor]:
    """LSTM (Hochreiter & Schmidhuber 1997) in torch.nn.LSTM's convention. Returns (state', f).

    u_t (b, 4d) = W_ih x_t + b_ih, gates ordered i, f, g, o:
    c' = f * c + i * g, h' = o * tanh(c').
    """
    h, c = state
    gates = u_t + h @ W_hh.T  # (b, 4d)
    if b_hh is not None:
        gates = gates + b_hh
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)
    c = f * c + i * torch.tanh(g)
    h = o * torch.tanh(c)
    return LSTMState(h, c), f


@float32_recurrence
def lstm_recurrent(u: Tensor, state: LSTMState, W_hh: Tensor, b_hh: Tensor | None, *,
                   gates: bool = False) -> tuple[Tensor, LSTMState, Tensor | None]:
    """Loop of `lstm_step` over u (b, t, 4d). Returns (h_all, final state, f_all or None);
    f_all (the forget gates) only if `gates`.

    Seven tensor ops per step: one sigmoid over all four gate blocks (the g block's is unused),
    c' = f c + i g as one addcmul."""
    h, c = state
    d = h.shape[-1]
    if b_hh is not None:
        u = u + b_hh  # the bias does not depend on the state: add it once
    if u.shape[1] and not gates and _fused(u, h, c, W_hh):
        H, c = _LSTMBPTT.apply(u, h, c, W_hh)
        return H, LSTMState(H[:, -1], c), None
    Wt = W_hh.T
    hs, fs = [], []
    for u_t in u.unbind(1):
        pre = torch.addmm(u_t, h, Wt)  # (b, 4d)
        sig = torch.sigmoid(pre)
        i, f, o = sig[:, :d], sig[:, d : 2 * d], sig[:, 3 * d :]
        c = torch.addcmul(f * c, i, torch.tanh(pre[:, 2 * d : 3 * d]))
        h = o * torch.tanh(c)
        hs.append(h)
        if gates:
            fs.append(f)
    if not hs:
        empty = u.new_zeros(*u.shape[:2], d)
        return empty, LSTMState(h, c), (empty if gates else None)
    return torch.stack(hs, dim=1), LSTMState(h, c), (torch.stack(fs, dim=1) if gates else None)


# ---- shallow PLRNN -------------------------------------------------------------------------
@float32_recurrence
def plrnn_step(u_t: Tensor, z: Tensor, A: Tensor, W1: Tensor, W2: Tensor, h1: Tensor,
               h2: Tensor) -> Tensor:
    """One step of the shallow PLRNN (Hess, Monfared, Brenner & Durstewitz 2023, ICML),
    z_t = A z_{t-1} + W1 relu(W2 z_{t-1} + h2) + h1 + u_t, with the input drive u_t = C s_t
    already applied: u_t, z (b, M), A (M,) the diagonal, W1 (M, L), W2 (L, M), h1 (M,),
    h2 (L,)."""
    return A * z + F.linear(torch.relu(F.linear(z, W2, h2)), W1, h1) + u_t


@float32_recurrence
def plrnn_recurrent(u: Tensor, z: Tensor, A: Tensor, W1: Tensor, W2: Tensor, h1: Tensor,
                    h2: Tensor) -> tuple[Tensor, Tensor]:
    """Loop of `plrnn_step` over u (b, t, M). Returns (z_all (b, t, M), z_final (b, M))."""
    def step(u_t, z):
        z = plrnn_step(u_t, z, A, W1, W2, h1, h2)
        return z, z  # the output is the state

    return step_loop(step, (u,), z)


# ---- hand-written backpropagation through time ---------------------------------------------
# Autograd through the loops above records a dozen nodes per step and, for the recurrent
# weights, one (d, d) product per step. The functions below run the same loops without
# recording, keep only what the backward needs (states and activated gates) and run a backward
# loop of a few ops per step on slices that are still in cache (a whole-sequence elementwise
# pass costs more memory bandwidth than the loop's overhead saves); the weight gradient is one
# product over all steps at the end. Outputs and input gradients are written straight into
# batch-first (b, t, ...) tensors, so nothing is transposed or copied afterwards. First-order
# gradients only (no double backward); tests compare them with autograd through the steps.
_ATEN = torch.ops.aten


def _phi_(x: Tensor, phi: str) -> Tensor:
    """phi applied in place."""
    if phi == "tanh":
        return x.tanh_()
    if phi == "relu":
        return x.relu_()
    return F.leaky_relu(x, inplace=True)


def _phi_backward_(grad: Tensor, h: Tensor, phi: str) -> Tensor:
    """grad * phi'(z) in place, from h = phi(z) (torch's own backward kernels, which take the
    output: relu and leaky_relu keep the sign of z)."""
    if phi == "tanh":
        return _ATEN.tanh_backward.grad_input(grad, h, grad_input=grad)
    if phi == "relu":
        return _ATEN.threshold_backward.grad_input(grad, h, 0.0, grad_input=grad)
    return _ATEN.leaky_relu_backward.grad_input(grad, h, 0.01, True, grad_input=grad)


def _weight_grad(dZ: Tensor, h0: Tensor, H: Tensor) -> Tensor:
    """sum_{b, t} dZ[b, t]^T h[b, t - 1] (h[b, -1] = h0[b]): dZ (b, t, g d), H (b, t, d) ->
    (g d, d). In the flattened (b t) order every row's predecessor is the row before it, except
    at t = 0: one product of the shifted views, then the b boundary pairs corrected."""
    gd, d = dZ.shape[-1], H.shape[-1]
    Zf, Hf, first = dZ.reshape(-1, gd), H.reshape(-1, d), dZ[:, 0]  # first: (b, g d)
    dW = torch.addmm(first.T @ h0, Zf[1:].T, Hf[:-1])
    return dW.sub_(first[1:].T @ H[:-1, -1])  # pairs (b, 0) with (b - 1, t - 1): not a step


def _fused(*tensors) -> bool:
    """Whether a loop's gradient is wanted (then the hand-written backward runs)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _ElmanBPTT(torch.autograd.Function):
    """h_t = phi(u_t + h_{t-1} W^T): u (b, t, d), h0 (b, d), W (d, d) -> H (b, t, d)."""

    @staticmethod
    def forward(ctx, u, h0, W, phi):
        H = u.new_empty(u.shape)  # (b, t, d)
        Wt, h = W.T, h0
        for s, u_s in enumerate(u.unbind(1)):
            h = _phi_(torch.addmm(u_s, h, Wt, out=H[:, s]), phi)
        ctx.phi = phi
        ctx.save_for_backward(h0, W, H)
        return H

    @staticmethod
    @float32_recurrence
    def backward(ctx, g):
        h0, W, H = ctx.saved_tensors
        T, phi = H.shape[1], ctx.phi
        dZ = H.new_empty(H.shape)  # (b, t, d): dL/dz_t
        _phi_backward_(dZ[:, -1].copy_(g[:, -1]), H[:, -1], phi)
        for s in range(T - 1, 0, -1):  # dL/dh_{s-1} = g_{s-1} + dL/dz_s W
            _phi_backward_(torch.addmm(g[:, s - 1], dZ[:, s], W, out=dZ[:, s - 1]),
                           H[:, s - 1], phi)
        dh0 = dZ[:, 0] @ W if ctx.needs_input_grad[1] else None
        return dZ, dh0, _weight_grad(dZ, h0, H), None


class _GRUBPTT(torch.autograd.Function):
    """The GRU loop: u (b, t, 3d) (b_ih included), h0 (b, d), W (3d, d), b_hh (3d,) or None ->
    H (b, t, d). Saved besides H: g = h W^T + b_hh (t, b, 3d), [r, z] (t, b, 2d), n (t, b, d)."""

    @staticmethod
    def forward(ctx, u, h0, W, b_hh):
        T, (b, d) = u.shape[1], h0.shape
        G, RZ, N = u.new_empty(T, b, 3 * d), u.new_empty(T, b, 2 * d), u.new_empty(T, b, d)
        H = u.new_empty(b, T, d)
        Wt, h = W.T, h0
        for s, u_s in enumerate(u.unbind(1)):
            g = torch.addmm(b_hh, h, Wt, out=G[s]) if b_hh is not None else \
                torch.mm(h, Wt, out=G[s])
            rz = torch.add(u_s[:, : 2 * d], g[:, : 2 * d], out=RZ[s]).sigmoid_()
            n = torch.addcmul(u_s[:, 2 * d :], rz[:, :d], g[:, 2 * d :], out=N[s]).tanh_()
            h = torch.lerp(n, h, rz[:, d:], out=H[:, s])
        ctx.has_bias = b_hh is not None
        ctx.save_for_backward(h0, W, G, RZ, N, H)
        return H

    @staticmethod
    @float32_recurrence
    def backward(ctx, gH):
        h0, W, G, RZ, N, H = ctx.saved_tensors
        T, d = H.shape[1], H.shape[-1]
        dU = H.new_empty(*H.shape[:2], 3 * d)  # dL/du_t = [dpre_r, dpre_z, dpre_n]
        dG = torch.empty_like(dU)  # dL/dg_t = [dpre_r, dpre_z, r dpre_n]
        dh = gH[:, -1].clone()  # dL/dh_t
        for s in range(T - 1, -1, -1):
            r, z = RZ[s].split(d, dim=-1)
            n, h_prev = N[s], (H[:, s - 1] if s else h0)
            du_r, du_z, du_n = dU[:, s].split(d, dim=-1)
            keep = dh * z  # dL/dh_{s-1} through the z h_{s-1} term
            _ATEN.sigmoid_backward.grad_input(torch.mul(dh, h_prev - n, out=du_z), z,
                                              grad_input=du_z)
            _ATEN.tanh_backward.grad_input(torch.sub(dh, keep, out=du_n), n, grad_input=du_n)
            _ATEN.sigmoid_backward.grad_input(torch.mul(du_n, G[s, :, 2 * d :], out=du_r), r,
                                              grad_input=du_r)
            dG[:, s, : 2 * d].copy_(dU[:, s, : 2 * d])
            torch.mul(du_n, r, out=dG[:, s, 2 * d :])
            dh = torch.addmm(keep, dG[:, s], W)  # dL/dh_{s-1} from step s
            if s:
                dh.add_(gH[:, s - 1])
        dh0 = dh if ctx.needs_input_grad[1] else None
        db = dG.sum((0, 1)) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return dU, dh0, _weight_grad(dG, h0, H), db


class _LSTMBPTT(torch.autograd.Function):
    """The LSTM loop: u (b, t, 4d) (biases included), h0, c0 (b, d), W (4d, d) -> H (b, t, d),
    c_T (b, d). Saved besides H: the activated gates [i, f, g, o] (t, b, 4d), the cells and
    tanh of the cells (t, b, d), time-major."""

    @staticmethod
    def forward(ctx, u, h0, c0, W):
        T, (b, d) = u.shape[1], h0.shape
        G = u.new_empty(T, b, 4 * d)
        Cs, Tc = u.new_empty(T, b, d), u.new_empty(T, b, d)
        H = u.new_empty(b, T, d)
        Wt, h, c = W.T, h0, c0
        for s, u_s in enumerate(u.unbind(1)):
            pre = torch.addmm(u_s, h, Wt)  # (b, 4d)
            i, f, g, o = torch.sigmoid(pre, out=G[s]).split(d, dim=-1)
            torch.tanh(pre[:, 2 * d : 3 * d], out=g)
            c = torch.mul(f, c, out=Cs[s]).addcmul_(i, g)
            h = torch.mul(o, torch.tanh(c, out=Tc[s]), out=H[:, s])
        ctx.save_for_backward(h0, c0, W, G, Cs, Tc, H)
        return H, c.clone()

    @staticmethod
    @float32_recurrence
    def backward(ctx, gH, gc):
        h0, c0, W, G, Cs, Tc, H = ctx.saved_tensors
        T, d = H.shape[1], H.shape[-1]
        dP = H.new_empty(*H.shape[:2], 4 * d)  # (b, t, 4d): dL/dpre_t
        dh = gH[:, -1].clone()  # dL/dh_t
        dc = gc.clone()  # dL/dc_t
        for s in range(T - 1, -1, -1):
            i, f, g, o = G[s].split(d, dim=-1)
            dpi, dpf, dpg, dpo = dP[:, s].split(d, dim=-1)
            tc = Tc[s]
            _ATEN.sigmoid_backward.grad_input(torch.mul(dh, tc, out=dpo), o, grad_input=dpo)
            dc.add_(_ATEN.tanh_backward(dh * o, tc))
            _ATEN.sigmoid_backward.grad_input(torch.mul(dc, g, out=dpi), i, grad_input=dpi)
            c_prev = Cs[s - 1] if s else c0
            _ATEN.sigmoid_backward.grad_input(torch.mul(dc, c_prev, out=dpf), f, grad_input=dpf)
            _ATEN.tanh_backward.grad_input(torch.mul(dc, i, out=dpg), g, grad_input=dpg)
            dc.mul_(f)  # dL/dc_{s-1} through c_s
            if s:  # dL/dh_{s-1} = g_{s-1} + dL/dpre_s W
                dh = torch.addmm(gH[:, s - 1], dP[:, s], W)
        dh0 = dP[:, 0] @ W if ctx.needs_input_grad[1] else None
        return dP, dh0, dc, _weight_grad(dP, h0, H)


class _LeakyBPTT(torch.autograd.Function):
    """The leaky RNN loop: u (b, t, d), h0 (b, d), W (d, d), a = 1 / tau (d,) -> H (b, t, d).

    default: h_t = phi(z_t), z_t = (1 - a) h_{t-1} + a (u_t + h_{t-1} W^T), so
        dL/dh_{t-1} = dL/dz_t M with M = diag(1 - a) + diag(a) W (one product per step);
    mod: h_t = (1 - a) h_{t-1} + a p_t, p_t = phi(u_t + h_{t-1} W^T).
    Saved besides H: pre_t (default) or p_t (mod), (t, b, d)."""

    @staticmethod
    def forward(ctx, u, h0, W, a, rule, phi):
        H = u.new_empty(u.shape)  # (b, t, d)
        P = u.new_empty(u.shape[1], *h0.shape)  # (t, b, d)
        Wt, h = W.T, h0
        for s, u_s in enumerate(u.unbind(1)):
            pre = torch.addmm(u_s, h, Wt, out=P[s])
            if rule == "default":
                h = _phi_(torch.lerp(h, pre, a, out=H[:, s]), phi)
            else:
                h = torch.lerp(h, _phi_(pre, phi), a, out=H[:, s])
        ctx.rule, ctx.phi = rule, phi
        ctx.save_for_backward(h0, W, a, H, P)
        return H

    @staticmethod
    @float32_recurrence
    def backward(ctx, g):
        h0, W, a, H, P = ctx.saved_tensors
        T, phi, want_a = H.shape[1], ctx.phi, ctx.needs_input_grad[3]
        acc = torch.zeros_like(h0)  # the da terms summed over steps (over b at the end)
        dU = H.new_empty(H.shape)  # (b, t, d): dL/dpre_t
        if ctx.rule == "default":  # dL/dz_t = phi'(z_t) (g_t + dL/dz_{t+1} M), dL/dpre = a dL/dz
            M = torch.diag(1 - a) + a[:, None] * W
            dz = _phi_backward_(g[:, -1].clone(), H[:, -1], phi)
            for s in range(T - 1, -1, -1):
                torch.mul(dz, a, out=dU[:, s])
                if want_a:  # z - h_prev = a (pre - h_prev)
                    acc.addcmul_(dz, P[s]).addcmul_(dz, H[:, s - 1] if s else h0, value=-1)
                if s:
                    dz = _phi_backward_(torch.addmm(g[:, s - 1], dz, M), H[:, s - 1], phi)
            dh0 = dz @ M if ctx.needs_input_grad[1] else None
        else:  # dL/dh_{t-1} = g_{t-1} + (1 - a) dL/dh_t + dL/dpre_t W
            keep = 1 - a
            e = g[:, -1].clone()  # dL/dh_t
            for s in range(T - 1, -1, -1):
                _phi_backward_(torch.mul(e, a, out=dU[:, s]), P[s], phi)
                if want_a:  # h - h_prev = a (p - h_prev)
                    acc.addcmul_(e, P[s]).addcmul_(e, H[:, s - 1] if s else h0, value=-1)
                if s:
                    e = torch.addmm(g[:, s - 1], dU[:, s], W).addcmul_(e, keep)
            dh0 = torch.addmm(e * keep, dU[:, 0], W) if ctx.needs_input_grad[1] else None
        return dU, dh0, _weight_grad(dU, h0, H), acc.sum(0) if want_a else None, None, None
