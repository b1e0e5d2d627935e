"""Learning-rate schedules, their refinement from gradient norms, and annealed gradient noise.

The schedules are pure functions of the step: the multiplier of the base learning rate at
update `step` (0-based) of a budget of `total_steps` updates, after a linear warm-up of
`warmup_steps`. With s = step - warmup_steps the steps after the warm-up, S = total_steps -
warmup_steps and p = min(s / S, 1) the progress, m the final multiplier (`min_lr`):

- `constant`: 1;
- `cosine`: m + (1 - m) 0.5 (1 + cos(pi p));
- `linear`: m + (1 - m) (1 - p);
- `rex` (Chen, Wolfe & Kyrillidis 2022, "REX: Revisiting Budgeted Training with an Improved
  Schedule"): m + (1 - m) (1 - p) / (1/2 + (1 - p) / 2);
- `step`: gamma^k, k the number of `milestones` (fractions of S) that p has reached (the
  30-60-90 family; default decays by 10x at 50 % and 75 % of the budget);
- `inverse_sqrt` (Vaswani et al. 2017): sqrt(w / max(step + 1, w)) with w = max(warm-up, 1),
  i.e. 1 / sqrt(step + 1) without a warm-up; not budgeted (it never reaches 0);
- `wsd` (warm-up, stable, decay; Hu et al. 2024, Hägele et al. 2024): 1 until the last
  `decay_fraction` of S, then m + (1 - m) d(q) over that decay, q in [0, 1] its progress,
  d(q) = 1 - q (`linear`), 1 - sqrt(q) (`sqrt`) or 0.5 (1 + cos(pi q)) (`cosine`);
- `infinite` (Ibrahim et al. 2024; Singh et al. 2025, "Beyond Cosine Decay"): a cosine
  cool-down over the first `cooldown_fraction` of S from 1 to the constant level c
  (`constant_fraction`), c until the last `decay_fraction` of S, then an exponential
  annealing c (m / c)^q to m > 0;
- `refined` (Defazio, Cutkosky, Mehta & Mishchenko 2024, "When, Why and How Much? Adaptive
  Learning Rate Scheduling by Refinement"): a table of multipliers (`refine_schedule` of a
  previous run's gradient norms) read at the progress p, linearly interpolated.

`grad_noise_variance` / `add_grad_noise`: annealed Gaussian gradient noise (Neelakantan et
al. 2015, "Adding Gradient Noise Improves Learning for Very Deep Networks").
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import median_filter

from seqmem.errors import SeqmemError, check_choice
from seqmem.store.run import atomic_write, read_json

SCHEDULES = ("constant", "cosine", "linear", "rex", "step", "inverse_sqrt", "wsd", "infinite",
             "refined")
DECAY_SHAPES = ("linear", "sqrt", "cosine")
#: The final multiplier when none is given: 0, except the exponential annealing of
#: `infinite`, which cannot reach 0.
DEFAULT_MIN_LR = {"infinite": 0.01}
REFINED_FILE = "refined_schedule.json"  # a run's refined schedule (`seqmem refine-schedule`)


def check_schedule(schedule: str, *, min_lr: float | None = None, decay_fraction: float = 0.2,
                   cooldown_fraction: float = 0.1, constant_fraction: float = 0.5,
                   milestones: Sequence[float] = (0.5, 0.75), table: Sequence[float] | None = None,
                   **_) -> None:
    """Raise a one-line SeqmemError for options `schedule` cannot run with."""
    check_choice("schedule", schedule, SCHEDULES)
    m = final_multiplier(schedule, min_lr)
    if schedule == "infinite":
        if m <= 0:
            raise SeqmemError("the infinite schedule anneals exponentially, so it needs "
                              "train.min_lr_fraction > 0 (e.g. 0.01)")
        if cooldown_fraction + decay_fraction > 1:
            raise SeqmemError(f"train.cooldown_fraction + train.decay_fraction must be at most "
                              f"1 (the constant phase lies between), got {cooldown_fraction} + "
                              f"{decay_fraction}")
        if not m <= constant_fraction <= 1:
            raise SeqmemError(f"train.constant_fraction must lie between train.min_lr_fraction "
                              f"({m}) and 1, got {constant_fraction}")
    if schedule == "step" and any(not 0 < x < 1 for x in milestones):
        raise SeqmemError(f"train.step_milestones must be fractions of the budget in (0, 1), "
                          f"got {list(milestones)}")
    if schedule == "refined" and (table is None or len(table) == 0):
        raise SeqmemError("the refined schedule needs train.schedule_from: a finished run "
                          "whose gradient norms it refines")


def final_multiplier(schedule: str, min_lr: float | None) -> float:
    """The final multiplier m: `min_lr`, or the schedule's default (`DEFAULT_MIN_LR`, else 0)."""
    return DEFAULT_MIN_LR.get(schedule, 0.0) if min_lr is None else float(min_lr)


