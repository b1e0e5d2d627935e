"""forward's `final_state=False`: the same outputs, None for the state, and attention builds no
KV cache for it; the training loop asks for it; the recorded state size of attention counts the
cache that the task's length fills, not the capacity max_len - 1."""

from __future__ import annotations

import pytest
import torch

from seqmem import mixers
from seqmem.build import build_curriculum, build_model, build_task
from seqmem.config import load_config
from seqmem.mixers.attention import Attention
from seqmem.models.sequence import SequenceModel
from seqmem.train.loop import batch_loss, model_state_size

F64 = torch.float64


def _attention(**kw):
    torch.manual_seed(0)
    return mixers.build("attention", 8, n_heads=2, **kw).double()


@pytest.mark.parametrize("kw", [{}, {"window": 3}, {"max_len": 4}, {"rotary": False}])
def test_attention_outputs_identical_without_final_state(kw):
    m = _attention(**kw)
    x = torch.randn(3, 6, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    filled = m(x[:, :4])[1]  # a cache holding tokens
    for state in (None, m.init_state(3), filled):
        for mode in m.modes:
            y, s = m(x, state, mode=mode)
            y_no, s_no = m(x, state, mode=mode, final_state=False)
            assert s_no is None and s is not None
            assert torch.equal(y, y_no)
    # t = 0: an empty output, None for the state
    y0, s0 = m(x[:, :0], filled, final_state=False)
    assert y0.shape == (3, 0, 8) and s0 is None


def test_attention_from_empty_state_builds_no_cache(monkeypatch):
    m = _attention()  # max_len 1024: a cache of 1023 slots if it were built
    x = torch.randn(64, 16, 8, dtype=F64)

    def refuse(*args, **kwargs):
        raise AssertionError("the KV cache was built")

    y_ref = m(x)[0]
    monkeypatch.setattr(Attention, "init_state", refuse)
    monkeypatch.setattr(Attention, "_keep", refuse)
    y, s = m(x, final_state=False)
    assert s is None and torch.equal(y, y_ref)
    with pytest.raises(AssertionError, match="cache was built"):
        m(x)  # the flag, not the path, is what skips it


def test_other_mixers_give_none_and_the_same_outputs():
    x = torch.randn(2, 5, 8, dtype=F64, generator=torch.Generator().manual_seed(2))
    for name in ("gla", "mamba", "gru", "gated_deltanet"):
        torch.manual_seed(0)
        m = mixers.build(name, 8).double()
        y, s = m(x)
        y_no, s_no = m(x, final_state=False)
        assert s is not None and s_no is None
        torch.testing.assert_close(y_no, y, rtol=0, atol=0)


def test_features_without_final_state():
    torch.manual_seed(0)
    model = SequenceModel(0, 8, mixer="attention,gla", n_layers=2, block="residual",
                          heads=[3], vocab_size=5).double()
    x = torch.randint(0, 5, (2, 7))
    h, states = model.features(x)
    h_no, none = model.features(x, final_state=False)
    assert none == [None] * 4 and all(s is not None for s in states)
    assert torch.equal(h, h_no)


def test_init_state_drawn_only():
    torch.manual_seed(0)
    model = SequenceModel(0, 8, mixer="leaky_rnn,attention", heads=[3], vocab_size=5,
                          mixer_options={"leaky_rnn": {"h0": "random"}})
    full = model.init_state(4, generator=torch.Generator().manual_seed(3))
    drawn = model.init_state(4, generator=torch.Generator().manual_seed(3), drawn_only=True)
    assert drawn[1] is None and full[1] is not None
    assert torch.equal(drawn[0], full[0]) and drawn[0].abs().sum() > 0  # the same draws


def _mqar(mixer, **extra):
    cfg = load_config(None, ["task.kind=mqar", "task.seq_len=16", "model.d_model=16",
                             f"model.mixer.kind={mixer}", "model.n_layers=2",
                             *[f"{k}={v}" for k, v in extra.items()]])
    cur = build_curriculum(cfg)
    return build_model(cfg, cur), build_task(cfg, cur)


def test_batch_loss_is_the_loss_of_the_full_forward():
    model, task = _mqar("attention")
    batch = task.sample(4, generator=torch.Generator().manual_seed(0))
    heads = list(range(len(model.heads)))
    loss, _ = batch_loss(model, task, batch, heads, torch.Generator().manual_seed(1))
    # the independent route: the whole forward from init_state, every state built
    h, states = model.features(batch.inputs, model.init_state(4))
    assert all(s is not None for s in states)
    logits = model.heads[0](h)[batch.mask]
    ref = torch.nn.functional.cross_entropy(logits, batch.targets[..., 0][batch.mask])
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)


def test_recorded_state_size_counts_the_cache_the_task_fills():
    model, task = _mqar("attention")  # max_len 1024: a capacity of 1023 slots
    t = task.sample(1, generator=torch.Generator().manual_seed(0)).mask.shape[1]
    per_slot = 2 * 16 + 1  # a key, a value and a log-weight
    assert model_state_size(model, task) == 2 * t * per_slot
    assert model.mixer_modules()[0].state_size() == 1023 * per_slot
    model, task = _mqar("attention", **{"model.mixer.max_len": 8})  # fewer slots than t
    assert model_state_size(model, task) == 2 * 7 * per_slot
