"""The neurogym task: its batches are the environment's own trials (an oracle: a fresh
environment seeded with the same integer), and a clear error without the optional extra."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from seqmem import tasks
from seqmem.errors import SeqmemError

needs_neurogym = pytest.mark.skipif(importlib.util.find_spec("neurogym") is None,
                                    reason="neurogym not installed (pip install "
                                           "'seqmem[neurogym]')")


@needs_neurogym
@pytest.mark.parametrize(("env", "mask"), [("DelayMatchSample-v0", "all"),
                                           ("PerceptualDecisionMaking-v0", "decision")])
def test_batches_are_the_environments_trials(env, mask):
    from seqmem.tasks.neurogym_task import make_env

    task = tasks.build("neurogym", env=env, mask=mask)
    g = torch.Generator().manual_seed(3)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(3)))
    batch = task.sample(6, generator=g)
    ref = make_env(env)
    ref.seed(seed)
    assert task.heads == [ref.action_space.n]
    assert batch.inputs.shape[-1] == task.d_input == ref.observation_space.shape[0]
    for i in range(6):
        ref.new_trial()
        n = len(ref.gt)
        assert batch.meta["length"][i] == n
        np.testing.assert_array_equal(batch.inputs[i, :n].numpy(), ref.ob.astype(np.float32))
        assert not batch.mask[i, n:].any() and (batch.inputs[i, n:] == 0).all()
        if mask == "all":
            assert batch.mask[i, :n].all()
        else:
            lo, hi = ref.start_ind["decision"], ref.end_ind["decision"]
            assert batch.mask[i].nonzero().flatten().tolist() == list(range(lo, hi))
        sup = batch.mask[i]
        np.testing.assert_array_equal(batch.targets[i, sup, 0].numpy(), ref.gt[sup[:n].numpy()])


@needs_neurogym
def test_bad_environment_and_options():
    with pytest.raises(SeqmemError, match="unknown NeuroGym environment 'Nope-v0'"):
        tasks.build("neurogym", env="Nope-v0")
    with pytest.raises(SeqmemError, match="unknown mask"):
        tasks.build("neurogym", mask="some")
    with pytest.raises(SeqmemError, match="env_kwargs"):
        tasks.build("neurogym", env_kwargs={"no_such_option": 1})


def test_without_neurogym_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "neurogym" else real(name, *a))
    with pytest.raises(SeqmemError, match=r"pip install 'seqmem\[neurogym\]'") as e:
        tasks.build("neurogym")
    assert "\n" not in str(e.value)
