"""Continual protocols and methods for training science: the power-law re-exposure protocol (its
gaps against the normalised power law, its schedule and the metrics over revisited
experiences), regression experiences (metrics of the stored MSE matrix recomputed by hand, one
entry recomputed from the model), the sparse method (masked weights exactly zero, exact
prune-and-regrow counts and choices), and the two-phase sweep (the best point of the tuning
phase is the one run on the evaluation stream)."""

from __future__ import annotations

import itertools
import math

import matplotlib.pyplot as plt
import pytest
import torch

from seqmem.analysis.registry import Entry
from seqmem.build import build_continual
from seqmem.continual import ContinualConfig, build_protocol, fit_continual, summarize
from seqmem.continual.loop import EVAL_SEED
from seqmem.continual.power_law import power_law_gaps, power_law_schedule
from seqmem.continual.rehearsal import _examples
from seqmem.continual.sparse import prune_and_regrow, sparse_parameters
from seqmem.errors import ConfigError, SeqmemError
from seqmem.report.page import continual_figure
from seqmem.report.render import CANVAS
from seqmem.store import RunStore
from seqmem.sweep import read_sweep, run_two_phase

torch.set_num_threads(1)

TINY = dict(steps=3, batch_size=8, curve_every=3, eval_batches=1, eval_batch_size=16,
            d_model=8, threads=1)


def normalised_power_law(a: float, G: int) -> list[float]:
    w = [g ** -a for g in range(1, G + 1)]
    return [x / sum(w) for x in w]


def close_to(freq: list[float], p: list[float], n: int) -> None:
    """Each empirical frequency within 5 binomial standard errors of its probability."""
    for g, (f, q) in enumerate(zip(freq, p, strict=True), start=1):
        assert abs(f - q) <= 5 * math.sqrt(q * (1 - q) / n), (g, f, q)


# ---- power law ---------------------------------------------------------------------------------
@pytest.mark.parametrize("a", [0.0, 1.5, 3.0])
def test_power_law_gaps_follow_the_normalised_power_law(a):
    n, G = 100_000, 8
    gaps = power_law_gaps(n, exponent=a, max_gap=G, generator=torch.Generator().manual_seed(1))
    assert int(gaps.min()) >= 1 and int(gaps.max()) <= G
    freq = [(gaps == g).sum().item() / n for g in range(1, G + 1)]
    close_to(freq, normalised_power_law(a, G), n)


def test_power_law_schedule_gaps_days_and_seeding():
    K, L, G, a = 3, 20_000, 6, 1.2
    sched, days = power_law_schedule(K, L, exponent=a, max_gap=G,
                                     generator=torch.Generator().manual_seed(0))
    assert len(sched) == len(days) == L
    assert [days[sched.index(k)] for k in range(K)] == list(range(K))  # k first on day k
    assert all(d0 <= d1 for d0, d1 in itertools.pairwise(days))
    for d in set(days[:200]):  # within a day: distinct experiences in index order
        today = [k for k, dd in zip(sched, days, strict=True) if dd == d]
        assert today == sorted(set(today))
    gaps = []
    for k in range(K):
        mine = [d for j, d in zip(sched, days, strict=True) if j == k]
        gaps += [b - c for c, b in itertools.pairwise(mine)]
    freq = [gaps.count(g) / len(gaps) for g in range(1, G + 1)]
    close_to(freq, normalised_power_law(a, G), len(gaps))
    again = power_law_schedule(K, 50, exponent=a, max_gap=G,
                               generator=torch.Generator().manual_seed(0))
    assert again == (sched[:50], days[:50])
    other = power_law_schedule(K, 50, exponent=a, max_gap=G,
                               generator=torch.Generator().manual_seed(1))
    assert other[0] != sched[:50]


def test_power_law_protocol_revisits_the_base_experiences():
    p = build_protocol("power_law", base_options={"n_max": 4}, n_sessions=10, exponent=1.0,
                       seed=3)
    base = build_protocol("n_curriculum", n_max=4)
    assert [e.name for e in p.experiences] == [e.name for e in base.experiences]
    assert p.heads == base.heads and p.name == "power_law_n_parity_curriculum"
    ref, _ = power_law_schedule(3, 10, exponent=1.0, generator=torch.Generator().manual_seed(3))
    assert p.sessions == ref and sorted(set(ref)) == [0, 1, 2]
    with pytest.raises(SeqmemError, match=r"give n_sessions >= \d+$"):
        build_protocol("power_law", base_options={"n_max": 6}, n_sessions=2)
    with pytest.raises(SeqmemError, match="exponent must be a finite number >= 0"):
        build_protocol("power_law", exponent=-1.0)


