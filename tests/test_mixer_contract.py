"""The mixer contract (DESIGN.md section 2), checked for every registered mixer and mode.

For each mixer in `seqmem.mixers.names()` (built with its defaults, float64) and each mode it
declares: forward equals the loop of `step` (outputs, final state and gradients), splitting a
sequence and passing the state equals one pass, outputs are causal, undeclared modes raise,
the edge cases t = 0 (an empty output, the state unchanged), t = 1, t < chunk, t not a
multiple of chunk and batch 1 hold, and a wrong state (another batch size, dtype or device,
another mixer's state, something that is not a tensor) is refused with one line naming the
mixer, by forward and by step. A new mixer is done when it passes this file unchanged.
"""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
from torch import Tensor

from seqmem import mixers
from seqmem.errors import SeqmemError

D_MODEL = 8
ATOL = 1e-10
KNOWN_MODES = ("chunk", "parallel", "recurrent")

# Non-default variants that exercise a different code path of the same contract (optional; a
# mixer without an entry is checked with its defaults only).
VARIANTS: dict[str, list[dict]] = {
    "leaky_rnn": [{"rule": "mod", "phi": "tanh", "h0": "random"},
                  {"init": "orthogonal", "init_gain": 0.8}],
    "elman": [{"init_rank": 2, "init_noise": 0.1}],
    "gru": [{"init": "normal", "init_gain": 1.5}],
    "lstm": [{"init_rank": 1, "init_gain": 0.5}],
    "attention": [{"window": 3, "rotary": False}, {"window": 5}, {"max_len": 4}],
    "tcn": [{"n_layers": 2, "kernel_size": 2, "dilation_base": 3}],
    "tcnca": [{"attn_chunk": 3, "d_attn": 4, "n_layers": 1}],
    "rat": [{"rat_chunk": 3, "max_len": 6}, {"rat_chunk": 1, "max_len": 3}],
    "deltanet": [{"negative_eigenvalues": True}],
    "gated_deltanet": [{"negative_eigenvalues": True, "n_heads": 1}],
    "retnet": [{"rotary": False, "n_heads": 4}],
    "mom": [{"memory": "linear", "shared_memory": False, "top_k": 1},
            {"n_memories": 1, "top_k": 1, "n_heads": 1}],
    "titans": [{"n_heads": 1, "conv_size": 2},
               {"memory": "mlp", "memory_depth": 3, "memory_width": 1, "bias": "huber",
                "momentum": False, "theta_max": 0.2},
               {"memory": "mlp", "gradient": "chunk", "memory_chunk": 3, "bias": "lp",
                "retention": "lq"},
               {"variant": "mac", "segment": 3, "n_persistent": 2, "gradient": "chunk",
                "memory_chunk": 2, "retention": "kl", "theta_max": 0.2},
               {"variant": "mag", "window": 3, "n_persistent": 1},
               {"variant": "mal", "window": 2, "memory": "mlp", "gradient": "chunk",
                "memory_chunk": 4, "momentum": False, "theta_max": 0.2}],
    "mamba": [{"negative_eigenvalues": True, "d_state": 3, "dt_rank": 2}],
    "mamba2": [{"negative_eigenvalues": True, "headdim": 4}, {"headdim": 8, "conv_size": 2}],
    "plrnn": [{"d_hidden": 3, "input_proj": False, "a_init": (-0.9, 0.9)}],
    "al_rnn": [{"n_relu": 1, "input_proj": False, "a_init": (-0.9, 0.9)}, {"n_relu": 8}],
    "lssl": [{"train_A": True, "d_state": 8, "activation": "glu"},
             {"measure": "legt", "d_state": 4}, {"measure": "fout", "d_state": 5}],
    "s4d": [{"init": "inv", "d_state": 6, "activation": "none"},
            {"init": "legs", "d_state": 6}, {"init": "ptd", "d_state": 6}],
    "s5": [{"n_blocks": 2, "d_state": 12, "discretization": "bilinear", "activation": "none"},
           {"init": "ptd", "d_state": 8, "n_blocks": 2}],
    "s4": [{"measure": "legs", "d_state": 6}, {"measure": "legt", "d_state": 4},
           {"measure": "fout", "d_state": 6, "activation": "none"},
           {"init": "ptd", "d_state": 6}],
}

