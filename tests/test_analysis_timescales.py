"""Timescales: autocorrelation, exponential fits with AIC, tau_net of a model, dimensionality."""

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from seqmem.analysis.timescales import (
    autocorrelation,
    dimensionality,
    fit_timescale,
    network_timescales,
)
from seqmem.errors import SeqmemError
from seqmem.models import SequenceModel

K = np.arange(31, dtype=np.float64)  # lags 0..30, the fitted range


def ar1(rng, tau, n_trials, n_steps, burn_in=500):
    """Unit-variance AR(1) x_t = phi x_{t-1} + sqrt(1 - phi^2) e_t, phi = e^{-1/tau}.

    Its autocorrelation is phi^k = e^{-k/tau}. Returns (n_trials, n_steps, 1).
    """
    phi = np.exp(-1 / tau)
    e = rng.standard_normal((n_trials, burn_in + n_steps, 1))
    return lfilter([1.0], [1.0, -phi], e, axis=1)[:, burn_in:] * np.sqrt(1 - phi**2)


# ---- autocorrelation ----------------------------------------------------------------------
def test_autocorrelation_equals_the_direct_sum():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 50, 4)) + rng.standard_normal((3, 1, 4))  # (r, n, d)
    r, n, d = x.shape
    max_lag = 20
    ref = np.zeros((d, max_lag + 1))
    for i in range(d):
        C = np.zeros(max_lag + 1)
        for trial in range(r):
            y = x[trial, :, i] - x[trial, :, i].mean()
            for k in range(max_lag + 1):
                C[k] += sum(y[t] * y[t + k] for t in range(n - k)) / (n - 1 - k)
        ref[i] = C / C[0]
    ac = autocorrelation(x, max_lag)
    assert ac.shape == (d, max_lag + 1)
    np.testing.assert_allclose(ac, ref, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(ac[:, 0], 1.0)


def test_autocorrelation_of_a_constant_unit_is_nan():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 40, 3))
    x[:, :, 1] = 0.3  # constant in every trial: no autocorrelation
    x[0, :, 2] = 7.0  # constant in one trial only: still defined by the other
    ac = autocorrelation(x, 5)
    assert np.isnan(ac[1]).all()
    assert np.isfinite(ac[[0, 2]]).all()
    np.testing.assert_allclose(ac[2], autocorrelation(x[1:, :, 2:], 5)[0], atol=1e-12)


def test_autocorrelation_of_ar1_is_phi_to_the_k():
    rng = np.random.default_rng(2)
    for tau in (5.0, 12.0):
        ac = autocorrelation(ar1(rng, tau, 8, 5000), 30)[0]
        # 8 x 5000 steps: the estimate's error is ~0.01-0.03; worst of 40 seeds was 0.036
        np.testing.assert_allclose(ac, np.exp(-K / tau), rtol=0, atol=0.06)


def test_autocorrelation_rejects_bad_input():
    with pytest.raises(SeqmemError, match="n_trials, n_steps, n_units"):
        autocorrelation(np.zeros((10, 3)), 2)
    with pytest.raises(SeqmemError, match="max_lag"):
        autocorrelation(np.zeros((1, 10, 3)), 9)
    with pytest.raises(SeqmemError, match="max_lag"):
        autocorrelation(np.zeros((1, 10, 3)), -1)


# ---- fit_timescale ------------------------------------------------------------------------
def test_fit_exact_single_exponential_picks_single():
    f = fit_timescale(0.9 * np.exp(-K / 7.0))
    assert f["model"] == "single"
    assert f["tau"] == pytest.approx(7.0, rel=1e-9)
    np.testing.assert_allclose(f["params_single"], [0.9, 7.0], rtol=1e-9)
    assert f["aic_single"] < f["aic_double"]


def test_fit_exact_double_exponential_picks_double():
    f = fit_timescale(0.6 * np.exp(-K / 3.0) + 0.4 * np.exp(-K / 15.0))
    assert f["model"] == "double"
    np.testing.assert_allclose(f["params_double"], [0.6, 3.0, 0.4, 15.0], rtol=1e-3)
    assert f["tau"] == pytest.approx(15.0, rel=1e-3)
    assert f["aic_double"] < f["aic_single"]