def by_hand(R, sched, base, *, lower):
    """BWT, forgetting and FWT of an L x T matrix with a schedule, written as loops, with the
    loss sign convention (score = -loss) when `lower`."""
    sign = -1.0 if lower else 1.0
    L, T = len(R), len(R[0])
    S = [[sign * v for v in row] for row in R]
    b = [sign * v for v in base]
    earlier = [j for j in range(T) if j in sched and j != sched[-1]]
    last = {j: max(k for k in range(L) if sched[k] == j) for j in earlier}
    first = {j: min(k for k in range(L) if sched[k] == j) for j in range(T) if j in sched}
    bwt = sum(S[L - 1][j] - S[last[j]][j] for j in earlier) / len(earlier)
    fgt = sum(max(S[k][j] for k in range(L - 1)) - S[L - 1][j] for j in earlier) / len(earlier)
    fw = [j for j in first if first[j] > 0]
    fwt = sum(S[first[j] - 1][j] - b[j] for j in fw) / len(fw)
    return bwt, fgt, fwt


def test_metrics_of_revisited_experiences_reduce_to_the_plain_ones():
    R = [[0.9, 0.1, 0.2], [0.5, 0.8, 0.3], [0.4, 0.6, 0.7]]
    plain = summarize(R, [0.1, 0.2, 0.3])
    again = summarize(R, [0.1, 0.2, 0.3], schedule=[0, 1, 2])
    assert plain == again
    R4 = [*R, [0.8, 0.5, 0.6]]  # experience 0 revisited last
    got = summarize(R4, [0.1, 0.2, 0.3], schedule=[0, 1, 2, 0])
    bwt, fgt, fwt = by_hand(R4, [0, 1, 2, 0], [0.1, 0.2, 0.3], lower=False)
    assert got["avg_acc"] == pytest.approx((0.8 + 0.5 + 0.6) / 3)
    assert (got["bwt"], got["forgetting"], got["fwt"]) == pytest.approx((bwt, fgt, fwt))
    assert got["bwt"] == pytest.approx(((0.5 - 0.8) + (0.6 - 0.7)) / 2)  # j = 1, 2


def test_power_law_run_records_every_distinct_experience_after_every_session():
    cfg = ContinualConfig(protocol="power_law", protocol_options={
        "base_options": {"n_max": 4}, "n_sessions": 5, "max_gap": 2, "seed": 1}, **TINY)
    protocol, method = build_continual(cfg)
    out = fit_continual(cfg, None, protocol, method)
    sched = out["schedule"]
    assert sched == protocol.sessions and len(out["R"]) == 5 and len(out["R"][0]) == 3
    bwt, fgt, fwt = by_hand(out["R"], sched, out["baseline"], lower=False)
    assert out["avg_acc"] == pytest.approx(sum(out["R"][-1]) / 3)
    assert (out["bwt"], out["forgetting"], out["fwt"]) == pytest.approx((bwt, fgt, fwt))


# ---- regression experiences -------------------------------------------------------------------
def test_regression_experiences_metrics_are_those_of_the_stored_mse_matrix():
    cfg = ContinualConfig(protocol="power_law", protocol_options={
        "base": "dynamics", "base_options": {"seq_len": 8, "burn_in": 1.0},
        "n_sessions": 4, "max_gap": 2}, **TINY)
    protocol, method = build_continual(cfg)
    assert protocol.loss == "mse" and protocol.heads == [3, 3]  # task setting: a head each
    out = fit_continual(cfg, None, protocol, method)
    R, sched = out["R"], out["schedule"]
    assert out["score"] == "mse" and "avg_acc" not in out
    assert out["avg_loss"] == pytest.approx(sum(R[-1]) / len(R[-1]))
    bwt, fgt, fwt = by_hand(R, sched, out["baseline"], lower=True)
    assert (out["bwt"], out["forgetting"], out["fwt"]) == pytest.approx((bwt, fgt, fwt))
    # the last row, recomputed from the trained model: the MSE of its predictions
    with torch.no_grad():
        for j, e in enumerate(protocol.experiences):
            gen = torch.Generator().manual_seed(EVAL_SEED + 7919 * j)
            batch = e.test.sample(cfg.eval_batch_size, generator=gen)
            (pred,), _ = method.model(batch.inputs, heads=[e.head])
            mse = ((pred - batch.targets) ** 2).mean().item()
            assert R[-1][j] == pytest.approx(mse, rel=1e-5)