CASES = [(name, {}) for name in mixers.names()] + [
    (name, kw) for name, kws in VARIANTS.items() if name in mixers.names() for kw in kws
]


def _id(name: str, kw: dict) -> str:
    return "-".join([name, *map(str, kw.values())])


MIXER_CASES = [pytest.param(name, kw, id=_id(name, kw)) for name, kw in CASES]
MODE_CASES = [
    pytest.param(name, kw, mode, id=f"{_id(name, kw)}-{mode}")
    for name, kw in CASES
    for mode in mixers.get(name).modes
]


# ---- helpers ----------------------------------------------------------------------------
def make(name: str, kw: dict, seed: int = 0) -> mixers.Mixer:
    """Build a mixer in float64 with a fixed parameter draw (the global RNG is restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return mixers.build(name, D_MODEL, **kw).double()


def leaves(state) -> list[Tensor]:
    """The tensors of a state (a Tensor or a (nested) tuple / NamedTuple of them), in order."""
    if isinstance(state, Tensor):
        return [state]
    assert isinstance(state, tuple), f"a state is a Tensor or a NamedTuple, got {type(state)}"
    return [leaf for s in state for leaf in leaves(s)]


def map_state(fn, state):
    """Apply fn to every tensor of a state, keeping its structure."""
    if isinstance(state, Tensor):
        return fn(state)
    parts = [map_state(fn, s) for s in state]
    return type(state)(*parts) if hasattr(state, "_fields") else type(state)(parts)


def init(mixer: mixers.Mixer, batch: int, gen: torch.Generator, *, noise: float = 0.0):
    """`init_state(batch)` created once (drawing from gen where the mixer takes a generator),
    optionally perturbed by Gaussian noise so that state passing is really exercised."""
    kw = {}
    if "generator" in inspect.signature(mixer.init_state).parameters:
        kw["generator"] = gen
    s0 = mixer.init_state(batch, **kw)
    if noise:
        s0 = map_state(
            lambda s: s + noise * torch.randn(s.shape, generator=gen, dtype=s.dtype), s0
        )
    return s0


def data(batch: int, t: int, gen: torch.Generator) -> Tensor:
    return torch.randn(batch, t, D_MODEL, generator=gen, dtype=torch.float64)  # (b, t, d)


def assert_states_close(a, b, atol: float = ATOL) -> None:
    assert type(a) is type(b), f"state types differ: {type(a).__name__} vs {type(b).__name__}"
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb, strict=True):
        assert u.shape == v.shape and u.dtype == v.dtype
        torch.testing.assert_close(u, v, rtol=0, atol=atol)


def assert_like(state, ref) -> None:
    """state has the structure, shapes and dtypes of ref (e.g. of init_state)."""
    assert type(state) is type(ref)
    assert [(s.shape, s.dtype) for s in leaves(state)] == [(r.shape, r.dtype) for r in leaves(ref)]


# ---- forward == loop of step ----------------------------------------------------------------
@pytest.mark.parametrize("name,kw,mode", MODE_CASES)
@pytest.mark.parametrize("batch,t", [(1, 1), (2, 3), (3, 4), (2, 9), (1, 13)])
@pytest.mark.parametrize("noise", [0.0, 0.5], ids=["init", "perturbed"])
def test_forward_equals_step_loop(name, kw, mode, batch, t, noise):
    gen = torch.Generator().manual_seed(1)
    m = make(name, kw)
    x = data(batch, t, gen)
    s0 = init(m, batch, gen, noise=noise)
    s0_copy = map_state(torch.clone, s0)
    with torch.no_grad():
        y, s = m(x, s0, mode=mode, chunk_size=4)
        y_ref, s_ref = mixers.step_loop(m, x, s0)
    assert y.shape == (batch, t, D_MODEL) and y.dtype == torch.float64
    assert_like(s, s0)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=ATOL)
    assert_states_close(s, s_ref)
    assert_states_close(s0, s0_copy, atol=0)  # the state passed in is not modified in place


@pytest.mark.parametrize("name,kw,mode", MODE_CASES)
def test_default_chunk_size_and_mode(name, kw, mode):
    """The default chunk_size (64) against the loop, at lengths below and above it; mode=None
    is the first declared mode."""
    gen = torch.Generator().manual_seed(2)
    m = make(name, kw)
    for t in (5, 70):
        x = data(2, t, gen)
        s0 = init(m, 2, gen, noise=0.5)
        with torch.no_grad():
            y, s = m(x, s0, mode=mode)
            y_ref, s_ref = mixers.step_loop(m, x, s0)
            if mode == m.modes[0]:
                y_default, s_default = m(x, s0)
                torch.testing.assert_close(y_default, y, rtol=0, atol=0)
                assert_states_close(s_default, s, atol=0)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=ATOL)
        assert_states_close(s, s_ref)


@pytest.mark.parametrize("name,kw,mode", MODE_CASES)
def test_split_sequence_passes_state(name, kw, mode):
    gen = torch.Generator().manual_seed(3)
    m = make(name, kw)
    x = data(2, 11, gen)
    s0 = init(m, 2, gen, noise=0.5)
    with torch.no_grad():
        y, s = m(x, s0, mode=mode, chunk_size=4)
        for cut in (1, 4, 6, 10):
            y1, s1 = m(x[:, :cut], s0, mode=mode, chunk_size=4)
            y2, s2 = m(x[:, cut:], s1, mode=mode, chunk_size=4)
            torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, rtol=0, atol=ATOL)
            assert_states_close(s2, s)
        y_again, s_again = m(x, s0, mode=mode, chunk_size=4)  # nothing kept on the module
    torch.testing.assert_close(y_again, y, rtol=0, atol=0)
    assert_states_close(s_again, s, atol=0)


@pytest.mark.parametrize("name,kw,mode", MODE_CASES)
def test_step_by_step_with_forward(name, kw, mode):
    """Alternating forward on chunks with single steps gives the same as one forward."""
    gen = torch.Generator().manual_seed(4)
    m = make(name, kw)
    x = data(2, 9, gen)
    s0 = init(m, 2, gen, noise=0.5)
    with torch.no_grad():
        y, s = m(x, s0, mode=mode, chunk_size=4)
        y_a, s_a = m(x[:, :5], s0, mode=mode, chunk_size=4)
        y_b, s_b = m.step(x[:, 5], s_a)
        y_c, s_c = m(x[:, 6:], s_b, mode=mode, chunk_size=4)
    torch.testing.assert_close(torch.cat([y_a, y_b[:, None], y_c], dim=1), y, rtol=0, atol=ATOL)
    assert_states_close(s_c, s)


@pytest.mark.parametrize("name,kw,mode", MODE_CASES)
def test_causal(name, kw, mode):
    gen = torch.Generator().manual_seed(5)
    m = make(name, kw)
    x = data(2, 10, gen)
    s0 = init(m, 2, gen, noise=0.5)
    with torch.no_grad():
        y, _ = m(x, s0, mode=mode, chunk_size=4)
        for t0 in (0, 3, 4, 7, 9):
            x2 = x.clone()
            x2[:, t0:] += 3 * torch.randn(x2[:, t0:].shape, generator=gen, dtype=x.dtype)
            y2, _ = m(x2, s0, mode=mode, chunk_size=4)
            torch.testing.assert_close(y2[:, :t0], y[:, :t0], rtol=0, atol=ATOL)
            assert (y2[:, t0:] - y[:, t0:]).abs().max() > 1e-6, "the input is ignored"
            # changing only x[:, t0] leaves every earlier output unchanged, too
            x3 = x.clone()
            x3[:, t0] += 1.0
            y3, _ = m(x3, s0, mode=mode, chunk_size=4)
            torch.testing.assert_close(y3[:, :t0], y[:, :t0], rtol=0, atol=ATOL)


@pytest.mark.parametrize("name,kw,mode", MODE_CASES)
def test_empty_sequence(name, kw, mode):
    """t = 0: an empty output (b, 0, d) and the state passed in, unchanged; from None, a state
    shaped like init_state; a forward after it is the forward from the same state."""
    gen = torch.Generator().manual_seed(10)
    m = make(name, kw)
    x = data(2, 5, gen)
    s0 = init(m, 2, gen, noise=0.5)
    y0, s = m(x[:, :0], s0, mode=mode, chunk_size=4)
    assert y0.shape == (2, 0, D_MODEL) and y0.dtype == torch.float64
    assert_states_close(s, s0, atol=0)
    with torch.no_grad():
        y, s1 = m(x, s, mode=mode, chunk_size=4)
        y_ref, s_ref = m(x, s0, mode=mode, chunk_size=4)
        y_none, s_none = m(x[:, :0], mode=mode, chunk_size=4)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    assert_states_close(s1, s_ref, atol=0)
    assert y_none.shape == (2, 0, D_MODEL)
    assert_like(s_none, m.init_state(2))


# ---- wrong states ---------------------------------------------------------------------------
WRONG_STATES = ["batch", "batch_1", "dtype", "device", "other_mixer", "not_tensors"]


def shapes(state) -> list[tuple[int, ...]]:
    return [tuple(s.shape) for s in leaves(state)]


@functools.cache
def _default_states(batch: int) -> dict:
    return {name: made(name, ()).init_state(batch) for name in mixers.names()}


@functools.cache
def made(name: str, kw_items: tuple) -> mixers.Mixer:
    """`make(name, dict(kw_items))`, built once (for the tests that never change a mixer)."""
    return make(name, dict(kw_items))


def wrong_state(m: mixers.Mixer, kind: str, batch: int, gen: torch.Generator):
    """A state that is not one for input of `batch` sequences to m."""
    good = init(m, batch, gen)
    if kind == "batch":
        return init(m, batch - 1, gen)
    if kind == "batch_1":  # would broadcast over the batch in many mixers
        return init(m, 1, gen)
    if kind == "dtype":
        return map_state(lambda s: s.float(), good)
    if kind == "device":
        return map_state(lambda s: s.to("meta"), good)
    if kind == "other_mixer":  # the first other mixer's state that has other tensors
        return next(s for s in _default_states(batch).values() if shapes(s) != shapes(good))
    return map_state(lambda s: s.tolist(), good)  # nested lists instead of tensors


def assert_refused(name: str, info: pytest.ExceptionInfo) -> None:
    msg = str(info.value)
    assert msg.startswith(f"{name}: state") and "\n" not in msg, msg


@pytest.mark.parametrize("kind", WRONG_STATES)
@pytest.mark.parametrize("name,kw,mode", MODE_CASES)
def test_forward_refuses_wrong_state(name, kw, mode, kind):
    gen = torch.Generator().manual_seed(11)
    m = made(name, tuple(kw.items()))
    state = wrong_state(m, kind, 4, gen)
    for t in (3, 0):
        with pytest.raises(SeqmemError) as info:
            m(data(4, t, gen), state, mode=mode, chunk_size=4)
        assert_refused(name, info)


@pytest.mark.parametrize("kind", WRONG_STATES)
@pytest.mark.parametrize("name,kw", MIXER_CASES)
def test_step_refuses_wrong_state(name, kw, kind):
    gen = torch.Generator().manual_seed(12)
    m = made(name, tuple(kw.items()))
    with pytest.raises(SeqmemError) as info:
        m.step(data(4, 1, gen)[:, 0], wrong_state(m, kind, 4, gen))
    assert_refused(name, info)


# ---- gradients ------------------------------------------------------------------------------
def _grads(m, x, s0, route):
    """Gradients of a fixed random functional of (y, final state) w.r.t. x, s0 and params."""
    x = x.detach().requires_grad_(True)
    s0 = map_state(lambda s: s.detach().requires_grad_(True), s0)
    y, s = route(x, s0)
    gen = torch.Generator().manual_seed(99)
    loss = (y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).sum()
    for leaf in leaves(s):
        loss = loss + (leaf * torch.randn(leaf.shape, generator=gen, dtype=leaf.dtype)).sum()
    params = [p for p in m.parameters() if p.requires_grad]
    wrt = [x, *leaves(s0), *params]
    return torch.autograd.grad(loss, wrt, allow_unused=True)


@pytest.mark.parametrize("name,kw,mode", MODE_CASES)
@pytest.mark.parametrize("batch,t", [(1, 1), (2, 3), (2, 9)])
def test_gradients_equal_step_loop(name, kw, mode, batch, t):
    gen = torch.Generator().manual_seed(6)
    m = make(name, kw)
    x = data(batch, t, gen)
    s0 = init(m, batch, gen, noise=0.5)
    g = _grads(m, x, s0, lambda x, s: m(x, s, mode=mode, chunk_size=4))
    g_ref = _grads(m, x, s0, lambda x, s: mixers.step_loop(m, x, s))
    assert g[0] is not None and g[0].abs().max() > 0, "no gradient reaches the input"
    if any(p.requires_grad for p in m.parameters()):
        assert any(gi is not None for gi in g[1 + len(leaves(s0)) :]), "no parameter gradient"
    for gi, gi_ref in zip(g, g_ref, strict=True):
        if gi is None or gi_ref is None:
            # unused in one route: must be unused (or zero) in the other
            other = gi if gi is not None else gi_ref
            assert other is None or other.numel() == 0 or other.abs().max() <= ATOL
            continue
        torch.testing.assert_close(gi, gi_ref, rtol=0, atol=ATOL)


# ---- modes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", MIXER_CASES)
def test_modes_declared(name, kw):
    cls = mixers.get(name)
    assert isinstance(cls.modes, tuple) and len(cls.modes) >= 1
    assert len(set(cls.modes)) == len(cls.modes)
    assert all(isinstance(mode, str) for mode in cls.modes)


@pytest.mark.parametrize("name,kw", MIXER_CASES)
def test_undeclared_modes_raise(name, kw):
    gen = torch.Generator().manual_seed(7)
    m = make(name, kw)
    x = data(1, 5, gen)
    s0 = init(m, 1, gen)
    undeclared = ["nonexistent", *(mode for mode in KNOWN_MODES if mode not in m.modes)]
    for mode in undeclared:
        with pytest.raises(ValueError) as info:
            m(x, s0, mode=mode, chunk_size=4)
        msg = str(info.value)
        assert repr(mode) in msg or mode in msg
        for declared in m.modes:
            assert declared in msg, f"message {msg!r} does not name mode {declared!r}"


# ---- state, timescales ----------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", MIXER_CASES)
def test_state_size_counts_init_state(name, kw):
    m = make(name, kw)
    gen = torch.Generator().manual_seed(8)
    assert isinstance(m.state_size(), int)
    assert m.state_size() == sum(s.numel() for s in leaves(init(m, 1, gen)))
    assert sum(s.numel() for s in leaves(init(m, 3, gen))) == 3 * m.state_size()
    for s in leaves(init(m, 3, gen)):
        assert s.shape[0] == 3 and torch.isfinite(s).all()


@pytest.mark.parametrize("name,kw", MIXER_CASES)
def test_init_state_dtype(name, kw):
    m = make(name, kw)
    for s in leaves(m.init_state(2)):
        assert s.dtype == torch.float64  # follows the parameters by default
    for dtype in (torch.float32, torch.float64):
        for s in leaves(m.init_state(2, dtype=dtype)):
            assert s.dtype == dtype
    m32 = make(name, kw).float()
    for s in leaves(m32.init_state(2)):
        assert s.dtype == torch.float32


@pytest.mark.parametrize("name,kw", MIXER_CASES)
def test_float32_runs(name, kw):
    """float32 parameters and input: the same function, to float32 precision."""
    gen = torch.Generator().manual_seed(9)
    m64 = make(name, kw)
    m32 = make(name, kw).float()
    x = data(2, 6, gen)
    s0 = init(m64, 2, gen, noise=0.5)
    with torch.no_grad():
        y64, _ = m64(x, s0)
        y32, s32 = m32(x.float(), map_state(lambda s: s.float(), s0))
    assert y32.dtype == torch.float32
    assert all(s.dtype == torch.float32 for s in leaves(s32))
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,kw", MIXER_CASES)
def test_timescales(name, kw):
    m = make(name, kw)
    ts = m.timescales()
    if ts is None:
        return
    assert isinstance(ts, Tensor)
    assert ts.shape == (D_MODEL,)
    assert torch.isfinite(ts).all() and (ts > 0).all()


def test_registry_is_populated():
    assert {"elman", "gru", "leaky_rnn", "lstm"} <= set(mixers.names())
    assert set(VARIANTS) <= set(mixers.names())
    for name in mixers.names():
        assert mixers.get(name).name == name
