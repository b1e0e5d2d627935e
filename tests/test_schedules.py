"""Learning-rate schedules against their papers' formulas at hand-computed steps, the
refinement of Defazio et al. 2024 on a hand-built gradient-norm sequence, annealed gradient
noise against its variance eta / (1 + t)^gamma, the annealing law of Tissue et al. 2024
recovering known parameters from a curve it generated, and a tiny run end to end (lr, loss
and gradient norm recorded per update, refined, analysed and drawn)."""

import json
import math

import numpy as np
import pytest
import torch

from seqmem import build
from seqmem.analysis.analyze import analyze_run
from seqmem.analysis.lr_law import annealing_areas, fit_lr_law, law_loss, predict_loss
from seqmem.analysis.registry import FIGURE_REGISTRY, Entry
from seqmem.cli.main import main
from seqmem.config import load_config
from seqmem.config.describe import describe
from seqmem.engine.jobs import train_run
from seqmem.errors import ConfigError, SeqmemError
from seqmem.report.render import Canvas
from seqmem.store import RunStore
from seqmem.train.schedules import (
    add_grad_noise,
    grad_noise_variance,
    lr_factor,
    recorded_steps,
    refine_run,
    refine_schedule,
)

SMALL = ["model.d_model=8", "train.batch_size=16", "train.steps_per_epoch=5",
         "train.eval_batches=1", "curriculum.kind=none", "task.N=2"]


def f(name, step, **kw):
    return lr_factor(name, step, warmup_steps=kw.pop("warmup", 0),
                     total_steps=kw.pop("total", 10), **kw)


# ---- the schedules at hand-computed steps -----------------------------------------------------
def test_linear_rex_and_cosine_with_a_floor():
    # p = s / 10
    assert [f("linear", s) for s in (0, 5, 10, 20)] == pytest.approx([1, 0.5, 0, 0])
    # REX: (1 - p) / (1/2 + (1 - p)/2): p = 0.5 -> 0.5 / 0.75; p = 0.9 -> 0.1 / 0.55
    assert f("rex", 0) == pytest.approx(1.0)
    assert f("rex", 5) == pytest.approx(2 / 3)
    assert f("rex", 9) == pytest.approx(0.1 / 0.55)
    assert f("rex", 10) == pytest.approx(0.0)
    assert f("rex", 5) > f("linear", 5)  # REX stays above linear, then drops faster
    # a floor m: m + (1 - m) g
    assert f("linear", 5, min_lr=0.2) == pytest.approx(0.2 + 0.8 * 0.5)
    assert f("cosine", 5, min_lr=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f("cosine", 10, min_lr=0.1) == pytest.approx(0.1)
    # warm-up: (step + 1) / warmup, then the schedule over the rest
    assert [f("linear", s, warmup=2, total=6) for s in range(7)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])


def test_step_and_inverse_sqrt():
    # 10x at 50 % and 75 % of the budget (S = 8)
    assert [f("step", s, total=8) for s in (0, 3, 4, 5, 6, 8)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    assert f("step", 3, total=8, milestones=(0.25,), gamma=0.5) == pytest.approx(0.5)
    # Vaswani et al.: 1 / sqrt(step + 1) without warm-up; sqrt(w / (step + 1)) after one
    assert [f("inverse_sqrt", s) for s in (0, 3, 99)] == pytest.approx([1, 0.5, 0.1])
    assert f("inverse_sqrt", 3, warmup=4) == pytest.approx(1.0)  # the warm-up's last step
    assert f("inverse_sqrt", 15, warmup=4) == pytest.approx(0.5)  # sqrt(4 / 16)


def test_wsd_decays_over_its_last_fraction_in_each_shape():
    kw = {"total": 100, "decay_fraction": 0.2}
    assert f("wsd", 0, **kw) == f("wsd", 79, **kw) == 1.0  # stable
    # the decay's progress q = (p - 0.8) / 0.2: step 85 -> q = 0.25, step 95 -> 0.75
    assert f("wsd", 85, **kw) == pytest.approx(0.75)
    assert f("wsd", 85, decay_shape_name="sqrt", **kw) == pytest.approx(0.5)
    assert f("wsd", 95, decay_shape_name="cosine", **kw) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.75)))
    assert f("wsd", 100, **kw) == pytest.approx(0.0)
    assert f("wsd", 90, min_lr=0.1, **kw) == pytest.approx(0.1 + 0.9 * 0.5)


