"""The parts shared by the mixers (seqmem.mixers.parts) and the loops shared by the ops
(seqmem.ops.loops): the short convolution against its op and its step loop, empty sequences,
checkpoints saved before the short convolutions became modules, the initialisations, the
hyperparameter checks, and the step loop and chunking helpers against written-out loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqmem import mixers
from seqmem.errors import SeqmemError
from seqmem.mixers.parts import (
    A_log_init,
    ShortConv,
    check_heads,
    dt_bias_init,
    gated_rms_norm,
    head_dims,
    merge_heads,
    rms_norm,
    split_heads,
)
from seqmem.models import SequenceModel
from seqmem.ops.conv import short_conv
from seqmem.ops.loops import carry, causal_decay, chunk, step_loop, unchunk

F64 = torch.float64
SHORT_CONV_MIXERS = ["deltanet", "gated_deltanet", "mamba", "mamba2", "mom", "titans"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- ShortConv ------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("conv_size", [1, 2, 4])
def test_short_conv_module_is_the_op_and_its_step_loop(bias, conv_size):
    torch.manual_seed(0)
    conv = ShortConv(5, conv_size, bias=bias).double()
    assert conv.weight.shape == (5, conv_size) and (conv.bias is None) == (not bias)
    bound = 1 / math.sqrt(conv_size)  # torch.nn.Conv1d's range
    assert conv.weight.abs().max() <= bound
    x = torch.randn(3, 7, 5, generator=gen(1), dtype=F64)
    s0 = torch.randn(3, conv_size - 1, 5, generator=gen(2), dtype=F64)
    y, s = conv(x, s0)
    y_op, s_op = short_conv(x, conv.weight, conv.bias, s0)
    torch.testing.assert_close(y, y_op, rtol=0, atol=0)
    torch.testing.assert_close(s, s_op, rtol=0, atol=0)
    y_loop, s_loop = step_loop(conv.step, (x,), s0)
    torch.testing.assert_close(y_loop, y, rtol=0, atol=1e-12)
    torch.testing.assert_close(s_loop, s, rtol=0, atol=0)
    zero = conv.init_state(3)
    assert zero.shape == (3, conv_size - 1, 5) and zero.dtype == F64 and not zero.any()
    assert conv.state_size() == zero[0].numel()
    torch.testing.assert_close(conv(x)[0], conv(x, zero)[0], rtol=0, atol=0)


def test_short_conv_of_no_tokens_keeps_the_state():
    conv = ShortConv(4, 3, bias=True).double()
    s0 = torch.randn(2, 2, 4, generator=gen(3), dtype=F64)
    y, s = conv(torch.zeros(2, 0, 4, dtype=F64), s0)
    assert y.shape == (2, 0, 4)
    torch.testing.assert_close(s, s0, rtol=0, atol=0)


@pytest.mark.parametrize("name", mixers.names())
def test_every_mixer_maps_no_tokens_to_nothing_and_keeps_the_state(name):
    torch.manual_seed(0)
    m = mixers.build(name, 8).double()
    s0 = m.init_state(2)
    for mode in m.modes:
        y, s = m(torch.zeros(2, 0, 8, dtype=F64), s0, mode=mode)
        assert y.shape == (2, 0, 8)
        assert s is s0


@pytest.mark.parametrize("name", SHORT_CONV_MIXERS)
def test_checkpoints_from_before_the_short_conv_module_still_load(name):
    """Mixers kept their short convolution's parameters as `conv_weight` (and `conv_bias`);
    they now live in a `ShortConv` named `conv`. An old state dict loads, strictly, alone or
    inside a model."""
    torch.manual_seed(0)
    m = mixers.build(name, 8)
    old = {k.replace("conv.weight", "conv_weight").replace("conv.bias", "conv_bias"): v
           for k, v in m.state_dict().items()}
    assert "conv_weight" in old and "conv.weight" not in old
    torch.manual_seed(1)
    fresh = mixers.build(name, 8)
    fresh.load_state_dict(old)  # strict
    for (k, v), (k2, v2) in zip(m.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert k == k2
        torch.testing.assert_close(v, v2, rtol=0, atol=0)
    torch.manual_seed(0)
    model = SequenceModel(3, 8, mixer=name, n_layers=2)
    old = {k.replace("conv.weight", "conv_weight").replace("conv.bias", "conv_bias"): v
           for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    other = SequenceModel(3, 8, mixer=name, n_layers=2)
    other.load_state_dict(old)
    torch.testing.assert_close(other.blocks[1].mixer.conv.weight,
                               model.blocks[1].mixer.conv.weight, rtol=0, atol=0)


# ---- norms, heads, initialisations, checks -------------------------------------------------
def test_norms_and_heads():
    o = torch.randn(2, 3, 6, generator=gen(4), dtype=F64)
    w = torch.randn(6, generator=gen(5), dtype=F64)
    gate = torch.randn(2, 3, 6, generator=gen(6), dtype=F64)
    want = o / torch.sqrt((o ** 2).mean(-1, keepdim=True) + 1e-5) * w
    torch.testing.assert_close(rms_norm(o, w, 1e-5), want, rtol=1e-14, atol=0)
    torch.testing.assert_close(gated_rms_norm(o, w, gate, 1e-5), want * F.silu(gate),
                               rtol=1e-14, atol=0)
    heads = split_heads(o, 2)  # (2, 3, 2, 3)
    assert heads.shape == (2, 3, 2, 3)
    torch.testing.assert_close(heads[..., 1, :], o[..., 3:], rtol=0, atol=0)  # head-major
    torch.testing.assert_close(merge_heads(heads), o, rtol=0, atol=0)


def test_initialisations():
    torch.manual_seed(0)
    b = dt_bias_init(1000, dt_min=1e-3, dt_max=1e-1)
    dt = F.softplus(b.double())
    assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 1e-1 * (1 + 1e-6)
    assert dt.log().std() > 0.5  # spread over two decades, log-uniformly
    A = A_log_init(1000).exp()
    assert A.min() >= 1 and A.max() <= 16


def test_hyperparameter_checks_say_what_is_accepted():
    assert check_heads("x", 8, 4) == 2
    with pytest.raises(SeqmemError, match=r"x: n_heads must be a positive divisor of "
                                          r"d_model=8, got 3"):
        check_heads("x", 8, 3)
    assert head_dims("x", 8, 2, 1.0, 0.5) == (4, 2)
    with pytest.raises(SeqmemError, match=r"x: n_heads must be an integer >= 1, got 0"):
        head_dims("x", 8, 0, 1.0, 1.0)
    for name, kw, match in [
        ("mamba", {"conv_size": 1}, r"mamba: conv_size must be an integer >= 2, got 1"),
        ("mamba2", {"d_state": 0}, r"mamba2: d_state must be an integer >= 1, got 0"),
        ("deltanet", {"conv_size": 1.5}, r"deltanet: conv_size must be an integer >= 2"),
        ("titans", {"norm_eps": 2}, r"titans: norm_eps must be in \(0, 1\), got 2"),
        ("mom", {"top_k": 5}, r"mom: top_k must be <= n_memories=4, got 5"),
        ("mom", {"checkpoint_segment": -1}, r"mom: checkpoint_segment \(0: never\) must be an "
                                            r"integer >= 0, got -1"),
        ("tcn", {"n_layers": 0}, r"tcn: n_layers must be an integer >= 1, got 0"),
        ("attention", {"window": -1}, r"attention: window \(0: full attention\) must be an "
                                      r"integer >= 0, got -1"),
        ("plrnn", {"d_hidden": True}, r"plrnn: d_hidden \(null: 2 d_model\) must be an "
                                      r"integer >= 1, got True"),
    ]:
        with pytest.raises(SeqmemError, match=match):
            mixers.build(name, 8, **kw)


# ---- the ops' loops -------------------------------------------------------------------------
def test_step_loop_is_the_written_out_loop():
    x = torch.randn(2, 5, 3, generator=gen(7), dtype=F64)
    w = torch.randn(2, 5, 4, generator=gen(8), dtype=F64)

    def step(x_t, w_t, h):  # y_t has another width than x_t
        h = 0.5 * h + x_t.sum(-1, keepdim=True)
        return h * w_t, h

    h0 = torch.ones(2, 1, dtype=F64)
    y, h = step_loop(step, (x, w), h0)
    h_ref, ys = h0, []
    for t in range(5):
        y_t, h_ref = step(x[:, t], w[:, t], h_ref)
        ys.append(y_t)
    torch.testing.assert_close(y, torch.stack(ys, 1), rtol=0, atol=0)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=0)
    y0, s0 = step_loop(step, (x[:, :0], w[:, :0]), h0, empty=w[:, :0])
    assert y0.shape == (2, 0, 4) and s0 is h0
    assert step_loop(step, (x[:, :0], w[:, :0]), h0)[0].shape == (2, 0, 3)  # like inputs[0]


@pytest.mark.parametrize("t", [1, 4, 6])
def test_chunk_unchunk_causal_decay_and_carry(t):
    x = torch.randn(2, t, 3, 5, generator=gen(9), dtype=F64)  # (b, t, h, d)
    X = chunk(x, 4)  # (b, h, n, 4, d)
    n = -(-t // 4)
    assert X.shape == (2, 3, n, 4, 5) and X.is_contiguous()
    torch.testing.assert_close(X[:, :, 0, 0], x[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(unchunk(X, t), x, rtol=0, atol=0)
    assert (chunk(x[..., 0], 4, fill=1.0).flatten(-2)[..., t:] == 1).all()  # the padding
    g = -torch.rand(2, 3, 4, generator=gen(10), dtype=F64)
    D = causal_decay(g.cumsum(-1))
    for i in range(4):
        for j in range(4):
            want = g[..., j + 1:i + 1].sum(-1).exp() if j <= i else torch.zeros_like(g[..., 0])
            torch.testing.assert_close(D[..., i, j], want, rtol=1e-14, atol=0)
    a = torch.rand(2, 3, n, generator=gen(11), dtype=F64)
    KV = torch.randn(2, 3, n, 2, 2, generator=gen(12), dtype=F64)
    S = torch.randn(2, 3, 2, 2, generator=gen(13), dtype=F64)
    starts, S_end = carry(a[..., None, None], KV, S)
    for i in range(n):
        torch.testing.assert_close(starts[:, :, i], S, rtol=0, atol=0)
        S = a[:, :, i, None, None] * S + KV[:, :, i]
    torch.testing.assert_close(S_end, S, rtol=0, atol=0)
