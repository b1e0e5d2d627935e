"""Titans' deep memory and the Miras biases and retention gates (`seqmem.ops.neural_memory`,
`seqmem.mixers.titans`), against independent routes: torch.autograd of the stated losses
applied with the papers' update equations in plain loops (W-space for the retention gates),
the stated closed forms, and models built from configs (a hybrid stack with MAL).

The forms of every mixer option against its own step loop are checked by the mixer contract
(tests/test_mixer_contract.py, VARIANTS["titans"] and the presets)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqmem import mixers
from seqmem.config import load_config
from seqmem.errors import SeqmemError
from seqmem.models import SequenceModel
from seqmem.ops.neural_memory import (
    MemorySpec,
    bias_grad,
    mlp_shapes,
    n_weights,
    neural_memory,
    neural_memory_init_state,
    retain,
    unflatten,
)

F64 = torch.float64


def _inputs(b, t, h, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (F.normalize(torch.randn(b, t, h, d, generator=g, dtype=F64), dim=-1)
            for _ in range(2))
    v = torch.randn(b, t, h, d, generator=g, dtype=F64)
    alpha, eta, theta = (torch.rand(b, t, h, generator=g, dtype=F64) for _ in range(3))
    return (q, k, v, 0.2 * alpha, 0.5 + 0.3 * eta, 0.1 * theta), g


def _mlp(Ws, x, residual):
    """The memory MLP written plainly (per layer matrices, SiLU between layers)."""
    h = x
    for i, W in enumerate(Ws):
        h = (F.silu(h) if i else h) @ W
    return x + h if residual else h


def _loss(e, bias, p, delta):
    if bias == "l2":
        return (e ** 2).sum()
    if bias == "lp":
        return (e.abs() ** p).sum()
    return torch.where(e.abs() <= delta, e ** 2, 2 * delta * e.abs() - delta ** 2).sum()


def _oracle(ins, spec, init, *, chunk_start=False):
    """The papers' update in a loop, per sequence and head, gradients by autograd of the loss
    at W_{t-1} (or at the chunk's start weights): S = eta S - theta g, A = (1 - alpha) A + S,
    W = phi(A) with phi written from its definition; o_t = M(q_t; W_t)."""
    q, k, v, alpha, eta, theta = ins
    b, t, h, _ = k.shape
    out = torch.zeros(b, t, h, spec.shapes[-1][1], dtype=F64)
    finals = torch.zeros(b, h, n_weights(spec.shapes), dtype=F64)

    def phi(A):
        Ws = [W.clone() for W in unflatten(A, spec.shapes)]
        if spec.retention == "lq":
            Ws = [W / ((W.abs() ** spec.q).sum() + 1e-6) ** ((spec.q - 2) / spec.q) for W in Ws]
        if spec.retention == "kl":
            Ws = [torch.exp(W) / torch.exp(W).sum(-1, keepdim=True) for W in Ws]
        return Ws

    for i in range(b):
        for j in range(h):
            A = init[j].clone()
            S = torch.zeros_like(A)
            A_start = A
            for s in range(t):
                if chunk_start and s % spec.chunk == 0:
                    A_start = A
                A_g = (A_start if chunk_start else A).detach().requires_grad_(True)
                Ws = phi(A_g)
                Wl = [W.detach().requires_grad_(True) for W in Ws]
                e = _mlp(Wl, k[i, s, j], spec.residual) - v[i, s, j]
                grads = torch.autograd.grad(_loss(e, spec.bias, spec.p, spec.delta), Wl)
                g = torch.cat([gr.flatten() for gr in grads])
                S = eta[i, s, j] * S - theta[i, s, j] * g
                A = (1 - alpha[i, s, j]) * A + S
                out[i, s, j] = _mlp(phi(A), q[i, s, j], spec.residual)
            finals[i, j] = A
    return out, finals


@pytest.mark.parametrize("depth,bias", [(2, "l2"), (3, "l2"), (2, "lp"), (2, "huber"),
                                        (1, "lp")])
def test_mlp_memory_update_is_autograd_gradient_descent_with_momentum(depth, bias):
    """Per-token gradients (the exact rule), both forms, against the autograd loop."""
    ins, g = _inputs(2, 7, 2, 3)
    spec = MemorySpec(mlp_shapes(3, 3, depth, 2), residual=depth > 1, bias=bias, p=3.0,
                      delta=0.4)
    init = 0.5 * torch.randn(2, n_weights(spec.shapes), generator=g, dtype=F64)
    o_ref, A_ref = _oracle(ins, spec, init)
    for mode in ("recurrent", "chunk"):
        o, state = neural_memory(*ins, spec=spec, init=init, mode=mode)
        torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(state.D + init, A_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("t,split", [(11, 6), (8, 3), (3, 1)])
def test_chunk_start_gradients_equal_a_direct_evaluation(t, split):
    """gradient="chunk": every token of a chunk takes its gradient at the weights of the
    chunk's start; t not a multiple of the chunk and a split sequence give the same."""
    ins, g = _inputs(2, t, 2, 3, seed=1)
    spec = MemorySpec(mlp_shapes(3, 3, 2, 2), residual=True, gradient="chunk", chunk=4)
    init = 0.5 * torch.randn(2, n_weights(spec.shapes), generator=g, dtype=F64)
    o_ref, A_ref = _oracle(ins, spec, init, chunk_start=True)
    for mode in ("chunk", "recurrent"):
        o, state = neural_memory(*ins, spec=spec, init=init, mode=mode)
        torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(state.D + init, A_ref, rtol=1e-10, atol=1e-12)
        o1, s1 = neural_memory(*(z[:, :split] for z in ins), spec=spec, init=init, mode=mode)
        o2, s2 = neural_memory(*(z[:, split:] for z in ins), spec=spec, init=init, mode=mode,
                               state=s1)
        torch.testing.assert_close(torch.cat([o1, o2], 1), o_ref, rtol=1e-10, atol=1e-12)
        assert int(s2.pos[0]) == t % 4
    # the chunk-start rule differs from the per-token one (the test can fail)
    o_tok, _ = neural_memory(*ins, spec=spec._replace(gradient="token"), init=init)
    assert (o_tok - o_ref).abs().max() > 1e-6


@pytest.mark.parametrize("bias,p,delta", [("lp", 3.0, 1.0), ("lp", 1.5, 1.0), ("lp", 1.0, 1.0),
                                          ("huber", 2.0, 0.3), ("l2", 2.0, 1.0)])
def test_bias_gradients_equal_autograd_of_the_loss(bias, p, delta):
    e = torch.randn(50, generator=torch.Generator().manual_seed(2), dtype=F64)
    e = e.requires_grad_(True)
    (ref,) = torch.autograd.grad(_loss(e, bias, p, delta), e)
    torch.testing.assert_close(bias_grad(e.detach(), bias, p, delta), ref, rtol=1e-10, atol=1e-12)


def test_huber_bias_is_l2_within_delta_and_l1_outside():
    e = torch.tensor([-2.0, -0.1, 0.0, 0.2, 3.0], dtype=F64)
    torch.testing.assert_close(bias_grad(e, "huber", delta=0.5),
                               torch.tensor([-1.0, -0.2, 0.0, 0.4, 1.0], dtype=F64))


def test_retention_gates_closed_forms():
    """phi for lq is A / ||A||_q^(q - 2) per matrix (up to the eps), for kl the row softmax,
    for l2 the identity; q = 2 makes lq the identity."""
    shapes = ((3, 4), (4, 3))
    A = torch.randn(5, n_weights(shapes), generator=torch.Generator().manual_seed(3),
                    dtype=F64)
    spec = MemorySpec(shapes)
    torch.testing.assert_close(retain(A, spec), A, rtol=0, atol=0)
    for q in (3.0, 4.0):
        W = unflatten(retain(A, spec._replace(retention="lq", q=q)), shapes)
        for Wi, Ai in zip(W, unflatten(A, shapes), strict=True):
            norm = torch.linalg.vector_norm(Ai, ord=q, dim=(-2, -1))[:, None, None]
            torch.testing.assert_close(Wi, Ai / norm ** (q - 2), rtol=1e-5, atol=0)
    torch.testing.assert_close(retain(A, spec._replace(retention="lq", q=2.0)), A, rtol=0,
                               atol=0)
    W = unflatten(retain(A, spec._replace(retention="kl")), shapes)
    for Wi, Ai in zip(W, unflatten(A, shapes), strict=True):
        torch.testing.assert_close(Wi, torch.exp(Ai) / torch.exp(Ai).sum(-1, keepdim=True))


@pytest.mark.parametrize("retention,gradient", [("kl", "token"), ("lq", "token"),
                                                ("kl", "chunk")])
def test_retention_recurrences_equal_the_papers_updates(retention, gradient):
    """Memora W_t = softmax((1 - alpha) log W_{t-1} - theta g) and Moneta's A_t with W_t = A_t /
    ||A_t||_q^(q-2), in W-space by autograd (the oracle's phi), without momentum."""
    ins, g = _inputs(1, 6, 2, 3, seed=4)
    ins = (*ins[:4], torch.zeros_like(ins[4]), ins[5])  # eta = 0: plain gradient descent
    spec = MemorySpec(mlp_shapes(3, 3, 2, 2), residual=True, retention=retention, q=3.0,
                      gradient=gradient, chunk=4)
    init = torch.randn(2, n_weights(spec.shapes), generator=g, dtype=F64)
    o_ref, A_ref = _oracle(ins, spec, init, chunk_start=gradient == "chunk")
    o, state = neural_memory(*ins, spec=spec, init=init)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.D + init, A_ref, rtol=1e-10, atol=1e-12)
    if retention == "kl" and gradient == "token":  # the paper's form, from W_{t-1} itself
        _, k, v, alpha, _, theta = ins
        W = [Wi[0, 0] for Wi in unflatten(retain(init[None], spec), spec.shapes)]  # head 0
        for s in range(6):
            Wl = [Wi.detach().requires_grad_(True) for Wi in W]
            e = _mlp(Wl, k[0, s, 0], True) - v[0, s, 0]
            grads = torch.autograd.grad((e ** 2).sum(), Wl)
            W = [torch.softmax((1 - alpha[0, s, 0]) * torch.log(Wi) - theta[0, s, 0] * gr, -1)
                 for Wi, gr in zip(W, grads, strict=True)]
        got = unflatten(retain(state.D + init, spec), spec.shapes)
        for Wi, gi in zip(W, got, strict=True):
            torch.testing.assert_close(gi[0, 0], Wi, rtol=1e-10, atol=1e-12)


