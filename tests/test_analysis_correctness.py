"""The analyses of a trained run, checked by independent routes: each analysis alone equals
the same analysis inside the full set; a partial rerun replaces only its own entries and
records its provenance; ablation picks the units of extreme tau, breaks ties at random, and
equals ablating by zeroing the unit's weights (the authors' route); perturbation of a GRU."""

import copy
import json

import numpy as np
import pytest
import torch

import seqmem
from seqmem.analysis.ablation import ablation_ks, tau_order
from seqmem.analysis.analyze import ANALYSES, analyze_run, headline
from seqmem.analysis.context import derived_seed
from seqmem.analysis.probes import head_for, load_stage, perturbed, stream_accuracy
from seqmem.analysis.registry import analyses, analysis_names
from seqmem.config import load_config
from seqmem.engine.jobs import train_run
from seqmem.errors import SeqmemError
from seqmem.store import RunStore

SMALL = ["model.d_model=8", "train.batch_size=16", "train.steps_per_epoch=1",
         "train.eval_batches=1", "curriculum.threshold=0.01", "curriculum.n_max=4"]
MIXERS = {"leaky_rnn": ["model.mixer.input_proj=false"], "gru": ["model.mixer.kind=gru"]}
FAST = {"n_trials": 2, "stream_len": 150, "tau_net_steps": 200, "eps": (0.0, 0.1),
        "n_draws": 2, "ablation_draws": 3, "tau_net_stages": 2}


def _train(root, overrides):
    cfg = load_config(None, SMALL + overrides)
    run = RunStore(root).create_run(cfg.model_dump(mode="json"))
    train_run(cfg, run)
    return cfg, run


@pytest.fixture(scope="module", params=list(MIXERS))
def trained(request, tmp_path_factory):
    return _train(tmp_path_factory.mktemp(request.param), MIXERS[request.param])


def _fresh(run, cfg, **kw):
    """analyze_run on a run folder without an earlier analysis.json."""
    (run.dir / "analysis.json").unlink(missing_ok=True)
    return analyze_run(cfg, run, **kw)


def _entries(out: dict, spec) -> dict:
    """What analysis `spec` wrote into `out`: its top-level keys, or its fields per stage."""
    if spec.per_stage:
        return {r["N"]: {k: r[k] for k in spec.writes if k in r} for r in out["stages"]}
    return {k: out[k] for k in spec.writes if k in out}


def test_every_analysis_alone_equals_itself_in_the_full_set(trained):
    cfg, run = trained
    assert analysis_names() == ANALYSES  # the test covers every registered analysis
    full = _fresh(run, cfg, what=ANALYSES, **FAST)
    for spec in analyses():
        alone = _fresh(run, cfg, what=(spec.name,), **FAST)
        assert set(alone["provenance"]) == {spec.name}
        got, want = _entries(alone, spec), _entries(full, spec)
        assert got == want, spec.name
        if spec.name == "symbolic":  # subregion codes need a piecewise-linear model (al_rnn,
            continue  # plrnn): {} here; tests/test_alrnn_gtf.py covers it on those
        assert any(v for v in (got.values() if not spec.per_stage else
                               [x for row in got.values() for x in row.values()])), spec.name


def test_a_partial_rerun_replaces_only_its_own_entries(trained):
    cfg, run = trained
    (run.dir / "analysis.json").unlink(missing_ok=True)
    first = analyze_run(cfg, run, what=("timescales", "tau_net", "ablation", "forgetting"),
                        seed=0, **FAST)
    again = analyze_run(cfg, run, what=("tau_net", "ablation"), seed=1, **FAST)
    on_disk = json.loads((run.dir / "analysis.json").read_text())
    assert on_disk == again
    spec = {s.name: s for s in analyses()}
    for kept in ("timescales", "forgetting"):  # not rerun: unchanged, provenance kept
        assert _entries(again, spec[kept]) == _entries(first, spec[kept])
        assert again["provenance"][kept] == first["provenance"][kept]
        assert again["provenance"][kept]["seed"] == 0
    alone = {name: _entries(_fresh(run, cfg, what=(name,), seed=1, **FAST), spec[name])
             for name in ("tau_net", "ablation")}
    for name in ("tau_net", "ablation"):  # rerun: replaced by the seed-1 values
        assert _entries(again, spec[name]) == alone[name]
        p = again["provenance"][name]
        assert p["seed"] == 1 and p["version"] == seqmem.__version__
        assert p["commit"] is None or len(p["commit"]) == 40
        assert p["N"] == again["N"]
    assert again["provenance"]["ablation"]["options"]["ablation_draws"] == 3
    assert again["provenance"]["tau_net"]["options"]["tau_net_steps"] == 200
    assert _entries(again, spec["ablation"]) != _entries(first, spec["ablation"])
    # the report's keys stay where they were
    assert {"N", "curriculum", "stages", "ablation", "forgetting"} <= set(again)
    assert headline(again)["ablate_longest_rel"] == again["ablation"]["longest_rel"]


def test_an_unreadable_analysis_file_is_one_error(trained):
    cfg, run = trained
    (run.dir / "analysis.json").write_text("{not json")
    with pytest.raises(SeqmemError, match=r"cannot be read .*delete it and analyse the run"):
        analyze_run(cfg, run, what=("timescales",), **FAST)
    (run.dir / "analysis.json").write_text("[1, 2]")
    with pytest.raises(SeqmemError, match="holds no analysis"):
        analyze_run(cfg, run, what=("timescales",), **FAST)
    (run.dir / "analysis.json").unlink()


