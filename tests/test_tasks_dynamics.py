"""The dynamics task, its metrics (D_stsp, D_H), generalised teacher forcing and the PLRNN:
each against a closed form, a limit or an independent route."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqmem import mixers, tasks
from seqmem.analysis.dynamics import (
    free_run,
    occupation,
    power_spectrum_hellinger,
    state_space_divergence,
)
from seqmem.config import load_config
from seqmem.engine import train_run
from seqmem.errors import ConfigError, SeqmemError
from seqmem.models import SequenceModel, masked_mse_loss
from seqmem.store import RunStore
from seqmem.tasks.dynamics import SYSTEMS, lorenz63, rk4_step, rk4_trajectory
from seqmem.train import loop


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def trajectory(system: str, n: int, seed: int = 0) -> np.ndarray:
    task = tasks.build("dynamics", system=system)
    return task.trajectory(n, 1, generator=gen(seed))[0].double().numpy()


# ---- the integrator and the task -----------------------------------------------------------
def test_rk4_on_a_linear_system_matches_the_matrix_exponential():
    # dx/dt = M x, a damped rotation: x(t) = expm(M t) x0. RK4's global error is O(dt^4).
    M = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)
    x0 = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=torch.float64)  # (b, 2)
    errors = []
    for dt in (0.02, 0.01):
        n = round(5.0 / dt)
        xs = rk4_trajectory(lambda x: x @ M.T, x0, dt, n)  # (b, n, 2)
        want = x0 @ torch.linalg.matrix_exp(M * 5.0).T
        errors.append((xs[:, -1] - want).abs().max().item())
        k = n // 3
        torch.testing.assert_close(xs[:, k - 1], x0 @ torch.linalg.matrix_exp(M * k * dt).T,
                                   rtol=0, atol=1e-6)
    assert errors[1] < 1e-7
    assert 12 < errors[0] / errors[1] < 20  # fourth order: halving dt divides the error by 16


def test_lorenz_stays_on_its_attractor_and_matches_the_stated_moments():
    task = tasks.build("dynamics", seq_len=3000)
    raw = task.raw_trajectory(3001, 32, generator=gen(1))  # (b, n, 3) after the burn-in
    assert raw[..., 0].abs().max() < 25 and raw[..., 1].abs().max() < 30
    assert raw[..., 2].min() > 0 and raw[..., 2].max() < 55
    batch = task.sample(32, generator=gen(1))
    torch.testing.assert_close(batch.inputs, task.standardise(raw).float()[:, :-1])
    torch.testing.assert_close(batch.targets[:, :-1], batch.inputs[:, 1:], rtol=0, atol=0)
    x = batch.inputs.reshape(-1, 3).double()
    assert (x.mean(0).abs() < 0.15).all() and ((x.std(0) - 1).abs() < 0.1).all()
    # one RK4 step of the vector field links consecutive raw samples
    torch.testing.assert_close(rk4_step(lorenz63, raw[:, 10], 0.01), raw[:, 11], rtol=0,
                               atol=1e-12)


def test_roessler_bounded_and_options():
    task = tasks.build("dynamics", system="roessler", seq_len=400)
    b = task.sample(16, generator=gen(2))
    assert b.meta["dt"] == SYSTEMS["roessler"]["dt"] and b.meta["system"] == "roessler"
    assert b.inputs.abs().max() < 10 and b.mask.all()
    clean = tasks.build("dynamics", seq_len=50).sample(8, generator=gen(3))
    noisy = tasks.build("dynamics", seq_len=50, noise=0.1).sample(8, generator=gen(3))
    diff = (noisy.inputs - clean.inputs).double()
    assert abs(diff.std().item() - 0.1) < 0.01
    fine = tasks.build("dynamics", seq_len=20, dt=0.005).sample(2, generator=gen(3))
    assert fine.meta["dt"] == 0.005
    for kw, match in [({"system": "chua"}, "unknown system"), ({"dt": 0}, "dt must be"),
                      ({"noise": -1}, "noise must be"), ({"seq_len": 0}, "seq_len must be")]:
        with pytest.raises(SeqmemError, match=match):
            tasks.build("dynamics", **kw)


def test_render_shows_every_dimension_and_targets():
    task = tasks.build("dynamics", seq_len=30)
    text = task.render(task.sample(2, generator=gen(4)), 1)
    assert text.startswith("x: ") and "\ny: " in text and "\nz: " in text
    assert text.count("[->") == 6 and "system=lorenz63" in text


# ---- metrics -------------------------------------------------------------------------------
def test_identical_trajectories_give_zero():
    x = trajectory("lorenz63", 3000)
    assert state_space_divergence(x, x.copy()) == 0.0
    assert power_spectrum_hellinger(x, x.copy()) < 1e-12
    assert state_space_divergence(x, x, method="gmm", generator=gen(0)) == 0.0


def test_other_system_and_noise_are_far_the_same_system_is_near():
    lorenz, other_start = trajectory("lorenz63", 5000, 0), trajectory("lorenz63", 5000, 9)
    roessler = trajectory("roessler", 5000, 0)
    noise = np.random.default_rng(0).standard_normal((5000, 3))
    same = state_space_divergence(lorenz, other_start)
    assert state_space_divergence(lorenz, roessler) > 3 * same
    assert state_space_divergence(lorenz, noise) > 3 * same
    h_same = power_spectrum_hellinger(lorenz, other_start)
    assert power_spectrum_hellinger(lorenz, roessler) > 2 * h_same
    assert power_spectrum_hellinger(lorenz, noise) > 2 * h_same
    assert h_same < 0.25
    # a diverged model (every point outside the grid, none counted): q is uniform
    p = occupation(lorenz, *grid(lorenz), 30) + 1e-5
    p /= p.sum()
    assert state_space_divergence(lorenz, lorenz + 100) == pytest.approx(
        float(np.sum(p * np.log(p * 30**3))), rel=1e-12)
    assert state_space_divergence(lorenz, lorenz + 100) > 2 * same


def grid(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.min(0) - 0.1 * x.std(0), x.max(0) + 0.1 * x.std(0)


def test_hellinger_of_sinusoids_closed_form():
    t = np.arange(10_000)
    slow = np.sin(2 * np.pi * 50 * t / 10_000)[:, None]  # 50 cycles: all power in bin 50
    fast = np.sin(2 * np.pi * 500 * t / 10_000)[:, None]  # bin 500, far beyond sigma = 20
    shifted = np.sin(2 * np.pi * 50 * t / 10_000 + 1.0)[:, None]
    assert power_spectrum_hellinger(slow, fast) > 1 - 1e-6  # disjoint spectra
    assert power_spectrum_hellinger(slow, shifted) < 1e-6  # the phase does not matter
    # unsmoothed, each spectrum is a delta: exactly 1 and exactly 0
    assert power_spectrum_hellinger(slow, fast, smoothing=0) == pytest.approx(1, abs=1e-9)
    # a constant dimension is at distance 1 from a varying one, 0 from another constant one
    flat = np.ones((10_000, 1))
    assert power_spectrum_hellinger(slow, flat) == 1.0
    assert power_spectrum_hellinger(flat, 2 * flat) == 0.0


def test_binned_divergence_closed_form_in_one_dimension():
    # true: uniform over 30 bins of [lo, hi); generated: all points in one bin.
    # KL(p || q) with p = 1/30 everywhere, q ~ 1 in that bin: sum_k p_k log(p_k / q_k).
    x = ((np.arange(3000) % 30) + 0.5)[:, None]  # 100 points per bin of the true grid
    lo, hi = x.min() - 0.1 * x.std(), x.max() + 0.1 * x.std()
    centre = lo + (hi - lo) * 14.5 / 30
    y = np.full((3000, 1), centre)
    hp = np.histogram(x[:, 0], bins=30, range=(lo, hi))[0].astype(float)
    hq = np.histogram(y[:, 0], bins=30, range=(lo, hi))[0].astype(float)
    p = (hp + 1e-5) / (hp.sum() + 30e-5)
    q = (hq + 1e-5) / (hq.sum() + 30e-5)
    assert state_space_divergence(x, y) == pytest.approx(float(np.sum(p * np.log(p / q))),
                                                         rel=1e-12)


# ---- the PLRNN and the regression head -------------------------------------------------------
def test_plrnn_step_and_timescales_follow_the_equation():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = mixers.build("plrnn", 4, d_hidden=6).double()
    z = torch.randn(3, 4, generator=gen(5), dtype=torch.float64)
    s = torch.randn(3, 4, generator=gen(6), dtype=torch.float64)
    want = (torch.diag(m.A) @ z.T).T + (m.W1 @ torch.relu(m.W2 @ z.T + m.h2[:, None])).T \
        + m.h1 + s @ m.C.weight.T
    torch.testing.assert_close(m.step(s, z)[0], want, rtol=0, atol=1e-12)
    torch.testing.assert_close(m.timescales(), -1 / torch.log(m.A.detach().abs()))
    assert m.state_size() == 4 and "plrnn" in mixers.names()


def model64(mixer: str, **kw) -> SequenceModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return SequenceModel(3, 8, mixer=mixer, heads=[], d_output=3, **kw).double()


def test_regression_head_and_masked_mse():
    m = model64("gru")
    b = tasks.build("dynamics", seq_len=12).sample(4, generator=gen(7))
    x, y = b.inputs.double(), b.targets.double()
    mask = b.mask.clone()
    mask[:, :5] = False
    h, _ = m.features(x)
    loss, per = masked_mse_loss(m, h, y, mask)
    pred = m.regressor(h)[:, 5:]
    torch.testing.assert_close(loss, ((pred - y[:, 5:]) ** 2).mean(), rtol=0, atol=1e-14)
    assert per.shape == (3,)
    with pytest.raises(SeqmemError, match="heads must be a non-empty list"):
        SequenceModel(3, 8, heads=[])


# ---- generalised teacher forcing ------------------------------------------------------------
@pytest.mark.parametrize("mixer", ["gru", "plrnn"])
def test_gtf_alpha_one_is_teacher_forcing_and_zero_is_free_running(mixer):
    m = model64(mixer)
    b = tasks.build("dynamics", seq_len=16).sample(3, generator=gen(8))
    x, y = b.inputs.double(), b.targets.double()
    h, _ = m.features(x, m.init_state(3))
    tf_loss, _ = masked_mse_loss(m, h, y, b.mask)
    pred1 = loop.gtf_predictions(m, x, 1.0, m.init_state(3))
    gtf_loss = ((pred1 - y) ** 2).mean()
    assert abs(gtf_loss.item() - tf_loss.item()) < 1e-12
    pred0 = loop.gtf_predictions(m, x, 0.0, m.init_state(3))
    free = free_run(m, x[:, :1], 16)  # reads x_0, then runs on its own predictions
    torch.testing.assert_close(pred0, free, rtol=0, atol=1e-12)
    half = loop.gtf_predictions(m, x, 0.5, m.init_state(3))
    assert (half - pred1).abs().max() > 1e-6 and (half - pred0).abs().max() > 1e-6
    # gradients flow through the fed-back predictions
    loss = ((half - y) ** 2).mean()
    loss.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


# ---- training end to end -------------------------------------------------------------------
SMALL = ["task.kind=dynamics", "task.seq_len=20", "model.d_model=8", "train.batch_size=4",
         "train.steps_per_epoch=2", "train.eval_batches=1", "train.max_epochs=2",
         "eval.free_run_steps=200", "eval.free_run_trajectories=2", "task.burn_in=2.0"]


@pytest.mark.parametrize(("mixer", "extra"), [("gru", ["eval.lengths=10,30"]),
                                               ("plrnn", ["train.gtf_alpha=0.5"])])
def test_training_reports_mse_and_free_running_metrics(tmp_path, mixer, extra):
    cfg = load_config(None, [*SMALL, f"model.mixer.kind={mixer}", *extra])
    run = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    s = train_run(cfg, run)
    assert "acc" not in s and "acc_mean" not in s
    assert math.isfinite(s["mse"]) and math.isfinite(s["eval_mse"])
    assert s["d_stsp"] >= 0 and 0 <= s["d_h"] <= 1 and s["free_run_steps"] == 200
    events = [r.get("event") for r in run.metrics()]
    assert "free_run" in events
    if mixer == "gru":  # length generalisation of a regression task: the MSE per length
        assert set(s["mse_by_length"]) == {"10", "30"} and "acc_by_length" not in s


def test_config_rejects_gtf_and_target_acc_where_they_do_not_apply():
    with pytest.raises(ConfigError, match=r"train\.gtf_alpha"):
        load_config(None, ["train.gtf_alpha=0.5"])  # n_parity: a classification task
    with pytest.raises(ConfigError, match=r"train\.target_acc"):
        load_config(None, ["task.kind=dynamics", "train.target_acc=0.9"])
    with pytest.raises(ConfigError, match="gtf_alpha"):
        load_config(None, ["task.kind=dynamics", "train.gtf_alpha=1.5"])