def test_infinite_cools_down_holds_and_anneals_exponentially():
    kw = {"total": 100, "cooldown_fraction": 0.1, "decay_fraction": 0.2,
          "constant_fraction": 0.5, "min_lr": 0.05}
    assert f("infinite", 0, **kw) == pytest.approx(1.0)
    # cosine cool-down from 1 to c = 0.5 over the first 10 steps: step 5 -> c + (1-c)/2
    assert f("infinite", 5, **kw) == pytest.approx(0.75)
    assert f("infinite", 10, **kw) == f("infinite", 79, **kw) == pytest.approx(0.5)
    # annealing c (m / c)^q: step 90 -> q = 0.5 -> 0.5 * 0.1^0.5
    assert f("infinite", 90, **kw) == pytest.approx(0.5 * math.sqrt(0.1))
    assert f("infinite", 100, **kw) == pytest.approx(0.05)
    assert f("infinite", 100, total=100) == pytest.approx(0.01)  # the default floor


def test_refined_table_is_read_at_the_progress():
    table = [1.0, 0.5, 0.0]
    assert [f("refined", s, total=4, table=table) for s in range(5)] == pytest.approx(
        [1.0, 0.75, 0.5, 0.25, 0.0])


def test_config_carries_every_option_to_the_schedule():
    cfg = load_config(None, ["train.schedule=wsd", "train.max_epochs=10",
                             "train.steps_per_epoch=10", "train.decay_fraction=0.5",
                             "train.decay_shape=sqrt", "train.min_lr_fraction=0.2"])
    g = build.lr_schedule(cfg)
    assert g(49) == 1.0 and g(75) == pytest.approx(0.2 + 0.8 * (1 - math.sqrt(0.5)))
    with pytest.raises(ConfigError, match="min_lr_fraction > 0"):
        build.lr_schedule(load_config(None, ["train.schedule=infinite",
                                             "train.min_lr_fraction=0"]))
    with pytest.raises(ConfigError, match=r"cooldown_fraction \+ train\.decay_fraction"):
        build.lr_schedule(load_config(None, ["train.schedule=infinite",
                                             "train.cooldown_fraction=0.6",
                                             "train.decay_fraction=0.6"]))
    with pytest.raises(ConfigError, match=r"train\.schedule_from"):
        build.lr_schedule(load_config(None, ["train.schedule=refined"]))
    with pytest.raises(ConfigError, match=r"train\.schedule"):
        load_config(None, ["train.schedule=exponential"])


# ---- refinement -----------------------------------------------------------------------------
def test_refinement_formula_on_a_hand_built_sequence():
    # G = 1, 2, 1, 0.5 -> w = 1, 1/4, 1, 4; w_t * sum_{p>t} w_p = 5.25, 1.25, 4, 0
    got = refine_schedule([1.0, 2.0, 1.0, 0.5], smoothing=0.0)
    assert got == pytest.approx([1.0, 1.25 / 5.25, 4 / 5.25, 0.0])
    # a median filter of width 3 (smoothing 0.5 of 6 updates) removes a lone spike
    spiky = refine_schedule([1, 1, 9, 1, 1, 1], smoothing=0.5)
    assert spiky == pytest.approx(refine_schedule([1] * 6, smoothing=0.0))
    # constant norms: w_t * (T - 1 - t), the linear decay
    assert refine_schedule([3.0] * 5, smoothing=0) == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    with pytest.raises(SeqmemError, match="positive gradient norms"):
        refine_schedule([1.0, 0.0, 1.0])
    with pytest.raises(SeqmemError, match="at least 2 updates"):
        refine_schedule([1.0])


