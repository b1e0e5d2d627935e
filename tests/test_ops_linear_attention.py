"""The linear-attention ops: every form equals the loop of its step (float64 to 1e-10, float32
to a relative 1e-4), with an initial state in, the final state out and gradients through all
inputs and the initial state; chunked prefill followed by token-by-token decoding equals one
pass; each step equals its equation written with explicit matrices; strong gates do not
overflow the chunked forms."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from seqmem.ops.linear_attention import (
    delta_rule,
    delta_rule_step,
    gated_delta_rule,
    gated_delta_rule_step,
    gla,
    gla_step,
    linear_attention,
    linear_attention_step,
    retention,
    retention_step,
)

B, H, D_K, D_V = 2, 3, 5, 4
ATOL64 = 1e-10
RTOL32 = 1e-4  # float32 forms against the float64 loop, relative to the output's size
OPS = ["linear_attention", "retention", "gla", "delta_rule", "gated_delta_rule"]
GATES = {"delta_rule": ("beta",), "gated_delta_rule": ("g", "beta")}  # keyword-only, in order


def gates_by_name(fn, names):
    """fn called as fn(q, k, v, *gates, *rest, **kw): the keyword-only gates given
    positionally in `names` order, so that one loop serves every op."""
    def call(q, k, v, *rest, **kw):
        return fn(q, k, v, *rest[len(names):], **dict(zip(names, rest, strict=False)), **kw)

    return call


FNS = {"linear_attention": (linear_attention, linear_attention_step),
       "retention": (retention, retention_step), "gla": (gla, gla_step),
       "delta_rule": (gates_by_name(delta_rule, GATES["delta_rule"]),
                      gates_by_name(delta_rule_step, GATES["delta_rule"])),
       "gated_delta_rule": (gates_by_name(gated_delta_rule, GATES["gated_delta_rule"]),
                            gates_by_name(gated_delta_rule_step, GATES["gated_delta_rule"]))}


def make_inputs(op: str, t: int, *, seed: int = 0, dtype=torch.float64, strength: float = 1.0):
    """q, k, v and the op's extra inputs (gates), in the order of `FNS`."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v = randn(B, t, H, D_K), randn(B, t, H, D_K), randn(B, t, H, D_V)
    if op in ("delta_rule", "gated_delta_rule"):
        k = F.normalize(k, dim=-1)  # the delta rules take normalised keys
    beta = 2 * torch.rand(B, t, H, generator=gen, dtype=torch.float64)  # (0, 2)
    extra = {
        "linear_attention": [],
        "retention": [torch.log(1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float64)))],
        "gla": [strength * F.logsigmoid(randn(B, t, H, D_K))],
        "delta_rule": [beta],
        "gated_delta_rule": [strength * F.logsigmoid(randn(B, t, H)), beta],
    }[op]
    return [x.to(dtype) for x in (q, k, v, *extra)]


def make_state(seed: int = 1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, D_K, D_V, generator=gen, dtype=torch.float64).to(dtype)


def forms(op: str):
    """(mode, chunk_size) pairs covering t < chunk, t = chunk, t not a multiple of chunk."""
    return [("parallel", 64), ("chunk", 1), ("chunk", 3), ("chunk", 4), ("chunk", 5),
            ("chunk", 8), ("chunk", 64)]


def grads(fn, args, state, **kw):
    """Gradients of a fixed random functional of (o, final state) w.r.t. args and state."""
    args = [a.detach().requires_grad_(a.is_floating_point()) for a in args]
    state = state.detach().requires_grad_(True)
    o, S = fn(*args, state=state, **kw)
    gen = torch.Generator().manual_seed(7)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() + (
        S * torch.randn(S.shape, generator=gen, dtype=S.dtype)).sum()
    return torch.autograd.grad(loss, [*args, state])