def test_regression_protocols_and_methods():
    p = build_protocol("dynamics", systems=["lorenz63", "lorenz63"], dt=[0.01, 0.03])
    assert [e.name for e in p.experiences] == ["lorenz63@dt=0.01", "lorenz63@dt=0.03"]
    assert p.experiences[1].train.step_size == 0.03 and p.setting == "domain"
    t = build_protocol("tasks", configs=[{"task": "dynamics", "seq_len": 5},
                                         {"task": "dynamics", "system": "roessler"}])
    assert t.loss == "mse" and t.heads == [3, 3]
    with pytest.raises(SeqmemError, match="mixes classification and regression"):
        build_protocol("tasks", configs=[{"task": "dynamics"}, {"task": "n_parity"}])
    with pytest.raises(SeqmemError, match=r"one step .* per system"):
        build_protocol("dynamics", dt=[0.01])
    batch = p.experiences[0].train.sample(2, generator=torch.Generator().manual_seed(0))
    assert _examples(0, batch)[0][2].shape == batch.targets.shape[1:]  # every channel kept
    for method in ("ewc", "replay"):  # the Gaussian Fisher and the regression buffer
        cfg = ContinualConfig(protocol="dynamics", method=method,
                              protocol_options={"seq_len": 6, "burn_in": 1.0}, **TINY)
        out = fit_continual(cfg, None, *build_continual(cfg))
        assert all(math.isfinite(v) for row in out["R"] for v in row)


# ---- sparse ------------------------------------------------------------------------------------
def test_prune_and_regrow_chooses_by_magnitude_and_gradient():
    w = torch.tensor([[0.5, -0.1, 0.0, 2.0], [-0.3, 0.0, 0.05, 0.0]])
    mask = torch.tensor([[1.0, 1, 0, 1], [1, 0, 1, 0]])
    grad = torch.tensor([[9.0, 9, 0.2, 9], [9, -0.7, 9, 0.4]])
    new, k = prune_and_regrow(w, mask, 0.4, regrow="gradient", grad=grad)
    active = [(abs(w.view(-1)[i].item()), i) for i in range(8) if mask.view(-1)[i] == 1]
    want_k = min(round(0.4 * len(active)), 8 - len(active))
    pruned = {i for _, i in sorted(active)[:want_k]}  # smallest |w|: 0.05 and -0.1
    inactive = [(abs(grad.view(-1)[i].item()), i) for i in range(8) if mask.view(-1)[i] == 0]
    grown = {i for _, i in sorted(inactive, reverse=True)[:want_k]}  # largest |grad|
    assert k == want_k == 2 and pruned == {1, 6} and grown == {5, 7}
    flat = new.view(-1)
    assert {i for i in range(8) if mask.view(-1)[i] == 1 and flat[i] == 0} == pruned
    assert {i for i in range(8) if mask.view(-1)[i] == 0 and flat[i] == 1} == grown
    rnd, k2 = prune_and_regrow(w, mask, 0.4, regrow="random",
                               generator=torch.Generator().manual_seed(0))
    assert k2 == 2 and rnd.sum() == mask.sum()
    assert {i for i in range(8) if mask.view(-1)[i] == 1 and rnd.view(-1)[i] == 0} == pruned


@pytest.mark.parametrize("regrow", ["random", "gradient"])
def test_sparse_masks_stay_exactly_zero_and_regrow_what_was_pruned(regrow):
    s, f = 0.6, 0.3
    cfg = ContinualConfig(mixer="gru", method="sparse", method_options={
        "sparsity": s, "prune_fraction": f, "regrow": regrow, "update_every": 2},
        protocol_options={"n_max": 4}, **{**TINY, "steps": 4})
    protocol, method = build_continual(cfg)
    params = sparse_parameters(method.model)
    assert set(params) == {"blocks.0.mixer.weight_ih", "blocks.0.mixer.weight_hh"}
    n_active = {n: round((1 - s) * p.numel()) for n, p in params.items()}
    checked = []

    def check(ev):
        if ev["event"] != "step":
            return
        for n, p in params.items():
            m = method.masks[n]
            assert int(m.sum()) == n_active[n]  # the density never changes
            assert bool((p.detach()[m == 0] == 0).all())  # masked entries exactly zero
            if p.grad is not None and ev["step"] % 2:  # (an update just changed the mask)
                assert bool((p.grad[m == 0] == 0).all())  # and receive no gradient
        checked.append(ev["step"])

    fit_continual(cfg, None, protocol, method, emit=check)
    assert len(checked) == 3 * 4
    # updates: every 2 steps within each of the 3 experiences, and at the 2 boundaries
    assert len(method.history) == 3 * 2 + 2
    for counts in method.history:
        for n, (pruned, regrown) in counts.items():
            k = min(round(f * n_active[n]), params[n].numel() - n_active[n])
            assert pruned == regrown == k


