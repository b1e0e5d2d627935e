"""The 2-D mixer contract (`seqmem.mixers.grid`), checked for every registered 2-D mixer.

For each mixer in `names_2d()` (its defaults and the variants of `VARIANTS_2D`, float64) and
each mode it declares: the mode equals the raster scan (outputs and final state), or, for a
mixer without an exact scan, the parallel form equals its `dense_reference`; on grids 1x1,
1xW, Hx1 and non-square, batch 1 included; gradients agree across modes; a row-causal mixer
passes its state from one row block to the next exactly and no output depends on later rows;
undeclared modes, wrong input ranks and wrong states raise one clear line; an empty grid
gives an empty output. A new 2-D mixer is done when it passes this file unchanged.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import Tensor

from seqmem import mixers
from seqmem.errors import SeqmemError
from seqmem.mixers.grid import Mixer2D, build_2d, get_2d, lookup, names_2d
from seqmem.registry import hyperparameters

D_MODEL = 8
ATOL = 1e-10
GRIDS = [(1, 1), (1, 5), (4, 1), (3, 4), (5, 3)]

# Non-default variants exercising another code path of the same contract.
VARIANTS_2D: dict[str, list[dict]] = {
    "lightnet2d": [{"lrpe": True}, {"tpe": True, "tpe_size": 3}, {"lrpe": True, "tpe": True},
                   {"n_heads": 1, "d_key": 3}],
    "plstm": [{"propagation": "D"}, {"n_heads": 1, "d_key": 3}],
    "chimera": [{"d_state": 1}],
    "convs5": [{"kernel_size": 1}, {"kernel_size": 5, "d_state": 2}],
}

CASES = [(n, {}) for n in names_2d()] + [
    (n, kw) for n, kws in VARIANTS_2D.items() if n in names_2d() for kw in kws]


def _id(name, kw):
    return "-".join([name, *map(str, kw.values())])


MIXER_CASES = [pytest.param(n, kw, id=_id(n, kw)) for n, kw in CASES]


def _build(name, kw) -> Mixer2D:
    torch.manual_seed(0)
    return build_2d(name, D_MODEL, **kw).double()


def _x(b, H, W, seed=1, grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, H, W, D_MODEL, generator=g, dtype=torch.float64)
    return x.requires_grad_(grad)


def _close(a, b, what):
    if isinstance(a, Tensor):
        assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        err = (a - b).abs().max().item() if a.numel() else 0.0
        assert err < ATOL * max(1.0, b.abs().max().item() if b.numel() else 1.0), \
            f"{what}: max abs difference {err:.3g}"
        return
    assert type(a) is type(b) and len(a) == len(b), what
    for i, (u, v) in enumerate(zip(a, b, strict=True)):
        _close(u, v, f"{what}[{i}]")


def _reference(m: Mixer2D, x: Tensor, state=None):
    """What every mode must equal: the scan (with its final state), or the dense reference."""
    if m.exact_scan:
        return m(x, state, mode="scan")
    return m.dense_reference(x), None


@pytest.mark.parametrize("name, kw", MIXER_CASES)
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_every_mode_equals_the_scan(name, kw, grid):
    m = _build(name, kw)
    for b in (1, 2):
        x = _x(b, *grid)
        ref_y, ref_s = _reference(m, x)
        for mode in m.modes:
            y, s = m(x, mode=mode)
            _close(y, ref_y, f"{name} {mode} output on {grid}, batch {b}")
            if ref_s is not None:
                _close(s, ref_s, f"{name} {mode} final state on {grid}, batch {b}")


@pytest.mark.parametrize("name, kw", MIXER_CASES)
def test_gradients_agree_across_modes(name, kw):
    m = _build(name, kw)
    grads = {}
    for mode in m.modes:
        x = _x(2, 3, 4, grad=True)
        m.zero_grad()
        y, _ = m(x, mode=mode)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)).sum().backward()
        grads[mode] = [x.grad.clone()] + [
            p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for p in m.parameters()]
    first = m.modes[0]
    assert grads[first][0].abs().sum() > 0, f"{name}: no gradient reaches the input"
    for mode in m.modes[1:]:
        for i, (a, b) in enumerate(zip(grads[mode], grads[first], strict=True)):
            _close(a, b, f"{name} gradient {i} ({mode} vs {first})")


@pytest.mark.parametrize("name, kw", MIXER_CASES)
def test_row_blocks_pass_the_state(name, kw):
    m = _build(name, kw)
    if not m.row_causal:
        pytest.skip(f"{name} is not causal along rows")
    x = _x(2, 5, 3)
    for mode in m.modes:
        y, s = m(x, mode=mode)
        y1, s1 = m(x[:, :2], mode=mode)
        y2, s2 = m(x[:, 2:], s1, mode=mode)
        _close(torch.cat([y1, y2], dim=1), y, f"{name} {mode}: two row blocks")
        _close(s2, s, f"{name} {mode}: final state of two row blocks")


@pytest.mark.parametrize("name, kw", MIXER_CASES)
def test_rows_are_causal(name, kw):
    m = _build(name, kw)
    if not m.row_causal:
        pytest.skip(f"{name} is not causal along rows")
    x = _x(2, 5, 4)
    for mode in m.modes:
        y, _ = m(x, mode=mode)
        for i in (0, 2):
            x2 = x.clone()
            x2[:, i + 1:] += torch.randn_like(x2[:, i + 1:])
            y2, _ = m(x2, mode=mode)
            _close(y2[:, :i + 1], y[:, :i + 1], f"{name} {mode}: rows <= {i} after a change "
                                                f"below")
            assert (y2[:, i + 1:] - y[:, i + 1:]).abs().max() > 1e-6, \
                f"{name} {mode}: rows below {i} ignore their inputs"


@pytest.mark.parametrize("name, kw", MIXER_CASES)
def test_empty_grid_leaves_the_state(name, kw):
    m = _build(name, kw)
    _, s = m(_x(2, 2, 3))
    for mode in m.modes:
        y, s2 = m(_x(2, 0, 3), s, mode=mode)
        assert y.shape == (2, 0, 3, D_MODEL)
        _close(s2, s, f"{name} {mode}: state after an empty grid")


@pytest.mark.parametrize("name", names_2d())
def test_undeclared_mode_and_bad_input_raise(name):
    m = _build(name, {})
    with pytest.raises(ValueError, match="modes"):
        m(_x(1, 2, 2), mode="no_such_mode")
    for bad in (torch.randn(2, 5, D_MODEL, dtype=torch.float64),
                torch.randn(2, 3, 3, D_MODEL + 1, dtype=torch.float64),
                torch.randn(2, 3, 3, D_MODEL)):  # float32 against float64 parameters
        with pytest.raises(SeqmemError) as e:
            m(bad)
        assert "\n" not in str(e.value) and name in str(e.value)
    with pytest.raises(SeqmemError, match="2-D mixer"):
        m.step(torch.randn(2, D_MODEL, dtype=torch.float64), None)


@pytest.mark.parametrize("name", names_2d())
def test_wrong_states_are_refused(name):
    m = _build(name, {})
    x = _x(2, 2, 3)
    _, s = m(x)
    wrong = {"another batch": m(_x(3, 2, 3))[1], "another width": m(_x(2, 2, 4))[1],
             "float32": m.init_state(2, 3, dtype=torch.float32), "not a tensor": 3.0}
    for what, state in wrong.items():
        with pytest.raises(SeqmemError) as e:
            m(x, state)
        assert "\n" not in str(e.value) and name in str(e.value), what
    m(x, tuple(s) if isinstance(s, tuple) else s)  # a plain tuple of the right parts is read


@pytest.mark.parametrize("name", names_2d())
def test_registries_are_apart_and_documented(name):
    assert name not in mixers.names(), f"{name} must not be in the 1-D registry"
    cls = get_2d(name)
    assert lookup(name) is cls and issubclass(cls, Mixer2D)
    assert "scan" in cls.modes
    doc = inspect.getdoc(cls) or ""
    assert "Args:" in doc, f"{name}: its docstring needs an Args: section"
    for opt in hyperparameters(cls):
        assert f"    {opt}" in doc or f" {opt}:" in doc, f"{name}: option {opt} is undocumented"
    with pytest.raises(SeqmemError, match="2-D mixers"):
        lookup("no_such_mixer")
