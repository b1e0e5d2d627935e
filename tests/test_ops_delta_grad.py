"""The hand-written backward of the chunked delta rules (`seqmem.ops.delta_chunk`): outputs,
final state and the gradients of every input (q, k, v, beta, the log decay g, the initial
state) equal autograd through the loop of the step (`<op>_recurrent`) in float64, for losses on
the outputs and the final state, on the final state alone, with and without an initial state,
for t = 1, t < chunk, t not a multiple of the chunk, chunk sizes 1, 2, 16, 64 and ones that
are not powers of two; strong decays (g down to -20) stay finite; torch.autograd.gradcheck
on a tiny case; the forward keeps memory linear in t (no (C, C) block is saved)."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

la = importlib.import_module("seqmem.ops.linear_attention")

B, H, D_K, D_V = 2, 2, 5, 4
SCALE = 0.7
OPS = ["delta_rule", "gated_delta_rule"]
CASES = [(1, 4), (3, 16), (10, 4), (16, 16), (37, 16), (20, 1), (20, 2), (70, 64), (45, 7),
         (40, 5)]  # (t, chunk_size)


def inputs(op: str, t: int, *, seed: int = 0, g_low: float | None = None, dtype=torch.float64):
    """q, k (normalised), v, beta in (0, 2), g (the log decay, None for the ungated rule) and
    an initial state. g is logsigmoid of a normal draw, or uniform in [g_low, 0]."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v = randn(B, t, H, D_K), F.normalize(randn(B, t, H, D_K), dim=-1), randn(B, t, H, D_V)
    beta = 2 * torch.rand(B, t, H, generator=gen, dtype=torch.float64)
    if g_low is None:
        g = F.logsigmoid(randn(B, t, H))
    else:
        g = g_low * torch.rand(B, t, H, generator=gen, dtype=torch.float64)
    S0 = randn(B, H, D_K, D_V)
    g = g if op == "gated_delta_rule" else None
    return {name: None if x is None else x.to(dtype)
            for name, x in zip(("q", "k", "v", "beta", "g", "state"), (q, k, v, beta, g, S0),
                               strict=True)}


def run(op: str, form: str, x: dict, chunk_size: int = 64):
    """(o, final state) of the chunked form or of the loop of the step."""
    kw = {"beta": x["beta"], "state": x["state"], "scale": SCALE}
    if op == "gated_delta_rule":
        kw["g"] = x["g"]
    if form == "chunk":
        return la.delta_rule_chunk(x["q"], x["k"], x["v"], chunk_size=chunk_size, **kw)
    loop = la.gated_delta_rule_recurrent if op == "gated_delta_rule" else la.delta_rule_recurrent
    return loop(x["q"], x["k"], x["v"], **kw)


def loss_grads(op: str, form: str, x: dict, chunk_size: int, *, on_outputs: bool = True,
               wrt: tuple[str, ...] | None = None):
    """(o, S, gradients of a fixed random functional of o (if on_outputs) and S w.r.t. the
    inputs named in wrt, default every input that is given)."""
    names = [n for n in x if x[n] is not None] if wrt is None else list(wrt)
    x = {n: None if z is None else z.detach().requires_grad_(n in names) for n, z in x.items()}
    o, S = run(op, form, x, chunk_size)
    gen = torch.Generator().manual_seed(7)
    w_S, w_o = (torch.randn(z.shape, generator=gen, dtype=torch.float64).to(z.dtype)
                for z in (S, o))  # the same weights in every dtype
    loss = (S * w_S).sum() + ((o * w_o).sum() if on_outputs else 0)
    return o, S, dict(zip(names, torch.autograd.grad(loss, [x[n] for n in names]), strict=True))


def assert_same(op, x, chunk_size, **kw):
    o, S, g = loss_grads(op, "chunk", x, chunk_size, **kw)
    o_ref, S_ref, g_ref = loss_grads(op, "recurrent", x, chunk_size, **kw)
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(S, S_ref, rtol=0, atol=1e-10)
    assert g.keys() == g_ref.keys()
    for name in g:
        assert torch.isfinite(g[name]).all(), name
        torch.testing.assert_close(g[name], g_ref[name], rtol=0, atol=1e-9, msg=name)
    return g


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("t", "chunk_size"), CASES)
@pytest.mark.parametrize("given", [True, False], ids=["state", "no_state"])
def test_gradients_equal_step_loop(op, t, chunk_size, given):
    """Loss on outputs and final state; with the initial state given (its gradient too) or
    None (zeros)."""
    x = inputs(op, t, seed=t + chunk_size)
    if not given:
        x["state"] = None
    g = assert_same(op, x, chunk_size)
    assert ("state" in g) == given
    # every input gets a gradient (but a decay of the first token acts on a zero state)
    assert all(v.abs().max() > 0 for n, v in g.items() if given or t > 1 or n != "g")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("t", "chunk_size"), [(1, 2), (12, 16), (33, 8), (30, 7)])
def test_gradients_of_the_final_state_alone(op, t, chunk_size):
    """A loss on the final state alone: no gradient arrives on the outputs (nor reaches q)."""
    x = inputs(op, t, seed=3)
    assert_same(op, x, chunk_size, on_outputs=False,
                wrt=tuple(n for n in x if n != "q" and x[n] is not None))


