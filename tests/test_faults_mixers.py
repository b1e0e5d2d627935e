"""Mixers under faulty input: states that are not theirs, and NaN inputs.

- A wrong state never reaches a kernel: the fused LSTM (torch.lstm checks no sizes) refuses
  a state of another batch size or width with a SeqmemError instead of crashing the process
  or returning NaN; the messages name the mixer, the part and what was expected.
- The state check accepts what the contract allows: a plain tuple for a NamedTuple state,
  None in `step`, and (for a mixer that declares `state_variable_dims`) a state whose size
  varies along those dims; it builds the expected structure once per batch size and dtype.
- A NaN input at t = 3: the step loop and the loop forms never make an earlier output NaN;
  which mixers' default training forms do is recorded in `LEAKS_NAN_BACKWARDS`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import ClassVar

import pytest
import torch
from torch import Tensor

from seqmem import mixers
from seqmem.errors import SeqmemError

D = 8
F64 = torch.float64
SUFFIX = "; pass the state this mixer returned, or None"

# The mixers whose default training form (first mode, default chunk_size) makes outputs before
# a NaN input NaN too: their chunked, parallel or convolutional forms mix the positions of a
# chunk by masked products, and 0 * NaN is NaN. The training loop checks inputs for NaN.
LEAKS_NAN_BACKWARDS = {
    "attention", "deltanet", "gated_deltanet", "linear_attn", "lssl", "mamba2", "memora", "mom",
    "moneta", "retnet", "s4", "s4d", "tcnca", "titans", "yaad",
}
# forms that are loops over time (or solve the recurrence by Newton iterations): causal for
# any input
LOOP_MODES = ("recurrent", "fused", "newton")


def make(name: str, seed: int = 0, **kw) -> mixers.Mixer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return mixers.build(name, D, **kw).double()


def randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ---- the fused LSTM ---------------------------------------------------------------------------
def test_fused_lstm_refuses_mis_sized_states_in_a_clean_process():
    """The states that crashed the process (SIGSEGV, SIGABRT) or gave NaN: one SeqmemError
    each, run in a child process so that a crash is a failure, not the end of the session."""
    code = textwrap.dedent("""
        import torch
        from seqmem import mixers
        from seqmem.errors import SeqmemError
        m = mixers.build("lstm", 16)
        cases = {
            "bigger batch": m.init_state(8),
            "smaller batch": m.init_state(3),
            "wider lstm": mixers.build("lstm", 32).init_state(4),
        }
        for what, state in cases.items():
            for run in (lambda: m(torch.zeros(4, 10, 16), state, mode="fused"),
                        lambda: m.step(torch.zeros(4, 16), state)):
                try:
                    run()
                    print(what, "accepted")
                except SeqmemError as e:
                    print(what, "refused:", e)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 6 and all(" refused: lstm: state.h has shape " in li for li in lines)
    assert "refused: lstm: state.h has shape (4, 32), expected (4, 16) (from init_state(4))" \
        + SUFFIX in lines[-1]


def test_fused_lstm_still_matches_the_loop():
    m = make("lstm")
    x, s0 = randn(3, 7, D), m.init_state(3)
    with torch.no_grad():
        y, s = m(x, s0, mode="fused")
        y_ref, s_ref = mixers.step_loop(m, x, s0)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(s.c, s_ref.c, rtol=0, atol=1e-10)


# ---- the messages -----------------------------------------------------------------------------
def test_state_messages():
    gla, x = make("gla"), randn(4, 5, D)
    with pytest.raises(SeqmemError) as info:
        gla(x, gla.init_state(1))  # would broadcast over the batch
    assert str(info.value) == ("gla: state has shape (1, 2, 2, 4), expected (4, 2, 2, 4) "
                               "(from init_state(4))" + SUFFIX)
    with pytest.raises(SeqmemError) as info:
        gla.step(x[:, 0], gla.init_state(4, dtype=torch.float32))
    assert str(info.value) == ("gla: state has dtype torch.float32, expected torch.float64 "
                               "(the input's dtype)" + SUFFIX)
    dn = make("deltanet")
    with pytest.raises(SeqmemError) as info:
        dn(x, dn.init_state(4)._replace(conv=torch.zeros(4, 3, 24, dtype=F64, device="meta")))
    assert str(info.value) == "deltanet: state.conv is on meta, expected cpu (the input's " \
                              "device)" + SUFFIX
    with pytest.raises(SeqmemError) as info:
        dn(x, make("lstm").init_state(4))
    assert str(info.value) == ("deltanet: state is an LSTMState, expected a DeltaNetState "
                               "(S, conv) (from init_state(4))" + SUFFIX)
    tcn = make("tcn")
    with pytest.raises(SeqmemError) as info:
        tcn.step(x[:, 0], tcn.init_state(4)[:3])
    assert str(info.value) == ("tcn: state has 3 parts, expected a tuple of 8 parts "
                               "(from init_state(4))" + SUFFIX)
    with pytest.raises(SeqmemError) as info:
        make("tcnca").step(x[:, 0], torch.zeros(4, D, dtype=F64))
    assert str(info.value).startswith("tcnca: state is a Tensor, expected a TCNCAState (conv, "
                                      "k, v, log_m) (from init_state(4))")


