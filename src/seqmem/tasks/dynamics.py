"""Chaotic dynamical systems as a next-step forecasting (regression) task.

Trajectories of Lorenz-63 and Roessler, integrated here by the classic fourth-order
Runge-Kutta method (RK4) in torch, vectorised over the batch, in float64; the task behind the
dynamical-systems-reconstruction benchmarks of Koppe et al. 2019, Brenner et al. 2022 and
Hess, Monfared, Brenner & Durstewitz 2023 ("Generalized Teacher Forcing for Learning Chaotic
Dynamics", ICML). The model reads x_0..x_{t-1} and predicts x_{t+1} at every step t
(targets (b, t, 3) float, every position supervised, loss: masked MSE).

With the optional `dysts` package (Gilpin 2021, "Chaos as an interpretable benchmark for
forecasting and data-driven modelling"; pip install seqmem[dysts]) `system="dysts:<Name>"`
takes the vector field, parameters and attractor statistics of one of its autonomous flows
(`dysts.flows.<Name>`, e.g. dysts:Lorenz) and keeps seqmem's RK4 integrator, sampling and
metrics. Where dysts' definitions differ from the built-ins (`dysts_system`):
- parameters: dysts' metadata values, e.g. Lorenz beta = 2.667 (not 8/3); Rossler (dysts'
  spelling) a = b = 0.2, c = 5.7 as `roessler`;
- time step: dysts' `dt` (Lorenz 3.0e-4) is the step of its own adaptive-solver output, far
  finer than a forecasting sample; seqmem's default step for a dysts system is its `period`
  / 100 (the 100 points per period of dysts' `make_trajectory`; Lorenz 0.0150, Rossler
  0.0591), integrated by one RK4 step per sample like the built-ins (`dt` overrides it);
- standardisation: dysts' metadata mean and std of the attractor (Lorenz std 7.906, 8.999,
  8.579 against seqmem's 7.924, 9.012, 8.624);
- initial conditions: a box of half-width 0.1 std around dysts' stored initial condition
  `ic` (a point on the attractor), then the burn-in.
Delay and non-autonomous systems are refused (RK4 here integrates dx/dt = f(x)).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Callable
from functools import cache
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from seqmem.errors import SeqmemError, check_choice
from seqmem.tasks.base import Batch, Task, check_int, check_sample_args, register
from seqmem.tasks.render import check_index, facts, sparkline

VectorField = Callable[[Tensor], Tensor]  # x (b, d) -> dx/dt (b, d)


def lorenz63(x: Tensor, sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0
             ) -> Tensor:
    """Lorenz (1963): dx = sigma (y - x), dy = x (rho - z) - y, dz = x y - beta z."""
    a, b, c = x.unbind(-1)
    return torch.stack([sigma * (b - a), a * (rho - c) - b, a * b - beta * c], dim=-1)


def roessler(x: Tensor, a: float = 0.2, b: float = 0.2, c: float = 5.7) -> Tensor:
    """Roessler (1976): dx = -y - z, dy = x + a y, dz = b + z (x - c)."""
    u, v, w = x.unbind(-1)
    return torch.stack([-v - w, u + a * v, b + w * (u - c)], dim=-1)


def rk4_step(f: VectorField, x: Tensor, dt: float) -> Tensor:
    """One classic Runge-Kutta step of dx/dt = f(x): x (b, d) -> x after time dt."""
    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def rk4_trajectory(f: VectorField, x0: Tensor, dt: float, n_steps: int) -> Tensor:
    """States x_1..x_n of RK4 with step dt from x0 (b, d): (b, n_steps, d)."""
    out = x0.new_empty(x0.shape[0], n_steps, x0.shape[-1])  # (b, n, d)
    x = x0
    for k in range(n_steps):
        x = rk4_step(f, x, dt)
        out[:, k] = x
    return out


# Each system: its vector field, the default sampling step dt, a box of initial conditions
# (centre, half-width per dimension) from which the burn-in reaches the attractor, and the
# per-dimension mean and standard deviation used to standardise it. The constants are
# estimates over the attractor from 64 RK4 trajectories of 10^5 steps each (dt as below,
# after a burn-in of 100 time units), rounded; see `estimate_moments`.
SYSTEMS: dict[str, dict] = {
    "lorenz63": {
        "f": lorenz63, "dt": 0.01,
        "box": ((0.0, 0.0, 25.0), (15.0, 20.0, 15.0)),
        "mean": (0.0, 0.0, 23.548), "std": (7.924, 9.012, 8.624),  # x, y means 0 by symmetry
    },
    "roessler": {
        "f": roessler, "dt": 0.05,
        "box": ((0.0, 0.0, 0.5), (8.0, 8.0, 0.5)),
        "mean": (0.177, -0.886, 0.886), "std": (5.157, 4.845, 2.840),
    },
}


DYSTS_PREFIX = "dysts:"
DYSTS_POINTS_PER_PERIOD = 100  # dysts' make_trajectory default: the default sampling step


@cache
def dysts_system(name: str) -> dict:
    """The entry of `SYSTEMS` for the dysts flow `name` (`dysts.flows.<name>`, parameters
    and statistics from dysts' metadata): its vector field (dysts' right-hand side, evaluated
    in float64 on all examples at once), the default step period / 100, the box of initial
    conditions ic +- 0.1 std, and dysts' attractor mean and std."""
    if importlib.util.find_spec("dysts") is None:
        raise SeqmemError(f"dynamics: system '{DYSTS_PREFIX}{name}' needs the dysts package, "
                          f"which is not installed: pip install seqmem[dysts]")
    with warnings.catch_warnings():
        # dysts says once that it runs its right-hand sides without numba's JIT; they are
        # only evaluated here, so that is a matter of speed.
        warnings.filterwarnings("ignore", message="Numba not installed")
        from dysts import base, flows
    cls = getattr(flows, name, None)
    if not (isinstance(cls, type) and issubclass(cls, base.DynSys)) or name.startswith("_"):
        flow_names = sorted(n for n, c in vars(flows).items() if isinstance(c, type)
                            and issubclass(c, base.DynSys) and c.__module__ == flows.__name__)
        raise SeqmemError(f"dynamics: unknown dysts flow {name!r}; accepted: "
                          f"{', '.join(DYSTS_PREFIX + n for n in flow_names)}")
    if issubclass(cls, base.DynSysDelay):
        raise SeqmemError(f"dynamics: dysts flow {name!r} is a delay equation; only "
                          f"ordinary autonomous flows are accepted")
    flow = cls()
    if flow.nonautonomous:
        raise SeqmemError(f"dynamics: dysts flow {name!r} is non-autonomous (its field depends "
                          f"on time); only autonomous flows are accepted")
    mean = tuple(float(v) for v in np.asarray(flow.mean, dtype=np.float64))
    std = tuple(float(v) for v in np.asarray(flow.std, dtype=np.float64))
    ic = tuple(float(v) for v in np.asarray(flow.ic, dtype=np.float64).reshape(-1))

    def field(x: Tensor) -> Tensor:
        dx = flow.rhs(x.detach().cpu().numpy(), 0.0)  # d arrays of (b,)
        return torch.as_tensor(np.stack(dx, axis=-1), dtype=x.dtype, device=x.device)

    return {"f": field, "dt": float(flow.period) / DYSTS_POINTS_PER_PERIOD,
            "box": (ic, tuple(0.1 * v for v in std)), "mean": mean, "std": std,
            "params": dict(flow.params)}