def test_presets_are_the_papers_choices():
    m = {n: mixers.build(n, 8) for n in ("moneta", "yaad", "memora")}
    assert (m["moneta"].spec.bias, m["moneta"].spec.p, m["moneta"].spec.retention,
            m["moneta"].spec.q) == ("lp", 3.0, "lq", 4.0)
    assert (m["yaad"].spec.bias, m["yaad"].spec.retention) == ("huber", "l2")
    assert (m["memora"].spec.bias, m["memora"].spec.retention) == ("l2", "kl")
    for x in m.values():
        assert x.memory == "mlp" and not x.momentum and x.memory_depth == 2
    assert mixers.build("moneta", 8, q=2.0).spec.q == 2.0  # options still apply
    cfg = load_config({"model": {"mixer": {"kind": "yaad", "delta": 0.5}}})
    assert cfg.model.mixer.options()["delta"] == 0.5


def test_mixer_options_and_errors():
    m = mixers.build("titans", 8, memory="mlp", memory_depth=3, memory_width=3)
    assert [tuple(s) for s in m.spec.shapes] == [(4, 12), (12, 12), (12, 4)]
    assert m.memory_init.shape == (2, 4 * 12 + 144 + 48)
    assert m.state_size() == sum(z[0].numel() for z in m.init_state(1))
    with pytest.raises(SeqmemError, match="n_persistent needs an attention variant"):
        mixers.build("titans", 8, n_persistent=2)
    with pytest.raises(SeqmemError, match=r"unknown titans bias 'l3'; accepted: l2, lp, huber"):
        mixers.build("titans", 8, bias="l3")
    with pytest.raises(SeqmemError, match="titans: p must be a finite number >= 1"):
        mixers.build("titans", 8, p=0.5)
    with pytest.raises(SeqmemError, match="titans: memory_depth must be an integer >= 2"):
        mixers.build("titans", 8, memory="mlp", memory_depth=1)
    with pytest.raises(SeqmemError, match="unknown titans variant 'mat'"):
        mixers.build("titans", 8, variant="mat")


