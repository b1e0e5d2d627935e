"""The hand-written backward of the scalar-decay chunked forms (linear attention, retention,
ssd, ssd_signed and `scalar_decay_chunk` with a decay per token): outputs, final state and the
gradients of every input (initial state included) equal those of autograd through the loop of
the op's step, in float64, for losses on the outputs, on the final state and on both; for
t = 1, t < chunk, t not a multiple of the chunk, chunk sizes 1, 2, 3, 5, 16, 64; for strong
decays; by torch.autograd.gradcheck on tiny cases; and the forward keeps no (C, C) block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqmem.ops import scalar_decay_chunk as sdc
from seqmem.ops.linear_attention import linear_attention, retention, scalar_decay_chunk
from seqmem.ops.selective import ssd, ssd_signed

B, H, D_K, D_V = 2, 3, 4, 3
ATOL = 1e-10
OPS = ["linear_attention", "retention", "scalar_decay", "ssd", "ssd_signed"]


def make_inputs(op: str, t: int, *, seed: int = 0, strength: float = 1.0):
    """The op's inputs in float64 (all requiring grad): q, k, v and its decay (none for linear
    attention; log_decay (h,) for retention; g (b, t, h) per token otherwise). ssd's x, B, C
    are v, k, q."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v = randn(B, t, H, D_K), randn(B, t, H, D_K), randn(B, t, H, D_V)
    extra = {
        "linear_attention": [],
        "retention": [strength * F.logsigmoid(randn(H))],
        "scalar_decay": [strength * F.logsigmoid(randn(B, t, H))],
        "ssd": [strength * F.logsigmoid(randn(B, t, H))],
        # a in (-inf, 0]: transitions 2 exp(a) - 1 of either sign, away from 0 where the chunked
        # form's log|alpha| is clamped
        "ssd_signed": [torch.log((1 + 0.9 * torch.where(randn(B, t, H) > 0, 1.0, -1.0)
                                  * torch.rand(B, t, H, generator=gen, dtype=torch.float64)
                                  .clamp(min=0.2)) / 2)],
    }[op]
    return [x.requires_grad_() for x in (q, k, v, *extra)]


