"""The baselines: the linear RNN's memory is W's spectrum; the MLP has none."""

import math

import pytest
import torch

from seqmem import mixers
from seqmem.errors import SeqmemError


def test_linear_rnn_is_the_loop_of_its_equation_and_its_timescales_are_the_spectrum():
    torch.manual_seed(0)
    m = mixers.build("linear", 6, spectral_radius=0.5).double()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    y, h = m(x)
    ref = torch.zeros(2, 6, dtype=torch.float64)
    for t in range(9):  # h_t = W h_{t-1} + U x_t + b, by hand
        ref = ref @ m.W.T + x[:, t] @ m.U.weight.T + m.U.bias
        assert torch.allclose(y[:, t], ref)
    assert torch.allclose(h, ref)
    # orthogonal W scaled by 0.5: every eigenvalue has modulus 0.5, tau = -1 / log 0.5
    assert torch.allclose(m.timescales(), torch.full((6,), -1 / math.log(0.5),
                                                     dtype=torch.float64))
    with pytest.raises(SeqmemError, match="spectral_radius must be a positive number"):
        mixers.build("linear", 4, spectral_radius=0)


def test_mlp_has_no_memory():
    torch.manual_seed(0)
    m = mixers.build("mlp", 5)
    x = torch.randn(3, 7, 5)
    y, state = m(x)
    assert m.state_size() == 0 and state.shape == (3, 0)
    x2 = x.clone()
    x2[:, :3] = torch.randn(3, 3, 5)  # another past
    y2, _ = m(x2)
    assert torch.equal(y[:, 3:], y2[:, 3:])  # the present alone decides
    assert torch.allclose(y[:, 4], m.step(x[:, 4], None)[0])
