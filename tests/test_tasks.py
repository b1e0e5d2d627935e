"""Tasks: labels against a plain-loop oracle, lengths, bit statistics, seeding, the registry
contract for every registered task, and bad input."""

from __future__ import annotations

import inspect

import pytest
import torch

from seqmem import tasks
from seqmem.errors import SeqmemError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- oracles: plain Python over the bits ------------------------------------------------
def oracle_label(task_name: str, x: list[int], t: int, N: int) -> int:
    """The paper's label read out at step t for window length N, by a plain loop."""
    if task_name == "n_parity":
        s = 0
        for k in range(t - N + 1, t + 1):
            s += x[k]
        return s % 2
    return 1 if x[t - N + 1] == x[t] else 0


def bits_of(batch) -> list[list[int]]:
    return [[int(v) for v in row] for row in batch.inputs[..., 0].tolist()]


# ---- labels ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["n_parity", "n_dms"])
@pytest.mark.parametrize("N", [2, [2, 3], [5, 2, 4], [7]])
def test_last_step_labels_match_oracle(name, N):
    task = tasks.build(name, N=N)
    Ns = [N] if isinstance(N, int) else N
    g = gen(1)
    for _ in range(5):
        batch = task.sample(16, generator=g)
        M = batch.meta["seq_len"]
        assert batch.meta["N"] == Ns
        assert set(batch.inputs.unique().tolist()) <= {0.0, 1.0}
        for i, x in enumerate(bits_of(batch)):
            for j, n in enumerate(Ns):
                assert batch.targets[i, M - 1, j].item() == oracle_label(name, x, M - 1, n)


@pytest.mark.parametrize("name", ["n_parity", "n_dms"])
@pytest.mark.parametrize(("N", "stream_len", "burn_in"),
                         [([2, 3], 40, 5), ([6, 2], 30, 0), (4, 25, 10)])
def test_streaming_labels_match_oracle(name, N, stream_len, burn_in):
    task = tasks.build(name, N=N, streaming=True, stream_len=stream_len, burn_in=burn_in)
    Ns = [N] if isinstance(N, int) else N
    batch = task.sample(6, generator=gen(2))
    start = max(burn_in, max(Ns) - 1)
    for i, x in enumerate(bits_of(batch)):
        for t in range(stream_len):
            for j, n in enumerate(Ns):
                want = oracle_label(name, x, t, n) if t >= start else 0
                assert batch.targets[i, t, j].item() == want, (i, t, n)


def test_streaming_defaults_are_the_papers():
    # 1,100 steps, first 100 not scored, read-out at every later step.
    for name in ("n_parity", "n_dms"):
        batch = tasks.build(name, N=[2, 3], streaming=True).sample(2, generator=gen())
        assert batch.inputs.shape == (2, 1100, 1)
        assert batch.meta == {"N": [2, 3], "seq_len": 1100, "burn_in": 100}
        assert batch.mask[:, :100].sum() == 0 and bool(batch.mask[:, 100:].all())
        x = bits_of(batch)[1]
        for t in (100, 101, 555, 1099):
            assert batch.targets[1, t, 1].item() == oracle_label(name, x, t, 3)


# ---- masks, shapes, dtypes ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["n_parity", "n_dms"])
def test_mask_shapes_dtypes_last_step(name):
    batch = tasks.build(name, N=[3, 2]).sample(5, generator=gen())
    M = batch.meta["seq_len"]
    assert batch.inputs.shape == (5, M, 1) and batch.inputs.dtype == torch.float32
    assert batch.targets.shape == (5, M, 2) and batch.targets.dtype == torch.long
    assert batch.mask.shape == (5, M) and batch.mask.dtype == torch.bool
    want = torch.zeros(5, M, dtype=torch.bool)
    want[:, M - 1] = True
    assert torch.equal(batch.mask, want)
    assert batch.targets[:, : M - 1].abs().sum() == 0