def system_spec(system: str) -> dict:
    """The entry of a system: `SYSTEMS[system]`, or `dysts_system` for "dysts:<Name>"."""
    if system.startswith(DYSTS_PREFIX):
        return dysts_system(system[len(DYSTS_PREFIX):])
    return SYSTEMS[system]


def estimate_moments(system: str, *, n_traj: int = 64, n_steps: int = 100_000,
                     burn_in: float = 100.0, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation per dimension of the system's attractor (the source of the
    constants in `SYSTEMS`), from RK4 trajectories started in the system's box."""
    s = system_spec(system)
    g = torch.Generator().manual_seed(seed)
    x = _initial(s, n_traj, g)
    dt = s["dt"]
    for _ in range(math.ceil(burn_in / dt)):
        x = rk4_step(s["f"], x, dt)
    total = torch.zeros(x.shape[-1], dtype=torch.float64)
    total_sq = torch.zeros(x.shape[-1], dtype=torch.float64)
    for _ in range(n_steps):
        x = rk4_step(s["f"], x, dt)
        total += x.sum(0)
        total_sq += (x * x).sum(0)
    n = n_traj * n_steps
    mean = total / n
    return mean, (total_sq / n - mean**2).sqrt()


def _initial(s: dict, b: int, generator: torch.Generator) -> Tensor:
    centre, half = (torch.tensor(v, dtype=torch.float64) for v in s["box"])
    u = torch.rand(b, len(centre), generator=generator, dtype=torch.float64)
    return centre + half * (2 * u - 1)  # (b, d) uniform in the box