def test_persistent_tokens_are_learned_and_data_independent():
    """Persistent memory: parameters that every query attends to; a fresh state does not
    depend on them, and they receive gradients."""
    torch.manual_seed(0)
    for variant in ("mac", "mag", "mal"):
        m = mixers.build("titans", 8, variant=variant, n_persistent=3, window=2,
                         segment=3).double()
        s = m.init_state(2)
        assert all(not z.requires_grad for z in s)
        y, _ = m(torch.randn(2, 5, 8, dtype=F64))
        y.square().sum().backward()
        assert m.persistent.grad.abs().sum() > 0


def test_mac_reads_the_memory_of_the_segment_start():
    """MAC's read-out h_t uses the weights at the segment's start: inputs after that start
    change the outputs at t only through the attention and the memory branch, so outputs of a
    segment do not depend on the state's current memory when the segment is fresh."""
    torch.manual_seed(0)
    m = mixers.build("titans", 8, variant="mac", segment=4).double()
    x = torch.randn(1, 6, 8, dtype=F64)
    _, s = m(x[:, :2])  # mid-segment
    assert int(s.seg_pos[0]) == 2
    torch.testing.assert_close(s.seg_start, torch.zeros_like(s.seg_start))  # the start's D
    _, s = m(x[:, 2:6], s)  # crosses into the next segment at t = 4
    assert int(s.seg_pos[0]) == 2
    _, s4 = m(x[:, :4])
    torch.testing.assert_close(s.seg_start, s4.D, rtol=1e-10, atol=1e-12)


