"""The tasks' optional packages: MNIST-1D from the `mnist1d` package (the same arrays as its
`make_dataset`, no global random state left behind, the source recorded) and dysts' flows for
the dynamics task (the same vector field as dysts' right-hand side, integrated by seqmem's RK4);
the exact pass over a fixed data set's split. A test that needs a package skips, saying so,
where it is not installed."""

from __future__ import annotations

import importlib.util
import random
import warnings

import numpy as np
import pytest
import torch

from seqmem import tasks
from seqmem.errors import SeqmemError
from seqmem.tasks import digits
from seqmem.tasks.dynamics import lorenz63, rk4_step, system_spec

needs_mnist1d = pytest.mark.skipif(
    importlib.util.find_spec("mnist1d") is None,
    reason="the mnist1d package is not installed (pip install seqmem[mnist1d])")
needs_dysts = pytest.mark.skipif(
    importlib.util.find_spec("dysts") is None,
    reason="the dysts package is not installed (pip install seqmem[dysts])")


def _package_dataset(n_samples: int, seed: int, shuffle_seq: bool = False) -> dict:
    """The package's own make_dataset, called directly (it seeds the global generators)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.shuffle_seq = n_samples, seed, shuffle_seq
    return make_dataset(args)


# ---- MNIST-1D ------------------------------------------------------------------------------
@needs_mnist1d
@pytest.mark.parametrize(("n_samples", "seed", "shuffle_seq"), [(5000, 42, False),
                                                                (300, 3, True)])
def test_mnist1d_package_source_equals_make_dataset(n_samples, seed, shuffle_seq):
    ref = _package_dataset(n_samples, seed, shuffle_seq)
    for split, x_key, y_key in (("train", "x", "y"), ("test", "x_test", "y_test")):
        task = tasks.build("mnist1d", split=split, n_samples=n_samples, data_seed=seed,
                           shuffle_seq=shuffle_seq, source="package")
        x, y = task._data()  # (n, 40, 1), (n,)
        np.testing.assert_array_equal(y.numpy(), ref[y_key])
        np.testing.assert_array_equal(x[..., 0].numpy(), ref[x_key].astype(np.float32))


@needs_mnist1d
def test_mnist1d_package_leaves_global_generators_as_they_were():
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(3), random.random()
    np.random.seed(123)
    random.seed(123)
    digits.make_mnist1d_package(100, seed=5)
    np.testing.assert_array_equal(np.random.rand(3), expected_np)
    assert random.random() == expected_py


@needs_mnist1d
def test_mnist1d_source_is_recorded_in_repr_and_meta():
    auto = tasks.build("mnist1d")
    assert auto.source == "package" and "source='package'" in repr(auto)
    batch = auto.sample(4, generator=torch.Generator().manual_seed(0))
    assert batch.meta["source"] == "package"
    builtin = tasks.build("mnist1d", source="builtin")
    assert builtin.sample(2, generator=torch.Generator().manual_seed(0)).meta["source"] == \
        "builtin"
    x_pkg, _ = auto._data()
    x_own, _ = builtin._data()
    assert x_pkg.shape == x_own.shape and not torch.equal(x_pkg, x_own)  # two samples


def test_mnist1d_builtin_source_is_the_port(monkeypatch):
    task = tasks.build("mnist1d", split="test", n_samples=200, data_seed=3, source="builtin")
    x, y = task._data()
    x_ref, y_ref = digits.make_mnist1d(200, seed=3)
    torch.testing.assert_close(x[..., 0], x_ref[160:], rtol=0, atol=0)
    assert torch.equal(y, y_ref[160:])
    monkeypatch.setattr(digits, "mnist1d_package_installed", lambda: False)
    assert tasks.build("mnist1d").source == "builtin"  # auto without the package
    with pytest.raises(SeqmemError, match=r"needs the mnist1d package.*pip install "
                                          r"seqmem\[mnist1d\]"):
        tasks.build("mnist1d", source="package")
    with pytest.raises(SeqmemError, match=r"unknown source 'web'"):
        tasks.build("mnist1d", source="web")


# ---- one exact pass over a split -----------------------------------------------------------
@pytest.mark.parametrize("name", ["mnist1d", "seq_digits"])
def test_iter_batches_is_one_pass_over_the_split_in_order(name):
    if name == "seq_digits" and importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn not installed (pip install seqmem[data])")
    opts = {"n_samples": 300, "source": "builtin"} if name == "mnist1d" else {}
    task = tasks.build(name, split="test", **opts)
    x, y = task._data()
    n = task.n_examples()
    assert n == len(y) == (60 if name == "mnist1d" else 360)
    batches = list(task.iter_batches(25))
    assert [len(b.inputs) for b in batches] == [25] * (n // 25) + ([n % 25] if n % 25 else [])
    torch.testing.assert_close(torch.cat([b.inputs for b in batches]), x, rtol=0, atol=0)
    assert torch.equal(torch.cat([b.targets[:, -1, 0] for b in batches]), y)
    assert all(b.mask[:, -1].all() and not b.mask[:, :-1].any() for b in batches)
    one = task.batch_at([5, 2])
    torch.testing.assert_close(one.inputs, x[[5, 2]], rtol=0, atol=0)
    assert one.meta["split"] == "test"
    drawn = task.sample(3, generator=torch.Generator().manual_seed(1))
    again = task.batch_at(torch.randint(0, n, (3,), generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(drawn.inputs, again.inputs, rtol=0, atol=0)
    assert torch.equal(drawn.meta["index"], again.meta["index"])
    for bad in ([], [n], [-1], [[0, 1]]):
        with pytest.raises(SeqmemError, match=r"batch_at takes a non-empty 1-D index"):
            task.batch_at(bad)
    with pytest.raises(SeqmemError, match=r"batch_size"):
        next(task.iter_batches(0))


# ---- dysts ---------------------------------------------------------------------------------
@needs_dysts
def test_dysts_lorenz_is_dysts_field_integrated_by_rk4():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Numba not installed")
        from dysts.flows import Lorenz
    flow = Lorenz()
    spec = system_spec("dysts:Lorenz")
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 10
    ref = np.stack(flow.rhs(x.numpy(), 0.0), axis=-1)
    np.testing.assert_allclose(spec["f"](x).numpy(), ref, rtol=1e-14, atol=0)
    # Same equations as seqmem's lorenz63 with dysts' parameters (beta = 2.667, not 8/3).
    p = flow.params
    own = lorenz63(x, sigma=p["sigma"], rho=p["rho"], beta=p["beta"])
    torch.testing.assert_close(spec["f"](x), own, rtol=1e-14, atol=1e-12)

    task = tasks.build("dynamics", system="dysts:Lorenz", seq_len=30, burn_in=1.0)
    assert task.d_input == task.d_output == 3
    assert task.step_size == pytest.approx(flow.period / 100)
    batch = task.sample(4, generator=torch.Generator().manual_seed(2))
    assert batch.inputs.shape == batch.targets.shape == (4, 30, 3)
    # Every next sample is one RK4 step of dysts' field from the previous one.
    raw = task.raw_trajectory(5, 3, generator=torch.Generator().manual_seed(4))  # (b, 5, 3)
    for k in range(4):
        torch.testing.assert_close(rk4_step(spec["f"], raw[:, k], task.step_size),
                                   raw[:, k + 1], rtol=0, atol=1e-12)
    std = torch.tensor(np.asarray(flow.std), dtype=torch.float64)
    mean = torch.tensor(np.asarray(flow.mean), dtype=torch.float64)
    torch.testing.assert_close(task.standardise(raw), (raw - mean) / std, rtol=0, atol=1e-12)


@needs_dysts
def test_dysts_names_are_checked():
    with pytest.raises(SeqmemError, match=r"unknown dysts flow 'NoSuchFlow'; accepted: .*"
                                          r"dysts:Lorenz"):
        tasks.build("dynamics", system="dysts:NoSuchFlow")
    with pytest.raises(SeqmemError, match=r"non-autonomous"):
        tasks.build("dynamics", system="dysts:ForcedVanDerPol")


def test_dysts_without_the_package_says_how_to_install(monkeypatch):
    from seqmem.tasks import dynamics

    real = importlib.util.find_spec
    monkeypatch.setattr(dynamics.importlib.util, "find_spec",
                        lambda name, *a: None if name == "dysts" else real(name, *a))
    dynamics.dysts_system.cache_clear()
    try:
        with pytest.raises(SeqmemError, match=r"needs the dysts package.*seqmem\[dysts\]"):
            tasks.build("dynamics", system="dysts:Lorenz")
    finally:
        dynamics.dysts_system.cache_clear()
