"""The selective-scan and SSD ops: every form equals the loop of its step (float64 to 1e-10,
float32 to a relative 1e-4), with an initial state in, the final state out and gradients
through all inputs and the initial state; chunked prefill followed by step decoding equals one
pass; each step equals its equation written with explicit tensors; strong decays do not
overflow; the negative-eigenvalue variants flip the state's sign; signatures and defaults."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from seqmem.errors import SeqmemError
from seqmem.ops.selective import (
    selective_scan,
    selective_scan_signed,
    selective_scan_signed_step,
    selective_scan_step,
    ssd,
    ssd_signed,
    ssd_signed_step,
    ssd_step,
)

BATCH, D, N, H, P = 2, 5, 3, 3, 4
ATOL64 = 1e-10
RTOL32 = 1e-4  # float32 forms against the float64 loop, relative to the largest value
SCANS = {"plain": (selective_scan, selective_scan_step),
         "signed": (selective_scan_signed, selective_scan_signed_step)}
SSDS = {"plain": (ssd, ssd_step), "signed": (ssd_signed, ssd_signed_step)}
SCAN_FORMS = [("chunk", 1), ("chunk", 3), ("chunk", 4), ("chunk", 64)]
SSD_FORMS = [("quadratic", 64), ("chunk", 1), ("chunk", 3), ("chunk", 4), ("chunk", 64)]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def scan_inputs(t, *, seed=0, strength=1.0):
    """u, delta, A, B, C, D, z (positional) and delta_bias, state (keywords), float64."""
    g = _gen(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    args = [randn(BATCH, t, D), strength * randn(BATCH, t, D),
            -torch.rand(D, N, generator=g, dtype=torch.float64) * 3 - 0.1,
            randn(BATCH, t, N), randn(BATCH, t, N), randn(D), randn(BATCH, t, D)]
    return args, {"delta_bias": randn(D), "state": randn(BATCH, D, N)}


def ssd_inputs(t, *, seed=0, strength=1.0):
    """x, a, B, C (positional) and state (keyword), float64; a <= 0."""
    g = _gen(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    a = -strength * torch.rand(BATCH, t, H, generator=g, dtype=torch.float64) * 2
    args = [randn(BATCH, t, H, P), a, randn(BATCH, t, H, N), randn(BATCH, t, H, N)]
    return args, {"state": randn(BATCH, H, P, N)}


def run_with_grads(fn, args, kw, **more):
    """(y, final state, gradients of a fixed random functional of both w.r.t. every tensor)."""
    args = [a.detach().requires_grad_(True) for a in args]
    kw = {k: v.detach().requires_grad_(True) for k, v in kw.items()}
    y, S = fn(*args, **kw, **more)
    g = _gen(7)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() + (
        S * torch.randn(S.shape, generator=g, dtype=S.dtype)).sum()
    grads = torch.autograd.grad(loss, [*args, *kw.values()])
    return y.detach(), S.detach(), grads


# ---- steps against their equations ----------------------------------------------------------
@pytest.mark.parametrize("variant", ["plain", "signed"])
def test_selective_scan_step_is_the_equation(variant):
    (u, delta, A, B, C, Dv, z), kw = scan_inputs(1)
    u, delta, B, C, z = u[:, 0], delta[:, 0], B[:, 0], C[:, 0], z[:, 0]
    h0, bias = kw["state"], kw["delta_bias"]
    dt = torch.log1p(torch.exp(delta + bias))  # softplus written out
    h = torch.empty(BATCH, D, N, dtype=torch.float64)
    y = torch.empty(BATCH, D, dtype=torch.float64)
    for b in range(BATCH):
        for d in range(D):
            for n in range(N):
                e = torch.exp(dt[b, d] * A[d, n])
                a = 2 * e - 1 if variant == "signed" else e
                h[b, d, n] = a * h0[b, d, n] + dt[b, d] * B[b, n] * u[b, d]
            y[b, d] = (C[b] * h[b, d]).sum() + Dv[d] * u[b, d]
    y = y * z * torch.sigmoid(z)
    step = SCANS[variant][1]
    y_step, h_step = step(u, delta, A, B, C, Dv, z, delta_bias=bias, delta_softplus=True,
                          state=h0)
    torch.testing.assert_close(h_step, h, rtol=0, atol=1e-12)
    torch.testing.assert_close(y_step, y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["plain", "signed"])
def test_ssd_step_is_the_equation(variant):
    (x, a, B, C), kw = ssd_inputs(1)
    x, a, B, C, S0 = x[:, 0], a[:, 0], B[:, 0], C[:, 0], kw["state"]
    alpha = 2 * a.exp() - 1 if variant == "signed" else a.exp()
    S = alpha[..., None, None] * S0 + torch.einsum("bhp,bhn->bhpn", x, B)  # x^T B
    y = (S @ C[..., None])[..., 0]  # S C
    y_step, S_step = SSDS[variant][1](x, a, B, C, S0)
    torch.testing.assert_close(S_step, S, rtol=0, atol=1e-12)
    torch.testing.assert_close(y_step, y, rtol=0, atol=1e-12)
    _, S_zero = SSDS[variant][1](x, a, B, C)  # no state: zeros
    torch.testing.assert_close(S_zero, torch.einsum("bhp,bhn->bhpn", x, B), rtol=0, atol=0)


def test_negative_eigenvalues_flip_the_sign():
    """A strong decay is a transition of ~0 in the plain ops and ~-1 in the signed ones."""
    (x, a, B, C), kw = ssd_inputs(1)
    zero_x = torch.zeros_like(x[:, 0])
    strong = torch.full_like(a[:, 0], -60.0)
    _, S = ssd_signed_step(zero_x, strong, B[:, 0], C[:, 0], kw["state"])
    torch.testing.assert_close(S, -kw["state"], rtol=0, atol=1e-12)
    _, S = ssd_step(zero_x, strong, B[:, 0], C[:, 0], kw["state"])
    assert S.abs().max() < 1e-20
    (u, delta, A, B, C, _, _), kw = scan_inputs(1)
    big = torch.full_like(delta[:, 0], 100.0)
    _, h = selective_scan_signed_step(torch.zeros_like(u[:, 0]), big, A, B[:, 0], C[:, 0],
                                      state=kw["state"])
    torch.testing.assert_close(h, -kw["state"], rtol=0, atol=1e-12)


# ---- every form equals the loop -------------------------------------------------------------
@pytest.mark.parametrize("variant", ["plain", "signed"])
@pytest.mark.parametrize("t", [1, 4, 11])
def test_selective_scan_forms_float64(variant, t):
    fn = SCANS[variant][0]
    args, kw = scan_inputs(t)
    y_ref, S_ref, g_ref = run_with_grads(fn, args, kw, mode="recurrent", delta_softplus=True)
    assert y_ref.shape == (BATCH, t, D) and S_ref.shape == (BATCH, D, N)
    for mode, chunk_size in SCAN_FORMS:
        y, S, g = run_with_grads(fn, args, kw, mode=mode, chunk_size=chunk_size,
                                 delta_softplus=True)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=ATOL64)
        torch.testing.assert_close(S, S_ref, rtol=0, atol=ATOL64)
        for gi, gi_ref in zip(g, g_ref, strict=True):
            assert gi_ref.abs().max() > 0
            torch.testing.assert_close(gi, gi_ref, rtol=0, atol=ATOL64)


@pytest.mark.parametrize("variant", ["plain", "signed"])
@pytest.mark.parametrize("t", [1, 4, 11])
def test_ssd_forms_float64(variant, t):
    fn = SSDS[variant][0]
    args, kw = ssd_inputs(t)
    if variant == "signed":  # transitions on both sides of 0
        args[1] = args[1] * 1.5
    y_ref, S_ref, g_ref = run_with_grads(fn, args, kw, mode="recurrent")
    assert y_ref.shape == (BATCH, t, H, P) and S_ref.shape == (BATCH, H, P, N)
    for mode, chunk_size in SSD_FORMS:
        y, S, g = run_with_grads(fn, args, kw, mode=mode, chunk_size=chunk_size)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=ATOL64)
        torch.testing.assert_close(S, S_ref, rtol=0, atol=ATOL64)
        for gi, gi_ref in zip(g, g_ref, strict=True):
            assert gi_ref.abs().max() > 0
            torch.testing.assert_close(gi, gi_ref, rtol=0, atol=ATOL64)


def test_default_mode_is_chunk():
    args, kw = scan_inputs(70)
    for fn in (selective_scan, selective_scan_signed):
        y, S = fn(*args, **kw)
        y_c, S_c = fn(*args, **kw, mode="chunk", chunk_size=64)
        assert torch.equal(y, y_c) and torch.equal(S, S_c)
    args, kw = ssd_inputs(70)
    for fn in (ssd, ssd_signed):
        y, S = fn(*args, **kw)
        y_c, S_c = fn(*args, **kw, mode="chunk", chunk_size=64)
        assert torch.equal(y, y_c) and torch.equal(S, S_c)


def test_forms_float32():
    """float32 forms against the float64 loop: max error <= RTOL32 * max |value|."""
    cases = [(fn, *scan_inputs(40), {"delta_softplus": True}, ["chunk", "recurrent"])
             for fn in (selective_scan, selective_scan_signed)]
    cases += [(fn, *ssd_inputs(40), {}, ["chunk", "quadratic", "recurrent"])
              for fn in (ssd, ssd_signed)]
    for fn, args, kw, more, modes in cases:
        y_ref, S_ref = fn(*args, **kw, **more, mode="recurrent")
        args32 = [a.float() for a in args]
        kw32 = {k: v.float() for k, v in kw.items()}
        for mode in modes:
            y, S = fn(*args32, **kw32, **more, mode=mode, chunk_size=16)
            assert y.dtype == S.dtype == torch.float32
            assert (y.double() - y_ref).abs().max() <= RTOL32 * y_ref.abs().max()
            assert (S.double() - S_ref).abs().max() <= RTOL32 * S_ref.abs().max()


def test_strong_decays_do_not_overflow():
    """Log decays of ~-50 to -800 per token (a chunk's cumulative decay far beyond exp's
    range, where exp(-c) would overflow): the float32 forms stay finite and equal the loop, and
    so do their gradients, to a relative 1e-3 (SSD's cumulative log decay reaches ~-3500 in a
    chunk, whose float32 rounding, ~3500 * 6e-8, enters the exponents)."""
    cases = [(fn, *scan_inputs(70, strength=30.0), {"delta_softplus": True}, ["chunk"])
             for fn in (selective_scan, selective_scan_signed)]
    cases += [(fn, *ssd_inputs(70, strength=50.0), {}, ["chunk", "quadratic"])
              for fn in (ssd, ssd_signed)]
    for fn, args, kw, more, modes in cases:
        args32 = [a.float() for a in args]
        kw32 = {k: v.float() for k, v in kw.items()}
        y_ref, S_ref, g_ref = run_with_grads(fn, args32, kw32, **more, mode="recurrent")
        for mode in modes:
            y, S, g = run_with_grads(fn, args32, kw32, **more, mode=mode, chunk_size=64)
            assert torch.isfinite(y).all() and torch.isfinite(S).all()
            torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(S, S_ref, rtol=1e-4, atol=1e-4)
            for gi, gi_ref in zip(g, g_ref, strict=True):
                assert torch.isfinite(gi).all()
                scale = gi_ref.abs().max().clamp(min=1.0)
                assert (gi - gi_ref).abs().max() <= 1e-3 * scale


def test_prefill_then_decode():
    """A chunked prefill of 29 tokens, then token-by-token steps, equals one pass over all."""
    t, cut = 35, 29
    for fn, step in SCANS.values():
        (u, delta, A, B, C, Dv, z), kw = scan_inputs(t)
        opts = {"delta_bias": kw["delta_bias"], "delta_softplus": True}
        y_all, S_all = fn(u, delta, A, B, C, Dv, z, **opts, state=kw["state"], chunk_size=8)
        y_pre, S = fn(u[:, :cut], delta[:, :cut], A, B[:, :cut], C[:, :cut], Dv, z[:, :cut],
                      **opts, state=kw["state"], chunk_size=8)
        outs = [y_pre]
        for i in range(cut, t):
            y_t, S = step(u[:, i], delta[:, i], A, B[:, i], C[:, i], Dv, z[:, i], **opts,
                          state=S)
            outs.append(y_t[:, None])
        torch.testing.assert_close(torch.cat(outs, dim=1), y_all, rtol=0, atol=ATOL64)
        torch.testing.assert_close(S, S_all, rtol=0, atol=ATOL64)
    for fn, step in SSDS.values():
        (x, a, B, C), kw = ssd_inputs(t)
        y_all, S_all = fn(x, a, B, C, state=kw["state"], chunk_size=8)
        y_pre, S = fn(x[:, :cut], a[:, :cut], B[:, :cut], C[:, :cut], state=kw["state"],
                      chunk_size=8)
        outs = [y_pre]
        for i in range(cut, t):
            y_t, S = step(x[:, i], a[:, i], B[:, i], C[:, i], S)
            outs.append(y_t[:, None])
        torch.testing.assert_close(torch.cat(outs, dim=1), y_all, rtol=0, atol=ATOL64)
        torch.testing.assert_close(S, S_all, rtol=0, atol=ATOL64)


# ---- signatures, defaults and errors --------------------------------------------------------
def test_signatures_and_defaults():
    sig = inspect.signature(selective_scan)
    assert list(sig.parameters) == ["u", "delta", "A", "B", "C", "D", "z", "delta_bias",
                                    "delta_softplus", "state", "mode", "chunk_size"]
    defaults = {k: p.default for k, p in sig.parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {"D": None, "z": None, "delta_bias": None, "delta_softplus": False,
                        "state": None, "mode": "chunk", "chunk_size": 64}
    kw_only = [k for k, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert kw_only == ["delta_bias", "delta_softplus", "state", "mode", "chunk_size"]
    sig = inspect.signature(selective_scan_step)
    assert list(sig.parameters) == ["u_t", "delta_t", "A", "B_t", "C_t", "D", "z_t",
                                    "delta_bias", "delta_softplus", "state"]
    sig = inspect.signature(ssd)
    assert list(sig.parameters) == ["x", "a", "B", "C", "state", "chunk_size", "mode"]
    # None: this machine's measured best chunk length, else the packaged one (ops.tuning)
    assert sig.parameters["chunk_size"].default is None
    assert sig.parameters["mode"].default == "chunk"
    for signed, plain in ((selective_scan_signed, selective_scan),
                          (selective_scan_signed_step, selective_scan_step),
                          (ssd_signed, ssd), (ssd_signed_step, ssd_step)):
        assert inspect.signature(signed) == inspect.signature(plain)


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_selective_scan_optional_inputs(mode):
    """D=None is D=0, z=None is no gate, delta_bias=None is 0, delta_softplus=True is
    softplus(delta) given with the flag off, state=None is zeros."""
    (u, delta, A, B, C, Dv, z), kw = scan_inputs(9)
    common = {"mode": mode, "chunk_size": 4}
    y, S = selective_scan(u, delta, A, B, C, **common)
    y0, S0 = selective_scan(u, delta, A, B, C, torch.zeros(D, dtype=torch.float64),
                            delta_bias=torch.zeros(D, dtype=torch.float64),
                            state=torch.zeros(BATCH, D, N, dtype=torch.float64), **common)
    torch.testing.assert_close(y, y0, rtol=0, atol=0)
    torch.testing.assert_close(S, S0, rtol=0, atol=0)
    bias = kw["delta_bias"]
    y1, S1 = selective_scan(u, delta, A, B, C, Dv, z, delta_bias=bias, delta_softplus=True,
                            **common)
    y2, S2 = selective_scan(u, F.softplus(delta + bias), A, B, C, Dv, **common)
    torch.testing.assert_close(S1, S2, rtol=0, atol=1e-14)
    torch.testing.assert_close(y1, y2 * F.silu(z), rtol=0, atol=1e-14)
    y3, _ = selective_scan(u, delta.abs(), A, B, C, Dv, **common)  # no softplus by default
    y4, _ = selective_scan(u, delta.abs(), A, B, C, **common)
    torch.testing.assert_close(y3, y4 + Dv * u, rtol=0, atol=1e-14)


def test_zero_state_and_empty_sequence():
    args, kw = ssd_inputs(6)
    for mode in ("chunk", "quadratic", "recurrent"):
        y, S = ssd(*args, mode=mode, chunk_size=4)
        y0, S0 = ssd(*args, state=torch.zeros_like(kw["state"]), mode=mode, chunk_size=4)
        torch.testing.assert_close(y, y0, rtol=0, atol=0)
        torch.testing.assert_close(S, S0, rtol=0, atol=0)
        y_e, S_e = ssd(*(a[:, :0] for a in args), state=kw["state"], mode=mode)
        assert y_e.shape == (BATCH, 0, H, P) and torch.equal(S_e, kw["state"])
    args, kw = scan_inputs(6)
    for mode in ("chunk", "recurrent"):
        y_e, S_e = selective_scan(*(a[:, :0] if a.ndim == 3 else a for a in args),
                                  state=kw["state"], mode=mode)
        assert y_e.shape == (BATCH, 0, D) and torch.equal(S_e, kw["state"])


def test_bad_mode_and_chunk_size_raise():
    args, _ = scan_inputs(3)
    with pytest.raises(SeqmemError, match="chunk, recurrent"):
        selective_scan(*args, mode="parallel")
    with pytest.raises(SeqmemError, match="chunk_size"):
        selective_scan(*args, chunk_size=0)
    args, _ = ssd_inputs(3)
    with pytest.raises(SeqmemError, match="chunk, quadratic, recurrent"):
        ssd(*args, mode="parallel")
    with pytest.raises(SeqmemError, match="chunk_size"):
        ssd(*args, chunk_size=0)