@register("dynamics")
class Dynamics(Task):
    """Chaotic dynamics (Lorenz-63, Roessler): forecast x_{t+1} from x_<=t (regression).

    Each example: an initial condition drawn uniformly from a box around the attractor (from
    the generator), integrated by RK4 with step `dt` in float64 for `burn_in` time units
    (ceil(burn_in / dt) steps, discarded) to reach the attractor, then seq_len + 1 samples
    x_0..x_{seq_len} one `dt` apart. Each dimension is standardised with the system's stated
    constants ((x - mean) / std, `SYSTEMS`; the stated values, not the batch's), then
    Gaussian observation noise of standard deviation `noise` (in standardised units) is added
    to every sample. inputs = x_0..x_{seq_len-1} (b, seq_len, 3) float32, targets =
    x_1..x_{seq_len} (b, seq_len, 3) float32 (the noisy observations: the data a
    reconstruction sees), mask all True. `loss = "mse"`, `d_output = 3`, `heads = []`.

    Systems: lorenz63 (sigma 10, rho 28, beta 8/3; default dt 0.01, as Hess et al. 2023) and
    roessler (a = b = 0.2, c = 5.7; default dt 0.05, seqmem's choice: ~120 samples per
    revolution). `trajectory(n, b, generator=)` gives long trajectories for the free-running
    metrics D_stsp and D_H (`seqmem.analysis.dynamics`). "dysts:<Name>": a flow of the
    dysts package (see the module docstring for how it differs), with its own dimension d
    (inputs and targets (b, seq_len, d)).
    meta: {"seq_len", "system", "dt", "x0": (b, d) the first sample, unstandardised}.

    Args:
        system: lorenz63, roessler, or "dysts:<Name>" (needs dysts).
        seq_len: samples per training sequence.
        dt: sampling step (None: the system's default).
        burn_in: time units integrated and discarded before the first sample.
        noise: observation noise sd, in standardised units.
    """

    train_defaults: ClassVar[dict] = {"batch_size": 32, "eval_batches": 4}
    paper_setting: ClassVar[str] = ("Hess et al. 2023: Lorenz-63 at dt 0.01, sequences of "
                                    "200 steps, evaluated by D_stsp and D_H of free runs")

    loss = "mse"

    def __init__(self, *, system: str = "lorenz63", seq_len: int = 200, dt: float | None = None,
                 burn_in: float = 10.0, noise: float = 0.0):
        if isinstance(system, str) and system.startswith(DYSTS_PREFIX):
            self.system = system
            spec = dysts_system(system[len(DYSTS_PREFIX):])  # checks the name
        else:
            self.system = check_choice("system", system, [*SYSTEMS, DYSTS_PREFIX + "<Name>"])
            spec = SYSTEMS[system]
        self.seq_len = check_int("seq_len", seq_len, low=1)
        if dt is not None and (isinstance(dt, bool) or not isinstance(dt, (int, float))
                               or not 0 < dt <= 0.5):
            raise SeqmemError(f"dt must be a number in (0, 0.5] (or null for the system's "
                              f"default), got {dt!r}")
        self.dt = float(dt) if dt is not None else None
        for what, v in (("burn_in", burn_in), ("noise", noise)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise SeqmemError(f"{what} must be a finite number >= 0, got {v!r}")
        self.burn_in, self.noise = float(burn_in), float(noise)
        self.d_input = len(spec["mean"])
        self.d_output = self.d_input
        self.heads = []

    @property
    def step_size(self) -> float:
        """The sampling (and integration) step: `dt`, or the system's default."""
        return self.dt if self.dt is not None else system_spec(self.system)["dt"]

    def standardise(self, x: Tensor) -> Tensor:
        """(x - mean) / std per dimension with the system's stated constants."""
        s = system_spec(self.system)
        mean = torch.tensor(s["mean"], dtype=x.dtype)
        std = torch.tensor(s["std"], dtype=x.dtype)
        return (x - mean) / std

    def raw_trajectory(self, n: int, batch_size: int, *, generator: torch.Generator) -> Tensor:
        """n samples on the attractor per example, unstandardised float64: (b, n, d)."""
        s = system_spec(self.system)
        dt = self.step_size
        x = _initial(s, batch_size, generator)
        for _ in range(math.ceil(self.burn_in / dt)):
            x = rk4_step(s["f"], x, dt)
        return torch.cat([x[:, None], rk4_trajectory(s["f"], x, dt, n - 1)], dim=1)

    def trajectory(self, n: int, batch_size: int, *, generator: torch.Generator) -> Tensor:
        """n standardised (and noisy, if `noise`) samples per example: (b, n, d) float32."""
        check_sample_args(self, batch_size, generator)
        check_int("trajectory length n", n, low=1)
        x = self.standardise(self.raw_trajectory(n, batch_size, generator=generator))
        if self.noise:
            x = x + self.noise * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return x.float()

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """seq_len + 1 samples per example: inputs the first seq_len, targets the last."""
        check_sample_args(self, batch_size, generator)
        raw = self.raw_trajectory(self.seq_len + 1, batch_size, generator=generator)
        x = self.standardise(raw)  # (b, t + 1, 3)
        if self.noise:
            x = x + self.noise * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x.float()
        mask = torch.ones(batch_size, self.seq_len, dtype=torch.bool)
        meta = {"seq_len": self.seq_len, "system": self.system, "dt": self.step_size,
                "x0": raw[:, 0].float()}
        return Batch(x[:, :-1], x[:, 1:], mask, meta)

    def render(self, batch: Batch, i: int) -> str:
        """Example i: one sparkline per dimension (inputs), the first and last steps with
        their next-step targets `[->x_{t+1}]`, and the facts."""

        check_index(batch, i)
        x, y = batch.inputs[i], batch.targets[i]  # (t, 3)
        t = x.shape[0]

        def vec(v: Tensor) -> str:
            return "(" + " ".join(f"{a:+.2f}" for a in v.tolist()) + ")"

        names = "xyz" if x.shape[1] == 3 else [f"x{k}" for k in range(x.shape[1])]
        lines = [f"{name}: {sparkline(x[:, k].tolist())}" for k, name in enumerate(names)]
        shown = list(range(min(t, 3)))
        if t > 6:
            shown += [-1, *range(t - 3, t)]
        elif t > 3:
            shown += list(range(3, t))
        steps = ["…" if s < 0 else f"t={s} {vec(x[s])}[->{vec(y[s])}]" for s in shown]
        lines.append("  ".join(steps))
        lines.append("every step supervised (next-step regression); " + facts(batch, i))
        return "\n".join(lines)
