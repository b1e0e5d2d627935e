"""Grid tasks: pathfinder's labels against a breadth-first search of the drawn grid,
lorenz96 against a loop over the ring and scipy's integrator, and the grid layouts of
seq_digits and mnist1d against their sequence layouts and scikit-learn's images."""

from __future__ import annotations

import collections
import importlib.util

import numpy as np
import pytest
import torch

from seqmem import tasks
from seqmem.errors import SeqmemError
from seqmem.tasks.grid import connected, fold, lorenz96, random_walks


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bfs_joined(lit: np.ndarray, a: tuple[int, int], b: tuple[int, int]) -> bool:
    height, width = lit.shape
    seen, todo = {a}, collections.deque([a])
    while todo:
        r, c = todo.popleft()
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < height and 0 <= nc < width and lit[nr, nc] and (nr, nc) not in seen:
                seen.add((nr, nc))
                todo.append((nr, nc))
    return b in seen


# ---- pathfinder ----------------------------------------------------------------------------
@pytest.mark.parametrize(("height", "width", "length", "n_distractors"),
                         [(10, 10, 12, 1), (6, 9, 8, 2), (3, 5, 4, 0)])
def test_pathfinder_labels_are_the_connectivity_of_the_drawing(height, width, length,
                                                               n_distractors):
    task = tasks.build("pathfinder", height=height, width=width, path_length=length,
                       n_distractors=n_distractors)
    assert task.grid == (height, width) and task.d_input == 2 and task.heads == [2]
    batch = task.sample(100, generator=gen(1))
    t = height * width
    assert batch.inputs.shape == (100, t, 2) and batch.meta["seq_len"] == t
    assert batch.mask.tolist() == [[False] * (t - 1) + [True]] * 100
    x = batch.inputs.view(100, height, width, 2).numpy()
    for i in range(100):
        lit, marked = x[i, ..., 0] > 0, x[i, ..., 1] > 0
        marks = [tuple(p) for p in np.argwhere(marked)]
        assert len(marks) == 2 and all(lit[m] for m in marks)
        assert [tuple(p) for p in batch.meta["marks"][i].tolist()] in (marks, marks[::-1])
        assert batch.targets[i, -1, 0].item() == int(bfs_joined(lit, *marks))
    assert 0.35 < batch.targets[:, -1, 0].float().mean() < 0.65  # balanced


def test_pathfinder_draws_paths_of_the_stated_length_and_distractors():
    # Without distractors the positive drawings have >= 2 paths' cells only through the
    # second path: the lit cells never exceed 2 * (length + 1).
    task = tasks.build("pathfinder", height=12, width=12, path_length=8, n_distractors=0)
    lit = task.sample(100, generator=gen(2)).inputs[..., 0].sum(1)
    assert lit.max() <= 2 * 9 and lit.min() >= 2
    more = tasks.build("pathfinder", height=12, width=12, path_length=8, n_distractors=4)
    lit4 = more.sample(100, generator=gen(2)).inputs[..., 0].sum(1)
    assert lit4.max() <= 6 * 9 and lit4.float().mean() > lit.float().mean() + 10


def test_walks_step_to_neighbours_and_turn_back_at_the_border():
    cells = random_walks(300, 30, 5, 7, generator=gen(3))  # (n, 31, 2)
    assert cells.shape == (300, 31, 2)
    assert cells[..., 0].min() >= 0 and cells[..., 0].max() <= 4
    assert cells[..., 1].min() >= 0 and cells[..., 1].max() <= 6
    step = (cells[:, 1:] - cells[:, :-1]).abs().sum(-1)
    assert step.max() <= 1  # a neighbour, or the same cell when it meets the border
    # a bouncing pointer, moved one step at a time: fold of 0, 1, 2, ... on 3 cells
    pos, direction, bounce = 0, 1, []
    for _ in range(14):
        bounce.append(pos)
        nxt = pos + direction
        if not 0 <= nxt < 3:
            direction = -direction
            nxt = pos  # stays on the edge cell for one step, then comes back
        pos = nxt
    assert fold(torch.arange(14), 3).tolist() == bounce
    assert fold(-torch.arange(1, 4), 3).tolist() == [0, 1, 2]


def test_connected_against_bfs_on_random_masks():
    g = gen(4)
    lit = torch.rand(100, 6, 8, generator=g) < 0.55
    a = torch.stack([torch.randint(0, 6, (100,), generator=g),
                     torch.randint(0, 8, (100,), generator=g)], -1)
    b = torch.stack([torch.randint(0, 6, (100,), generator=g),
                     torch.randint(0, 8, (100,), generator=g)], -1)
    lit[torch.arange(100), a[:, 0], a[:, 1]] = True
    lit[torch.arange(100), b[:, 0], b[:, 1]] = True
    got = connected(lit, a, b)
    want = [bfs_joined(lit[i].numpy(), tuple(a[i].tolist()), tuple(b[i].tolist()))
            for i in range(100)]
    assert got.tolist() == want and 10 < sum(want) < 90


# ---- lorenz96 ------------------------------------------------------------------------------
def test_lorenz96_field_against_a_loop_over_the_ring():
    x = torch.randn(3, 7, dtype=torch.float64, generator=gen(5))
    want = torch.empty_like(x)
    n = 7
    for k in range(3):
        for i in range(n):
            want[k, i] = ((x[k, (i + 1) % n] - x[k, (i - 2) % n]) * x[k, (i - 1) % n]
                          - x[k, i] + 8.0)
    torch.testing.assert_close(lorenz96(x, 8.0), want)