# ---- steps against their equations --------------------------------------------------------
@pytest.mark.parametrize("op", OPS)
def test_step_is_the_equation(op):
    """One step against the issue's equation with explicit matrices (I - beta k^T k, diag)."""
    inputs = make_inputs(op, 1)
    q, k, v, *extra = [x if op == "retention" and i == 3 else x[:, 0]  # log_decay is (h,)
                       for i, x in enumerate(inputs)]
    S0 = make_state()
    outer = torch.einsum("bhk,bhv->bhkv", k, v)
    eye = torch.eye(D_K, dtype=torch.float64)
    kk = torch.einsum("bhk,bhj->bhkj", k, k)  # k^T k
    if op == "linear_attention":
        S = S0 + outer
    elif op == "retention":
        S = extra[0].exp()[:, None, None] * S0 + outer
    elif op == "gla":
        S = torch.diag_embed(extra[0].exp()) @ S0 + outer
    elif op == "delta_rule":
        beta = extra[0][..., None, None]
        S = (eye - beta * kk) @ S0 + beta * outer
    else:
        g, beta = extra[0][..., None, None], extra[1][..., None, None]
        S = g.exp() * (eye - beta * kk) @ S0 + beta * outer
    o = D_K ** -0.5 * torch.einsum("bhk,bhkv->bhv", q, S)
    o_step, S_step = FNS[op][1](q, k, v, *extra, S0)
    torch.testing.assert_close(S_step, S, rtol=0, atol=1e-12)
    torch.testing.assert_close(o_step, o, rtol=0, atol=1e-12)
    o_half, _ = FNS[op][1](q, k, v, *extra, S0, scale=0.5)  # q is multiplied by scale
    torch.testing.assert_close(o_half, 0.5 * D_K ** 0.5 * o, rtol=0, atol=1e-12)
    o_zero, S_zero = FNS[op][1](q, k, v, *extra)  # no state: zeros
    o_ref, S_ref = FNS[op][1](q, k, v, *extra, torch.zeros_like(S0))
    torch.testing.assert_close(o_zero, o_ref, rtol=0, atol=0)
    torch.testing.assert_close(S_zero, S_ref, rtol=0, atol=0)


# ---- every form equals the loop -----------------------------------------------------------
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("t", [1, 4, 13])
def test_forms_equal_recurrent_float64(op, t):
    fn = FNS[op][0]
    args, S0 = make_inputs(op, t), make_state()
    o_ref, S_ref = fn(*args, state=S0, mode="recurrent")
    assert o_ref.shape == (B, t, H, D_V) and S_ref.shape == (B, H, D_K, D_V)
    g_ref = grads(fn, args, S0, mode="recurrent")
    for mode, chunk_size in forms(op):
        o, S = fn(*args, state=S0, mode=mode, chunk_size=chunk_size)
        torch.testing.assert_close(o, o_ref, rtol=0, atol=ATOL64)
        torch.testing.assert_close(S, S_ref, rtol=0, atol=ATOL64)
        for gi, gi_ref in zip(grads(fn, args, S0, mode=mode, chunk_size=chunk_size), g_ref,
                              strict=True):
            assert gi_ref.abs().max() > 0
            torch.testing.assert_close(gi, gi_ref, rtol=0, atol=ATOL64)
    o_default, S_default = fn(*args, state=S0)  # chunk is the default mode
    o_chunk, S_chunk = fn(*args, state=S0, mode="chunk", chunk_size=64)
    torch.testing.assert_close(o_default, o_chunk, rtol=0, atol=0)
    torch.testing.assert_close(S_default, S_chunk, rtol=0, atol=0)


@pytest.mark.parametrize("op", OPS)
def test_forms_float32(op):
    """float32 forms against the float64 loop: max error <= RTOL32 * max |value|."""
    fn = FNS[op][0]
    args, S0 = make_inputs(op, 40), make_state()
    o_ref, S_ref = fn(*args, state=S0, mode="recurrent")
    args32 = [a.float() for a in args]
    for mode in ("recurrent", "parallel", "chunk"):
        o, S = fn(*args32, state=S0.float(), mode=mode, chunk_size=16)
        assert o.dtype == S.dtype == torch.float32
        assert (o.double() - o_ref).abs().max() <= RTOL32 * o_ref.abs().max()
        assert (S.double() - S_ref).abs().max() <= RTOL32 * S_ref.abs().max()


@pytest.mark.parametrize("op", OPS)
def test_zero_state_is_the_default(op):
    fn = FNS[op][0]
    args = make_inputs(op, 6)
    for mode in ("recurrent", "parallel", "chunk"):
        o, S = fn(*args, mode=mode, chunk_size=4)
        o0, S0 = fn(*args, state=torch.zeros(B, H, D_K, D_V, dtype=torch.float64), mode=mode,
                    chunk_size=4)
        torch.testing.assert_close(o, o0, rtol=0, atol=0)
        torch.testing.assert_close(S, S0, rtol=0, atol=0)


