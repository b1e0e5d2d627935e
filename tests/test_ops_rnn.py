"""The RNN loops' hand-written backward (backpropagation through time) against autograd through
the step functions, in float64: outputs, final states and every input's gradient."""

from __future__ import annotations

import pytest
import torch

from seqmem.ops.rnn import (
    LSTMState,
    elman_recurrent,
    elman_step,
    gru_recurrent,
    gru_step,
    leaky_rnn_recurrent,
    leaky_rnn_step,
    lstm_recurrent,
    lstm_step,
)

B, D = 3, 5
F64 = torch.float64


def _randn(*shape, gen, scale=1.0):
    return (scale * torch.randn(*shape, generator=gen, dtype=F64)).requires_grad_(True)


def _grads(outputs, inputs, gen):
    """Gradients of a random linear functional of the outputs (each output weighted)."""
    weights = [torch.randn(o.shape, generator=gen, dtype=F64) for o in outputs]
    loss = sum((o * w).sum() for o, w in zip(outputs, weights, strict=True))
    return torch.autograd.grad(loss, inputs)


def _assert_same(fused, reference, inputs, seed):
    for a, b in zip(fused, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    g_fused = _grads(fused, inputs, torch.Generator().manual_seed(seed))
    g_ref = _grads(reference, inputs, torch.Generator().manual_seed(seed))
    for a, b in zip(g_fused, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _step_loop(step, u, h, *args, **kw):
    hs = []
    for u_t in u.unbind(1):
        h = step(u_t, h, *args, **kw)
        hs.append(h)
    return torch.stack(hs, 1), h


@pytest.mark.parametrize("T", [1, 2, 9])
@pytest.mark.parametrize("phi", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_elman_backward_equals_autograd_through_steps(T, phi, bias):
    gen = torch.Generator().manual_seed(T)
    u, h0 = _randn(B, T, D, gen=gen), _randn(B, D, gen=gen)
    W = _randn(D, D, gen=gen, scale=0.6)
    b = _randn(D, gen=gen) if bias else None
    inputs = [z for z in (u, h0, W, b) if z is not None]
    fused = elman_recurrent(u, h0, W, b, phi=phi)
    reference = _step_loop(elman_step, u, h0, W, b, phi=phi)
    _assert_same(fused, reference, inputs, seed=T)


@pytest.mark.parametrize("T", [1, 2, 9])
@pytest.mark.parametrize("rule", ["default", "mod"])
@pytest.mark.parametrize("phi", ["leaky_relu", "tanh", "relu"])
def test_leaky_backward_equals_autograd_through_steps(T, rule, phi):
    gen = torch.Generator().manual_seed(10 + T)
    u, h0 = _randn(B, T, D, gen=gen), _randn(B, D, gen=gen)
    W = _randn(D, D, gen=gen, scale=0.6)
    a = torch.rand(D, generator=gen, dtype=F64).requires_grad_(True)  # 1 / tau in (0, 1)
    fused = leaky_rnn_recurrent(u, h0, W, a, rule=rule, phi=phi)
    reference = _step_loop(leaky_rnn_step, u, h0, W, a, rule=rule, phi=phi)
    _assert_same(fused, reference, [u, h0, W, a], seed=T)


def test_leaky_backward_without_a_timescale_gradient():
    """A fixed tau (no gradient wanted for 1 / tau) still gives every other gradient."""
    gen = torch.Generator().manual_seed(3)
    u, h0, W = _randn(B, 6, D, gen=gen), _randn(B, D, gen=gen), _randn(D, D, gen=gen)
    a = torch.rand(D, generator=gen, dtype=F64)
    for rule in ("default", "mod"):
        fused = leaky_rnn_recurrent(u, h0, W, a, rule=rule)
        reference = _step_loop(leaky_rnn_step, u, h0, W, a, rule=rule)
        _assert_same(fused, reference, [u, h0, W], seed=4)


@pytest.mark.parametrize("T", [1, 2, 9])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_backward_equals_autograd_through_steps(T, bias):
    gen = torch.Generator().manual_seed(30 + T)
    u, h0 = _randn(B, T, 3 * D, gen=gen), _randn(B, D, gen=gen)
    W = _randn(3 * D, D, gen=gen, scale=0.6)
    b = _randn(3 * D, gen=gen) if bias else None
    inputs = [z for z in (u, h0, W, b) if z is not None]
    H, h_T, _ = gru_recurrent(u, h0, W, b)
    hs, h = [], h0
    for u_t in u.unbind(1):
        h, _ = gru_step(u_t, h, W, b)
        hs.append(h)
    _assert_same((H, h_T), (torch.stack(hs, 1), h), inputs, seed=T)


@pytest.mark.parametrize("T", [1, 2, 9])
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_backward_equals_autograd_through_steps(T, bias):
    gen = torch.Generator().manual_seed(20 + T)
    u = _randn(B, T, 4 * D, gen=gen)
    h0, c0 = _randn(B, D, gen=gen), _randn(B, D, gen=gen)
    W = _randn(4 * D, D, gen=gen, scale=0.6)
    b = _randn(4 * D, gen=gen) if bias else None
    inputs = [z for z in (u, h0, c0, W, b) if z is not None]
    H, state, _ = lstm_recurrent(u, LSTMState(h0, c0), W, b)
    ref_state, hs = LSTMState(h0, c0), []
    for u_t in u.unbind(1):
        ref_state, _ = lstm_step(u_t, ref_state, W, b)
        hs.append(ref_state.h)
    reference = (torch.stack(hs, 1), ref_state.h, ref_state.c)
    _assert_same((H, state.h, state.c), reference, inputs, seed=T)


def test_lstm_final_cell_alone_gets_its_gradient():
    """A loss on the final cell state only (no output used) reaches every input."""
    gen = torch.Generator().manual_seed(5)
    u = _randn(B, 4, 4 * D, gen=gen)
    h0, c0, W = _randn(B, D, gen=gen), _randn(B, D, gen=gen), _randn(4 * D, D, gen=gen)
    _, state, _ = lstm_recurrent(u, LSTMState(h0, c0), W, None)
    ref = LSTMState(h0, c0)
    for u_t in u.unbind(1):
        ref, _ = lstm_step(u_t, ref, W, None)
    g = torch.autograd.grad(state.c.sum(), [u, h0, c0, W])
    g_ref = torch.autograd.grad(ref.c.sum(), [u, h0, c0, W])
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_incoming_gradient_is_not_modified():
    """The backward loops work in place on their own copy of the incoming gradient."""
    gen = torch.Generator().manual_seed(6)
    u, h0, W = _randn(B, 5, D, gen=gen), _randn(B, D, gen=gen), _randn(D, D, gen=gen)
    g = torch.randn(B, 5, D, generator=gen, dtype=F64)
    kept = g.clone()
    for H, _ in (elman_recurrent(u, h0, W, None),
                 leaky_rnn_recurrent(u, h0, W, torch.full((D,), 0.5, dtype=F64))):
        torch.autograd.grad(H, [u], g)
        torch.testing.assert_close(g, kept, rtol=0, atol=0)
