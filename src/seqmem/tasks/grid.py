"""Tasks on two-dimensional grids: Pathfinder-style connectivity and Lorenz-96 forecasting.

A grid task keeps the 1-D `Batch` convention: inputs (b, t, d_input) with t = H * W cells in
raster (row-major) order, targets and mask per cell, and it sets the instance attribute
`grid = (H, W)` (rows first). Every 1-D mixer thus trains on the flattened grid unchanged,
and a model of 2-D mixers reshapes the cells back to (b, H, W, d) (`SequenceModel(grid=)`).

- pathfinder: Linsley et al. 2018 ("Learning long-range spatial dependencies with
  horizontal gated recurrent units", NeurIPS), as the Pathfinder task of the Long Range Arena
  (Tay et al. 2021): are two marked dots joined by a drawn contour, among distractor
  contours? Generated here on small grids of cells (seqmem's generator, not the papers'
  images of dashed curves).
- lorenz96: Lorenz (1996, "Predictability: a problem partly solved"), the multivariate
  forecasting benchmark of time x variates models such as Chimera (Behrouz et al. 2024):
  grid = (time, variables), next-step regression per cell.
"""

from __future__ import annotations

import math
from functools import cache
from typing import ClassVar

import torch
from torch import Tensor

from seqmem.errors import SeqmemError
from seqmem.tasks.base import Batch, Task, check_int, check_sample_args, register
from seqmem.tasks.dynamics import rk4_step, rk4_trajectory
from seqmem.tasks.render import check_index, facts

# Headings of a walk: up, right, down, left (row, column steps); a turn adds +-1 mod 4.
HEADINGS = torch.tensor([[-1, 0], [0, 1], [1, 0], [0, -1]])
TURN_PROBS = (0.5, 0.25, 0.25)  # straight on, turn right, turn left
MAX_ROUNDS = 16  # rounds of 2 * batch_size candidate drawings before a class is too rare


def fold(p: Tensor, n: int) -> Tensor:
    """Reflect unbounded lattice coordinates p into 0..n-1 (period 2n: 0..n-1 then back
    n-1..0), so that a walk meeting the border stays one step on its edge cell and turns back;
    consecutive folded positions stay equal or 4-adjacent."""
    m = p % (2 * n)
    return torch.where(m < n, m, 2 * n - 1 - m)


def random_walks(n: int, length: int, height: int, width: int, *,
                 generator: torch.Generator, start: Tensor | None = None) -> Tensor:
    """n walks of `length` steps on a height x width grid: cells (n, length + 1, 2) as
    (row, column). Each starts in a uniform cell with a uniform heading and at every step goes
    straight on with probability 1/2 or turns left or right (1/4 each), never back, reflected
    at the borders (`fold`): smooth snake-like contours, drawn without a loop over steps.
    `start` (n, 2) gives the first cells instead (the uniform ones are drawn all the same)."""
    uniform = torch.stack([torch.randint(0, height, (n,), generator=generator),
                         torch.randint(0, width, (n,), generator=generator)], dim=-1)  # (n, 2)
    start = uniform if start is None else start
    heading0 = torch.randint(0, 4, (n, 1), generator=generator)  # (n, 1)
    turn = torch.multinomial(torch.tensor(TURN_PROBS).expand(n, 3), length, replacement=True,
                             generator=generator)  # (n, length) in {0, 1, 2}
    turn = torch.where(turn == 2, -1, turn)  # 0 straight, +1 right, -1 left
    heading = (heading0 + turn.cumsum(1)) % 4  # (n, length)
    steps = HEADINGS[heading]  # (n, length, 2)
    path = torch.cat([start[:, None], start[:, None] + steps.cumsum(1)], dim=1)  # (n, L+1, 2)
    return torch.stack([fold(path[..., 0], height), fold(path[..., 1], width)], dim=-1)


