"""Mixed precision: the recurrences run in float32 under autocast (`ops.loops.float32_recurrence`).

For every registered mixer (1-D and 2-D, built with small sizes in float32): under bf16
autocast on the CPU, `forward` in every declared mode and `step` run, the returned state's
floating tensors are float32, and the output is finite and close to the float32 output (the
error that bf16 projections alone make). The bound is shown to be meaningful: a long decay
recurrence run in bf16 misses the float64 result by far more than the bound, the decorated op
under autocast meets it. Without autocast the decorator changes nothing, bit for bit, and
every public recurrence op carries it. fp16 autocast on the CPU is checked for a few mixers.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import Tensor

import seqmem.ops as ops_pkg
from seqmem import mixers
from seqmem.mixers.grid import build_2d, names_2d
from seqmem.ops import loops
from seqmem.ops.loops import float32_recurrence
from seqmem.ops.rnn import LSTMState
from seqmem.ops.scan import linear_recurrence

D_MODEL = 8
T = 12
# bf16 keeps 8 bits of mantissa: one rounding is 2^-9 ~ 2e-3 relative; a mixer's output passes
# through a few bf16 projections (in, gates, out): measured at t = 12, the error is 0.004 of
# the output's scale at the median mixer and 0.02 at the worst (gla, retnet). A recurrence
# run in bf16 over 512 steps misses by 0.09 (the test of linear_recurrence below).
BOUND = 3e-2
GRAD_BOUND = 1e-1


def leaves(state) -> list[Tensor]:
    """The tensors of a state (a tensor or nested tuples of them), in order."""
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, tuple):
        return [leaf for part in state for leaf in leaves(part)]
    return []


def rel_err(y: Tensor, ref: Tensor) -> float:
    """||y - ref|| / ||ref|| (root mean squares): the error relative to the output's scale."""
    return ((y.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def build_1d(name: str):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return mixers.build(name, D_MODEL)


def build_grid(name: str):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_2d(name, D_MODEL)


def inputs(*shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def check_state(state, what: str) -> None:
    for i, leaf in enumerate(leaves(state)):
        if leaf.is_floating_point():
            assert leaf.dtype == torch.float32, f"{what}: state part {i} is {leaf.dtype}"


CASES_1D = [(n, mode) for n in mixers.names() for mode in mixers.get(n).modes]


@pytest.mark.parametrize("name, mode", CASES_1D, ids=[f"{n}-{m}" for n, m in CASES_1D])
def test_bf16_forward_is_close_and_keeps_a_float32_state(name, mode):
    m = build_1d(name)
    x = inputs(2, T, D_MODEL)
    with torch.no_grad():
        y32, s32 = m(x, mode=mode)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, s = m(x, mode=mode)
    check_state(s, f"{name} {mode}")
    assert torch.isfinite(y).all(), f"{name} {mode}: non-finite output under bf16"
    err = rel_err(y, y32)
    assert err < BOUND, f"{name} {mode}: bf16 output off by {err:.3g} of its scale"
    for a, b in zip(leaves(s), leaves(s32), strict=True):
        if a.is_floating_point() and b.numel() and b.abs().max() > 0:
            assert rel_err(a, b) < BOUND, f"{name} {mode}: bf16 state off by {rel_err(a, b):.3g}"


@pytest.mark.parametrize("name", mixers.names())
def test_bf16_step_is_close_and_keeps_a_float32_state(name):
    m = build_1d(name)
    x = inputs(2, 4, D_MODEL)
    with torch.no_grad():
        s32 = s = m.init_state(2)
        ys32, ys = [], []
        for x_t in x.unbind(1):
            y32_t, s32 = m.step(x_t, s32)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y_t, s = m.step(x_t, s)
            check_state(s, f"{name} step")  # the next step's state check needs float32 too
            ys32.append(y32_t)
            ys.append(y_t)
    y, y32 = torch.stack(ys, 1), torch.stack(ys32, 1)
    assert torch.isfinite(y).all(), f"{name}: non-finite step output under bf16"
    assert rel_err(y, y32) < BOUND, f"{name}: bf16 step output off by {rel_err(y, y32):.3g}"


CASES_2D = [(n, mode) for n in names_2d() for mode in build_grid(n).modes]


@pytest.mark.parametrize("name, mode", CASES_2D, ids=[f"{n}-{m}" for n, m in CASES_2D])
def test_bf16_grid_forward_is_close_and_keeps_a_float32_state(name, mode):
    m = build_grid(name)
    x = inputs(2, 3, 4, D_MODEL)
    with torch.no_grad():
        y32, _ = m(x, mode=mode)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, s = m(x, mode=mode)
    check_state(s, f"{name} {mode}")
    assert torch.isfinite(y).all(), f"{name} {mode}: non-finite output under bf16"
    err = rel_err(y, y32)
    assert err < BOUND, f"{name} {mode}: bf16 output off by {err:.3g} of its scale"


BACKWARD_CASES = [("leaky_rnn", None), ("elman", None), ("gru", None), ("lstm", "recurrent"),
                  ("lstm", "fused"), ("mamba", None), ("mamba2", None), ("deltanet", None),
                  ("retnet", None), ("gla", None)]


@pytest.mark.parametrize("name, mode", BACKWARD_CASES, ids=[f"{n}-{m}" for n, m in BACKWARD_CASES])
@pytest.mark.parametrize("inside", [False, True], ids=["backward-after", "backward-inside"])
def test_bf16_backward_through_the_recurrence(name, mode, inside):
    """Gradients flow through the float32 recurrence back to the bf16 projections (the
    hand-written backward passes of the RNNs and of the chunked forms included, also when
    backward is called inside the autocast region) and are close to float32's. A gradient
    is worse conditioned than an output: retnet's q/k/v gradient moves by 0.075 in float32
    when only its weights and input are rounded to bf16 (0.073 under autocast), hence the
    looser bound."""
    m = build_1d(name)
    x = inputs(2, T, D_MODEL)
    grads = []
    for low in (False, True):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            y, _ = m(x, mode=mode)
            if inside:
                y.float().square().sum().backward()
        if not inside:
            y.float().square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    assert torch.isfinite(grads[1]).all(), f"{name}: non-finite bf16 gradient"
    err = rel_err(grads[1], grads[0])
    assert err < GRAD_BOUND, f"{name}: bf16 gradient off by {err:.3g}"


LONG_CASES = ["leaky_rnn", "gru", "mamba2", "retnet", "attention", "s4d", "linear_attn"]


@pytest.mark.parametrize("name", LONG_CASES)
def test_bf16_long_sequence_stays_close(name):
    """Over t = 512 steps the error stays that of the projections (retnet and attention: the
    rotary angles are computed in float32, a bf16 position is off by 2 past 256)."""
    m = build_1d(name)
    x = inputs(1, 512, D_MODEL)
    with torch.no_grad():
        y32, _ = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, s = m(x)
    check_state(s, f"{name} t=512")
    err = rel_err(y, y32)
    assert err < BOUND / 2, f"{name}: bf16 output at t=512 off by {err:.3g}"


def _decay_inputs(t: int):
    """A slow leaky integrator h_t = a h_{t-1} + (1 - a) u_t, a = 1 - 1/300 (tau = 300 steps),
    over a positive-mean input: its state grows over hundreds of steps. The drive is rounded
    to bf16 (as a projection under autocast gives it); the decay is float32 (a function of
    the parameters), so that the float64 reference on the same inputs measures the
    recurrence's own arithmetic."""
    g = torch.Generator().manual_seed(2)
    u = 1.0 + 0.5 * torch.randn(2, t, 4, generator=g)
    a = torch.full_like(u, 1 - 1 / 300)
    return a, ((1 - a) * u).bfloat16()


def _loop_float64(a: Tensor, b: Tensor) -> Tensor:
    h, out = torch.zeros(a.shape[0], a.shape[2], dtype=torch.float64), []
    for a_t, b_t in zip(a.double().unbind(1), b.double().unbind(1), strict=True):
        h = a_t * h + b_t
        out.append(h)
    return torch.stack(out, 1)


def test_a_long_recurrence_in_bf16_misses_the_bound_and_the_decorated_op_meets_it():
    a, b = _decay_inputs(512)
    ref = _loop_float64(a, b)
    # the recurrence run in bf16, decay and state: a = 1 - 1/300 is 1 - 1/256 in bf16 (its
    # spacing below 1 is 2^-8), and a state near 1 moves by steps of 2^-8, about one step's
    # increment (1 - a) u ~ 3e-3
    raw = linear_recurrence.__wrapped__(a.bfloat16(), b, torch.zeros(2, 4, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept = linear_recurrence(a, b, torch.zeros(2, 4))
    assert raw.dtype == torch.bfloat16 and kept.dtype == torch.float32
    err_raw, err_kept = rel_err(raw, ref), rel_err(kept, ref)
    assert err_raw > 2 * BOUND, f"bf16 recurrence off by only {err_raw:.3g}"
    assert err_kept < 1e-5, f"float32 recurrence off by {err_kept:.3g}"


def test_without_autocast_the_decorator_changes_nothing_bit_for_bit():
    calls = []

    def op(x, state, *, scale):
        calls.append((x.dtype, state[0].dtype, torch.is_autocast_enabled("cpu")))
        return x * scale + state[0], (state[0] * 2, state[1])

    wrapped = float32_recurrence(op)
    x, s = inputs(3, 5).bfloat16(), (inputs(5).double(), "tag")
    y_raw, s_raw = op(x, s, scale=0.3)
    y, s_out = wrapped(x, s, scale=0.3)
    assert calls[0] == calls[1] == (torch.bfloat16, torch.float64, False)
    assert y.dtype == y_raw.dtype and torch.equal(y, y_raw)
    assert torch.equal(s_out[0], s_raw[0]) and s_out[1] == "tag"
    # a real op: the same numbers and the same autograd graph
    a, b = (z.float() for z in _decay_inputs(9))
    b.requires_grad_(True)
    h = linear_recurrence(a, b, torch.zeros(2, 4))
    h_raw = linear_recurrence.__wrapped__(a, b, torch.zeros(2, 4))
    assert torch.equal(h, h_raw) and type(h.grad_fn) is type(h_raw.grad_fn)


def test_under_autocast_the_decorator_upcasts_states_and_disables_autocast():
    seen = []

    def op(x, state, w):
        seen.append((x.dtype, state.h.dtype, state.c.dtype, w.dtype,
                     torch.is_autocast_enabled("cpu")))
        return x * w.sum(), state

    wrapped = float32_recurrence(op)
    state = LSTMState(inputs(2, 3).bfloat16(), inputs(2, 3).double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = wrapped(inputs(2, 3).bfloat16(), state, inputs(3, 3))
    assert seen == [(torch.float32, torch.float32, torch.float64, torch.float32, False)]
    assert y.dtype == torch.float32 and isinstance(s, LSTMState)
    # autocast for another device type leaves a CPU op alone
    seen.clear()
    with torch.autocast("cuda", dtype=torch.float16, enabled=torch.cuda.is_available()):
        wrapped(inputs(2, 3).bfloat16(), state, inputs(3, 3))
    assert seen[0][0] == torch.bfloat16 and not seen[0][4]


# the public recurrence ops of every module of seqmem.ops, and what is left out on purpose
NOT_RECURRENCES = {
    "activation", "alrnn_phi", "alrnn_subregion", "chimera_read", "convs5_discretise",
    "hippo", "hippo_low_rank", "hippo_fout", "hippo_legs", "hippo_legs_normal", "hippo_legt",
    "hippo_n", "nplr", "ptd", "rotary", "neural_memory_init_state", "titans_init_state",
    "short_conv_init_state", "chunk", "unchunk", "causal_decay", "carry", "step_loop",
    # softmax attention runs in bf16 with its own float32 softmax (ops.attention as it is)
    "attention_parallel", "attention_step", "attention_own_key", "attention_own_key_banded",
    "aaren_scan", "aaren_step",
}


def test_every_public_recurrence_op_is_decorated():
    missing = [
        name for name in ops_pkg.__all__
        if name not in NOT_RECURRENCES and inspect.isfunction(getattr(ops_pkg, name))
        and not getattr(getattr(ops_pkg, name), "float32_recurrence", False)]
    assert not missing, f"recurrence ops without float32_recurrence: {missing}"
    assert loops.float32_recurrence is float32_recurrence


FP16_CASES = ["leaky_rnn", "mamba", "gated_deltanet"]


@pytest.mark.parametrize("name", FP16_CASES)
def test_fp16_forward_on_cpu(name):
    m = build_1d(name)
    x = inputs(2, T, D_MODEL)
    with torch.no_grad():
        y32, _ = m(x)
        try:
            with torch.autocast("cpu", dtype=torch.float16):
                y, s = m(x)
        except RuntimeError as e:  # an op this torch has no CPU float16 kernel for
            pytest.skip(f"CPU float16 autocast not supported here: {e}")
    check_state(s, f"{name} fp16")
    assert torch.isfinite(y).all()
    # fp16 keeps 11 bits of mantissa: closer than bf16
    assert rel_err(y, y32) < BOUND / 4, f"{name}: fp16 output off by {rel_err(y, y32):.3g}"