def test_mal_in_a_hybrid_stack():
    """Memory as a layer: a titans MAL (or plain memory) layer under an attention layer of a
    hybrid pattern, from a config, steppable."""
    cfg = load_config({"model": {"d_model": 8, "n_layers": 1, "mixer": {
        "kind": "titans,attention", "titans": {"variant": "mal", "window": 3,
                                               "n_persistent": 2},
        "attention": {"window": 4}}}})
    torch.manual_seed(0)
    model = SequenceModel(3, 8, mixer=cfg.model.mixer.kind,
                          mixer_options=cfg.model.mixer.options(), n_layers=1).double()
    assert [type(b.mixer).name for b in model.blocks] == ["titans", "attention"]
    assert model.blocks[0].mixer.variant == "mal"
    x = torch.randn(2, 6, 3, dtype=F64)
    h, _ = model.features(x, None)
    state, hs = model.init_state(2), []
    for t in range(6):
        h_t, state = model.step(x[:, t], state)
        hs.append(h_t)
    torch.testing.assert_close(torch.stack(hs, 1), h, rtol=1e-10, atol=1e-12)


def test_zero_state_and_state_shapes():
    s = neural_memory_init_state(2, 3, 10, dtype=F64)
    assert s.D.shape == (2, 3, 10) and s.pos.shape == (2,) and not s.D.any()
