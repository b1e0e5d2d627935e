"""Data-parallel training over several processes (`seqmem.train.distributed`): 2 local CPU
processes (gloo) give the numbers of 1 process with the whole batch, to float32 round-off;
rank 0 alone writes; a killed rank ends the run as interrupted with its last good checkpoint,
and the run resumes under 2 processes to the same numbers."""

import os
import signal

import pytest
import torch

from seqmem.config import load_config
from seqmem.engine import train_run
from seqmem.store import RunStore
from seqmem.train import distributed

# 33 sequences: the shares of 2 ranks are unequal (16 and 17), as are their supervised
# positions, so the weighting by positions is tested, not only an even split
BASE = ["model.d_model=16", "train.batch_size=33", "train.steps_per_epoch=4",
        "train.eval_batches=2", "train.max_epochs=3", "curriculum.kind=none", "task.N=3"]


def _losses(run) -> list[float]:
    return [x for r in run.metrics() if "step_loss" in r for x in r["step_loss"]]


def _train(tmp_path, name, extra, emit=None, resume=False, run=None):
    cfg = load_config(None, [*BASE, *extra])
    if run is None:
        run = RunStore(tmp_path / name).create_run(cfg.model_dump(mode="json"))
    summary = train_run(cfg, run, emit=emit, resume=resume)
    return run, summary


def _close(a: list[float], b: list[float], tol=1e-5) -> float:
    ta, tb = torch.tensor(a), torch.tensor(b)
    assert ta.shape == tb.shape
    err = ((ta - tb).abs() / ta.abs().clamp_min(1e-6)).max().item()
    assert err < tol, err
    return err


def test_share_cuts_contiguous_parts_that_cover_the_batch():
    for n in (1, 2, 5, 33):
        for world in (1, 2, 3, 4):
            parts = [distributed.share(n, r, world) for r in range(world)]
            idx = [i for p in parts for i in range(n)[p]]
            assert idx == list(range(n))
            sizes = [len(range(n)[p]) for p in parts]
            assert max(sizes) - min(sizes) <= 1


def test_share_tree_cuts_every_tensor_of_a_nested_state():
    from typing import NamedTuple

    class S(NamedTuple):
        h: torch.Tensor
        c: torch.Tensor

    x = torch.arange(10.0).reshape(5, 2)
    tree = [S(x, x + 1), None, (x * 2,), {"k": x}]
    out = distributed.share_tree(tree, slice(1, 3))
    assert torch.equal(out[0].h, x[1:3]) and torch.equal(out[0].c, (x + 1)[1:3])
    assert out[1] is None and torch.equal(out[2][0], (x * 2)[1:3])
    assert torch.equal(out[3]["k"], x[1:3]) and isinstance(out[0], S)


@pytest.mark.parametrize("mixer", ["gru", "gated_deltanet"])
def test_two_processes_equal_one_with_the_whole_batch(tmp_path, mixer):
    one, _ = _train(tmp_path, "one", [f"model.mixer.kind={mixer}"])
    two, _ = _train(tmp_path, "two", [f"model.mixer.kind={mixer}", "train.nproc=2"])
    assert len(_losses(one)) == 12
    _close(_losses(one), _losses(two))
    for a, b in zip(one.metrics(), two.metrics(), strict=True):
        _close(a["acc"], b["acc"])
        _close([a["eval_loss"]], [b["eval_loss"]])
    pa, pb = one.load_checkpoint("last")["model"], two.load_checkpoint("last")["model"]
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.allclose(pa[k], pb[k], rtol=1e-5, atol=1e-6), k
    # the run differs from one process with half the batch: the gradients were summed
    half, _ = _train(tmp_path, "half", [f"model.mixer.kind={mixer}", "train.batch_size=16"])
    assert _losses(half)[1:] != pytest.approx(_losses(one)[1:], rel=1e-4)
    # the lead alone wrote: one metrics file with one line per epoch
    assert [r["epoch"] for r in two.metrics()] == [1, 2, 3]
    assert all(p.poll() == 0 for p in distributed.FOLLOWERS)


def test_a_killed_rank_ends_the_run_interrupted_and_it_resumes_to_the_same_numbers(tmp_path):
    whole, _ = _train(tmp_path, "whole", ["train.max_epochs=4"])
    cfg = load_config(None, [*BASE, "train.max_epochs=4", "train.nproc=2"])
    run = RunStore(tmp_path / "cut").create_run(cfg.model_dump(mode="json"))

    def kill_the_follower_after_two(ev):
        if ev["event"] == "epoch" and ev["record"]["epoch"] == 2:
            os.kill(distributed.FOLLOWERS[0].pid, signal.SIGKILL)

    with pytest.raises(KeyboardInterrupt, match="a rank of the run ended"):
        train_run(cfg, run, emit=kill_the_follower_after_two)
    assert distributed.FOLLOWERS[0].returncode == -signal.SIGKILL
    assert not torch.distributed.is_initialized()  # the lead left the group
    assert [r["epoch"] for r in run.metrics()] == [1, 2]  # nothing half-written
    assert run.load_checkpoint("last")["train"]["epoch"] == 2
    train_run(cfg, run, resume=True)  # under 2 processes again
    assert [r["epoch"] for r in run.metrics()] == [1, 2, 3, 4]
    _close(_losses(whole), _losses(run))


@pytest.mark.slow
def test_torchrun_gives_the_numbers_of_one_process(tmp_path):
    """`torchrun --nproc-per-node 2 --no-python seqmem train ...`: rank 0 writes one run, whose
    losses are those of one process with the whole batch."""
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    seqmem = Path(sys.executable).with_name("seqmem")
    if not torchrun.exists() or not seqmem.exists():
        pytest.skip("torchrun and the seqmem script are not beside this python")
    args = ["train", "--mixer", "gru", "--no-progress", *BASE]
    root2 = tmp_path / "two"
    out = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--no-python", str(seqmem),
                          *args, "--root", str(root2)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = RunStore(root2).list_runs()
    assert len(runs) == 1
    one, _ = _train(tmp_path, "one", ["model.mixer.kind=gru"])
    _close(_losses(one), _losses(RunStore(root2).open_run(runs[0]["id"])))