def test_fit_ar1_recovers_its_timescale():
    rng = np.random.default_rng(3)
    for tau in (5.0, 12.0):
        f = fit_timescale(autocorrelation(ar1(rng, tau, 8, 5000), 30)[0])
        # the single-exponential fit: worst relative error over 40 seeds was 10 %
        assert f["params_single"][1] == pytest.approx(tau, rel=0.15)
        assert f["model"] in ("single", "double")
        # tau is the chosen model's (slower) tau. Which model AIC picks on AR(1) noise is not
        # asserted: the double wins about a third of the draws (see fit_timescale's docstring).
        chosen = f["params_single"][1] if f["model"] == "single" else f["params_double"][3]
        assert f["tau"] == chosen


def test_fit_two_timescale_process_picks_double_and_the_slow_tau():
    rng = np.random.default_rng(4)
    # x = sqrt(.6) AR(tau=2) + sqrt(.4) AR(tau=20): ac(k) = .6 e^{-k/2} + .4 e^{-k/20}
    x = np.sqrt(0.6) * ar1(rng, 2.0, 8, 20000) + np.sqrt(0.4) * ar1(rng, 20.0, 8, 20000)
    ac = autocorrelation(x, 30)[0]
    f = fit_timescale(ac)
    assert f["model"] == "double"
    # worst relative error over 40 seeds was 10 %
    assert f["tau"] == pytest.approx(20.0, rel=0.2)
    assert f["params_double"][1] == pytest.approx(2.0, rel=0.2)


def test_fit_of_a_nan_curve_is_nan_and_bad_args_raise():
    f = fit_timescale(np.full(31, np.nan))
    assert np.isnan(f["tau"]) and f["model"] == "none"
    with pytest.raises(SeqmemError, match="max_lag"):
        fit_timescale(np.exp(-K), max_lag=40)
    with pytest.raises(SeqmemError, match="tau_bounds"):
        fit_timescale(np.exp(-K), tau_bounds=(5, 1))