@pytest.mark.parametrize("op", OPS)
def test_prefill_then_decode(op):
    """A chunked prefill of 37 tokens, then token-by-token steps, equals one pass over all."""
    fn, step = FNS[op]
    t, cut = 45, 37
    args, S0 = make_inputs(op, t), make_state()
    o_all, S_all = fn(*args, state=S0, chunk_size=8)
    per_token = args if op != "retention" else args[:3]
    fixed = [] if op != "retention" else args[3:]
    o_pre, S = fn(*(a[:, :cut] for a in per_token), *fixed, state=S0, chunk_size=8)
    outs = [o_pre]
    for i in range(cut, t):
        o_t, S = step(*(a[:, i] for a in per_token), *fixed, S)
        outs.append(o_t[:, None])
    torch.testing.assert_close(torch.cat(outs, dim=1), o_all, rtol=0, atol=ATOL64)
    torch.testing.assert_close(S, S_all, rtol=0, atol=ATOL64)


# ---- numerics and errors ------------------------------------------------------------------
@pytest.mark.parametrize("op", ["gla", "gated_delta_rule"])
def test_strong_decay_does_not_overflow(op):
    """Log gates ~ -50 per token: a chunk's cumulative decay reaches ~ -3000 (exp(+3000)
    overflows any float); the float32 chunked forms stay finite and equal the loop."""
    fn = FNS[op][0]
    args = make_inputs(op, 70, strength=50.0, dtype=torch.float32)
    S0 = make_state(dtype=torch.float32)
    o_ref, S_ref = fn(*args, state=S0, mode="recurrent")
    for mode in ("chunk", "parallel"):
        o, S = fn(*args, state=S0, mode=mode, chunk_size=64)
        assert torch.isfinite(o).all() and torch.isfinite(S).all()
        torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(S, S_ref, rtol=1e-4, atol=1e-4)
    g = grads(fn, args, S0)
    assert all(torch.isfinite(gi).all() for gi in g)


def test_retention_decay_closed_form():
    """retention with one token of k = e_0, v = 1 at t = 0: the state decays as gamma^t."""
    t = 9
    q = torch.zeros(1, t, H, D_K, dtype=torch.float64)
    q[..., 0] = 1.0
    k = torch.zeros_like(q)
    k[:, 0, :, 0] = 1.0
    v = torch.zeros(1, t, H, 1, dtype=torch.float64)
    v[:, 0] = 1.0
    log_decay = torch.log(torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
    o, _ = retention(q, k, v, log_decay, scale=1.0)
    expected = log_decay.exp()[None, :] ** torch.arange(t, dtype=torch.float64)[:, None]
    torch.testing.assert_close(o[0, :, :, 0], expected, rtol=0, atol=1e-12)
    assert math.isclose(o[0, 1, 0, 0].item(), 0.5)


@pytest.mark.parametrize("op", OPS)
def test_unknown_mode_raises(op):
    fn = FNS[op][0]
    with pytest.raises(ValueError) as info:
        fn(*make_inputs(op, 3), mode="fused")
    for mode in ("chunk", "parallel", "recurrent"):
        assert mode in str(info.value)
    with pytest.raises(ValueError):
        fn(*make_inputs(op, 3), chunk_size=0)


# ---- keyword-only gates -------------------------------------------------------------------
@pytest.mark.parametrize("op", sorted(GATES))
def test_delta_rule_gates_are_keyword_only(op):
    """g and beta have the same shape, and fla has taken them as (..., beta, g): every form
    refuses them positionally, and by name the order of the keywords does not matter."""
    la = importlib.import_module("seqmem.ops.linear_attention")  # the module, not the op
    q, k, v, *gates = make_inputs(op, 5)
    named = dict(zip(GATES[op], gates, strict=True))
    S0 = make_state()
    for fn in (getattr(la, op), getattr(la, f"{op}_recurrent")):
        with pytest.raises(TypeError):
            fn(q, k, v, *gates)
        with pytest.raises(TypeError):
            fn(q, k, v, *gates, state=S0)
    for step_args in ((), (S0,)):
        with pytest.raises(TypeError):
            getattr(la, f"{op}_step")(q[:, 0], k[:, 0], v[:, 0], *(x[:, 0] for x in gates),
                                      *step_args)
    with pytest.raises(TypeError):
        la.delta_rule_chunk(q, k, v, *gates[::-1])  # fla's order, positionally
    o, S = getattr(la, op)(q, k, v, state=S0, **dict(reversed(named.items())))
    o_ref, S_ref = getattr(la, f"{op}_recurrent")(q, k, v, state=S0, **named)
    torch.testing.assert_close(o, o_ref, rtol=0, atol=ATOL64)
    torch.testing.assert_close(S, S_ref, rtol=0, atol=ATOL64)