def decay_shape(shape: str, q: float) -> float:
    """The decay of `wsd` at its progress q in [0, 1]: 1 at q = 0, 0 at q = 1."""
    if shape == "linear":
        return 1.0 - q
    if shape == "sqrt":
        return 1.0 - math.sqrt(q)
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * q))
    check_choice("decay shape", shape, DECAY_SHAPES)
    raise AssertionError(shape)


def lr_factor(schedule: str, step: int, *, warmup_steps: int = 0, total_steps: int = 1,
              min_lr: float | None = None, decay_fraction: float = 0.2,
              decay_shape_name: str = "linear", cooldown_fraction: float = 0.1,
              constant_fraction: float = 0.5, milestones: Sequence[float] = (0.5, 0.75),
              gamma: float = 0.1, table: Sequence[float] | None = None) -> float:
    """The multiplier of the base learning rate at update `step` (0-based): a linear warm-up
    over `warmup_steps` ((step + 1) / warmup_steps), then `schedule` (see the module
    docstring for each formula) over the rest of `total_steps`, staying at its last value
    after them."""
    check_choice("schedule", schedule, SCHEDULES)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "inverse_sqrt":
        w = max(warmup_steps, 1)
        return math.sqrt(w / max(step + 1, w))
    span = max(total_steps - warmup_steps, 1)
    s = step - warmup_steps
    p = min(s / span, 1.0)
    m = final_multiplier(schedule, min_lr)
    if schedule == "cosine":
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "linear":
        return m + (1.0 - m) * (1.0 - p)
    if schedule == "rex":
        return m + (1.0 - m) * (1.0 - p) / (0.5 + 0.5 * (1.0 - p))
    if schedule == "step":
        return gamma ** sum(1 for x in milestones if p >= x)
    if schedule == "wsd":
        start = 1.0 - decay_fraction
        if p < start or decay_fraction <= 0:
            return 1.0
        return m + (1.0 - m) * decay_shape(decay_shape_name, (p - start) / decay_fraction)
    if schedule == "infinite":
        c = constant_fraction
        if p < cooldown_fraction:
            return c + (1.0 - c) * 0.5 * (1.0 + math.cos(math.pi * p / cooldown_fraction))
        start = 1.0 - decay_fraction
        if p < start or decay_fraction <= 0:
            return c
        return c * (m / c) ** ((p - start) / decay_fraction)
    # refined: the table read at the progress
    if table is None or len(table) == 0:
        raise SeqmemError("the refined schedule needs a table of multipliers "
                          "(train.schedule_from: a finished run)")
    x = p * (len(table) - 1)
    i = min(int(x), len(table) - 2) if len(table) > 1 else 0
    if len(table) == 1:
        return float(table[0])
    return float(table[i] + (x - i) * (table[i + 1] - table[i]))


