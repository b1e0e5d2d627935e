"""The hand-written backward of gla's chunked form (`seqmem.ops.gla_chunk.GlaChunk`) against
autograd through the loop of `gla_step` (the recurrent form), in float64."""

import pytest
import torch
import torch.nn.functional as F

from seqmem.ops import gla_chunk as gla_chunk_module
from seqmem.ops.gla_chunk import GlaChunk, intra_backward, intra_forward
from seqmem.ops.linear_attention import gla, gla_chunk, gla_recurrent


def _inputs(t, *, b=2, h=2, d_k=4, d_v=3, seed=0, gate_scale=1.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, t, h, d_k, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(b, t, h, d_v, generator=gen, dtype=dtype)
    g = F.logsigmoid(torch.randn(b, t, h, d_k, generator=gen, dtype=dtype) + 1) * gate_scale
    S0 = torch.randn(b, h, d_k, d_v, generator=gen, dtype=dtype)
    return q, k, v, g, S0


def _grads(fn, q, k, v, g, S0, *, on="both", seed=1):
    """Gradients of a random linear loss of the outputs and/or the final state."""
    leaves = [z.detach().clone().requires_grad_(True) for z in (q, k, v, g)]
    S = None if S0 is None else S0.detach().clone().requires_grad_(True)
    o, S_T = fn(*leaves, S)
    gen = torch.Generator().manual_seed(seed)
    loss = 0.0
    if on in ("both", "outputs"):
        loss = loss + (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    if on in ("both", "state"):
        loss = loss + (S_T * torch.randn(S_T.shape, generator=gen, dtype=o.dtype)).sum()
    inputs = leaves + ([] if S is None else [S])
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)  # q: unused by S_T alone
    return o.detach(), S_T.detach(), [torch.zeros_like(x) if d is None else d
                                      for x, d in zip(inputs, grads, strict=True)]


def _check(t, chunk_size, *, state=True, on="both", gate_scale=1.0, scale=None, seed=0):
    q, k, v, g, S0 = _inputs(t, seed=seed, gate_scale=gate_scale)
    S0 = S0 if state else None
    o_ref, S_ref, g_ref = _grads(
        lambda q, k, v, g, S: gla_recurrent(q, k, v, g, scale=scale, state=S), q, k, v, g, S0,
        on=on)
    o, S, grads = _grads(
        lambda q, k, v, g, S: gla_chunk(q, k, v, g, scale=scale, state=S,
                                        chunk_size=chunk_size), q, k, v, g, S0, on=on)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S, S_ref, rtol=1e-10, atol=1e-10)
    names = ["q", "k", "v", "g", "state"][:len(grads)]
    for name, a, r in zip(names, grads, g_ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize(("t", "chunk_size"), [
    (1, 64), (5, 16), (16, 16), (19, 16), (37, 16), (40, 2), (9, 1), (23, 24), (70, 64),
    (50, 12), (130, 64)])
def test_gradients_equal_the_loop(t, chunk_size):
    _check(t, chunk_size)


@pytest.mark.parametrize("on", ["state", "outputs"])
@pytest.mark.parametrize("state", [True, False])
def test_gradients_of_outputs_or_final_state_alone(on, state):
    _check(27, 8, state=state, on=on)


def test_no_initial_state_and_a_given_scale():
    _check(21, 8, state=False, scale=0.7)
    _check(21, 8, state=True, scale=1.3, seed=3)


def test_strong_decays():
    """Gates down to -20 per token: the exact values, and finite in float32."""
    _check(45, 16, gate_scale=20.0)
    q, k, v, g, S0 = (z.float() for z in _inputs(200, gate_scale=20.0, seed=4))
    g = g.clamp(min=-20.0)
    leaves = [z.requires_grad_(True) for z in (q, k, v, g, S0)]
    o, S = gla_chunk(*leaves[:4], state=leaves[4], chunk_size=64)
    (o.sum() + S.sum()).backward()
    for z in [o, S] + [x.grad for x in leaves]:
        assert torch.isfinite(z).all()


def test_intra_backward_is_the_gradient_of_intra_forward():
    """The intra-chunk blocks alone (every level, the pairwise ones included) against
    autograd through the forward."""
    gen = torch.Generator().manual_seed(5)
    for L in (1, 2, 4, 8, 32):
        Q, K = (torch.randn(3, L, 5, generator=gen, dtype=torch.float64) for _ in range(2))
        V, dO = (torch.randn(3, L, 4, generator=gen, dtype=torch.float64) for _ in range(2))
        B = F.logsigmoid(torch.randn(3, L, 5, generator=gen, dtype=torch.float64)).cumsum(-2)
        leaves = [z.clone().requires_grad_(True) for z in (Q, K, V)]
        o = intra_forward(*leaves, B)
        # the oracle: the masked quadratic form with the (L, L, d_k) decays materialised
        mask = torch.ones(L, L, dtype=torch.float64).tril()
        E = ((B[:, :, None] - B[:, None, :]) * mask[..., None]).exp() * mask[..., None]
        A = torch.einsum("btc,bsc,btsc->bts", Q, K, E)
        torch.testing.assert_close(o, A @ V, rtol=1e-12, atol=1e-12)
        ref = torch.autograd.grad((o * dO).sum(), leaves)
        for a, r in zip(intra_backward(Q, K, V, B, dO), ref, strict=True):
            torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    q, k, v, g, S0 = (z.requires_grad_(True) for z in _inputs(7, b=1, h=1, d_k=3, d_v=2))
    assert torch.autograd.gradcheck(
        lambda q, k, v, g, S: GlaChunk.apply(q, k, v, g, S, 0.5, 3), (q, k, v, g, S0))


def test_inputs_without_gradient_and_the_public_op():
    q, k, v, g, S0 = _inputs(20)
    q.requires_grad_(True)
    o, _ = gla(q, k, v, g, state=S0, chunk_size=8)
    (dq,) = torch.autograd.grad(o.sum(), [q])
    q2 = q.detach().clone().requires_grad_(True)
    o_ref, _ = gla_recurrent(q2, k, v, g, state=S0)
    (dq_ref,) = torch.autograd.grad(o_ref.sum(), [q2])
    torch.testing.assert_close(dq, dq_ref, rtol=1e-10, atol=1e-10)


def test_saved_memory_is_linear_in_t():
    """Nothing of size (chunk x chunk) per chunk is kept for the backward: what is saved is
    the chunked inputs, the cumulative gates and one state per chunk."""
    q, k, v, g, S0 = (z.requires_grad_(True) for z in _inputs(256, b=1, h=1, d_k=2, d_v=2))
    saved = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        gla_chunk(q, k, v, g, state=S0, chunk_size=64)
    # Q, K, V, B: 256 x 2 each; 4 chunk-start states of 2 x 2 (a (64, 64) block is 4096)
    assert sum(saved) <= 4 * 256 * 2 + 4 * 4 + 64


@pytest.mark.parametrize(("t", "chunk_size", "slice_tokens"),
                         [(70, 8, 16), (45, 16, 1), (33, 4, 12)])
def test_groups_of_chunks(monkeypatch, t, chunk_size, slice_tokens):
    """The per-token passes run over groups of chunks: several groups, one chunk each, and a
    last group shorter than the others give the same values and gradients."""
    monkeypatch.setattr(gla_chunk_module, "SLICE_TOKENS", slice_tokens)
    _check(t, chunk_size)