def test_newton_diagnostics_check_the_state_too():
    m = make("gru")
    with pytest.raises(SeqmemError, match=r"^gru: state has shape \(2, 8\), expected \(3, 8\)"):
        m.newton(randn(3, 4, D), m.init_state(2))


# ---- what the check accepts -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lstm", "deltanet", "tcnca"])
def test_plain_tuple_is_read_as_the_state(name):
    """A plain tuple of the right parts (e.g. torch's (h, c)) is the mixer's NamedTuple."""
    m = make(name)
    x, s0 = randn(2, 6, D), m.init_state(2)

    def plain(s):
        return tuple(plain(p) for p in s) if isinstance(s, tuple) else s

    with torch.no_grad():
        y, s = m(x, plain(s0))
        y_ref, s_ref = m(x, s0)
        y1, s1 = m.step(x[:, 0], plain(s0))
        y1_ref, _ = m.step(x[:, 0], s0)
    assert type(s) is type(s_ref) and type(s1) is type(s0)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(y1, y1_ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", mixers.names())
def test_step_from_none_is_the_step_from_init_state(name):
    m = make(name)
    x = randn(2, D)
    if getattr(m, "h0", "zeros") != "zeros":
        pytest.skip("a random initial state")
    with torch.no_grad():
        y, s = m.step(x, None)
        y_ref, s_ref = m.step(x, m.init_state(2))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    for a, b in zip(torch.utils._pytree.tree_leaves(s), torch.utils._pytree.tree_leaves(s_ref),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class GrowingCache(mixers.Mixer):
    """A mixer whose state is every past input (b, t, d): y_t = the mean of x_1..x_t. Its
    state grows along dim 1, declared in `state_variable_dims`."""

    state_variable_dims: ClassVar[dict[str, tuple[int, ...]]] = {"": (1,)}

    def __init__(self, d_model: int):
        super().__init__(d_model)
        self.scale = torch.nn.Parameter(torch.ones(d_model))
        self.init_calls: list = []

    def _forward(self, x, state, mode, chunk_size):
        return self._step_loop(x, state)

    def _step(self, x_t, state):
        cache = torch.cat([state, x_t[:, None]], dim=1)  # (b, t + 1, d)
        return self.scale * cache.mean(1), cache

    def init_state(self, batch_size, *, device=None, dtype=None):
        self.init_calls.append(torch.device(device or "cpu").type)
        return torch.zeros(batch_size, 0, self.d_model, **self.state_options(device, dtype))

    def state_size(self):
        return 0


def test_state_variable_dims():
    m = GrowingCache(D).double()
    x = randn(2, 5, D)
    y, s = m(x)
    assert s.shape == (2, 5, D)
    torch.testing.assert_close(y[:, -1], x.mean(1), rtol=0, atol=1e-12)
    y2, s2 = m(x, s)  # a state of another length than init_state's: accepted
    assert s2.shape == (2, 10, D)
    torch.testing.assert_close(y2[:, -1], torch.cat([x, x], 1).mean(1), rtol=0, atol=1e-12)
    _, s3 = m.step(x[:, 0], s2)
    assert s3.shape == (2, 11, D)
    with pytest.raises(SeqmemError) as info:  # the other dims are still checked
        m.step(x[:, 0], s2[:1])
    assert str(info.value) == ("GrowingCache: state has shape (1, 10, 8), expected (2, *, 8) "
                               "(from init_state(2))" + SUFFIX)
    with pytest.raises(SeqmemError, match=r"has shape \(2, 10\), expected \(2, \*, 8\)"):
        m(x, s2[..., 0])


def test_expected_structure_is_built_once_on_the_meta_device():
    m = GrowingCache(D).double()
    s = m.init_state(3)
    m.init_calls.clear()
    for _ in range(5):
        _, s = m.step(randn(3, D), s)
    m(randn(3, 4, D), s)
    assert m.init_calls == ["meta"]  # one (batch, dtype): one structure, nothing allocated
    m(randn(2, 4, D), m.init_state(2))
    assert m.init_calls[1:] == ["cpu", "meta"]


# ---- NaN inputs -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", mixers.names())
def test_nan_input_reaches_earlier_outputs_only_in_the_recorded_forms(name):
    """A NaN at t = 3 (of 10): the step loop and the loop forms keep y_0..y_2 finite (they are
    causal for any input); the default form leaks to them exactly for LEAKS_NAN_BACKWARDS."""
    m = make(name)
    x = randn(2, 10, D)
    x[:, 3] = float("nan")
    with torch.no_grad():
        y_step, _ = mixers.step_loop(m, x, m.init_state(2))
        assert torch.isfinite(y_step[:, :3]).all(), "the step loop is not causal for NaN"
        assert torch.isnan(y_step[:, 3]).any()  # the NaN does reach the output
        for mode in m.modes:
            if mode in LOOP_MODES:
                y, _ = m(x, mode=mode, chunk_size=4)
                assert torch.isfinite(y[:, :3]).all(), f"mode {mode!r} is not causal for NaN"
        y, _ = m(x)  # the default training form
    leaks = bool(torch.isnan(y[:, :3]).any())
    assert leaks == (name in LEAKS_NAN_BACKWARDS), (
        f"{name}'s default form ({m.modes[0]!r}) {'now' if leaks else 'no longer'} makes "
        f"outputs before a NaN input NaN: update LEAKS_NAN_BACKWARDS")