@pytest.mark.parametrize("name", ["n_parity", "n_dms"])
@pytest.mark.parametrize(("N", "burn_in", "start"), [([2, 3], 5, 5), ([6, 2], 0, 5), (9, 3, 8)])
def test_mask_streaming(name, N, burn_in, start):
    batch = tasks.build(name, N=N, streaming=True, stream_len=20, burn_in=burn_in).sample(
        3, generator=gen())
    assert batch.inputs.shape == (3, 20, 1) and batch.inputs.dtype == torch.float32
    want = torch.tensor([t >= start for t in range(20)]).expand(3, 20)
    assert batch.mask.dtype == torch.bool and torch.equal(batch.mask, want)
    assert batch.targets[~batch.mask].abs().sum() == 0


# ---- lengths and bit statistics ----------------------------------------------------------
@pytest.mark.parametrize("name", ["n_parity", "n_dms"])
@pytest.mark.parametrize(("N", "low", "high"), [(2, 4, 9), ([3, 5], 7, 21)])
def test_length_is_uniform_over_the_papers_range(name, N, low, high):
    task = tasks.build(name, N=N)
    g = gen(3)
    seen = [task.sample(1, generator=g).meta["seq_len"] for _ in range(300)]
    assert set(seen) == set(range(low, high + 1))


def test_parity_bits_follow_per_sequence_p():
    batch = tasks.build("n_parity", N=25).sample(300, generator=gen(4))
    rate = batch.inputs[..., 0].double().mean(dim=1)  # (b,)
    p = batch.meta["p"].double()
    assert p.shape == (300,) and p.min() >= 0 and p.max() < 1
    assert torch.corrcoef(torch.stack([rate, p]))[0, 1] > 0.9
    assert rate.std() > 0.2  # deliberately unbalanced: rates spread over (0, 1)


def test_dms_and_stream_bits_are_balanced():
    batch = tasks.build("n_dms", N=25).sample(300, generator=gen(5))
    rate = batch.inputs[..., 0].double().mean(dim=1)
    assert abs(rate.mean().item() - 0.5) < 0.02
    assert rate.std() < 0.15  # one p = 0.5 for every sequence, unlike parity
    assert "p" not in batch.meta
    for name in ("n_parity", "n_dms"):
        s = tasks.build(name, N=2, streaming=True).sample(20, generator=gen(6))
        assert abs(s.inputs.double().mean().item() - 0.5) < 0.02


# ---- seeding -----------------------------------------------------------------------------
def batches_equal(a, b) -> bool:
    if a.meta.keys() != b.meta.keys():
        return False
    same_meta = all(
        torch.equal(a.meta[k], b.meta[k]) if isinstance(a.meta[k], torch.Tensor)
        else a.meta[k] == b.meta[k] for k in a.meta
    )
    return (a.inputs.shape == b.inputs.shape and torch.equal(a.inputs, b.inputs)
            and torch.equal(a.targets, b.targets) and torch.equal(a.mask, b.mask) and same_meta)


@pytest.mark.parametrize("name", ["n_parity", "n_dms"])
@pytest.mark.parametrize("streaming", [False, True])
def test_same_seed_same_batches_and_no_global_rng(name, streaming):
    task = tasks.build(name, N=[2, 4], streaming=streaming, stream_len=50, burn_in=10)
    g1, g2 = gen(7), gen(7)
    torch.manual_seed(123)
    first = [task.sample(8, generator=g1) for _ in range(3)]
    rng = torch.get_rng_state()
    torch.manual_seed(999)  # a different global RNG state must not matter
    second = [task.sample(8, generator=g2) for _ in range(3)]
    assert all(batches_equal(a, b) for a, b in zip(first, second, strict=True))
    torch.manual_seed(123)
    for _ in range(3):
        task.sample(8, generator=gen(1))
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG was not drawn from
    other = task.sample(8, generator=gen(8))
    assert not batches_equal(first[0], other)
    assert not batches_equal(first[0], first[1])  # the generator advances


