"""The 2-D mixer contract and its registry: mixers of a grid (b, H, W, d) -> (b, H, W, d).

A 2-D mixer reads a grid of H rows and W columns (rows first; for time x variates, H is time
and W the variates) and returns one output per cell. Grid tasks keep the 1-D `Batch`
convention (inputs (b, H*W, d) in raster order, row by row, left to right, and the instance
attribute `grid = (H, W)`); `SequenceModel(..., grid=(H, W))` reshapes around 2-D blocks.

The contract (checked for every registered 2-D mixer by tests/test_mixer2d_contract.py, float64):

- `forward(x (b, H, W, d), state=None, *, mode=None) -> (y (b, H, W, d), state)`; `modes`
  (first = the default) include a parallel or chunked form and `"scan"`: the grid visited
  cell by cell in raster order (row by row, left to right) through step-like updates of an
  explicit state. Every declared mode computes the same function as the scan (outputs and
  final state); a mixer whose paper defines no exact scan (a bidirectional or
  multi-directional model) declares `exact_scan = False` and provides `dense_reference(x)`,
  a direct dense evaluation of its equations, which its parallel form equals.
- `row_causal` (True by default): the output of row i depends on rows <= i only; the state
  after a block of rows is what the next block of rows starts from, so splitting the grid
  into two row blocks and passing the state equals one pass. Such a state may depend on the
  grid's width (a frontier of one edge per column), so `init_state(batch_size, width, *,
  device=None, dtype=None)` takes it.
- Undeclared modes raise `ValueError` naming the modes; an input of the wrong rank or width
  raises one `SeqmemError` line; a wrong state is refused as for 1-D mixers (`Mixer`'s
  state check, here per (batch size, width)). An empty grid (H = 0 or W = 0) gives an empty
  output and leaves the state as it is.

2-D mixers live in their own registry (`register_2d`, `names_2d`, `get_2d`, `build_2d`), not
in the 1-D one, so the 1-D contract suite never sees them. `lookup(name)` finds a mixer
class in either registry, for code that accepts both (the model, the configs).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from seqmem.errors import SeqmemError
from seqmem.mixers.base import Mixer, State, _match, _spec
from seqmem.mixers.base import get as get_1d
from seqmem.mixers.base import names as names_1d
from seqmem.registry import Registry

_REGISTRY_2D = Registry("2-D mixer")


class Mixer2D(Mixer):
    """Base class of every 2-D mixer (see the module docstring for the contract).

    Subclasses set `modes` (first = default, "scan" among them) and implement
    `_forward(x, state, mode)` on a checked x (b, H, W, d) with H, W >= 1 and a checked state,
    `init_state(batch_size, width, *, device=None, dtype=None)` and `state_size(width)`.
    `row_causal` and `exact_scan` are read by the contract suite (an instance may set them
    from its options).
    """

    modes: ClassVar[tuple[str, ...]] = ("parallel", "scan")
    row_causal: ClassVar[bool] = True
    exact_scan: ClassVar[bool] = True

    def forward(self, x: Tensor, state: State = None, *, mode: str | None = None,
                final_state: bool = True) -> tuple[Tensor, State]:
        """Map the grid x (b, H, W, d_model) to y (b, H, W, d_model), starting from `state`
        (the fresh state if None). An empty grid gives an empty y and the state as it is.
        final_state=False: the caller does not want the state, None comes back."""
        mode = self.check_mode(mode)
        self.check_input(x, ndim=4)
        state = self._given_state(x, state)
        if x.shape[1] == 0 or x.shape[2] == 0:
            return x.new_zeros(x.shape), (state if final_state else None)
        y, state = self._forward(x, state, mode)
        return y, (state if final_state else None)

    def step(self, x_t, state):
        raise SeqmemError(f"{self.name or type(self).__name__} is a 2-D mixer: it has no 1-D "
                          f"step; run forward on a grid (b, H, W, d) (mode='scan' visits it "
                          f"cell by cell)")

    def init_state(self, batch_size: int, width: int = 1, *, device=None, dtype=None) -> State:
        raise NotImplementedError

    def state_size(self, width: int = 1) -> int:
        """Floats of state per grid carried from one row block to the next (width W)."""
        raise NotImplementedError

    def _given_state(self, x: Tensor, state: State) -> State:
        if state is None:
            return self.init_state(x.shape[0], x.shape[2], device=x.device, dtype=x.dtype)
        return self.check_state(state, x.shape[0], x.shape[2], device=x.device, dtype=x.dtype)

    def check_state(self, state: State, batch_size: int, width: int = 1, *, device=None,
                    dtype=None) -> State:
        """`state` if it has the structure of init_state(batch_size, width) on the given
        device and dtype (the parameters' if None), else one SeqmemError line naming the part
        that differs (as `Mixer.check_state`)."""
        if device is None or dtype is None:
            opts = self.state_options(device, dtype)
            device, dtype = opts["device"], opts["dtype"]
        key = (batch_size, width, dtype)
        spec = self._state_specs.get(key)
        if spec is None:
            spec = _spec(self.init_state(batch_size, width, device="meta", dtype=dtype), "",
                         self.state_variable_dims)
            self._state_specs[key] = spec
        return _match(self, state, spec, torch.device(device), batch_size)

    def check_input(self, x: Tensor, *, ndim: int = 4) -> None:
        """Raise one SeqmemError line unless x is a floating grid (b, H, W, d_model) whose
        dtype is the parameters'."""
        who = self.name or type(self).__name__
        if not isinstance(x, Tensor):
            raise SeqmemError(f"{who}: expected a Tensor (batch, H, W, d_model), got "
                              f"{type(x).__name__}")
        if x.ndim != 4 or x.shape[-1] != self.d_model:
            raise SeqmemError(f"{who}: expected a grid of shape (batch, H, W, d_model) with "
                              f"d_model={self.d_model}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise SeqmemError(f"{who}: expected a floating-point input (float32 or float64), "
                              f"got {x.dtype}")
        p = next(self.parameters(), None)
        if p is not None and p.dtype != x.dtype:
            raise SeqmemError(f"{who}: input dtype {x.dtype} does not match the parameters' "
                              f"dtype {p.dtype}; convert one with .to(dtype)")

    def dense_reference(self, x: Tensor) -> Tensor:
        """A direct dense evaluation of the paper's equations on x (b, H, W, d) (mixers
        without an exact scan provide it)."""
        raise NotImplementedError


def raster_scan(cell, x: Tensor, frontier: list, carry):
    """Visit the grid x (b, H, W, d) cell by cell in raster order: `cell(x_ij, up, carry) ->
    (y_ij, down, carry)`, where `up` is frontier[j] (what column j's cell above left, or the
    row block's starting state) and `carry` what the cell to the left left (reset to the
    given `carry` at the start of each row). Returns (y (b, H, W, d_out), the last row's
    frontier)."""
    frontier = list(frontier)
    rows = []
    for i in range(x.shape[1]):
        c, ys = carry, []
        for j in range(x.shape[2]):
            y, frontier[j], c = cell(x[:, i, j], frontier[j], c)
            ys.append(y)
        rows.append(torch.stack(ys, dim=1))
    return torch.stack(rows, dim=1), frontier


# ---- registry ---------------------------------------------------------------------------
register_2d = _REGISTRY_2D.register
names_2d = _REGISTRY_2D.names
get_2d = _REGISTRY_2D.get


def build_2d(name: str, d_model: int, **kw) -> Mixer2D:
    """Build the 2-D mixer registered as `name` with `d_model` and keyword hyperparameters."""
    return _REGISTRY_2D.check_options(name, kw)(d_model, **kw)


def is_2d(name: str) -> bool:
    """Whether `name` is a registered 2-D mixer."""
    return name in names_2d()


def lookup(name: str) -> type:
    """The mixer class registered as `name`, 1-D or 2-D; an unknown name raises one line
    listing both registries."""
    if name in names_2d():
        return get_2d(name)
    if name in names_1d():
        return get_1d(name)
    raise SeqmemError(f"unknown mixer {name!r}; accepted: {', '.join(names_1d())}; 2-D "
                      f"mixers (grid tasks only): {', '.join(names_2d()) or '(none)'}")


def every_name() -> list[str]:
    """The 1-D mixers' names, then the 2-D mixers'."""
    return [*names_1d(), *names_2d()]