def make_state(op: str, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    shape = (B, H, D_V, D_K) if op.startswith("ssd") else (B, H, D_K, D_V)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()


def run(op: str, inputs, state, mode: str, chunk_size: int = 16):
    """(o, S_T) of `op` in `mode`; scalar_decay's loop is ssd's (the same recurrence with
    q = C scaled, k = B, v = x, the state transposed)."""
    q, k, v, *extra = inputs
    if op == "linear_attention":
        return linear_attention(q, k, v, state=state, mode=mode, chunk_size=chunk_size)
    if op == "retention":
        return retention(q, k, v, extra[0], state=state, mode=mode, chunk_size=chunk_size)
    if op == "scalar_decay":
        if mode == "chunk":
            return scalar_decay_chunk(q, k, v, extra[0], state=state, chunk_size=chunk_size)
        S = None if state is None else state.transpose(-1, -2)
        o, S = ssd(v, extra[0], k, q * D_K**-0.5, state=S, mode="recurrent")
        return o, S.transpose(-1, -2)
    fn = ssd_signed if op == "ssd_signed" else ssd
    return fn(v, extra[0], k, q, state=state, mode=mode, chunk_size=chunk_size)


def loss_of(o, S, which: str, seed: int = 2):
    """A random linear functional of the outputs, of the final state, or of both."""
    gen = torch.Generator().manual_seed(seed)
    w_o = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
    w_S = torch.randn(S.shape, generator=gen, dtype=torch.float64).to(S.dtype)
    return {"outputs": (o * w_o).sum(), "state": (S * w_S).sum(),
            "both": (o * w_o).sum() + (S * w_S).sum()}[which]


def check_against_loop(op, t, chunk_size, *, with_state=True, which="both", strength=1.0,
                       seed=0):
    inputs = make_inputs(op, t, seed=seed, strength=strength)
    state = make_state(op) if with_state else None
    leaves = inputs + ([state] if with_state else [])
    o, S = run(op, inputs, state, "chunk", chunk_size)
    o_ref, S_ref = run(op, inputs, state, "recurrent")
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    torch.testing.assert_close(o, o_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(S, S_ref, atol=ATOL, rtol=0)
    grads = torch.autograd.grad(loss_of(o, S, which), leaves, allow_unused=True)
    refs = torch.autograd.grad(loss_of(o_ref, S_ref, which), leaves, allow_unused=True)
    names = ["q", "k", "v", "decay", "state"][:len(inputs)] + (["state"] if with_state else [])
    for name, g, r in zip(names, grads, refs, strict=True):
        if r is None:  # the op does not use this input (e.g. nothing reaches o from S_T)
            assert g is None or not g.abs().max() > 0, name
            continue
        assert g is not None, name
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, r, atol=ATOL, rtol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("t, chunk_size", [(1, 16), (5, 16), (37, 16), (9, 1), (9, 2),
                                           (23, 5), (70, 64)])
def test_gradients_equal_the_loop(op, t, chunk_size):
    check_against_loop(op, t, chunk_size)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("which", ["outputs", "state"])
@pytest.mark.parametrize("with_state", [True, False])
def test_gradients_of_each_loss_and_no_initial_state(op, which, with_state):
    check_against_loop(op, 13, 4, with_state=with_state, which=which)


@pytest.mark.parametrize("op", ["retention", "scalar_decay", "ssd", "ssd_signed"])
def test_strong_decays_stay_finite_and_exact(op):
    """Log decays down to -20 (ssd_signed: transitions near -1, 0 and 1): nothing overflows,
    and the gradients are still the loop's."""
    strength = 1.0 if op == "ssd_signed" else 20.0
    check_against_loop(op, 70, 64, strength=strength)
    check_against_loop(op, 37, 8, strength=strength, seed=3)


def test_decay_per_token_down_to_minus_20():
    """g uniform in [-20, 0]: the chunk of 64 multiplies factors as small as exp(-1280)."""
    gen = torch.Generator().manual_seed(4)
    inputs = make_inputs("scalar_decay", 70)
    inputs[3] = (-20 * torch.rand(B, 70, H, generator=gen, dtype=torch.float64)).requires_grad_()
    state = make_state("scalar_decay")
    o, S = run("scalar_decay", inputs, state, "chunk", 64)
    o_ref, S_ref = run("scalar_decay", inputs, state, "recurrent")
    leaves = [*inputs, state]
    grads = torch.autograd.grad(loss_of(o, S, "both"), leaves)
    refs = torch.autograd.grad(loss_of(o_ref, S_ref, "both"), leaves)
    for g, r in zip((o, S, *grads), (o_ref, S_ref, *refs), strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, r, atol=ATOL, rtol=1e-9)


@pytest.mark.parametrize("op", ["retention", "scalar_decay", "ssd", "ssd_signed"])
@pytest.mark.parametrize("factor_range", [0.0, float("inf")])
def test_both_ways_of_forming_the_decays(op, factor_range, monkeypatch):
    """Decays within FACTOR_RANGE are factored into the products' operands, others take the
    masked exponential: each way, forced, equals the loop."""
    monkeypatch.setattr(sdc, "FACTOR_RANGE", factor_range)
    check_against_loop(op, 37, 16)


@pytest.mark.parametrize("op", OPS)
def test_only_some_inputs_need_a_gradient(op):
    """Inputs that do not require grad get none; those that do get the loop's."""
    inputs = [x.detach() for x in make_inputs(op, 11)]
    inputs[2].requires_grad_()  # v only, and the state
    state = make_state(op)
    o, S = run(op, inputs, state, "chunk", 4)
    o_ref, S_ref = run(op, inputs, state, "recurrent")
    grads = torch.autograd.grad(loss_of(o, S, "both"), [inputs[2], state])
    refs = torch.autograd.grad(loss_of(o_ref, S_ref, "both"), [inputs[2], state])
    for g, r in zip(grads, refs, strict=True):
        torch.testing.assert_close(g, r, atol=ATOL, rtol=1e-9)


@pytest.mark.parametrize("op", ["scalar_decay", "ssd_signed", "linear_attention"])
def test_gradcheck(op):
    gen = torch.Generator().manual_seed(5)
    b, t, h, d = 1, 5, 1, 2

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    q, k, v, S0 = randn(b, t, h, d), randn(b, t, h, d), randn(b, t, h, d), randn(b, h, d, d)
    a = (F.logsigmoid(randn(b, t, h)) - 0.1).detach().requires_grad_()  # away from a = log 1/2

    def fn(q, k, v, a, S0):
        if op == "scalar_decay":
            return scalar_decay_chunk(q, k, v, a, state=S0, chunk_size=2, scale=0.7)
        if op == "ssd_signed":
            return ssd_signed(v, a, k, q, state=S0, chunk_size=2)
        return linear_attention(q, k, v, state=S0, chunk_size=2, scale=0.7)

    inputs = (q, k, v, a, S0)
    assert torch.autograd.gradcheck(fn, inputs, atol=1e-8, rtol=1e-6, fast_mode=True)


def test_the_forward_keeps_no_score_block():
    """What the chunked form saves for its backward: the inputs, the decays and the state at
    each chunk's start, never a (C, C) block (which here would hold C / d_k = 16 times as many
    floats as the inputs)."""
    t, C = 256, 64
    inputs = make_inputs("scalar_decay", t)
    state = make_state("scalar_decay")
    saved = []

    def pack(x):
        saved.append(tuple(x.shape))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        scalar_decay_chunk(*inputs, state=state, chunk_size=C)
    n_chunks = -(-t // C)
    block = B * H * n_chunks * C * C
    assert saved and all(torch.Size(s).numel() < block for s in saved), saved
    budget = 3 * sum(x.numel() for x in inputs) + (n_chunks + 1) * B * H * D_K * D_V
    assert sum(torch.Size(s).numel() for s in saved) <= budget, saved


def test_float32_matches_float64():
    """The float32 chunked form's outputs and gradients against the float64 loop, relative to
    their size."""
    inputs = make_inputs("scalar_decay", 100)
    state = make_state("scalar_decay")
    o_ref, S_ref = run("scalar_decay", inputs, state, "recurrent")
    refs = torch.autograd.grad(loss_of(o_ref, S_ref, "both"), [*inputs, state])
    inputs32 = [x.detach().float().requires_grad_() for x in (*inputs, state)]
    o, S = run("scalar_decay", inputs32[:4], inputs32[4], "chunk", 32)
    grads = torch.autograd.grad(loss_of(o, S, "both"), inputs32)
    for g, r in zip((o, S, *grads), (o_ref, S_ref, *refs), strict=True):
        assert (g.double() - r).abs().max() <= 1e-4 * r.abs().max()