# ---- the contract, for every registered task ---------------------------------------------
@pytest.mark.parametrize("name", tasks.names())
def test_every_registered_task_gives_a_consistent_batch(name):
    cls = tasks.get(name)
    assert cls.name == name and issubclass(cls, tasks.Task)
    params = tasks.hyperparameters(cls)
    assert all(p.default is not inspect.Parameter.empty for p in params.values())
    rng = torch.get_rng_state()
    try:
        task = tasks.build(name)  # defaults only; no side effects
    except SeqmemError as e:  # an optional extra that is not installed
        if "pip install" not in str(e):
            raise
        pytest.skip(str(e))
    assert torch.equal(torch.get_rng_state(), rng)
    regression = getattr(task, "loss", "ce") == "mse"
    if regression:  # real-valued targets (b, t, d_output), no classification heads
        assert task.heads == [] and task.d_output >= 1
    else:
        assert isinstance(task.heads, list) and task.heads and all(c >= 2 for c in task.heads)
    batch = task.sample(3, generator=gen())
    assert isinstance(batch, tasks.Batch) and isinstance(batch.meta, dict)
    b, t = batch.mask.shape
    assert b == 3 and t == batch.meta["seq_len"] and t >= 1
    if task.vocab is None:
        assert batch.inputs.shape == (b, t, task.d_input)
        assert batch.inputs.dtype == torch.float32
    else:
        assert batch.inputs.shape == (b, t) and batch.inputs.dtype == torch.long
        assert batch.inputs.min() >= 0 and batch.inputs.max() < len(task.vocab)
    assert batch.mask.dtype == torch.bool and batch.mask.any()
    if regression:
        assert batch.targets.shape == (b, t, task.d_output)
        assert batch.targets.dtype == torch.float32 and batch.targets.isfinite().all()
        assert batch.targets[~batch.mask].abs().sum() == 0
        return
    assert batch.targets.shape == (b, t, len(task.heads))
    assert batch.targets.dtype == torch.long
    for j, c in enumerate(task.heads):
        assert batch.targets[..., j].min() >= 0 and batch.targets[..., j].max() < c
    assert batch.targets[~batch.mask].abs().sum() == 0


def test_names_and_flagship_attributes():
    assert {"n_parity", "n_dms"} <= set(tasks.names())
    assert tasks.names() == sorted(tasks.names())
    for name in ("n_parity", "n_dms"):
        task = tasks.build(name, N=[4, 2, 9])
        assert task.d_input == 1 and task.heads == [2, 2, 2] and task.vocab is None
        assert list(tasks.hyperparameters(type(task))) == ["N", "streaming", "stream_len",
                                                          "burn_in"]


# ---- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: tasks.build("n_parit"), r"unknown task 'n_parit'; accepted: .*n_parity"),
        (lambda: tasks.get("nope"), r"unknown task 'nope'; accepted: .*n_dms, n_parity"),
        (lambda: tasks.build("n_parity", n=3), r"unknown option\(s\) n for task .*accepted: N"),
        (lambda: tasks.build("n_dms", N=1), r"N must be .*>= 2, got 1"),
        (lambda: tasks.build("n_parity", N=[2, 1]),
         r"every N of \[2, 1\] must be an integer >= 2, got 1"),
        (lambda: tasks.build("n_parity", N=[]), r"N must be .*non-empty.*got \[\]"),
        (lambda: tasks.build("n_parity", N=[2, 3, 2]), r"N must not repeat.*repeated: 2"),
        (lambda: tasks.build("n_parity", N=True), r"N must be .*got True"),
        (lambda: tasks.build("n_parity", N=2.5), r"N must be .*got 2.5"),
        (lambda: tasks.build("n_dms", stream_len=100, burn_in=100),
         r"stream_len must be greater than burn_in, got stream_len=100 and burn_in=100"),
        (lambda: tasks.build("n_dms", stream_len=50, burn_in=80), r"greater than burn_in"),
        (lambda: tasks.build("n_dms", burn_in=-1), r"burn_in must be an integer >= 0, got -1"),
        (lambda: tasks.build("n_dms", streaming="yes"), r"streaming must be true or false"),
        (lambda: tasks.build("n_dms", N=[2, 30], streaming=True, stream_len=20, burn_in=5),
         r"stream_len must be >= max\(N\)"),
        (lambda: tasks.build("n_parity").sample(0, generator=gen()),
         r"batch_size must be an integer >= 1, got 0"),
        (lambda: tasks.build("n_dms", streaming=True).sample(-2, generator=gen()),
         r"batch_size must be an integer >= 1, got -2"),
        (lambda: tasks.build("n_dms").sample(2, generator=None),
         r"generator must be a torch.Generator"),
    ],
)
def test_bad_input_raises_one_line_error(call, match):
    with pytest.raises(SeqmemError, match=match) as e:
        call()
    assert "\n" not in str(e.value)
