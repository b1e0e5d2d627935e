"""The RNN family against independent routes: torch.nn.RNN / GRU / LSTM, a per-unit loop
oracle of the leaky RNN, gate timescales computed by hand, and the errors bad input raises."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from seqmem import mixers
from seqmem.errors import SeqmemError

D = 5
ATOL = 1e-10
RNN_NAMES = ("elman", "gru", "leaky_rnn", "lstm")


def make(name: str, d: int = D, seed: int = 0, **kw) -> mixers.Mixer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return mixers.build(name, d, **kw).double()


def randn(*shape, gen, scale=1.0):
    return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)


# ---- classic RNNs equal torch.nn ------------------------------------------------------------
def _torch_ref(cls, bias: bool, seed: int, **kw) -> nn.RNNBase:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(D, D, num_layers=1, batch_first=True, bias=bias, **kw).double()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("phi", ["tanh", "relu"])
def test_elman_equals_torch_rnn(bias, phi):
    gen = torch.Generator().manual_seed(0)
    ref = _torch_ref(nn.RNN, bias, 1, nonlinearity=phi)
    m = make("elman", bias=bias, phi=phi)
    m.load_torch(ref)
    x, h0 = randn(3, 8, D, gen=gen), randn(3, D, gen=gen, scale=0.5)
    y_ref, h_ref = ref(x, h0[None])
    y, h = m(x, h0)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=ATOL)
    torch.testing.assert_close(h, h_ref[0], rtol=0, atol=ATOL)
    # the gradients agree as well (w.r.t. input and weights)
    g = torch.autograd.grad(y.square().sum(), [*m.parameters()])
    g_ref = torch.autograd.grad(y_ref.square().sum(), [*ref.parameters()])
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("bias", [True, False])
def test_gru_equals_torch_gru(bias):
    gen = torch.Generator().manual_seed(1)
    ref = _torch_ref(nn.GRU, bias, 2)
    m = make("gru", bias=bias)
    m.load_torch(ref)
    x, h0 = randn(3, 8, D, gen=gen), randn(3, D, gen=gen, scale=0.5)
    y_ref, h_ref = ref(x, h0[None])
    y, h = m(x, h0)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=ATOL)
    torch.testing.assert_close(h, h_ref[0], rtol=0, atol=ATOL)
    g = torch.autograd.grad(y.square().sum(), [*m.parameters()])
    g_ref = torch.autograd.grad(y_ref.square().sum(), [*ref.parameters()])
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode", ["fused", "recurrent"])
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_equals_torch_lstm(bias, mode):
    gen = torch.Generator().manual_seed(2)
    ref = _torch_ref(nn.LSTM, bias, 3)
    m = make("lstm", bias=bias)
    m.load_torch(ref)
    x = randn(3, 8, D, gen=gen)
    h0, c0 = randn(3, D, gen=gen, scale=0.5), randn(3, D, gen=gen, scale=0.5)
    y_ref, (h_ref, c_ref) = ref(x, (h0[None], c0[None]))
    y, (h, c) = m(x, (h0, c0), mode=mode)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=ATOL)
    torch.testing.assert_close(h, h_ref[0], rtol=0, atol=ATOL)
    torch.testing.assert_close(c, c_ref[0], rtol=0, atol=ATOL)
    g = torch.autograd.grad(y.square().sum() + c.sum(), [*m.parameters()])
    g_ref = torch.autograd.grad(y_ref.square().sum() + c_ref.sum(), [*ref.parameters()])
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name,cls", [("elman", nn.RNN), ("gru", nn.GRU), ("lstm", nn.LSTM)])
def test_parameters_mirror_torch(name, cls):
    """Same names, shapes and init range U(-1/sqrt(d), 1/sqrt(d)) as torch.nn."""
    m = make(name, d=64)
    ref = cls(64, 64, batch_first=True)
    got = {n: p.shape for n, p in m.named_parameters()}
    want = {n.removesuffix("_l0"): p.shape for n, p in ref.named_parameters()}
    assert got == want
    k = 1 / math.sqrt(64)
    for p in m.parameters():
        assert p.abs().max() <= k and p.abs().max() > 0.9 * k


# ---- leaky RNN against a per-unit loop oracle -----------------------------------------------
def _phi(name: str, v: float) -> float:
    if name == "leaky_relu":
        return v if v >= 0 else 0.01 * v
    if name == "tanh":
        return math.tanh(v)
    if name == "relu":
        return v if v > 0 else 0.0
    raise AssertionError(name)


def leaky_oracle(x, h0, W, U, b, tau, *, rule, phi, zero_diagonal):
    """The leaky RNN of Khajehabdollahi et al. (2024), one unit and one step at a time."""
    x, h0, W, tau = (np.asarray(a, dtype=np.float64) for a in (x, h0, W, tau))
    n_b, n_t, d = x.shape
    ys = np.zeros((n_b, n_t, d))
    for n in range(n_b):
        h = [float(v) for v in h0[n]]
        for t in range(n_t):
            new = []
            for i in range(d):
                a = 1.0 / max(float(tau[i]), 1.0)
                drive = sum(U[i][j] * x[n, t, j] for j in range(d)) if U is not None else x[n, t, i]
                if b is not None:
                    drive += b[i]
                rec = sum(W[i][j] * h[j] for j in range(d) if not (zero_diagonal and i == j))
                if rule == "default":
                    new.append(_phi(phi, (1 - a) * h[i] + a * (rec + drive)))
                else:
                    new.append((1 - a) * h[i] + a * _phi(phi, rec + drive))
            h = new
            ys[n, t] = h
    return ys


@pytest.mark.parametrize("rule", ["default", "mod"])
@pytest.mark.parametrize("phi", ["leaky_relu", "tanh", "relu"])
@pytest.mark.parametrize("zero_diagonal", [True, False])
@pytest.mark.parametrize("input_proj", [True, False])
def test_leaky_rnn_equals_oracle(rule, phi, zero_diagonal, input_proj):
    gen = torch.Generator().manual_seed(3)
    m = make("leaky_rnn", rule=rule, phi=phi, zero_diagonal=zero_diagonal,
             input_proj=input_proj)
    with torch.no_grad():
        m.W.copy_(randn(D, D, gen=gen, scale=0.6))
        m.W.diagonal().copy_(torch.tensor([1.5, -1.0, 0.8, 2.0, -0.7]))  # must matter or not
        m.tau.copy_(torch.tensor([0.3, 1.0, 1.7, 4.0, 12.0]))  # 0.3 acts as 1
        if m.U is not None:
            m.U.copy_(randn(D, D, gen=gen))
        m.b.copy_(randn(D, gen=gen, scale=0.3))
    x = randn(2, 7, D, gen=gen)
    h0 = 0.5 * randn(2, D, gen=gen)  # signs mixed: the negative branches of phi are used
    U = m.U.detach().numpy() if m.U is not None else None
    want = leaky_oracle(x.numpy(), h0.numpy(), m.W.detach().numpy(), U, m.b.detach().numpy(),
                        m.tau.detach().numpy(), rule=rule, phi=phi, zero_diagonal=zero_diagonal)
    with torch.no_grad():
        y, h = m(x, h0)
        y_step, h_step = mixers.step_loop(m, x, h0)
    want = torch.from_numpy(want)
    torch.testing.assert_close(y, want, rtol=0, atol=ATOL)
    torch.testing.assert_close(h, want[:, -1], rtol=0, atol=ATOL)
    torch.testing.assert_close(y_step, want, rtol=0, atol=ATOL)
    torch.testing.assert_close(h_step, want[:, -1], rtol=0, atol=ATOL)
    if phi == "leaky_relu":  # both branches of phi were used
        assert (y < 0).any() and (y > 0).any()
    if phi == "relu":
        assert (y == 0).any() and (y > 0).any()


def test_leaky_rnn_bias_false_equals_oracle():
    gen = torch.Generator().manual_seed(4)
    m = make("leaky_rnn", bias=False, rule="mod", phi="tanh")
    assert m.b is None
    x, h0 = randn(2, 6, D, gen=gen), randn(2, D, gen=gen, scale=0.3)
    want = leaky_oracle(x.numpy(), h0.numpy(), m.W.detach().numpy(), m.U.detach().numpy(), None,
                        m.tau.detach().numpy(), rule="mod", phi="tanh", zero_diagonal=True)
    with torch.no_grad():
        y, _ = m(x, h0)
    torch.testing.assert_close(y, torch.from_numpy(want), rtol=0, atol=ATOL)


@pytest.mark.parametrize("rule", ["default", "mod"])
def test_leaky_rnn_tau_below_one_acts_as_one(rule):
    gen = torch.Generator().manual_seed(5)
    m = make("leaky_rnn", rule=rule)
    x, h0 = randn(2, 6, D, gen=gen), randn(2, D, gen=gen, scale=0.3)
    tau = torch.tensor([0.2, 0.9, 1.0, 1.5, 3.0], dtype=torch.float64)
    with torch.no_grad():
        m.tau.copy_(tau)
        y, _ = m(x, h0)
        m.tau.copy_(tau.clamp(min=1.0))
        y_clamped, _ = m(x, h0)
        m.tau.copy_(tau)
    torch.testing.assert_close(y, y_clamped, rtol=0, atol=0)
    torch.testing.assert_close(m.timescales(), tau.clamp(min=1.0), rtol=0, atol=0)
    # below the clamp tau gets no gradient (it has no effect); above it does
    y, _ = m(x, h0)
    (g,) = torch.autograd.grad(y.square().sum(), [m.tau])
    assert (g[:2] == 0).all() and (g[3:] != 0).all()


def test_leaky_rnn_init():
    m = make("leaky_rnn", d=256)
    assert (m.tau >= 1).all() and (m.tau < 2).all()
    assert m.tau.max() - m.tau.min() > 0.9  # spread over [1, 2), not a constant
    assert m.tau.requires_grad
    assert (m.recurrent_weight().diagonal() == 0).all()
    assert (m.W.diagonal() != 0).any()  # the raw W is unconstrained; the mask zeroes it
    torch.testing.assert_close(m.timescales(), m.tau.detach().clamp(min=1.0), rtol=0, atol=0)
    m2 = make("leaky_rnn", d=256, tau_init=(3.0, 5.0), train_tau=False, zero_diagonal=False)
    assert (m2.tau >= 3).all() and (m2.tau < 5).all()
    assert not m2.tau.requires_grad
    torch.testing.assert_close(m2.recurrent_weight(), m2.W, rtol=0, atol=0)
    assert make("leaky_rnn", input_proj=False).U is None


def test_leaky_rnn_diagonal_never_acts():
    """With zero_diagonal the raw diagonal of W gets no gradient and has no effect, whatever
    value training (or weight decay) gives it."""
    gen = torch.Generator().manual_seed(6)
    m = make("leaky_rnn")
    diag0 = m.W.diagonal().clone()
    for _ in range(3):
        x = randn(4, 6, D, gen=gen)
        y, _ = m(x)
        m.zero_grad()
        y.square().sum().backward()
        assert (m.W.grad.diagonal() == 0).all()
        assert (m.W.grad != 0).sum() == D * D - D
        with torch.no_grad():  # SGD with weight decay: moves the raw diagonal, not its effect
            for p in m.parameters():
                p -= 0.05 * (p.grad + 0.5 * p)
        assert (m.recurrent_weight().diagonal() == 0).all()
    assert not torch.equal(m.W.diagonal(), diag0)
    x, h0 = randn(2, 6, D, gen=gen), randn(2, D, gen=gen, scale=0.3)
    with torch.no_grad():
        y, _ = m(x, h0)
        m.W.diagonal().add_(randn(D, gen=gen, scale=10.0))
        y2, _ = m(x, h0)
    torch.testing.assert_close(y2, y, rtol=0, atol=0)


def test_leaky_rnn_random_h0():
    m = make("leaky_rnn", h0="random")
    s1 = m.init_state(3, generator=torch.Generator().manual_seed(11))
    s2 = m.init_state(3, generator=torch.Generator().manual_seed(11))
    s3 = m.init_state(3, generator=torch.Generator().manual_seed(12))
    want = 0.1 * torch.rand(3, D, generator=torch.Generator().manual_seed(11),
                            dtype=torch.float64)
    torch.testing.assert_close(s1, want, rtol=0, atol=0)
    torch.testing.assert_close(s2, s1, rtol=0, atol=0)
    assert not torch.equal(s1, s3)
    assert s1.shape == (3, D) and s1.dtype == torch.float64
    assert (s1 >= 0).all() and (s1 < 0.1).all()
    big = m.init_state(4000, generator=torch.Generator().manual_seed(13))
    assert big.min() >= 0 and big.max() < 0.1 and abs(big.mean().item() - 0.05) < 0.002
    assert m.init_state(2, dtype=torch.float32).dtype == torch.float32
    assert (make("leaky_rnn").init_state(3) == 0).all()


# ---- gate timescales by hand ---------------------------------------------------------------
def test_gru_timescales_by_hand():
    gen = torch.Generator().manual_seed(7)
    ref = _torch_ref(nn.GRU, True, 8)
    m = make("gru")
    m.load_torch(ref)
    probe = randn(6, 30, D, gen=gen)
    with torch.no_grad():
        hs, _ = ref(probe)  # (b, t, d)
    h_prev = torch.cat([torch.zeros(6, 1, D, dtype=torch.float64), hs[:, :-1]], dim=1)
    W_iz = ref.weight_ih_l0[D : 2 * D]  # gate order r, z, n
    W_hz = ref.weight_hh_l0[D : 2 * D]
    b_z = ref.bias_ih_l0[D : 2 * D] + ref.bias_hh_l0[D : 2 * D]
    z = torch.sigmoid(probe @ W_iz.T + h_prev @ W_hz.T + b_z).detach()
    want = (1 / (1 - z)).mean(dim=(0, 1))
    torch.testing.assert_close(m.timescales(probe), want, rtol=0, atol=ATOL)
    ts = m.timescales()
    assert ts.shape == (D,) and (ts > 1).all() and torch.isfinite(ts).all()


def test_lstm_timescales_by_hand():
    gen = torch.Generator().manual_seed(9)
    ref = _torch_ref(nn.LSTM, True, 10)
    m = make("lstm")
    m.load_torch(ref)
    probe = randn(6, 30, D, gen=gen)
    with torch.no_grad():
        hs, _ = ref(probe)  # (b, t, d)
    h_prev = torch.cat([torch.zeros(6, 1, D, dtype=torch.float64), hs[:, :-1]], dim=1)
    W_if = ref.weight_ih_l0[D : 2 * D]  # gate order i, f, g, o
    W_hf = ref.weight_hh_l0[D : 2 * D]
    b_f = ref.bias_ih_l0[D : 2 * D] + ref.bias_hh_l0[D : 2 * D]
    f = torch.sigmoid(probe @ W_if.T + h_prev @ W_hf.T + b_f).detach()
    want = (1 / (1 - f)).mean(dim=(0, 1))
    torch.testing.assert_close(m.timescales(probe), want, rtol=0, atol=ATOL)
    ts = m.timescales()
    assert ts.shape == (D,) and (ts > 1).all() and torch.isfinite(ts).all()


def test_elman_has_no_timescales():
    assert make("elman").timescales() is None


# ---- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", RNN_NAMES)
def test_bad_input_shapes_and_dtypes(name):
    m = make(name)
    s0 = m.init_state(2)
    with pytest.raises(SeqmemError, match=r"expected input of shape \(batch, time, d_model\) "
                       r"with d_model=5, got shape \(2, 5\)"):
        m(torch.zeros(2, D, dtype=torch.float64))
    with pytest.raises(SeqmemError, match=r"d_model=5, got shape \(2, 3, 4\)"):
        m(torch.zeros(2, 3, 4, dtype=torch.float64))
    with pytest.raises(SeqmemError, match=r"expected input of shape \(batch, d_model\) "
                       r"with d_model=5, got shape \(2, 1, 5\)"):
        m.step(torch.zeros(2, 1, D, dtype=torch.float64), s0)
    with pytest.raises(SeqmemError, match=r"expected a floating-point input .*got torch.int64"):
        m(torch.zeros(2, 3, D, dtype=torch.int64))
    with pytest.raises(SeqmemError, match=r"input dtype torch.float32 does not match the "
                       r"parameters' dtype torch.float64"):
        m(torch.zeros(2, 3, D, dtype=torch.float32))
    with pytest.raises(SeqmemError, match=r"input dtype torch.float32 does not match"):
        m.step(torch.zeros(2, D, dtype=torch.float32), s0)
    with pytest.raises(SeqmemError, match=r"expected a Tensor"):
        m(np.zeros((2, 3, D)))
    with pytest.raises(SeqmemError, match=r"chunk_size must be an integer >= 1, got 0"):
        m(torch.zeros(2, 3, D, dtype=torch.float64), chunk_size=0)
    for msg in (f"{name}:", "(batch, time, d_model)"):
        with pytest.raises(SeqmemError) as info:
            m(torch.zeros(3, dtype=torch.float64))
        assert msg in str(info.value)


def test_bad_names_and_options():
    with pytest.raises(SeqmemError, match=r"unknown mixer 'nope'; accepted: .*elman.*gru.*"
                       r"leaky_rnn.*lstm"):
        mixers.build("nope", D)
    with pytest.raises(SeqmemError, match=r"unknown option\(s\) foo for mixer 'gru'; "
                       r"accepted: bias"):
        mixers.build("gru", D, foo=1)
    with pytest.raises(SeqmemError, match=r"unknown option\(s\) tau for mixer 'leaky_rnn'; "
                       r"accepted: rule, phi, zero_diagonal, .*tau_init, h0"):
        mixers.build("leaky_rnn", D, tau=2.0)
    with pytest.raises(SeqmemError, match=r"d_model must be an integer >= 1, got 0"):
        mixers.build("gru", 0)
    with pytest.raises(SeqmemError, match=r"d_model must be an integer >= 1, got 2.5"):
        mixers.build("leaky_rnn", 2.5)


@pytest.mark.parametrize(
    "name,kw,pattern",
    [
        ("leaky_rnn", {"rule": "x"}, r"unknown leaky_rnn rule 'x'; accepted: default, mod"),
        ("leaky_rnn", {"phi": "x"},
         r"unknown activation phi 'x'; accepted: leaky_relu, tanh, relu"),
        ("leaky_rnn", {"h0": "x"}, r"unknown leaky_rnn h0 'x'; accepted: zeros, random"),
        ("leaky_rnn", {"tau_init": (0.5, 1)},
         r"tau_init must be \(low, high\) with 1 <= low <= high < inf, got \(0.5, 1\)"),
        ("leaky_rnn", {"tau_init": (3, 2)}, r"tau_init must be \(low, high\) with 1 <= low"),
        ("leaky_rnn", {"tau_init": (1, 2, 3)}, r"tau_init must be \(low, high\)"),
        ("leaky_rnn", {"tau_init": 2.0}, r"tau_init must be \(low, high\)"),
        ("leaky_rnn", {"tau_init": (1, math.inf)}, r"tau_init must be \(low, high\)"),
        ("elman", {"phi": "sigmoid"},
         r"unknown elman activation phi 'sigmoid'; accepted: tanh, relu"),
    ],
)
def test_bad_option_values(name, kw, pattern):
    with pytest.raises(SeqmemError, match=pattern):
        mixers.build(name, D, **kw)
