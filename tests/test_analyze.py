"""`analyze_run`: the paper's analyses of a stored run, checked against direct computations."""

import json

import numpy as np
import pytest
import torch

from seqmem.analysis.analyze import analyze_run, headline
from seqmem.config import load_config
from seqmem.errors import SeqmemError
from seqmem.store import RunStore
from seqmem.train.loop import train

SMALL = ["model.d_model=8", "train.batch_size=16", "train.steps_per_epoch=1",
         "train.eval_batches=1", "curriculum.threshold=0.01", "curriculum.n_max=4",
         "model.mixer.input_proj=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, SMALL)
    run = RunStore(root).create_run(cfg.model_dump(mode="json"))
    train(cfg, run)
    return cfg, run


def test_analysis_of_a_trained_run(trained):
    cfg, run = trained
    out = analyze_run(cfg, run, what=("timescales", "ablation", "perturbation", "forgetting"),
                      n_trials=2, stream_len=150, eps=(0.0, 0.1), n_draws=2)
    assert out["N"] == [2, 3, 4]
    # per-stage tau statistics equal those of the checkpoint's tau, clamped at 1
    for st in out["stages"]:
        tau = run.load_checkpoint(f"N{st['N']:03d}")["model"]["blocks.0.mixer.tau"]
        tau = torch.clamp(tau, min=1.0).double()
        assert st["tau"]["mean"] == pytest.approx(tau.mean().item())
        assert st["tau"]["sd"] == pytest.approx(tau.std().item())
    for kind in ("W", "tau"):
        zero = out["perturbation"][kind][0]
        assert zero["eps"] == 0.0 and zero["rel_mean"] == 1.0
    ab = out["ablation"]
    taus = out["stages"][-1]["tau_values"]
    assert taus[ab["longest_tau_unit"]] == max(taus) and taus[ab["shortest_tau_unit"]] == min(taus)
    assert np.array(out["forgetting"]["R"]).shape == (3, 3)
    assert json.loads((run.dir / "analysis.json").read_text())["N"] == [2, 3, 4]
    h = headline(out)
    assert {"ablate_longest_rel", "perturb_W_0.1_rel", "perturb_tau_0.1_rel"} <= set(h)


def test_analysis_errors(trained, tmp_path):
    cfg, run = trained
    with pytest.raises(SeqmemError, match="unknown analysis nope; accepted: timescales"):
        analyze_run(cfg, run, what=("nope",))
    fresh = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    with pytest.raises(SeqmemError, match="no curriculum-step checkpoints"):
        analyze_run(cfg, fresh)