def test_lorenz96_cells_are_time_by_variables_and_targets_the_next_row():
    task = tasks.build("lorenz96", n_vars=6, seq_len=10)
    assert task.grid == (10, 6) and task.loss == "mse" and task.d_output == 1
    batch = task.sample(4, generator=gen(6))
    x = batch.inputs.view(4, 10, 6)
    y = batch.targets.view(4, 10, 6)
    assert batch.mask.all() and batch.inputs.shape == (4, 60, 1)
    torch.testing.assert_close(y[:, :-1], x[:, 1:])  # cell (t, i)'s target is x_i(t + 1)


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="needs scipy")
def test_lorenz96_steps_agree_with_scipys_integrator():
    from scipy.integrate import solve_ivp

    task = tasks.build("lorenz96", n_vars=8, seq_len=5)
    mean, sd = task.moments()
    batch = task.sample(2, generator=gen(7))
    x = batch.inputs.view(2, 5, 8).double() * sd + mean
    y = batch.targets.view(2, 5, 8).double() * sd + mean

    def field(_, v):
        n = len(v)
        return [(v[(i + 1) % n] - v[i - 2]) * v[i - 1] - v[i] + 8.0 for i in range(n)]

    def rk4(v, h):  # the classic fourth-order step, written out in numpy
        f = lambda u: np.array(field(0.0, u))  # noqa: E731
        k1 = f(v)
        k2 = f(v + h / 2 * k1)
        k3 = f(v + h / 2 * k2)
        k4 = f(v + h * k3)
        return v + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    for k in range(2):
        for s in range(5):
            v = x[k, s].numpy()
            # float32 storage of standardised values: ~1e-6 of sd
            np.testing.assert_allclose(rk4(v, 0.05), y[k, s].numpy(), atol=5e-5 * sd)
            # the flow itself, to RK4's local error at dt = 0.05 (a wrong F is off by 0.05)
            sol = solve_ivp(field, (0.0, 0.05), v, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(sol.y[:, -1], y[k, s].numpy(), atol=3e-3)


def test_lorenz96_standardisation_gives_zero_mean_unit_sd_on_the_attractor():
    task = tasks.build("lorenz96", n_vars=8, seq_len=200)
    x = task.sample(16, generator=gen(8)).inputs
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1
    mean, sd = task.moments()
    assert 2.0 < mean < 2.7 and 3.3 < sd < 4.0  # F = 8: the attractor's known moments


# ---- the grid layouts of seq_digits and mnist1d --------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="needs scikit-learn")
def test_seq_digits_grid_is_the_image_in_raster_order():
    from sklearn.datasets import load_digits

    task = tasks.build("seq_digits", layout="grid")
    assert task.grid == (8, 8) and not hasattr(tasks.build("seq_digits"), "grid")
    batch = task.batch_at([0, 5, 17])
    images = load_digits().images[batch.meta["index"].numpy()] / 16.0  # (3, 8, 8)
    np.testing.assert_allclose(batch.inputs.view(3, 8, 8).numpy(), images, rtol=1e-6)
    assert torch.equal(batch.inputs, tasks.build("seq_digits").batch_at([0, 5, 17]).inputs)


def test_mnist1d_grid_folds_the_signal_into_rows_of_eight():
    seq = tasks.build("mnist1d", n_samples=100, source="builtin")
    task = tasks.build("mnist1d", n_samples=100, source="builtin", layout="grid")
    assert task.grid == (5, 8) and not hasattr(seq, "grid")
    a, b = seq.batch_at([0, 3]), task.batch_at([0, 3])
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    cells = b.inputs.view(2, 5, 8)
    assert torch.equal(cells[:, 2, 3], a.inputs[:, 2 * 8 + 3, 0])  # row r, column c: 8 r + c


def test_pathfinder_refuses_grids_where_one_class_is_too_rare():
    task = tasks.build("pathfinder", height=3, width=3, path_length=20, n_distractors=3)
    with pytest.raises(SeqmemError, match=r"marks apart are too rare on a 3 x 3 grid") as e:
        task.sample(8, generator=gen(9))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("name", "kw", "match"), [
    ("pathfinder", {"height": 2}, r"height must be an integer >= 3, got 2"),
    ("pathfinder", {"path_length": 1}, r"path_length must be an integer >= 2"),
    ("pathfinder", {"n_distractors": -1}, r"n_distractors must be an integer >= 0"),
    ("lorenz96", {"n_vars": 3}, r"n_vars must be an integer >= 4, got 3"),
    ("lorenz96", {"dt": 0.0}, r"dt must be a number in \(0, 0.2\], got 0.0"),
    ("lorenz96", {"noise": -1.0}, r"noise must be a finite number >= 0"),
    ("mnist1d", {"layout": "image"}, r"layout.*'image'.*sequence, grid"),
    ("seq_digits", {"layout": "grid", "by": "row"}, r"layout 'grid' .*by: pixel"),
])
def test_bad_grid_task_options_raise_one_line(name, kw, match):
    if name == "seq_digits" and importlib.util.find_spec("sklearn") is None:
        pytest.skip("needs scikit-learn")
    with pytest.raises(SeqmemError, match=match) as e:
        tasks.build(name, **kw)
    assert "\n" not in str(e.value)