def connected(lit: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Whether cell b is reachable from cell a through lit cells by 4-neighbour steps:
    lit (n, H, W) bool, a and b (n, 2) cells; (n,) bool. Grows the region of a by one
    neighbourhood at a time, inside the lit cells, until it stops changing."""
    n, height, width = lit.shape
    rows = torch.arange(n)
    reach = torch.zeros_like(lit)
    reach[rows, a[:, 0], a[:, 1]] = True
    reach &= lit
    for _ in range(height * width):
        grown = reach.clone()
        grown[:, 1:] |= reach[:, :-1]
        grown[:, :-1] |= reach[:, 1:]
        grown[:, :, 1:] |= reach[:, :, :-1]
        grown[:, :, :-1] |= reach[:, :, 1:]
        grown &= lit
        if torch.equal(grown, reach):
            break
        reach = grown
    return reach[rows, b[:, 0], b[:, 1]]


@register("pathfinder")
class Pathfinder(Task):
    """Pathfinder: whether the two marked cells of a grid are joined by a drawn path.

    After Linsley et al. 2018 and the Pathfinder task of the Long Range Arena (Tay et al.
    2021), on small generated grids of cells instead of 32 x 32 images of dashed curves
    (seqmem's generator). Each example draws 2 + n_distractors paths (`random_walks`: smooth
    walks of path_length steps, straight on with probability 1/2, else a left or right turn,
    reflected at the borders) and marks two cells: the two ends of the first path (a positive
    example), or the start of the first and the end of the second (a negative one), so both
    classes show the same number of paths; the second path starts two cells from the first
    one's start (in a random direction), so that the marks of both classes lie about as far
    apart (the distance between them is a weaker cue). The label is the connectivity of the drawing
    itself: 1 when the marks are joined by a 4-connected chain of path cells, however the
    paths cross (`connected`). Labels are balanced: each example's label is drawn
    Bernoulli(1/2) first and filled from candidate drawings with that label (drawings whose
    marks fall on one cell are discarded); negatives are therefore drawings where no path,
    distractors included, happens to join the marks.

    inputs (b, height * width, 2) in raster order (row by row, left to right): channel 0 is
    1 on path cells, channel 1 is 1 on the two marked cells (which are path cells too);
    `grid = (height, width)`. The label (2 classes) is supervised at the last cell only.
    meta: {"seq_len", "grid", "marks": (b, 2, 2) the marked cells as (row, column)}.

    Args:
        height: rows of the grid (>= 3).
        width: columns of the grid (>= 3).
        path_length: steps of each drawn path (>= 2).
        n_distractors: paths drawn besides the two that carry the marks.
    """

    train_defaults: ClassVar[dict] = {"batch_size": 64, "eval_batches": 8}
    paper_setting: ClassVar[str] = ("Tay et al. 2021 (LRA Pathfinder): 32 x 32 grayscale images "
                                    "(1,024 steps), 200k examples, binary accuracy")

    def __init__(self, *, height: int = 10, width: int = 10, path_length: int = 12,
                 n_distractors: int = 1):
        self.height = check_int("height", height, low=3)
        self.width = check_int("width", width, low=3)
        self.path_length = check_int("path_length", path_length, low=2)
        self.n_distractors = check_int("n_distractors", n_distractors, low=0)
        self.grid = (self.height, self.width)
        self.d_input = 2
        self.heads = [2]
        self.classes = ["apart", "joined"]

    def max_length(self) -> int:
        """Cells of the grid: height * width."""
        return self.height * self.width

    def draw(self, n: int, *, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """n candidate drawings: lit cells (n, H, W) bool, marks (n, 2, 2) and the true label
        (n,) long; half intended positive, half negative (the label is computed, not assumed)."""
        n_paths = 2 + self.n_distractors
        cells = random_walks(n * n_paths, self.path_length, self.height, self.width,
                             generator=generator).view(n, n_paths, -1, 2)  # (n, p, L+1, 2)
        # the second path starts two cells from the first one's start (a random direction,
        # folded into the grid), so that the negatives' marks are as far apart as the
        # positives': both are the ends of walks from about the same cell
        offset = 2 * HEADINGS[torch.randint(0, 4, (n,), generator=generator)]  # (n, 2)
        near = cells[:, 0, 0] + offset
        near = torch.stack([fold(near[:, 0], self.height), fold(near[:, 1], self.width)], -1)
        cells[:, 1] = random_walks(n, self.path_length, self.height, self.width,
                                   generator=generator, start=near)
        lit = torch.zeros(n, self.height, self.width, dtype=torch.bool)
        flat = (cells[..., 0] * self.width + cells[..., 1]).reshape(n, -1)  # (n, p * (L+1))
        lit.view(n, -1).scatter_(1, flat, True)
        positive = torch.arange(n) % 2 == 0
        a = cells[:, 0, 0]  # (n, 2) start of the first path
        b = torch.where(positive[:, None], cells[:, 0, -1], cells[:, 1, -1])  # (n, 2)
        label = connected(lit, a, b).long()
        label = torch.where((a == b).all(-1), -1, label)  # one visible mark: discarded
        return lit, torch.stack([a, b], dim=1), label

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """A batch of grids with balanced labels, the label at the last cell."""
        check_sample_args(self, batch_size, generator)
        want = torch.randint(0, 2, (batch_size,), generator=generator)  # (b,)
        lit_parts, mark_parts, label_parts = [], [], []
        have = torch.zeros(2, dtype=torch.long)
        need = torch.stack([(want == 0).sum(), (want == 1).sum()])
        for _ in range(MAX_ROUNDS):  # a few rounds of candidates, each vectorised
            if not bool((have < need).any()):
                break
            lit, marks, label = self.draw(2 * batch_size, generator=generator)
            keep = label >= 0
            lit_parts.append(lit[keep])
            mark_parts.append(marks[keep])
            label_parts.append(label[keep])
            have += torch.stack([(label == 0).sum(), (label == 1).sum()])
        else:
            if bool((have < need).any()):
                rare = "apart" if have[0] < need[0] else "joined"
                raise SeqmemError(
                    f"pathfinder: drawings with marks {rare} are too rare on a {self.height} x "
                    f"{self.width} grid with {2 + self.n_distractors} paths of {self.path_length}"
                    f" steps ({int(have[0])} apart, {int(have[1])} joined in "
                    f"{MAX_ROUNDS * 2 * batch_size} candidates); use a larger grid, shorter "
                    f"paths (path_length) or fewer distractors (n_distractors)")
        lit, marks, label = (torch.cat(p) for p in (lit_parts, mark_parts, label_parts))
        # the k-th example wanting class c takes the k-th candidate of class c
        order = torch.argsort(label * len(label) + torch.arange(len(label)))
        first = torch.stack([torch.tensor(0), (label == 0).sum()])  # class starts in `order`
        rank = torch.zeros(batch_size, dtype=torch.long)
        for c in (0, 1):
            rank[want == c] = torch.arange(int(need[c]))
        pick = order[first[want] + rank]  # (b,)
        lit, marks = lit[pick], marks[pick]
        b, t = batch_size, self.height * self.width
        rows = torch.arange(b)[:, None]
        marked = torch.zeros(b, self.height, self.width)
        marked[rows, marks[..., 0], marks[..., 1]] = 1.0
        inputs = torch.stack([lit.float(), marked], dim=-1).view(b, t, 2)
        targets = torch.zeros(b, t, 1, dtype=torch.long)
        targets[:, -1, 0] = want
        mask = torch.zeros(b, t, dtype=torch.bool)
        mask[:, -1] = True
        return Batch(inputs, targets, mask, {"seq_len": t, "grid": list(self.grid),
                                             "marks": marks})

    def render(self, batch: Batch, i: int) -> str:
        """Example i as a character grid (`#` path, `@` mark, `.` empty), its label marked
        `[->label]` after the last cell."""
        check_index(batch, i)
        x = batch.inputs[i].view(self.height, self.width, 2)
        chars = [["@" if m else "#" if p else "." for p, m in zip(*row.T.tolist(), strict=True)]
                 for row in x]
        lines = ["".join(r) for r in chars]
        lines[-1] += f"[->{self.classes[int(batch.targets[i, -1, 0])]}]"
        return "\n".join([*lines, facts(batch, i)])


def lorenz96(x: Tensor, forcing: float = 8.0) -> Tensor:
    """Lorenz (1996): dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F, indices cyclic."""
    return (x.roll(-1, -1) - x.roll(2, -1)) * x.roll(1, -1) - x + forcing


@cache
def lorenz96_moments(n_vars: int, forcing: float, dt: float) -> tuple[float, float]:
    """Mean and standard deviation of one variable on the Lorenz-96 attractor (the same for
    every variable, by the cyclic symmetry): from 64 RK4 trajectories of 2,000 steps after 20
    time units of burn-in, started at F + U(-1, 1) from a generator seeded 0 (its own, so the
    estimate is one fixed pair of numbers per (n_vars, F, dt))."""
    g = torch.Generator().manual_seed(0)
    x = forcing + 2 * torch.rand(64, n_vars, generator=g, dtype=torch.float64) - 1
    f = lambda z: lorenz96(z, forcing)  # noqa: E731
    for _ in range(math.ceil(20.0 / dt)):
        x = rk4_step(f, x, dt)
    traj = rk4_trajectory(f, x, dt, 2000)  # (64, 2000, n)
    return float(traj.mean()), float(traj.std())


@register("lorenz96")
class Lorenz96(Task):
    """Lorenz-96 forecasting on a time x variables grid: predict every x_i(t+1) (regression).

    Lorenz 1996: n_vars variables on a ring, dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F
    (`forcing` F = 8: chaotic), integrated by RK4 (`seqmem.tasks.dynamics.rk4_step`) with step
    `dt` in float64. Each example starts at F + U(-1, 1) per variable (from the generator),
    runs `burn_in` time units (discarded) onto the attractor, then seq_len + 1 samples
    x(0)..x(seq_len) one dt apart, standardised by the attractor's mean and sd of one variable
    (`lorenz96_moments`; stated numbers, not the batch's), plus Gaussian observation noise of
    sd `noise` (standardised units).

    Grid: `grid = (seq_len, n_vars)`, rows the time steps and columns the variables (as
    Chimera's time x variates). inputs (b, seq_len * n_vars, 1) in raster order: cell
    (t, i) = x_i(t); targets (b, seq_len * n_vars, 1): cell (t, i) = x_i(t + 1), every cell
    supervised, loss "mse" (`d_output = 1`). A model causal along rows sees at cell (t, i)
    every variable up to time t, never x(t + 1). meta: {"seq_len", "grid", "forcing", "dt"}.

    Args:
        n_vars: variables on the ring (>= 4), the grid's columns.
        seq_len: time steps, the grid's rows.
        forcing: the constant forcing F (8: chaotic).
        dt: sampling and integration step.
        burn_in: time units integrated and discarded before the first sample.
        noise: observation noise sd, in standardised units.
    """

    loss = "mse"
    train_defaults: ClassVar[dict] = {"batch_size": 32, "eval_batches": 4}
    paper_setting: ClassVar[str] = ("Lorenz 1996: 40 variables, F = 8, dt = 0.05 (6 hours); "
                                    "forecast skill by RMSE of the next steps")

    def __init__(self, *, n_vars: int = 8, seq_len: int = 16, forcing: float = 8.0,
                 dt: float = 0.05, burn_in: float = 10.0, noise: float = 0.0):
        self.n_vars = check_int("n_vars", n_vars, low=4)
        self.seq_len = check_int("seq_len", seq_len, low=1)
        for what, v, low in (("forcing", forcing, -math.inf), ("dt", dt, 0.0),
                             ("burn_in", burn_in, 0.0), ("noise", noise, 0.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < low or (what == "dt" and not 0 < v <= 0.2):
                accepted = "a number in (0, 0.2]" if what == "dt" else (
                    "a finite number" if what == "forcing" else "a finite number >= 0")
                raise SeqmemError(f"{what} must be {accepted}, got {v!r}")
        self.forcing, self.dt = float(forcing), float(dt)
        self.burn_in, self.noise = float(burn_in), float(noise)
        self.grid = (self.seq_len, self.n_vars)
        self.d_input = 1
        self.d_output = 1
        self.heads = []

    def max_length(self) -> int:
        """Cells of the grid: seq_len * n_vars."""
        return self.seq_len * self.n_vars

    def moments(self) -> tuple[float, float]:
        """(mean, sd) of one variable on the attractor, for standardising."""
        return lorenz96_moments(self.n_vars, self.forcing, self.dt)

    def raw_trajectory(self, n: int, batch_size: int, *, generator: torch.Generator) -> Tensor:
        """n samples on the attractor per example, unstandardised float64: (b, n, n_vars)."""
        f = lambda z: lorenz96(z, self.forcing)  # noqa: E731
        x = self.forcing + 2 * torch.rand(batch_size, self.n_vars, generator=generator,
                                          dtype=torch.float64) - 1
        for _ in range(math.ceil(self.burn_in / self.dt)):
            x = rk4_step(f, x, self.dt)
        return torch.cat([x[:, None], rk4_trajectory(f, x, self.dt, n - 1)], dim=1)

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """seq_len + 1 samples per example: inputs the first seq_len rows, targets the next."""
        check_sample_args(self, batch_size, generator)
        mean, sd = self.moments()
        x = (self.raw_trajectory(self.seq_len + 1, batch_size, generator=generator) - mean) / sd
        if self.noise:
            x = x + self.noise * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x.float()  # (b, t + 1, n)
        t = self.seq_len * self.n_vars
        inputs = x[:, :-1].reshape(batch_size, t, 1)
        targets = x[:, 1:].reshape(batch_size, t, 1)
        mask = torch.ones(batch_size, t, dtype=torch.bool)
        return Batch(inputs, targets, mask, {"seq_len": t, "grid": list(self.grid),
                                             "forcing": self.forcing, "dt": self.dt})

    def render(self, batch: Batch, i: int) -> str:
        """Example i as a table: one row per time step, the variables' values, then the next
        step's values as targets `[->...]` (every cell supervised)."""
        check_index(batch, i)
        x = batch.inputs[i].view(self.seq_len, self.n_vars)
        y = batch.targets[i].view(self.seq_len, self.n_vars)
        shown = list(range(self.seq_len)) if self.seq_len <= 6 else [0, 1, 2, -1, *range(
            self.seq_len - 3, self.seq_len)]
        lines = []
        for s in shown:
            if s < 0:
                lines.append("…")
                continue
            lines.append(f"t={s}: " + " ".join(f"{v:+.2f}" for v in x[s].tolist())
                         + " [->" + " ".join(f"{v:+.2f}" for v in y[s].tolist()) + "]")
        lines.append("every cell supervised (next-step regression); " + facts(batch, i))
        return "\n".join(lines)