@pytest.mark.parametrize("regrow", ["random", "gradient"])
def test_sparse_power_law_run_resumes_to_the_same_result(tmp_path, regrow):
    cfg = ContinualConfig(mixer="gru", method="sparse", protocol="power_law", method_options={
        "regrow": regrow, "update_every": 2}, protocol_options={
        "base_options": {"n_max": 3}, "n_sessions": 4, "max_gap": 2}, **TINY)
    ref_protocol, ref_method = build_continual(cfg)
    ref = fit_continual(cfg, None, ref_protocol, ref_method)
    store = RunStore(tmp_path)
    run = store.create_run(cfg.model_dump(mode="json"), kind="continual")

    def stop_in_third(ev):
        if ev["event"] == "step" and ev["experience"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_continual(cfg, run, *build_continual(cfg), emit=stop_in_third)
    protocol, method = build_continual(cfg)
    out = fit_continual(cfg, run, protocol, method, resume=True)
    assert out["R"] == ref["R"] and out["schedule"] == ref["schedule"]
    for n, m in ref_method.masks.items():  # the same prune-and-regrow choices after resuming
        assert torch.equal(method.masks[n], m)
        assert torch.equal(method.params[n].detach(), ref_method.params[n].detach())


def test_sparse_refuses_bad_options():
    cfg = dict(mixer="gru", method="sparse", **TINY)
    with pytest.raises(SeqmemError, match=r"sparse: sparsity must be a number in \[0, 1\)"):
        build_continual(ContinualConfig(method_options={"sparsity": 1.0}, **cfg))
    with pytest.raises(SeqmemError, match="regrow"):
        build_continual(ContinualConfig(method_options={"regrow": "magic"}, **cfg))


# ---- two-phase sweep ---------------------------------------------------------------------------
def test_two_phase_sweep_evaluates_the_point_best_on_the_tuning_stream(tmp_path):
    sweep = tmp_path / "tp.yaml"
    sweep.write_text(
        "name: tp\nkind: continual\n"
        "base: {steps: 3, batch_size: 8, curve_every: 3, eval_batches: 1, eval_batch_size: 16,"
        " d_model: 8, threads: 1}\n"
        "grid: {lr: [0.0001, 0.03]}\nseeds: [0, 1]\n"
        "two_phase:\n"  # forecasting streams: a continuous score, so no ties
        "  tune: {protocol: dynamics, protocol_options: {seq_len: 6, burn_in: 1.0}}\n"
        "  evaluate: {protocol: power_law, protocol_options: {base: dynamics, base_options:"
        " {systems: [roessler, lorenz63], seq_len: 6, burn_in: 1.0}, n_sessions: 3}}\n"
        "  select: avg_loss\n")
    spec = read_sweep(sweep)
    store = RunStore(tmp_path / "runs")
    res = run_two_phase(spec, store, workers=1, backend="inline")
    assert all(st == "done" for st in res.status.values()) and len(res.status) == 4 + 2
    tune = store.list_runs(name="tp-tune")
    assert len(tune) == 4
    by_lr: dict[float, list[float]] = {}
    for row in tune:
        cfg = store.open_run(row["id"]).config()
        assert cfg["protocol"] == "dynamics"
        by_lr.setdefault(cfg["lr"], []).append(row["summary"]["avg_loss"])
    mean = {lr: sum(v) / len(v) for lr, v in by_lr.items()}
    assert len(set(mean.values())) == 2
    best_lr = min(mean, key=mean.get)  # a loss: lower is better
    assert res.best.point == {"lr": best_lr}
    assert res.best.score == pytest.approx(mean[best_lr])
    ev = store.list_runs(name="tp-eval")
    assert len(ev) == 2
    cfgs = [store.open_run(r["id"]).config() for r in ev]
    assert {c["protocol"] for c in cfgs} == {"power_law"} and {c["lr"] for c in cfgs} == {best_lr}
    assert sorted(c["seed"] for c in cfgs) == [0, 1]
    want = sum(r["summary"]["avg_loss"] for r in ev) / 2
    assert res.eval_score.score == pytest.approx(want)
    # the grid's keys are frozen between the phases: a phase may not set them
    sweep.write_text(sweep.read_text().replace("tune: {protocol: dynamics,",
                                               "tune: {lr: 0.1, protocol: dynamics,"))
    with pytest.raises(ConfigError, match=r"two_phase\.tune sets lr, which the grid sweeps"):
        read_sweep(sweep)


def test_report_map_of_a_revisiting_regression_run_names_its_sessions():
    R = [[0.9, 1.2], [0.8, 0.3], [0.2, 0.5]]
    summary = {"method": "finetune", "R": R, "experiences": ["lorenz63", "roessler"],
               "schedule": [0, 1, 0], "score": "mse"}
    fig, _header, rows, _caption = continual_figure([Entry("finetune", "r", summary)], CANVAS)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["lorenz63", "roessler", "lorenz63"]
    assert [r[1] for r in rows] == ["lorenz63", "roessler", "lorenz63"]
    im = ax.images[0]
    assert im.norm.vmin == 0 and im.norm.vmax == 1.2 and im.get_cmap().name == "RdBu_r"
    plt.close(fig)