# ---- dimensionality ----------------------------------------------------------------------
def _data_with_variances(variances, n=400, d=6, seed=0):
    """(n, d) data whose sample covariance has exactly `variances` in a random rotation."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, len(variances)))
    Q, _ = np.linalg.qr(Z - Z.mean(0))  # (n, m), orthonormal columns orthogonal to 1
    Z = Q * np.sqrt(np.asarray(variances) * n)  # (n, m), sample variances exactly `variances`
    R, _ = np.linalg.qr(rng.standard_normal((d, d)))  # (d, d) rotation
    return np.pad(Z, ((0, 0), (0, d - len(variances)))) @ R + 3.0  # (n, d)


def test_dimensionality_counts_components_of_known_variances():
    v = np.array([10.0, 5.0, 1.0, 0.01])
    X = _data_with_variances(v)
    frac = np.cumsum(v) / v.sum()  # 0.625, 0.937, 0.9994, 1
    for target in (0.5, 0.9, 0.95, 0.99, 0.9995, 1.0):
        expected = int(np.argmax(frac >= target)) + 1
        assert dimensionality(X, variance=target) == expected
    assert [dimensionality(X, variance=t) for t in (0.5, 0.9, 0.99)] == [1, 2, 3]
    assert dimensionality(X.reshape(4, 100, 6)) == 2  # trials and steps pooled


def test_dimensionality_rejects_bad_input():
    with pytest.raises(SeqmemError, match="variance"):
        dimensionality(np.eye(3), variance=0)
    with pytest.raises(SeqmemError, match="zero variance"):
        dimensionality(np.ones((5, 2)))
    with pytest.raises(SeqmemError, match="activity"):
        dimensionality(np.ones(5))


# ---- network_timescales ------------------------------------------------------------------
def _tiny(seed=0, **options):
    torch.manual_seed(seed)
    return SequenceModel(1, 8, mixer="leaky_rnn",
                         mixer_options={"input_proj": False, **options}).double()


def test_network_timescales_shapes_and_reproducibility():
    m = _tiny(h0="random")
    kw = dict(n_trials=2, n_steps=300, burn_in=20, max_lag=12)
    r1 = network_timescales(m, generator=torch.Generator().manual_seed(5), **kw)
    r2 = network_timescales(m, generator=torch.Generator().manual_seed(5), **kw)
    r3 = network_timescales(m, generator=torch.Generator().manual_seed(6), **kw)
    assert r1["tau_net"].shape == (8,) and r1["ac"].shape == (8, 13) and len(r1["model"]) == 8
    assert np.isfinite(r1["tau_net"]).all() and np.isfinite(r1["ac"]).all()
    np.testing.assert_array_equal(r1["tau_net"], r2["tau_net"])
    np.testing.assert_array_equal(r1["ac"], r2["ac"])
    assert r1["model"] == r2["model"]
    assert not np.array_equal(r1["ac"], r3["ac"])
    valid = r1["tau_net"] > 1
    assert r1["n_valid"] == valid.sum()
    if valid.any():
        assert r1["mean_tau_net"] == pytest.approx(r1["tau_net"][valid].mean())
    else:
        assert np.isnan(r1["mean_tau_net"])


def test_network_timescales_equals_stepping_the_model():
    """Same draws (p per trial, bits, then the initial state), features by `model.step`."""
    m = _tiny(h0="random")
    n_trials, burn_in, n_steps, max_lag = 3, 15, 120, 10
    g = torch.Generator().manual_seed(9)
    p = torch.rand(n_trials, 1, 1, generator=g, dtype=torch.float64)
    x = (torch.rand(n_trials, burn_in + n_steps, 1, generator=g, dtype=torch.float64) < p)
    state = m.init_state(n_trials, generator=g)
    hs = []
    with torch.no_grad():
        for t in range(burn_in + n_steps):
            h, state = m.step(x[:, t].double(), state)
            hs.append(h)
    h = torch.stack(hs, 1)[:, burn_in:].numpy()  # (b, n_steps, d)
    r = network_timescales(m, generator=torch.Generator().manual_seed(9), n_trials=n_trials,
                           n_steps=n_steps, burn_in=burn_in, max_lag=max_lag)
    np.testing.assert_allclose(r["ac"], autocorrelation(h, max_lag), rtol=0, atol=1e-10)


def test_network_timescales_of_uncoupled_linear_units():
    """W = 0 and a positive drive: each unit is h_t = (1 - 1/tau) h_{t-1} + u_t / tau, an
    AR(1) of i.i.d. bits with autocorrelation (1 - 1/tau)^k."""
    taus = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    torch.manual_seed(0)
    m = SequenceModel(1, 4, mixer="leaky_rnn", mixer_options={"input_proj": False}).double()
    mixer = m.blocks[0].mixer
    with torch.no_grad():
        mixer.W.zero_()
        mixer.b.zero_()
        mixer.tau.copy_(taus)
        m.encoder.weight.fill_(1.0)  # drive u = x + 0.1 > 0: leaky_relu acts as the identity
        m.encoder.bias.fill_(0.1)
    r = network_timescales(m, generator=torch.Generator().manual_seed(0), n_trials=8,
                           n_steps=3000, burn_in=100, max_lag=10)
    expected = (1 - 1 / taus.numpy())[:, None] ** np.arange(11)  # (d, 11)
    # 8 x 3000 steps: worst error over 10 seeds was 0.03
    np.testing.assert_allclose(r["ac"], expected, rtol=0, atol=0.06)


def test_network_timescales_rejects_bad_input():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    m2 = SequenceModel(2, 4, mixer="leaky_rnn")
    with pytest.raises(SeqmemError, match="scalar-input"):
        network_timescales(m2, generator=g)
    m = _tiny()
    with pytest.raises(SeqmemError, match="n_steps"):
        network_timescales(m, generator=g, n_steps=0)
    with pytest.raises(SeqmemError, match="max_lag"):
        network_timescales(m, generator=g, n_steps=20, max_lag=20)
    with pytest.raises(SeqmemError, match="n_trials"):
        network_timescales(m, generator=g, n_trials=1.5)
    with pytest.raises(SeqmemError, match="layer"):
        network_timescales(m, generator=g, n_steps=50, layer=1)
