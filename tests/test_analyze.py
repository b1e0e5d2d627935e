"""`analyze_run`: the paper's analyses of a stored run, checked against direct computations;
the registry: an analysis registered anywhere runs and heads the summary."""

import json

import numpy as np
import pytest
import torch

from seqmem.analysis import registry
from seqmem.analysis.analyze import (
    ANALYSES,
    analyze_and_record,
    analyze_run,
    headline,
    read_analysis,
)
from seqmem.analysis.probes import load_stage
from seqmem.analysis.registry import analysis, analysis_names
from seqmem.config import load_config
from seqmem.engine.jobs import train_run
from seqmem.errors import SeqmemError
from seqmem.store import RunStore

SMALL = ["model.d_model=8", "train.batch_size=16", "train.steps_per_epoch=1",
         "train.eval_batches=1", "curriculum.threshold=0.01", "curriculum.n_max=4",
         "model.mixer.input_proj=false"]
FAST = {"n_trials": 2, "stream_len": 150}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, SMALL)
    store = RunStore(root)
    run = store.create_run(cfg.model_dump(mode="json"))
    train_run(cfg, run)
    return cfg, run, store


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registries as they are, restored after the test (its registrations dropped)."""
    monkeypatch.setattr(registry, "ANALYSIS_REGISTRY", dict(registry.ANALYSIS_REGISTRY))
    monkeypatch.setattr(registry, "FIGURE_REGISTRY", dict(registry.FIGURE_REGISTRY))


def test_analysis_of_a_trained_run(trained):
    cfg, run, _ = trained
    out = analyze_run(cfg, run, what=("timescales", "ablation", "perturbation", "forgetting"),
                      eps=(0.0, 0.1), n_draws=2, **FAST)
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
    assert all(taus[u] == max(taus) for u in ab["longest_tau_units"])
    assert all(taus[u] == min(taus) for u in ab["shortest_tau_units"])
    assert np.array(out["forgetting"]["R"]).shape == (3, 3)
    assert json.loads((run.dir / "analysis.json").read_text()) == json.loads(json.dumps(out))
    h = headline(out)
    assert h == {"ablate_longest_rel": ab["longest_rel"],
                 "ablate_longest_rel_sd": ab["longest_rel_sd"],
                 "ablate_shortest_rel": ab["shortest_rel"],
                 "ablate_shortest_rel_sd": ab["shortest_rel_sd"],
                 "perturb_W_0.1_rel": out["perturbation"]["W"][1]["rel_mean"],
                 "perturb_tau_0.1_rel": out["perturbation"]["tau"][1]["rel_mean"]}


def test_an_analysis_does_not_depend_on_which_others_run(trained):
    cfg, run, _ = trained
    alone = analyze_run(cfg, run, what=("perturbation",), eps=(0.0, 0.5), n_draws=2, **FAST)
    both = analyze_run(cfg, run, what=("ablation", "perturbation", "forgetting"),
                       eps=(0.0, 0.5), n_draws=2, **FAST)
    assert alone["perturbation"] == both["perturbation"]
    assert alone["base_accuracy"] == both["base_accuracy"]
    again = analyze_run(cfg, run, what=("perturbation",), seed=1, eps=(0.0, 0.5), n_draws=2,
                        **FAST)
    assert again["perturbation"]["W"][1]["draws"] != alone["perturbation"]["W"][1]["draws"]


def test_tau_net_and_dimensionality_at_spread_stages(trained):
    cfg, run, _ = trained
    out = analyze_run(cfg, run, what=("tau_net", "dimensionality"), tau_net_stages=2,
                      tau_net_steps=200)
    have = [s["N"] for s in out["stages"] if "tau_net_mean" in s]
    assert have == [2, 4] and [s["N"] for s in out["stages"] if "dimensionality" in s] == have
    assert all(1 <= s["dimensionality"] <= 8 for s in out["stages"] if "dimensionality" in s)
    last = out["stages"][-1]
    h = headline(out)
    assert (h["tau_net_mean"], h["dimensionality"]) == (last["tau_net_mean"],
                                                        last["dimensionality"])


def test_a_registered_analysis_runs_and_gives_its_headline(trained, scratch_registry):
    cfg, run, _ = trained

    @analysis("w_norm", needs="each_stage", writes=("w_norm",),
              headline={"w_norm": "||W|| (last N)"}, options={"w_scale": 1.0})
    def w_norm(ctx):
        W = ctx.model().blocks[-1].mixer.W
        return {"w_norm": ctx.options["w_scale"] * torch.linalg.norm(W).item()}

    assert "w_norm" in analysis_names() and "w_norm" not in ANALYSES
    out = analyze_run(cfg, run, what=("w_norm",), w_scale=2.0)
    want = [2 * torch.linalg.norm(run.load_checkpoint(f"N{n:03d}")["model"]
                                  ["blocks.0.mixer.W"]).item() for n in (2, 3, 4)]
    assert [s["w_norm"] for s in out["stages"]] == pytest.approx(want)
    assert headline(out)["w_norm"] == pytest.approx(want[-1])
    assert read_analysis(run) == json.loads(json.dumps(out))


def test_a_registered_once_analysis_sees_the_last_stage(trained, scratch_registry):
    cfg, run, _ = trained

    @analysis("n_params", needs="last_stage", writes=("n_params", "n_stages"),
              headline={"n_params_k": "parameters (thousands)"},
              headline_of=lambda w: {"n_params_k": w["n_params"] / 1000})
    def n_params(ctx):
        return {"n_params": sum(p.numel() for p in ctx.model().parameters()),
                "n_stages": len(ctx.Ns)}

    out = analyze_run(cfg, run, what=("n_params",))
    want = sum(p.numel() for p in load_stage(cfg, run, 4).parameters())
    assert (out["N"], out["curriculum"], out["n_params"], out["n_stages"]) == \
        ([2, 3, 4], "multi", want, 3)
    assert out["provenance"]["n_params"]["options"] == {"n_trials": 8, "stream_len": 1100,
                                                       "tau_net_stages": 3}
    assert headline(out)["n_params_k"] == want / 1000


def test_analyze_and_record_puts_the_headline_into_the_store(trained):
    _, run, store = trained
    store.update_summary(run.id, {"n_solved": 4})
    out, h = analyze_and_record(store, run.id, what=("ablation",), **FAST)
    assert h == headline(out) and {"ablate_longest_rel", "ablate_longest_rel_sd",
                                   "ablate_shortest_rel", "ablate_shortest_rel_sd"} <= set(h)
    assert store.get(run.id)["summary"] == {"n_solved": 4, **h}
    assert read_analysis(run) == json.loads(json.dumps(out))


def test_analysis_errors(trained, tmp_path, scratch_registry):
    cfg, run, _ = trained
    with pytest.raises(SeqmemError, match="unknown analysis nope; accepted: timescales"):
        analyze_run(cfg, run, what=("nope",))
    with pytest.raises(SeqmemError, match="unknown analysis option n_trail; accepted: n_trials"):
        analyze_run(cfg, run, what=("ablation",), n_trail=2)
    fresh = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    with pytest.raises(SeqmemError, match="no curriculum-step checkpoints"):
        analyze_run(cfg, fresh)

    @analysis("sloppy", needs="last_stage", writes=("a",))
    def sloppy(ctx):
        return {"a": 1, "b": 2}

    with pytest.raises(SeqmemError, match="'sloppy' returned b, which it does not declare"):
        analyze_run(cfg, run, what=("sloppy",))
    with pytest.raises(SeqmemError, match="'sloppy' is already registered"):
        analysis("sloppy", needs="last_stage", writes=("a",))(sloppy)
    with pytest.raises(SeqmemError, match="unknown needs 'later'; accepted: each_stage"):
        analysis("late", needs="later", writes=("a",))
    with pytest.raises(SeqmemError, match="may not write stages"):
        analysis("rows", needs="all_stages", writes=("stages",))
    with pytest.raises(SeqmemError, match="option 'eps' already has the default"):
        analysis("eps2", needs="last_stage", writes=("x",), options={"eps": 0.3})


def test_analyses_that_apply_to_few_runs_run_only_by_name():
    from seqmem.analysis.analyze import ANALYSES, DEFAULT_ANALYSES
    from seqmem.analysis.registry import ANALYSIS_REGISTRY
    from seqmem.cli.parser import build_parser

    assert DEFAULT_ANALYSES == ("timescales", "tau_net", "dimensionality", "ablation",
                                "perturbation", "forgetting")
    assert {"pruning", "lr_law", "symbolic", "richness"} <= set(ANALYSES) - set(DEFAULT_ANALYSES)
    assert all(ANALYSIS_REGISTRY[n].default == (n in DEFAULT_ANALYSES) for n in ANALYSES)
    args = build_parser().parse_args(["analyze", "some-run"])
    assert args.what.split(",") == list(DEFAULT_ANALYSES)
