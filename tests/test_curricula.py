"""Curricula: which N are trained on which head, and when N advances (flagship paper rules)."""

import pytest

from seqmem.curricula import Curriculum
from seqmem.errors import SeqmemError


def test_single_moves_one_head_forward():
    c = Curriculum(kind="single", n_start=2, n_max=4, threshold=0.98)
    assert c.active_N() == [2] and c.active_heads(1) == [0] and c.n_heads == 1
    assert not c.update([0.98])  # strictly greater than the threshold is needed
    assert c.update([0.99])
    assert c.active_N() == [3] and c.active_heads(1) == [0]
    assert c.update([1.0]) and c.update([1.0])
    assert c.finished and c.solved == [2, 3, 4] and c.n_solved == 4
    assert c.epochs_per_N == {2: 2, 3: 1, 4: 1}
    assert not c.update([1.0])  # nothing after the ceiling


def test_multi_needs_mean_and_newest():
    c = Curriculum(kind="multi", n_start=2, n_max=100, threshold=0.9)
    assert c.n_heads == 99
    assert c.update([0.95])
    assert c.active_N() == [2, 3] and c.active_heads(99) == [0, 1]
    assert not c.update([1.0, 0.85])  # newest head below threshold
    assert not c.update([0.8, 0.95])  # mean 0.875 below threshold
    assert c.update([0.95, 0.95])
    assert c.active_N() == [2, 3, 4] and c.epochs_per_N == {2: 1, 3: 3}


def test_sliding_window_trains_the_newest_heads():
    c = Curriculum(kind="sliding", n_start=2, n_max=20, window=3, threshold=0.5)
    for _ in range(5):
        assert c.update([1.0] * len(c.active_N()))
    assert c.active_N() == [5, 6, 7]
    assert c.active_heads(19) == [3, 4, 5]


def test_none_never_advances():
    c = Curriculum(kind="none")
    assert c.active_N() is None and c.active_heads(3) == [0, 1, 2] and c.n_heads == 0
    assert not c.update([1.0, 1.0, 1.0])
    assert c.solved == []


def test_state_round_trip():
    c = Curriculum(kind="multi", n_start=3, n_max=10, threshold=0.5)
    c.update([0.9])
    c.update([0.1, 0.2])
    d = Curriculum.from_state(c.state_dict())
    assert d == c


def test_unknown_kind():
    with pytest.raises(SeqmemError, match="unknown curriculum 'double'; accepted: single"):
        Curriculum(kind="double")


@pytest.mark.parametrize("what", ["n_start", "n_max", "window", "step"])
@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_sizes_must_be_positive_integers(what, bad):
    with pytest.raises(SeqmemError, match=rf"curriculum: {what} must be an integer >= 1, "
                                          rf"got {bad!r}"):
        Curriculum(kind="multi", **{what: bad})