# ---- gradient noise -------------------------------------------------------------------------
@pytest.mark.parametrize("step", [0, 9, 999])
def test_gradient_noise_has_the_annealed_variance(step):
    eta, gamma = 0.3, 0.55
    p = torch.nn.Parameter(torch.zeros(200_000, dtype=torch.float64))
    p.grad = torch.full_like(p, 2.0)
    add_grad_noise([p], step, eta, gamma, torch.Generator().manual_seed(step))
    noise = (p.grad - 2.0).numpy()
    want = eta / (1 + step) ** gamma
    assert grad_noise_variance(step, eta, gamma) == pytest.approx(want)
    # sample variance of n normals: sd of the estimate is want * sqrt(2 / n) (~0.3 %)
    assert noise.var() == pytest.approx(want, rel=5 * math.sqrt(2 / noise.size))
    assert abs(noise.mean()) < 5 * math.sqrt(want / noise.size)


def test_gradient_noise_comes_from_the_given_generator():
    def noisy(seed):
        p = torch.nn.Parameter(torch.zeros(10))
        p.grad = torch.zeros(10)
        add_grad_noise([p], 3, 1.0, 0.55, torch.Generator().manual_seed(seed))
        return p.grad.clone()
    assert torch.equal(noisy(1), noisy(1)) and not torch.equal(noisy(1), noisy(2))


def test_gradient_noise_in_training_is_seeded(tmp_path):
    def losses(*extra):
        cfg = load_config(None, [*SMALL, "train.max_epochs=1", *extra])
        run = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
        train_run(cfg, run)
        return recorded_steps(run.metrics())["loss"]
    a, b, c = (losses("train.grad_noise=0.5"), losses("train.grad_noise=0.5"), losses())
    assert a == b and a != c  # the same seed, the same noise; and noise changes the updates
    assert a[0] == c[0]  # the first loss is computed before any update


# ---- the annealing law ---------------------------------------------------------------------
def test_annealing_areas_against_a_loop():
    lrs = [1.0, 1.0, 0.5, 0.25, 0.25]
    s1, s2 = annealing_areas(lrs, decay=0.5)
    assert s1.tolist() == pytest.approx([1, 2, 2.5, 2.75, 3.0])
    # m = 0, 0, 0.5, 0.5 * 0.5 + 0.25 = 0.5, 0.25; S2 their running sum
    assert s2.tolist() == pytest.approx([0, 0, 0.5, 1.0, 1.25])


def test_the_law_fit_recovers_its_parameters():
    n = 600
    lrs = [1e-3 * lr_factor("wsd", i, total_steps=n, warmup_steps=20, decay_fraction=0.3)
           for i in range(n)]
    true = {"L0": 0.8, "A": 0.05, "alpha": 0.6, "C": 3.0}
    s1, s2 = annealing_areas(lrs, 0.999)
    y = law_loss(s1, s2, **true)
    noisy = y + np.random.default_rng(0).normal(0, 1e-4, n)
    fit = fit_lr_law(noisy, lrs, decay=0.999)
    for k, v in true.items():
        assert fit[k] == pytest.approx(v, rel=0.05), k
    assert fit["r2"] > 0.999
    # the prediction under another schedule is the law evaluated on its areas
    cos = [1e-3 * lr_factor("cosine", i, total_steps=n) for i in range(n)]
    c1, c2 = annealing_areas(cos, 0.999)
    assert predict_loss(fit, cos)[-1] == pytest.approx(
        law_loss(c1, c2, **true)[-1], rel=1e-2)