@pytest.mark.parametrize(("t", "chunk_size"), [(50, 16), (70, 64), (23, 23)])
def test_strong_decay_is_finite_and_exact(t, chunk_size):
    """g uniform in [-20, 0]: decays over a chunk far below float64's smallest number; the
    forward and the gradients stay finite and equal the loop's."""
    x = inputs("gated_delta_rule", t, seed=11, g_low=-20.0)
    assert_same("gated_delta_rule", x, chunk_size)


def test_strong_decay_float32_is_finite():
    """The same in float32 at the default chunk size: no nan or inf anywhere, and close to the
    float64 loop relative to each gradient's size."""
    x = inputs("gated_delta_rule", 130, seed=5, g_low=-20.0)
    _, _, g_ref = loss_grads("gated_delta_rule", "recurrent", x, 64)
    x32 = {n: z.float() for n, z in x.items()}
    o, S, g = loss_grads("gated_delta_rule", "chunk", x32, 64)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    for name in g:
        assert torch.isfinite(g[name]).all(), name
        err = (g[name].double() - g_ref[name]).abs().max() / g_ref[name].abs().max()
        assert err < 1e-4, (name, err)


@pytest.mark.parametrize("op", OPS)
def test_some_inputs_without_gradient(op):
    """Only v and beta require a gradient: those equal the loop's."""
    assert_same(op, inputs(op, 19, seed=2), 8, wrt=("v", "beta"))


@pytest.mark.parametrize("op", OPS)
def test_parallel_mode_is_one_chunk(op):
    """The "parallel" form is the same Function with one chunk holding the sequence."""
    x = {n: None if z is None else z.detach().requires_grad_(True)
         for n, z in inputs(op, 21, seed=4).items()}
    fn = getattr(la, op)
    gates = {"beta": x["beta"]} | ({"g": x["g"]} if op == "gated_delta_rule" else {})
    o, S = fn(x["q"], x["k"], x["v"], **gates, state=x["state"], mode="parallel")
    gen = torch.Generator().manual_seed(7)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() + S.square().sum()
    leaves = [z for z in x.values() if z is not None]
    g = torch.autograd.grad(loss, leaves)
    o_ref, S_ref = fn(x["q"], x["k"], x["v"], **gates, state=x["state"], mode="recurrent")
    gen = torch.Generator().manual_seed(7)
    loss = (o_ref * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() + S_ref.square().sum()
    for a, b in zip(g, torch.autograd.grad(loss, leaves), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("op", OPS)
def test_gradcheck(op):
    """torch.autograd.gradcheck (finite differences) on a tiny case, unnormalised keys."""
    gen = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    q, k, v, S0 = r(1, 5, 1, 3), 0.5 * r(1, 5, 1, 3).detach(), r(1, 5, 1, 2), r(1, 1, 3, 2)
    k.requires_grad_()
    beta = torch.rand(1, 5, 1, generator=gen, dtype=torch.float64).requires_grad_()
    g = (-torch.rand(1, 5, 1, generator=gen, dtype=torch.float64)).requires_grad_()
    if op == "delta_rule":
        def fn(q, k, v, beta, S0):
            return la.delta_rule_chunk(q, k, v, beta=beta, state=S0, scale=SCALE, chunk_size=2)
        args = (q, k, v, beta, S0)
    else:
        def fn(q, k, v, beta, g, S0):
            return la.delta_rule_chunk(q, k, v, beta=beta, g=g, state=S0, scale=SCALE,
                                       chunk_size=2)
        args = (q, k, v, beta, g, S0)
    assert torch.autograd.gradcheck(fn, args)


def test_no_double_backward():
    """First-order only: differentiating the gradient again raises instead of being wrong."""
    x = {n: None if z is None else z.detach().requires_grad_(True)
         for n, z in inputs("gated_delta_rule", 6, seed=1).items()}
    o, _ = run("gated_delta_rule", "chunk", x, 4)
    (dq,) = torch.autograd.grad(o.square().sum(), [x["q"]], create_graph=True)
    with pytest.raises(RuntimeError):
        dq.sum().backward()


@pytest.mark.parametrize("op", OPS)
def test_saved_memory_is_linear(op):
    """What the graph keeps for the backward: the (chunked) inputs and one d_k x d_v state per
    chunk, no (C, C) block; the step loop's graph keeps a state per token instead."""
    t, C = 64, 16

    def saved(form):
        found = {}

        def pack(z):
            found[(z.data_ptr(), z.shape, z.stride())] = z.numel()
            return z

        x = {n: None if z is None else z.detach().requires_grad_(True)
             for n, z in inputs(op, t).items()}
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda z: z):
            run(op, form, x, C)
        return found

    found = saved("chunk")
    assert not any(shape[-2:] == (C, C) for _, shape, _ in found)
    n = t // C
    inputs_size = B * t * H * (2 * D_K + D_V + 2)  # q, k, v, beta, g
    starts = B * H * n * D_K * D_V
    assert sum(found.values()) <= inputs_size + starts
    assert sum(saved("recurrent").values()) > B * H * t * D_K * D_V  # the loop: per token