def _zeroed(model, units):
    """The authors' ablation: the units' rows and columns of the recurrent weights, their
    input weights and their read-out columns set to zero."""
    m = copy.deepcopy(model)
    mix = m.blocks[-1].mixer
    with torch.no_grad():
        for u in units:
            mix.W[u, :] = 0
            mix.W[:, u] = 0
            m.encoder.weight[u, :] = 0
            for h in m.heads:
                h.weight[:, u] = 0
    return m


def test_ablation_equals_zeroing_the_units_weights(tmp_path):
    cfg, run = _train(tmp_path, MIXERS["leaky_rnn"])
    out = _fresh(run, cfg, what=("ablation",), **FAST)
    a = out["ablation"]
    model = load_stage(cfg, run, a["N"])
    tau = model.timescales().double().numpy()
    assert a["d"] == 8 and a["draws"] == 3

    def direct(units):
        g = torch.Generator().manual_seed(derived_seed(0, "streams"))
        acc = stream_accuracy(_zeroed(model, units), cfg.task.kind, [a["N"]],
                              [head_for(cfg, a["N"])], generator=g, n_trials=2, stream_len=150)
        return float(acc[0]) / a["base_accuracy"]

    desc = np.sort(tau)[::-1]
    for pt in a["curve"]["longest"]:
        k = pt["k"]
        if k < 8 and desc[k - 1] == desc[k]:
            continue  # a tie at the cut: the units depend on the draw
        units = np.argsort(-tau, kind="stable")[:k]
        assert pt["draws"] == pytest.approx([direct(units)] * 3, abs=0.02), k
    # one unit: every draw ablates a unit of the extreme tau, and gives its own accuracy
    for order, ext in (("longest", tau.max()), ("shortest", tau.min())):
        tied = np.flatnonzero(tau == ext)
        assert set(a[f"{order}_tau_units"]) <= set(tied.tolist())
        assert a[f"n_{order}_tied"] == len(tied)
        d1 = a["curve"][order][0]["draws"]
        for u, r in zip(a[f"{order}_tau_units"], d1, strict=True):
            assert r == pytest.approx(direct([u]), abs=0.02)
        assert a[f"{order}_rel"] == pytest.approx(np.mean(d1))
    assert [p["k"] for p in a["curve"]["random"]] == ablation_ks(8)
    s = a["single"]
    assert s["n_units"] == 1 and s["longest"]["units"] == [[int(np.argmax(tau))]] * 3
    want = np.mean([direct([u[0]]) for u in s["shortest"]["units"]])
    assert s["shortest"]["rel"][0] == pytest.approx(want, abs=0.02)
    assert all(tau[u[0]] == tau.min() for u in s["shortest"]["units"])


def test_tau_order_breaks_ties_by_the_permutation():
    tau = np.array([1.0, 3.0, 1.0, 2.0, 3.0, 1.0])
    assert tau_order(tau, "longest", np.arange(6)).tolist() == [1, 4, 3, 0, 2, 5]
    assert tau_order(tau, "longest", np.arange(6)[::-1].copy()).tolist() == [4, 1, 3, 5, 2, 0]
    assert tau_order(tau, "shortest", np.array([5, 2, 0, 1, 3, 4])).tolist() == [5, 2, 0, 3, 1,
                                                                               4]
    perm = np.array([3, 1, 0, 2, 5, 4])
    assert tau_order(tau, "random", perm).tolist() == perm.tolist()
    firsts = {tau_order(tau, "shortest", np.random.default_rng(i).permutation(6))[0]
              for i in range(30)}
    assert firsts == {0, 2, 5}  # every tied unit gets its turn
    assert ablation_ks(128) == [1, 6, 13, 32, 64] and ablation_ks(4) == [1, 2]


def test_gru_perturbation_changes_every_gate_and_skips_tau(trained):
    cfg, run = trained
    out = _fresh(run, cfg, what=("perturbation",), **FAST)
    mixer = load_stage(cfg, run, out["N"][-1]).blocks[-1].mixer
    if cfg.model.mixer.kind == "gru":
        assert set(out["perturbation"]["tau"]) == {"skipped"}
        assert "gru" in out["perturbation"]["tau"]["skipped"]
        assert "perturb_tau_0.1_rel" not in headline(out)
    else:
        assert isinstance(out["perturbation"]["tau"], list)
    W = out["perturbation"]["W"]
    assert [p["eps"] for p in W] == [0.0, 0.1] and W[0]["rel_mean"] == 1.0
    assert headline(out)["perturb_W_0.1_rel"] == W[1]["rel_mean"]
    model = load_stage(cfg, run, out["N"][-1])
    name = "weight_hh" if hasattr(mixer, "weight_hh") else "W"
    before = getattr(mixer, name).detach().clone()
    after = getattr(perturbed(model, "W", 0.1, generator=torch.Generator().manual_seed(0))
                    .blocks[-1].mixer, name).detach()
    dW = after - before
    ref = mixer.recurrent_weight() if name == "W" else before
    assert torch.linalg.norm(dW).item() == pytest.approx(0.1 * torch.linalg.norm(ref).item(),
                                                         rel=1e-5)
    if name == "weight_hh":  # all three gates move
        assert all(torch.count_nonzero(g) == g.numel() for g in dW.chunk(3))
