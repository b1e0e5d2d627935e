"""Probes: streaming accuracy, silencing units, and relative perturbations."""

import numpy as np
import pytest
import torch

from seqmem import tasks
from seqmem.analysis.probes import (
    features_silenced,
    forgetting_matrix,
    head_for,
    load_stage,
    perturbed,
    stream_accuracy,
)
from seqmem.config import load_config
from seqmem.engine.jobs import train_run
from seqmem.errors import SeqmemError
from seqmem.models import SequenceModel
from seqmem.store import RunStore


def _model(d=6, heads=(2, 2), seed=0):
    torch.manual_seed(seed)
    return SequenceModel(1, d, mixer="leaky_rnn", mixer_options={"input_proj": False},
                         heads=list(heads)).double()


def test_silencing_nothing_equals_the_model():
    m = _model()
    x = torch.bernoulli(torch.full((3, 20, 1), 0.5, dtype=torch.float64))
    h, _ = m.features(x)
    torch.testing.assert_close(features_silenced(m, x, []), h, rtol=0, atol=1e-12)
    hs = features_silenced(m, x, [1, 4])
    assert hs[..., [1, 4]].abs().max() == 0
    assert hs[..., [0, 2, 3, 5]].abs().max() > 0


def test_silencing_a_unit_the_readout_and_others_ignore_changes_nothing():
    m = _model()
    with torch.no_grad():  # unit 2 feeds neither the other units nor any head
        m.blocks[0].mixer.W[:, 2] = 0
        for head in m.heads:
            head.weight[:, 2] = 0
    g = dict(generator=torch.Generator().manual_seed(0))
    full = stream_accuracy(m, "n_parity", [2, 3], [0, 1], n_trials=2, stream_len=300,
                           burn_in=20, **g)
    g = dict(generator=torch.Generator().manual_seed(0))
    abl = stream_accuracy(m, "n_parity", [2, 3], [0, 1], n_trials=2, stream_len=300,
                          burn_in=20, silence=[2], **g)
    np.testing.assert_array_equal(full, abl)
    x = torch.bernoulli(torch.full((2, 50, 1), 0.5, dtype=torch.float64))
    h, _ = m.features(x)
    logits = m.heads[0](h)
    torch.testing.assert_close(m.heads[0](features_silenced(m, x, [2])), logits, rtol=0,
                               atol=1e-12)
    assert (m.heads[0](features_silenced(m, x, [0, 1])) - logits).abs().max() > 1e-6


def test_stream_accuracy_matches_an_oracle_for_a_constant_readout():
    m = _model(heads=(2,))
    with torch.no_grad():  # the head always says 1
        m.heads[0].weight.zero_()
        m.heads[0].bias.copy_(torch.tensor([0.0, 1.0]))
    acc = stream_accuracy(m, "n_dms", [3], [0], n_trials=3, stream_len=200, burn_in=10,
                          generator=torch.Generator().manual_seed(5))
    # the same stream, labelled by hand: DMS label at t is x[t-2] == x[t]
    b = tasks.build("n_dms", N=[3], streaming=True, stream_len=200, burn_in=10).sample(
        3, generator=torch.Generator().manual_seed(5))
    x = b.inputs[..., 0].numpy()
    want = np.mean([x[i, t - 2] == x[i, t] for i in range(3) for t in range(10, 200)])
    assert acc[0] == pytest.approx(want)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_weight_perturbation_has_relative_size_eps(eps):
    m = _model(d=10)
    p = perturbed(m, "W", eps, generator=torch.Generator().manual_seed(1))
    mix, pmix = m.blocks[0].mixer, p.blocks[0].mixer
    diff = torch.linalg.norm(pmix.W - mix.W)
    assert diff.item() == pytest.approx(eps * torch.linalg.norm(mix.recurrent_weight()).item())
    assert torch.equal(p.blocks[0].mixer.tau, mix.tau)
    if eps == 0:
        for a, b in zip(m.parameters(), p.parameters(), strict=True):
            assert torch.equal(a, b)
        g = torch.Generator().manual_seed(3)
        a = stream_accuracy(m, "n_parity", [2], [0], n_trials=2, stream_len=150, burn_in=10,
                            generator=g)
        g = torch.Generator().manual_seed(3)
        b = stream_accuracy(p, "n_parity", [2], [0], n_trials=2, stream_len=150, burn_in=10,
                            generator=g)
        np.testing.assert_array_equal(a / b, [1.0])


def test_tau_perturbation_only_lengthens():
    m = _model(d=10)
    p = perturbed(m, "tau", 0.2, generator=torch.Generator().manual_seed(1))
    d = p.blocks[0].mixer.tau - m.blocks[0].mixer.tau
    assert (d >= 0).all()
    assert torch.linalg.norm(d).item() == pytest.approx(
        0.2 * torch.linalg.norm(m.blocks[0].mixer.tau).item())


def test_probe_errors():
    m = _model()
    g = torch.Generator()
    with pytest.raises(SeqmemError, match="unknown perturbation 'x'; accepted: W, tau"):
        perturbed(m, "x", 0.1, generator=g)
    with pytest.raises(SeqmemError, match="eps must be >= 0"):
        perturbed(m, "W", -1, generator=g)
    gru = SequenceModel(1, 4, mixer="gru").double()
    with pytest.raises(SeqmemError, match="mixer 'gru' has no parameter to perturb as 'tau'"):
        perturbed(gru, "tau", 0.1, generator=g)
    with pytest.raises(SeqmemError, match=r"units must lie in \[0, 6\)"):
        features_silenced(m, torch.zeros(1, 3, 1, dtype=torch.float64), [7])


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_forgetting_matrix_from_stage_checkpoints(tmp_path, kind):
    cfg = load_config(None, ["model.d_model=8", "train.batch_size=16", "train.steps_per_epoch=1",
                             "train.eval_batches=1", "curriculum.threshold=0.01",
                             f"curriculum.kind={kind}", "curriculum.n_max=4"])
    run = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    train_run(cfg, run)
    out = forgetting_matrix(cfg, run, generator=torch.Generator().manual_seed(0), n_trials=2,
                            stream_len=120, burn_in=10)
    assert out["N"] == [2, 3, 4]
    R = out["R"]
    if kind == "multi":
        assert np.isnan(R[0, 1:]).all() and np.isnan(R[1, 2]) and not np.isnan(R[2]).any()
    else:
        assert not np.isnan(R).any()
    # one cell by a direct route: the stage-3 model on N = 2
    model = load_stage(cfg, run, 3)
    want = stream_accuracy(model, "n_parity", [2, 3], [head_for(cfg, 2), head_for(cfg, 3)],
                           generator=torch.Generator().manual_seed(0), n_trials=2,
                           stream_len=120, burn_in=10)
    # the matrix drew its streams in stage order from one generator: compare stage 2's row
    # with a fresh generator only for the first stage, whose draw comes first
    first = stream_accuracy(load_stage(cfg, run, 2), "n_parity",
                            [2] if kind == "multi" else [2, 3, 4],
                            [0] if kind == "multi" else [0, 0, 0],
                            generator=torch.Generator().manual_seed(0), n_trials=2,
                            stream_len=120, burn_in=10)
    np.testing.assert_array_equal(R[0, :len(first)], first)
    assert np.all((want >= 0) & (want <= 1))
