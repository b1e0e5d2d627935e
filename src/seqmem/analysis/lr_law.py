"""The loss of a run against its learning-rate schedule: the annealing law of Tissue et al.
2024, "Scaling Law with Learning Rate Annealing" (`seqmem analyze RUN_ID --what lr_law`).

With eta_i the learning rate of update i = 1..s,

    L(s) = L0 + A * S1(s)^-alpha - C * S2(s)
    S1(s) = sum_{i<=s} eta_i                                   the forward area
    S2(s) = sum_{i<=s} m_i,  m_i = lambda * m_{i-1} + (eta_{i-1} - eta_i),  m_1 = 0
                                                               the annealing area, with momentum

(lambda the decay factor, 0.999 in the paper; eta_0 = eta_1). `fit_lr_law` fits L0, A, alpha
and C to a loss curve by least squares (scipy.optimize.least_squares; L0 >= 0, as a loss
is, A > 0, alpha > 0; a few starting points; the first `skip` fraction of updates left out:
at tiny S1 the power law is not yet in force); `predict_loss` gives the loss under another
schedule. The analysis reads the run's recorded learning rate and training loss of every
update (the epoch records' `step_lr` and `step_loss`), fits the law, and predicts the loss
of the same updates under the cosine and the constant schedule (same base rate and
warm-up). The report draws the measured, fitted and predicted curves (`lr_law`), and every
run's learning rate by update (`lr_schedule`, from its records).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from seqmem.analysis.context import Context
from seqmem.analysis.registry import Entry, analysis, figure, run_styles
from seqmem.build import optimizer_choice, schedule_choice
from seqmem.config import RunConfig
from seqmem.errors import SeqmemError
from seqmem.store import Run
from seqmem.train.schedules import lr_factor, recorded_steps

OPTIONS = {"lr_law_decay": 0.999, "lr_law_skip": 0.05}
PREDICT_SCHEDULES = ("cosine", "constant")
MIN_STEPS = 20  # fewer recorded updates: nothing to fit
CURVE_POINTS = 200  # points of each curve kept in analysis.json


def annealing_areas(lrs: Sequence[float], decay: float = 0.999) -> tuple[np.ndarray, np.ndarray]:
    """(S1, S2) after each update: the forward area sum eta_i and the annealing area
    sum m_i with m_i = decay * m_{i-1} + (eta_{i-1} - eta_i) (Tissue et al. 2024)."""
    eta = np.asarray(list(lrs), dtype=np.float64)
    if eta.ndim != 1 or len(eta) == 0:
        raise SeqmemError("the annealing areas need the learning rate of at least one update")
    s1 = np.cumsum(eta)
    drop = np.concatenate([[0.0], eta[:-1] - eta[1:]])  # eta_{i-1} - eta_i, 0 at the first
    m = np.empty_like(eta)
    acc = 0.0
    for i, d in enumerate(drop):
        acc = decay * acc + d
        m[i] = acc
    return s1, np.cumsum(m)


def law_loss(s1: np.ndarray, s2: np.ndarray, L0: float, A: float, alpha: float,
             C: float) -> np.ndarray:
    """L = L0 + A S1^-alpha - C S2."""
    return L0 + A * np.power(s1, -alpha) - C * s2


def fit_lr_law(losses: Sequence[float], lrs: Sequence[float], *, decay: float = 0.999,
               skip: float = 0.0) -> dict:
    """L0, A, alpha, C of the law fitted to `losses` (one per update, with learning rates
    `lrs`) by least squares, leaving out the first `skip` fraction of updates; with the fit's
    root-mean-square error and R^2 on the updates fitted."""
    y = np.asarray(list(losses), dtype=np.float64)
    if len(y) != len(lrs):
        raise SeqmemError(f"the law needs one loss per learning rate, got {len(y)} losses and "
                          f"{len(lrs)} rates")
    if not 0 <= skip < 1:
        raise SeqmemError(f"lr_law_skip must be a fraction in [0, 1), got {skip}")
    s1, s2 = annealing_areas(lrs, decay)
    keep = np.arange(len(y)) >= int(skip * len(y))
    keep &= np.isfinite(y) & (s1 > 0)
    if keep.sum() < 5:
        raise SeqmemError(f"the law has 4 parameters; {int(keep.sum())} usable updates are too "
                          f"few to fit")
    y, s1, s2 = y[keep], s1[keep], s2[keep]
    scale = max(float(np.std(y)), 1e-12)

    def resid(x):
        L0, log_A, alpha, C = x
        return (law_loss(s1, s2, L0, math.exp(log_A), alpha, C) - y) / scale

    best = None
    spread = max(float(y[0] - y.min()), 1e-6)
    for alpha0 in (0.2, 0.5, 1.0, 2.0):
        a0 = math.log(spread * float(s1[0]) ** alpha0)
        x0 = [0.5 * max(float(y.min()), 0.0), a0, alpha0, 0.0]
        try:
            r = least_squares(resid, x0, bounds=([0.0, -50, 1e-4, -np.inf],
                                                 [np.inf, 50, 10, np.inf]),
                              x_scale="jac", max_nfev=2000)
        except ValueError:  # a start outside the bounds (log A beyond +-50)
            continue
        if best is None or r.cost < best.cost:
            best = r
    if best is None:
        raise SeqmemError("the annealing law could not be fitted to this loss curve")
    L0, log_A, alpha, C = (float(v) for v in best.x)
    pred = law_loss(s1, s2, L0, math.exp(log_A), alpha, C)
    ss_res = float(np.sum((pred - y) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {"L0": L0, "A": math.exp(log_A), "alpha": alpha, "C": C,
            "rmse": math.sqrt(ss_res / len(y)),
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else None,
            "decay": decay, "skip": skip, "n_fitted": len(y)}


def predict_loss(params: dict, lrs: Sequence[float], *, decay: float | None = None
                 ) -> np.ndarray:
    """The loss after each update under the learning rates `lrs`, by the fitted law."""
    s1, s2 = annealing_areas(lrs, params.get("decay", 0.999) if decay is None else decay)
    return law_loss(s1, s2, params["L0"], params["A"], params["alpha"], params["C"])


def _thin(values: Sequence[float], idx: np.ndarray) -> list[float]:
    return [round(float(values[i]), 6) for i in idx]


def lr_law_of(cfg, steps: dict, *, decay: float, skip: float) -> dict:
    """The lr_law entry of a run of config `cfg` whose recorded updates are `steps`
    (`recorded_steps`): the fit, its curves thinned to `CURVE_POINTS` points, and the
    predictions under `PREDICT_SCHEDULES`."""
    lrs, losses = steps.get("lr") or [], steps.get("loss") or []
    n = min(len(lrs), len(losses))
    if n < MIN_STEPS:
        return {"skipped": f"{n} recorded updates (learning rate and loss per update); the "
                           f"law needs at least {MIN_STEPS}"}
    lrs, losses = lrs[:n], losses[:n]
    params = fit_lr_law(losses, lrs, decay=decay, skip=skip)
    idx = np.unique(np.linspace(0, n - 1, min(n, CURVE_POINTS)).round().astype(int))
    base_lr = optimizer_choice(cfg)[1]
    warmup = cfg.train.warmup_steps
    out = {"schedule": schedule_choice(cfg), "params": params, "steps": n,
           "step": [int(i) + 1 for i in idx], "measured": _thin(losses, idx),
           "fitted": _thin(predict_loss(params, lrs), idx),
           "final_measured": float(np.mean(losses[-max(1, n // 50):])),
           "final_fitted": float(predict_loss(params, lrs)[-1]), "predicted": {}}
    for name in PREDICT_SCHEDULES:
        alt = [base_lr * lr_factor(name, i, warmup_steps=warmup, total_steps=n)
               for i in range(n)]
        curve = predict_loss(params, alt)
        out["predicted"][name] = {"final": float(curve[-1]), "curve": _thin(curve, idx)}
    return out


def _headline(w: dict) -> dict:
    law = w.get("lr_law") or {}
    p = law.get("params") or {}
    out = {}
    if "alpha" in p:
        out["lr_law_alpha"] = p["alpha"]
        out["lr_law_rmse"] = p["rmse"]
    return out


@analysis("lr_law", needs="run", writes=("lr_law",), options=OPTIONS,
          headline={"lr_law_alpha": "lr law alpha", "lr_law_rmse": "lr law fit rmse"},
          headline_of=_headline, default=False)
def lr_law(ctx: Context) -> dict:
    """Fit the annealing law to the run's loss per update and predict the loss under the
    cosine and constant schedules (see the module docstring)."""
    steps = recorded_steps(ctx.run.metrics())
    return {"lr_law": lr_law_of(ctx.cfg, steps, decay=float(ctx.options["lr_law_decay"]),
                                skip=float(ctx.options["lr_law_skip"]))}


@figure("lr_law", analysis="lr_law")
def lr_law_figure(entries: list[Entry], canvas):
    """The training loss per update, measured (thin) and fitted by L = L0 + A S1^-alpha - C S2
    (Tissue et al. 2024), with the loss the fit predicts for the same updates under a cosine
    and a constant schedule."""
    entries = [e for e in entries if (e.analysis.get("lr_law") or {}).get("params")]
    if not entries:
        return None
    fig, ax = canvas.subplots(figsize=(6.4, 3.6))
    rows = []
    for e, (label, color) in zip(entries, run_styles(entries, canvas), strict=True):
        law = e.analysis["lr_law"]
        p = law["params"]
        ax.plot(law["step"], law["measured"], "-", color=color, lw=0.6, alpha=0.5,
                label=f"{label}: measured ({law['schedule']})")
        ax.plot(law["step"], law["fitted"], "-", color=color, lw=1.6, label=f"{label}: fitted")
        for name, ls in zip(PREDICT_SCHEDULES, ("--", ":"), strict=True):
            ax.plot(law["step"], law["predicted"][name]["curve"], ls, color=color, lw=1.2,
                    label=f"{label}: predicted, {name}")
        rows.append([label, law["schedule"], f"{p['L0']:.4g}", f"{p['A']:.4g}",
                     f"{p['alpha']:.4g}", f"{p['C']:.4g}", f"{p['rmse']:.4g}",
                     f"{law['final_measured']:.4g}", f"{law['final_fitted']:.4g}",
                     *(f"{law['predicted'][n]['final']:.4g}" for n in PREDICT_SCHEDULES)])
    ax.set(xlabel="update", ylabel="training loss", title="Loss against the schedule: "
           "L0 + A S1^-alpha - C S2")
    ax.title.set_fontsize(9)
    canvas.legend(ax, fontsize=7)
    return fig, ["run", "schedule", "L0", "A", "alpha", "C", "rmse", "final measured",
                 "final fitted", *(f"final {n} (predicted)" for n in PREDICT_SCHEDULES)], rows


def _schedule_name(config: dict) -> str:
    """The run's schedule as it ran: "auto" named with what the task's recipe made of it."""
    name = (config.get("train") or {}).get("schedule", "")
    if name != "auto":
        return name
    try:
        return f"auto ({schedule_choice(RunConfig.model_validate(config))})"
    except Exception:  # a config this version cannot read: the stored name
        return name


@figure("lr_schedule", summary="epochs")
def lr_schedule_figure(entries: list[Entry], canvas):
    """The learning rate of every update as the run recorded it (its schedule over the
    budget, warm-up included)."""
    curves = []
    for e in entries:
        if e.run_dir is None or not Path(e.run_dir).is_dir():
            continue
        run = Run(e.run_id, e.run_dir)
        lrs = recorded_steps(run.metrics()).get("lr")
        if lrs:
            curves.append((e, lrs, _schedule_name(run.config())))
    if not curves:
        return None
    fig, ax = canvas.subplots(figsize=(6.4, 3.2))
    rows = []
    styles = run_styles([c[0] for c in curves], canvas)
    for i, ((_e, lrs, schedule), (label, color)) in enumerate(zip(curves, styles,
                                                                   strict=True)):
        # a line style per run too: runs on the same schedule draw the same curve
        ax.plot(range(1, len(lrs) + 1), lrs, ("-", "--", ":", "-.")[i % 4], color=color,
                lw=1.4, label=f"{label}: {schedule}")
        rows.append([label, schedule, str(len(lrs)), f"{max(lrs):.4g}", f"{lrs[-1]:.4g}",
                     f"{sum(lrs):.4g}"])
    ax.set(xlabel="update", ylabel="learning rate", title="Learning rate by update")
    ax.set_ylim(0, 1.08 * max(max(c[1]) for c in curves))  # from 0: a constant rate is flat
    ax.title.set_fontsize(9)
    canvas.legend(ax, fontsize=7)
    return fig, ["run", "schedule", "updates", "max lr", "final lr", "sum of lr (S1)"], rows
