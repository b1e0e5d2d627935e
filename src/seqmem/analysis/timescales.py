"""Network-mediated timescales and dimensionality of a model's activity.

Definitions follow Khajehabdollahi et al. (ICLR 2024) and the authors' analysis code
(LevinaLab/rnn_timescale_public, `analysis/timescales/timescales_utils.py`):

- the autocorrelation of a unit is estimated by FFT per trial (mean-subtracted, zero-padded,
  lag k divided by n - 1 - k), averaged over trials and normalised by lag 0;
- its timescale tau_net comes from fitting lags 0..30 with a single exponential a e^{-k/tau}
  and with a sum of two, the model chosen by AIC = 2 k + n ln(RSS / n); tau_net is the fitted
  tau of the chosen model (the slower one of two);
- the network's timescale is the mean of tau_net over units with tau_net > 1, measured while
  the network is driven by random bits (p ~ U(0, 1) per trial, bits ~ Bernoulli(p));
- dimensionality is the number of principal components that explain 90 % of the variance.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import fft as sp_fft
from scipy.optimize import OptimizeWarning, curve_fit

from seqmem.errors import SeqmemError
from seqmem.models import SequenceModel

MODELS = ("single", "double")
# Fits whose root-mean-square residual is below this are exact up to rounding: every such
# fit gets the same RSS, so AIC then prefers the model with fewer parameters.
_RMS_FLOOR = 1e-12
_MAXFEV = 5000


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise SeqmemError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Trial-averaged autocorrelation of each unit, lags 0..max_lag, by FFT.

    For trial r and unit i with mean-subtracted activity y_t = x_t - mean_t(x), t = 0..n-1:

        C_r(k) = sum_{t=0}^{n-1-k} y_t y_{t+k} / (n - 1 - k),
        ac_i(k) = mean_r C_r(k) / mean_r C_r(0),

    the estimator of Khajehabdollahi et al. (ICLR 2024) and their code (the sum is computed
    by FFT of y zero-padded to at least 2n, so it is the linear, not circular, correlation).

    Args:
        x: activity (n_trials, n_steps, n_units).
        max_lag: largest lag, 0 <= max_lag <= n_steps - 2 (lag n - 1 would divide by zero).

    Returns:
        (n_units, max_lag + 1), with ac[:, 0] == 1. A unit that is constant in every trial has
        no autocorrelation: its row is NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise SeqmemError(f"activity must have shape (n_trials, n_steps, n_units), got "
                          f"{x.shape}")
    n = x.shape[1]
    max_lag = _check_int("max_lag", max_lag, 0)
    if max_lag > n - 2:
        raise SeqmemError(f"max_lag must be <= n_steps - 2 = {n - 2}, got {max_lag}")
    const = x.max(axis=1, keepdims=True) == x.min(axis=1, keepdims=True)  # (r, 1, d)
    # exact zeros for constant trials (x - mean(x) can leave rounding noise of order 1e-17)
    y = np.where(const, 0.0, x - x.mean(axis=1, keepdims=True))  # (r, n, d)
    n_fft = sp_fft.next_fast_len(2 * n, real=True)
    f = sp_fft.rfft(y, n=n_fft, axis=1)  # (r, n_fft // 2 + 1, d)
    s = sp_fft.irfft(f.real**2 + f.imag**2, n=n_fft, axis=1)[:, : max_lag + 1]  # (r, L, d)
    C = s / (n - 1 - np.arange(max_lag + 1))[:, None]  # (r, L, d)
    C = C.mean(axis=0).T  # (d, L)
    with np.errstate(invalid="ignore", divide="ignore"):
        ac = C / C[:, :1]  # (d, L)
    ac[const.all(axis=0)[0]] = np.nan
    return ac


def _single_exp(k, a, tau):
    return a * np.exp(-k / tau)


def _single_exp_jac(k, a, tau):
    e = np.exp(-k / tau)  # (n,)
    return np.stack([e, a * e * k / tau**2], axis=1)  # (n, 2)


def _double_exp(k, a1, tau1, a2, tau2):
    return a1 * np.exp(-k / tau1) + a2 * np.exp(-k / tau2)


def _double_exp_jac(k, a1, tau1, a2, tau2):
    return np.concatenate([_single_exp_jac(k, a1, tau1), _single_exp_jac(k, a2, tau2)], axis=1)


def _aic(n_params: int, rss: float, n: int) -> float:
    rss = max(rss, n * _RMS_FLOOR**2)
    return 2 * n_params + n * math.log(rss / n)


def _fit(f, jac, k, y, p0s, bounds):
    """Least-squares fit of f from each start in p0s; returns (params, rss) of the best one."""
    best, best_rss = None, math.inf
    for p0 in p0s:
        try:
            with warnings.catch_warnings():
                # a poor fit (e.g. a covariance that cannot be estimated) is expected here;
                # AIC judges it
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                p, _ = curve_fit(f, k, y, p0=p0, bounds=bounds, jac=jac, maxfev=_MAXFEV,
                                 ftol=1e-12, xtol=1e-12, gtol=1e-12)
        except (RuntimeError, ValueError, TypeError):  # no convergence, or too few lags
            continue
        rss = float(np.sum((f(k, *p) - y) ** 2))
        if math.isfinite(rss) and rss < best_rss:
            best, best_rss = p, rss
    return best, best_rss


def fit_timescale(ac: np.ndarray, *, max_lag: int = 30,
                  tau_bounds: tuple[float, float] = (0.0, 100.0)) -> dict:
    """Timescale of one unit's autocorrelation, by AIC between one and two exponentials.

    Lags k = 0..max_lag of `ac` are fitted by least squares (scipy's curve_fit) with

        single: a e^{-k/tau}                          (2 parameters)
        double: a1 e^{-k/tau1} + a2 e^{-k/tau2}       (4 parameters)

    amplitudes >= 0, taus within `tau_bounds`, and the model with the lower
    AIC = 2 p + n ln(RSS / n) (p parameters, n = max_lag + 1 lags) is chosen, as in
    Khajehabdollahi et al. (ICLR 2024). tau is the fitted tau of the chosen model, the larger
    one for the double exponential. A fit that fails has AIC = inf; an RSS below
    n * 1e-24 (an exact fit up to rounding) is raised to it, so exact fits tie and the
    single exponential wins on its fewer parameters. The curve is fitted as given (pass a
    normalised autocorrelation, e.g. a row of `autocorrelation`). A lower tau bound of 0 is
    used as 1e-6 (e^{-k/tau} is undefined at tau = 0).

    Caveat of the method: the errors of an estimated autocorrelation are correlated across
    lags, and the RSS ratio AIC compares does not shrink with more data. On a noisy
    single-exponential curve (an AR(1) process) the double exponential therefore wins in
    about a third of draws, with a weak slower component whose tau can lie far from the true
    one (up to the upper bound); `params_single` stays close. The choice is the paper's.

    Returns:
        {"tau", "model", "aic_single", "aic_double", "params_single", "params_double"};
        params are (a, tau) and (a1, tau1, a2, tau2) with tau1 <= tau2 (NaN if the fit
        failed). If `ac` is not finite on the fitted lags or both fits fail, tau is NaN and
        model is "none".
    """
    max_lag = _check_int("max_lag", max_lag, 1)
    ac = np.asarray(ac, dtype=np.float64)
    if ac.ndim != 1 or ac.shape[0] < max_lag + 1:
        raise SeqmemError(f"ac must be one unit's autocorrelation, a 1-d array of at least "
                          f"max_lag + 1 = {max_lag + 1} lags, got shape {ac.shape}")
    lo, hi = (float(v) for v in tau_bounds)
    if not 0 <= lo < hi < math.inf:
        raise SeqmemError(f"tau_bounds must be (low, high) with 0 <= low < high < inf, got "
                          f"{tau_bounds}")
    lo = max(lo, 1e-6)
    k = np.arange(max_lag + 1, dtype=np.float64)  # (n,)
    y = ac[: max_lag + 1]  # (n,)
    n = k.size
    out = {"tau": math.nan, "model": "none", "aic_single": math.inf, "aic_double": math.inf,
           "params_single": np.full(2, np.nan), "params_double": np.full(4, np.nan)}
    if not np.all(np.isfinite(y)):
        return out

    def inside(tau):
        return float(np.clip(tau, lo + 1e-3 * (hi - lo), hi - 1e-3 * (hi - lo)))

    # start from the log-linear fit of the lags where the curve is still clearly positive
    pos = np.flatnonzero(y > 1e-3 * max(y[0], 1e-12))
    pos = pos[: np.argmax(np.diff(np.r_[pos, -1]) != 1) + 1]  # leading run of positive lags
    if pos.size >= 2 and y[0] > 0:
        slope, icpt = np.polyfit(k[pos], np.log(y[pos]), 1)
        tau0 = inside(-1 / slope if slope < 0 else hi)
        a0 = float(np.exp(icpt))
    else:
        tau0, a0 = inside(1.0), max(float(y[0]), 1e-3)
    p_single, rss_single = _fit(_single_exp, _single_exp_jac, k, y, [(a0, tau0)],
                                ([0.0, lo], [np.inf, hi]))
    p0s = [(a0 / 2, inside(tau0 / f), a0 / 2, inside(tau0 * f)) for f in (2.0, 5.0)]
    p_double, rss_double = _fit(_double_exp, _double_exp_jac, k, y, p0s, ([0.0, lo, 0.0, lo],
                                                         [np.inf, hi, np.inf, hi]))
    if p_single is not None:
        out["aic_single"] = _aic(2, rss_single, n)
        out["params_single"] = np.asarray(p_single)
    if p_double is not None:
        out["aic_double"] = _aic(4, rss_double, n)
        a1, t1, a2, t2 = p_double
        out["params_double"] = np.array([a1, t1, a2, t2] if t1 <= t2 else [a2, t2, a1, t1])
    if out["aic_single"] <= out["aic_double"] and p_single is not None:
        out["model"], out["tau"] = "single", float(out["params_single"][1])
    elif p_double is not None:
        out["model"], out["tau"] = "double", float(out["params_double"][3])
    return out


def network_timescales(model: SequenceModel, *, generator: torch.Generator, n_trials: int = 4,
                       n_steps: int = 2000, burn_in: int = 500, max_lag: int = 30,
                       layer: int = -1) -> dict:
    """Network-mediated timescale tau_net of every unit of a block, driven by random bits.

    As in Khajehabdollahi et al. (ICLR 2024): each of `n_trials` trials draws p ~ U(0, 1) and
    a stream of burn_in + n_steps bits ~ Bernoulli(p) (the unbalanced input of N-parity),
    then the initial state is drawn with `model.init_state(n_trials, generator=generator)`;
    the model runs over the stream (no gradients), the first `burn_in` steps are discarded,
    and for each unit of block `layer` (default the last: the hidden units)

        ac = autocorrelation(h, max_lag),   tau_net = fit_timescale(ac, max_lag=max_lag).

    The network's timescale is the mean of tau_net over units with tau_net > 1, the units
    whose memory outlasts one step.

    Defaults: the paper simulates 10 trials of 1e5 steps. Ours (4 trials of 2,000 steps) are
    scaled to finish in seconds on a 2-core CPU; since the fit uses lags 0..30 only, a few
    thousand steps already estimate tau_net, at a larger variance (raise n_trials and n_steps
    for final numbers).

    Args:
        model: a SequenceModel with d_input == 1 (real-valued scalar input).
        generator: the source of the input bits and the initial state.
        layer: index of the block whose output is analysed (negative counts from the end).

    Returns:
        {"tau_net": (n_units,), "model": list of "single" | "double" | "none",
         "mean_tau_net": float (NaN if no unit has tau_net > 1), "n_valid": int,
         "ac": (n_units, max_lag + 1)}. A unit that is constant or cannot be fitted has
        tau_net NaN.
    """
    if getattr(model, "vocab_size", None) or getattr(model, "d_input", None) != 1:
        raise SeqmemError(f"tau_net needs a scalar-input model (d_input == 1, real-valued "
                          f"input); got d_input={getattr(model, 'd_input', None)}, "
                          f"vocab_size={getattr(model, 'vocab_size', None)}")
    n_trials = _check_int("n_trials", n_trials, 1)
    n_steps = _check_int("n_steps", n_steps, 2)
    burn_in = _check_int("burn_in", burn_in, 0)
    max_lag = _check_int("max_lag", max_lag, 1)
    if max_lag > n_steps - 2:
        raise SeqmemError(f"max_lag must be < n_steps - 1 = {n_steps - 1}, got {max_lag}")
    n_layers = len(model.blocks)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n_layers <= layer < n_layers:
        raise SeqmemError(f"layer must be an integer in [-{n_layers}, {n_layers}), got {layer!r}")

    p = next(model.parameters())
    t = burn_in + n_steps
    prob = torch.rand(n_trials, 1, 1, generator=generator, dtype=torch.float64)  # (b, 1, 1)
    bits = torch.rand(n_trials, t, 1, generator=generator, dtype=torch.float64) < prob
    x = bits.to(device=p.device, dtype=p.dtype)  # (b, t, 1)
    captured = {}
    handle = model.blocks[layer].register_forward_hook(
        lambda _mod, _inp, out: captured.__setitem__("h", out[0])
    )
    try:
        with torch.no_grad():
            model.features(x, model.init_state(n_trials, generator=generator))
    finally:
        handle.remove()
    h = captured["h"][:, burn_in:].double().cpu().numpy()  # (b, n_steps, d)

    ac = autocorrelation(h, max_lag)  # (d, max_lag + 1)
    fits = [fit_timescale(row, max_lag=max_lag) for row in ac]
    tau_net = np.array([f["tau"] for f in fits])  # (d,)
    valid = tau_net > 1  # NaN compares False
    n_valid = int(valid.sum())
    return {
        "tau_net": tau_net,
        "model": [f["model"] for f in fits],
        "mean_tau_net": float(tau_net[valid].mean()) if n_valid else math.nan,
        "n_valid": n_valid,
        "ac": ac,
    }


def dimensionality(activity: np.ndarray, *, variance: float = 0.9) -> int:
    """Number of principal components that explain a fraction `variance` of the variance.

    With lambda_1 >= lambda_2 >= ... the eigenvalues of the covariance of the centred activity
    (squared singular values of the centred data), the result is the smallest m with

        sum_{i<=m} lambda_i >= variance * sum_i lambda_i,

    the dimensionality measure of Khajehabdollahi et al. (ICLR 2024) with variance = 0.9.

    Args:
        activity: (n_samples, n_units), or (n_trials, n_steps, n_units), whose trials and
            steps are pooled as samples.
        variance: fraction in (0, 1].
    """
    X = np.asarray(activity, dtype=np.float64)
    if X.ndim == 3:
        X = X.reshape(-1, X.shape[-1])  # (r * n, d)
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        raise SeqmemError(f"activity must have shape (n_samples >= 2, n_units) or (n_trials, "
                          f"n_steps, n_units), got {np.shape(activity)}")
    if not 0 < variance <= 1:
        raise SeqmemError(f"variance must be a fraction in (0, 1], got {variance}")
    s = np.linalg.svd(X - X.mean(axis=0), compute_uv=False)  # (min(n, d),)
    lam = s**2
    total = lam.sum()
    if not total > 0:
        raise SeqmemError("activity has zero variance: its dimensionality is undefined")
    frac = np.cumsum(lam) / total  # (m,)
    # a relative slack of 1e-12 keeps exact ties (e.g. variance = 1) from rounding upward
    m = int(np.searchsorted(frac, variance - 1e-12)) + 1
    return min(m, lam.size)