# ---- refinement ------------------------------------------------------------------------------
def refine_schedule(grad_norms: Sequence[float], *, smoothing: float = 0.05) -> list[float]:
    """The schedule refined from a run's per-update gradient norms (Defazio et al. 2024,
    Algorithm 1, the form for SGD):

        G^ = median_filter(G, width = smoothing * T)      (smoothing; width 1: none)
        w_t = G^_t^-2                                     (weights, normalised below)
        eta_t = w_t * sum_{p > t} w_p,    t = 1..T
        return eta / max(eta)

    so the multiplier is largest where gradients are small and reaches 0 at the last step.
    The result has one multiplier per update of the run."""
    g = np.asarray(list(grad_norms), dtype=np.float64)
    if g.ndim != 1 or len(g) < 2:
        raise SeqmemError(f"refining a schedule needs the gradient norms of at least 2 updates, "
                          f"got {len(g)}")
    if not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise SeqmemError("refining a schedule needs finite, positive gradient norms; the run "
                          "recorded others (a failed or diverged run?)")
    if not 0 <= smoothing < 1:
        raise SeqmemError(f"refinement smoothing must be a fraction of the run in [0, 1), got "
                          f"{smoothing}")
    width = max(1, round(smoothing * len(g)))
    if width > 1:
        g = median_filter(g, size=width, mode="nearest")
    w = g ** -2.0
    w = w / w.sum()
    after = np.concatenate([np.cumsum(w[::-1])[::-1][1:], [0.0]])  # sum_{p > t} w_p
    eta = w * after
    return (eta / eta.max()).tolist()


# ---- gradient noise --------------------------------------------------------------------------
def grad_noise_variance(step: int, eta: float, gamma: float = 0.55) -> float:
    """sigma_t^2 = eta / (1 + t)^gamma at update t (0-based): the variance of the Gaussian
    noise added to every gradient entry (Neelakantan et al. 2015; they use gamma = 0.55 and
    eta in {0.01, 0.3, 1.0})."""
    return eta / (1.0 + step) ** gamma


@torch.no_grad()
def add_grad_noise(params, step: int, eta: float, gamma: float,
                   generator: torch.Generator) -> None:
    """Add N(0, grad_noise_variance(step, eta, gamma)) to the gradient of every parameter
    that has one, drawn from `generator` (a CPU generator: the run's seeded one)."""
    sd = math.sqrt(grad_noise_variance(step, eta, gamma))
    for p in params:
        if p.grad is not None:
            noise = torch.randn(p.grad.shape, generator=generator, dtype=p.grad.dtype)
            p.grad.add_(noise.to(p.grad.device), alpha=sd)


# ---- what a run recorded ---------------------------------------------------------------------
STEP_KEYS = {"lr": "step_lr", "loss": "step_loss", "grad_norm": "step_grad_norm"}


def recorded_steps(records: Sequence[dict]) -> dict[str, list[float]]:
    """The per-update values a training run recorded, in order: {"lr", "loss", "grad_norm"}
    (each epoch's metrics record holds its updates' values under `STEP_KEYS`); a key that no
    epoch recorded is left out."""
    out: dict[str, list[float]] = {}
    for rec in records:
        if "epoch" not in rec:
            continue
        for name, key in STEP_KEYS.items():
            if key in rec:
                out.setdefault(name, []).extend(float(v) for v in rec[key])
    return out


def refine_run(run, *, smoothing: float = 0.05, write: bool = True) -> dict:
    """The refined schedule of a stored run (`refine_schedule` of its recorded gradient
    norms): {"source": run id, "smoothing", "steps", "factors"}; with `write`, also written
    to <run>/refined_schedule.json."""
    norms = recorded_steps(run.metrics()).get("grad_norm")
    if not norms:
        raise SeqmemError(f"run {run.id} recorded no gradient norms per update (a run of an "
                          f"older version?); train it again to refine its schedule")
    out = {"source": run.id, "smoothing": smoothing, "steps": len(norms),
           "factors": [round(f, 8) for f in refine_schedule(norms, smoothing=smoothing)]}
    if write:
        atomic_write(run.dir / REFINED_FILE, json.dumps(out))
    return out


def refined_table(run, *, smoothing: float = 0.05) -> list[float]:
    """The refined multipliers of a run: its refined_schedule.json if it has one made with
    this smoothing, else refined now from its gradient norms (and not written)."""
    saved = read_json(run.dir / REFINED_FILE)
    if saved and saved.get("smoothing") == smoothing and saved.get("factors"):
        return [float(f) for f in saved["factors"]]
    return refine_run(run, smoothing=smoothing, write=False)["factors"]
