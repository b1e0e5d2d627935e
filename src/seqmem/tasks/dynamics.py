"""Chaotic dynamical systems as a next-step forecasting (regression) task.

Trajectories of Lorenz-63 and Roessler, integrated here by the classic fourth-order
Runge-Kutta method (RK4) in torch, vectorised over the batch, in float64; the task behind the
dynamical-systems-reconstruction benchmarks of Koppe et al. 2019, Brenner et al. 2022 and
Hess, Monfared, Brenner & Durstewitz 2023 ("Generalized Teacher Forcing for Learning Chaotic
Dynamics", ICML). The model reads x_0..x_{t-1} and predicts x_{t+1} at every step t
(targets (b, t, 3) float, every position supervised, loss: masked MSE).
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


def estimate_moments(system: str, *, n_traj: int = 64, n_steps: int = 100_000,
                     burn_in: float = 100.0, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation per dimension of the system's attractor (the source of the
    constants in `SYSTEMS`), from RK4 trajectories started in the system's box."""
    s = SYSTEMS[system]
    g = torch.Generator().manual_seed(seed)
    x = _initial(s, n_traj, g)
    dt = s["dt"]
    for _ in range(math.ceil(burn_in / dt)):
        x = rk4_step(s["f"], x, dt)
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for _ in range(n_steps):
        x = rk4_step(s["f"], x, dt)
        total += x.sum(0)
        total_sq += (x * x).sum(0)
    n = n_traj * n_steps
    mean = total / n
    return mean, (total_sq / n - mean**2).sqrt()


def _initial(s: dict, b: int, generator: torch.Generator) -> Tensor:
    centre, half = (torch.tensor(v, dtype=torch.float64) for v in s["box"])
    u = torch.rand(b, 3, generator=generator, dtype=torch.float64)
    return centre + half * (2 * u - 1)  # (b, 3) uniform in the box


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
    metrics D_stsp and D_H (`seqmem.analysis.dynamics`).
    meta: {"seq_len", "system", "dt", "x0": (b, 3) the first sample, unstandardised}.
    """

    loss = "mse"

    def __init__(self, *, system: str = "lorenz63", seq_len: int = 200, dt: float | None = None,
                 burn_in: float = 10.0, noise: float = 0.0):
        self.system = check_choice("system", system, SYSTEMS)
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
        self.d_input = 3
        self.d_output = 3
        self.heads = []

    @property
    def step_size(self) -> float:
        """The sampling (and integration) step: `dt`, or the system's default."""
        return self.dt if self.dt is not None else SYSTEMS[self.system]["dt"]

    def standardise(self, x: Tensor) -> Tensor:
        """(x - mean) / std per dimension with the system's stated constants."""
        s = SYSTEMS[self.system]
        mean = torch.tensor(s["mean"], dtype=x.dtype)
        std = torch.tensor(s["std"], dtype=x.dtype)
        return (x - mean) / std

    def raw_trajectory(self, n: int, batch_size: int, *, generator: torch.Generator) -> Tensor:
        """n samples on the attractor per example, unstandardised float64: (b, n, 3)."""
        s = SYSTEMS[self.system]
        dt = self.step_size
        x = _initial(s, batch_size, generator)
        for _ in range(math.ceil(self.burn_in / dt)):
            x = rk4_step(s["f"], x, dt)
        return torch.cat([x[:, None], rk4_trajectory(s["f"], x, dt, n - 1)], dim=1)

    def trajectory(self, n: int, batch_size: int, *, generator: torch.Generator) -> Tensor:
        """n standardised (and noisy, if `noise`) samples per example: (b, n, 3) float32."""
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

        lines = [f"{name}: {sparkline(x[:, k].tolist())}" for k, name in enumerate("xyz")]
        shown = list(range(min(t, 3)))
        if t > 6:
            shown += [-1, *range(t - 3, t)]
        elif t > 3:
            shown += list(range(3, t))
        steps = ["…" if s < 0 else f"t={s} {vec(x[s])}[->{vec(y[s])}]" for s in shown]
        lines.append("  ".join(steps))
        lines.append("every step supervised (next-step regression); " + facts(batch, i))
        return "\n".join(lines)
