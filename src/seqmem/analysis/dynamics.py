"""Measures of how well a model reproduces a chaotic system's long-term behaviour.

Dynamical-systems reconstruction is judged on freely generated trajectories, not on one-step
errors (chaos makes any trajectory diverge from the truth after a few Lyapunov times):

- D_stsp, the state-space divergence (Koppe et al. 2019, PLoS Comput Biol; Brenner et al.
  2022; Hess et al. 2023, ICML): the Kullback-Leibler divergence KL(p_true || q_gen) between
  the occupation distributions of the true and the generated trajectory in state space.
  Below 6 dimensions both are histograms on the same grid: per dimension the range
  [min - 0.1 sd, max + 0.1 sd] of the true data, cut into `n_bins` (30) equal bins; points
  outside the grid are not counted; counts h are smoothed (h + 1e-5) / (sum h + 1e-5 cells).
  From 6 dimensions a Gaussian-mixture estimate: one isotropic Gaussian (variance 1) on every
  time point of each trajectory, KL estimated by Monte Carlo from samples of the true mixture.
- D_H, the power-spectrum Hellinger distance (Mikhaeil et al. 2022, NeurIPS; Hess et al.
  2023): each dimension z-scored, power spectrum |rfft|^2, smoothed by a Gaussian kernel
  (sigma 20 frequency bins, scipy's gaussian_filter1d), negatives clipped, normalised to sum
  1; Hellinger distance (1/sqrt 2) ||sqrt p - sqrt q|| (0 = same, 1 = disjoint spectra),
  averaged over dimensions. seqmem's choice: a constant dimension (no spectrum) is at
  distance 1 from a varying one and 0 from another constant one.

`free_run` generates a trajectory from a trained SequenceModel with a regression head: it
reads a warm-up segment of true data, then feeds its own predictions back as inputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from torch import Tensor

from seqmem.errors import SeqmemError

GMM_FROM_DIM = 6  # D_stsp by binning below this many dimensions, by a Gaussian mixture from it


def _as_2d(x, what: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, float)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] < 2:
        raise SeqmemError(f"{what} must be a trajectory of shape (time >= 2, dims), got shape "
                          f"{tuple(a.shape)}")
    return a


def _check_pair(x_true, x_gen) -> tuple[np.ndarray, np.ndarray]:
    p, q = _as_2d(x_true, "x_true"), _as_2d(x_gen, "x_gen")
    if p.shape[1] != q.shape[1]:
        raise SeqmemError(f"x_true and x_gen must have the same number of dimensions, got "
                          f"{p.shape[1]} and {q.shape[1]}")
    return p, q


# ---- D_stsp -----------------------------------------------------------------------------------
def occupation(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, n_bins: int) -> np.ndarray:
    """Counts of the points of x (T, d) in a grid of n_bins^d equal cells spanning [lo, hi)
    per dimension; points outside the grid are not counted. Flat array of n_bins^d."""
    idx = np.floor((x - lo) / (hi - lo) * n_bins).astype(np.int64)  # (T, d)
    inside = ((idx >= 0) & (idx < n_bins)).all(1)
    flat = np.ravel_multi_index(idx[inside].T, (n_bins,) * x.shape[1])
    return np.bincount(flat, minlength=n_bins ** x.shape[1]).astype(np.float64)


def state_space_divergence(x_true, x_gen, *, n_bins: int = 30, smoothing: float = 1e-5,
                           method: str = "auto", n_samples: int = 1000,
                           generator: torch.Generator | None = None) -> float:
    """D_stsp = KL(p_true || q_gen) of two trajectories (T, d) and (T', d) (see the module
    docstring). method: "bins" (the histogram estimate), "gmm" (the Gaussian-mixture
    estimate, `n_samples` Monte Carlo samples drawn with `generator`) or "auto" (bins below
    6 dimensions, gmm from 6). Identical trajectories give exactly 0."""
    p_x, q_x = _check_pair(x_true, x_gen)
    if method == "auto":
        method = "bins" if p_x.shape[1] < GMM_FROM_DIM else "gmm"
    if method == "gmm":
        return _gmm_divergence(p_x, q_x, n_samples, generator)
    if method != "bins":
        raise SeqmemError(f"unknown method {method!r}; accepted: auto, bins, gmm")
    if not isinstance(n_bins, int) or n_bins < 1 or n_bins ** p_x.shape[1] > 10**8:
        raise SeqmemError(f"n_bins must be an integer >= 1 with n_bins^dims <= 1e8, got "
                          f"{n_bins!r} for {p_x.shape[1]} dimensions (use method='gmm')")
    sd = p_x.std(0)
    lo, hi = p_x.min(0) - 0.1 * sd, p_x.max(0) + 0.1 * sd
    hi = np.where(hi > lo, hi, lo + 1.0)  # a constant dimension: one finite cell range
    cells = n_bins ** p_x.shape[1]
    h_p, h_q = occupation(p_x, lo, hi, n_bins), occupation(q_x, lo, hi, n_bins)
    p = (h_p + smoothing) / (h_p.sum() + smoothing * cells)
    q = (h_q + smoothing) / (h_q.sum() + smoothing * cells)
    return float(np.sum(p * np.log(p / q)))


def _mixture_logpdf(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """log of the mean over centres of N(point; centre, I), for every point (n,)."""
    d = points.shape[1]
    sq = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)  # (n, T)
    m = (-0.5 * sq).max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(-0.5 * sq - m).sum(1))
    return lse - math.log(len(centres)) - 0.5 * d * math.log(2 * math.pi)


def _gmm_divergence(p_x: np.ndarray, q_x: np.ndarray, n_samples: int,
                    generator: torch.Generator | None) -> float:
    if generator is None:
        raise SeqmemError("the Gaussian-mixture D_stsp draws Monte Carlo samples: pass "
                          "generator=torch.Generator().manual_seed(...)")
    pick = torch.randint(0, len(p_x), (n_samples,), generator=generator).numpy()
    noise = torch.randn(n_samples, p_x.shape[1], generator=generator, dtype=torch.float64)
    samples = p_x[pick] + noise.numpy()  # (n, d) from the true mixture
    return float(np.mean(_mixture_logpdf(samples, p_x) - _mixture_logpdf(samples, q_x)))


# ---- D_H ---------------------------------------------------------------------------------------
def power_spectra(x, *, smoothing: float = 20.0) -> np.ndarray:
    """Smoothed, normalised power spectrum of each dimension of x (T, d): (d, T // 2 + 1).

    Each dimension z-scored, |rfft|^2, Gaussian smoothing (sigma `smoothing` bins, 0 = none),
    negatives clipped to 0, normalised to sum 1."""
    a = _as_2d(x, "x")
    sd = a.std(0)
    z = (a - a.mean(0)) / np.where(sd > 0, sd, 1.0)
    ps = np.abs(np.fft.rfft(z, axis=0)) ** 2  # (T // 2 + 1, d)
    if smoothing > 0:
        ps = gaussian_filter1d(ps, smoothing, axis=0)
    ps = np.clip(ps, 0.0, None).T  # (d, f)
    total = ps.sum(1, keepdims=True)
    return ps / np.where(total > 0, total, 1.0)


def power_spectrum_hellinger(x_true, x_gen, *, smoothing: float = 20.0) -> float:
    """D_H: the Hellinger distance (1/sqrt 2) ||sqrt p - sqrt q|| between the smoothed power
    spectra of each dimension of two equally long trajectories (T, d), averaged over
    dimensions. 0 for the same spectra, 1 for disjoint ones."""
    p_x, q_x = _check_pair(x_true, x_gen)
    if p_x.shape[0] != q_x.shape[0]:
        raise SeqmemError(f"D_H compares spectra of equally long trajectories, got lengths "
                          f"{p_x.shape[0]} and {q_x.shape[0]}")
    p, q = power_spectra(p_x, smoothing=smoothing), power_spectra(q_x, smoothing=smoothing)
    h = np.sqrt(np.clip(0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(1), 0.0, 1.0))  # (d,)
    # a constant dimension has no spectrum (all zero after z-scoring): distance 1 to a
    # varying one (e.g. a model stuck at a fixed point), 0 to another constant one
    flat_p, flat_q = p.sum(1) == 0, q.sum(1) == 0
    h = np.where(flat_p | flat_q, (flat_p != flat_q).astype(float), h)
    return float(h.mean())


# ---- free running ------------------------------------------------------------------------------
@torch.no_grad()
def free_run(model, warmup: Tensor, n_steps: int, *, state=None,
             generator: torch.Generator | None = None) -> Tensor:
    """A trajectory generated by `model` (a SequenceModel with a regression head whose output
    is its next input, d_output == d_input): it reads the true warm-up x_0..x_{w-1}
    (b, w, d) step by step (teacher forced, to set its state), predicts x_w, then feeds each
    prediction back as its next input. Returns the n_steps predictions x^_w.. (b, n, d).
    Without `state`, the initial state is the model's, a random one drawn with `generator`."""
    if model.regressor is None or model.d_output != model.d_input:
        raise SeqmemError("free running needs a model whose regression head predicts its next "
                          "input (d_output == d_input)")
    if warmup.ndim != 3 or warmup.shape[1] < 1:
        raise SeqmemError(f"warmup must be (batch, time >= 1, d), got {tuple(warmup.shape)}")
    b = warmup.shape[0]
    state = model.init_state(b, generator=generator) if state is None else state
    for t in range(warmup.shape[1]):
        h, state = model.step(warmup[:, t], state)
    out = []
    x = model.predict(h)  # (b, d)
    for _ in range(n_steps):
        out.append(x)
        h, state = model.step(x, state)
        x = model.predict(h)
    return torch.stack(out, dim=1)  # (b, n, d)


def free_run_metrics(model, task, *, n_steps: int, n_traj: int,
                     generator: torch.Generator) -> dict[str, float]:
    """D_stsp and D_H of free-running trajectories against the true system, averaged over
    `n_traj` test trajectories (Hess et al. 2023's protocol, at seqmem's scale).

    Per trajectory: the task's true trajectory of seq_len + n_steps samples; the model reads
    the first seq_len (warm-up), then runs free for 1.25 n_steps steps; the first 0.25 n_steps
    generated steps are dropped (transients) and the remaining n_steps are compared with the
    n_steps true samples that follow the warm-up."""
    w = int(task.seq_len)
    x = task.trajectory(w + n_steps, n_traj, generator=generator)  # (k, w + n, d)
    p = next(model.parameters())
    drop = n_steps // 4
    gen = free_run(model, x[:, :w].to(p.device, p.dtype), n_steps + drop,
                   generator=generator)[:, drop:]
    # a diverged model's non-finite values become far-away points (outside the D_stsp grid)
    gen = torch.nan_to_num(gen.double().cpu(), nan=1e6, posinf=1e6, neginf=-1e6)
    true = x[:, w:].double()
    d_stsp = [state_space_divergence(true[k], gen[k]) for k in range(n_traj)]
    d_h = [power_spectrum_hellinger(true[k], gen[k]) for k in range(n_traj)]
    return {"d_stsp": float(np.mean(d_stsp)), "d_h": float(np.mean(d_h)),
            "free_run_steps": n_steps}