# ---- end to end ------------------------------------------------------------------------------
def test_a_tiny_run_records_lr_loss_and_grad_norm_per_update(tmp_path):
    cfg = load_config(None, [*SMALL, "train.schedule=rex", "train.max_epochs=6",
                             "train.grad_noise=0.01"])
    run = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    train_run(cfg, run)
    steps = recorded_steps(run.metrics())
    base = build.optimizer_choice(cfg)[1]
    assert steps["lr"] == pytest.approx([base * lr_factor("rex", i, total_steps=30)
                                         for i in range(30)])
    assert len(steps["loss"]) == len(steps["grad_norm"]) == 30
    assert all(g > 0 for g in steps["grad_norm"])
    # each epoch's mean loss is the mean of its updates' losses
    for rec in run.metrics():
        assert rec["loss"] == pytest.approx(sum(rec["step_loss"]) / 5)

    # refined from the run: written into its folder, and a new run trains under it
    ref = refine_run(run)
    assert ref["factors"] == pytest.approx(refine_schedule(steps["grad_norm"]), abs=1e-7)
    assert json.loads((run.dir / "refined_schedule.json").read_text())["steps"] == 30
    # by id, in the store of the run being trained
    cfg2 = load_config(None, [*SMALL, "train.schedule=refined", "train.max_epochs=6",
                              f"train.schedule_from={run.id}"])
    run2 = RunStore(tmp_path).create_run(cfg2.model_dump(mode="json"))
    train_run(cfg2, run2)
    lrs2 = recorded_steps(run2.metrics())["lr"]
    # the same budget: the refined multipliers, read at s / 30 of a 30-entry table
    assert lrs2 == pytest.approx([base * lr_factor("refined", i, total_steps=30,
                                                   table=ref["factors"]) for i in range(30)])
    # or by its folder, from anywhere
    by_dir = build.lr_schedule(load_config(None, [*SMALL, "train.schedule=refined",
                                                  "train.max_epochs=6",
                                                  f"train.schedule_from={run.dir}"]))
    assert [base * by_dir(i) for i in range(30)] == pytest.approx(lrs2)

    # the law on a run without curriculum stages, and both figures of the report
    out = analyze_run(cfg, run, what=("lr_law",))
    law = out["lr_law"]
    assert law["steps"] == 30 and law["schedule"] == "rex"
    assert set(law["predicted"]) == {"cosine", "constant"}
    assert law["measured"] == pytest.approx(steps["loss"], abs=1e-6)  # 30 < 200: all kept
    entry = Entry("rex", run.id, run.read_summary(), out, str(run.dir))
    for name in ("lr_law", "lr_schedule"):
        _fig, header, rows = FIGURE_REGISTRY[name].draw([entry], Canvas())[:3]
        assert rows and len(rows[0]) == len(header)
    assert FIGURE_REGISTRY["lr_schedule"].draw([Entry("x", "x", {"epochs": 1})], Canvas()) \
        is None


def test_refine_schedule_command_and_config_help(tmp_path, capsys):
    cfg = load_config(None, [*SMALL, "train.max_epochs=2"])
    store = RunStore(tmp_path)
    run = store.create_run(cfg.model_dump(mode="json"))
    train_run(cfg, run)
    assert main(["refine-schedule", run.id, "--root", str(tmp_path), "--smoothing", "0"]) == 0
    saved = json.loads((run.dir / "refined_schedule.json").read_text())
    norms = recorded_steps(run.metrics())["grad_norm"]
    assert saved["factors"] == pytest.approx(refine_schedule(norms, smoothing=0), abs=1e-7)
    capsys.readouterr()
    assert main(["refine-schedule", "nope", "--root", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    rows = {r["key"]: r for r in describe("train")}  # what `seqmem config --show train` prints
    for key in ("schedule", "min_lr_fraction", "decay_fraction", "decay_shape",
                "cooldown_fraction", "constant_fraction", "step_milestones", "step_gamma",
                "schedule_from", "refine_smoothing", "grad_noise", "grad_noise_gamma"):
        assert len(rows[f"train.{key}"]["help"]) > 15, key
