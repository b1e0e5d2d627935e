"""`seqmem analyze`: the flagship paper's analyses of a trained run, stage by stage.

For a run trained under an N-curriculum (checkpoints N<k> at every step), computes

- timescales: each stage's single-unit timescales (`mixer.timescales()`: tau for the leaky
  RNN, gate-derived for GRU/LSTM), mean, sd and max;
- tau_net: each stage's network-mediated timescales (`analysis.timescales`);
- dimensionality: principal components explaining 90 % of the activity's variance, per stage;
- ablation: at the last stage, the relative accuracy (on the streaming task, head of the last
  N) with the longest-tau unit silenced, and with the shortest-tau unit silenced;
- perturbation: at the last stage, the relative accuracy after W or tau is perturbed with
  relative size eps, several draws per eps;
- forgetting: the accuracy on every N after each curriculum step.

Results go to <run>/analysis.json; headline numbers are returned for the store's summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import torch

from seqmem.analysis.probes import (
    forgetting_matrix,
    head_for,
    load_stage,
    perturbed,
    stage_checkpoints,
    stream_accuracy,
)
from seqmem.errors import SeqmemError

ANALYSES = ("timescales", "tau_net", "dimensionality", "ablation", "perturbation", "forgetting")
EPS = (0.0, 0.05, 0.1, 0.2, 0.5)


def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=float)
    return {"mean": float(np.mean(x)), "sd": float(np.std(x, ddof=1)) if x.size > 1 else 0.0,
            "max": float(np.max(x)), "min": float(np.min(x))}


def analyze_run(cfg, run, *, what: tuple[str, ...] = ANALYSES, seed: int = 0,
                n_trials: int = 8, stream_len: int = 1100, eps: tuple[float, ...] = EPS,
                n_draws: int = 2, tau_net_steps: int = 2000, tau_net_stages: int | None = 3,
                progress: Callable[[str], None] | None = None) -> dict:
    """Run the chosen analyses on `run` (a stored run of config `cfg`); return all results.

    tau_net (one exponential fit per unit, the costly part) is measured at `tau_net_stages`
    stages spread evenly from the first to the last (None: every stage).
    """
    unknown = [w for w in what if w not in ANALYSES]
    if unknown:
        raise SeqmemError(f"unknown analysis {', '.join(unknown)}; accepted: "
                          f"{', '.join(ANALYSES)}")
    Ns = stage_checkpoints(run)
    if not Ns:
        raise SeqmemError(f"run {run.id} has no curriculum-step checkpoints (N<k>) to analyse; "
                          f"it solved no N yet")
    say = progress or (lambda msg: None)
    task = cfg.task["kind"]
    out: dict = {"N": Ns, "curriculum": cfg.curriculum.kind}
    gen = torch.Generator().manual_seed(seed)

    if "timescales" in what or "tau_net" in what or "dimensionality" in what:
        per = []
        net_at = set(Ns)
        if tau_net_stages is not None and len(Ns) > tau_net_stages:
            idx = np.unique(np.linspace(0, len(Ns) - 1, max(1, tau_net_stages)).round())
            net_at = {Ns[int(i)] for i in idx} if tau_net_stages > 1 else {Ns[-1]}
        for n in Ns:
            say(f"timescales N={n}")
            model = load_stage(cfg, run, n)
            row: dict = {"N": n}
            ts = model.timescales()
            if ts is not None and "timescales" in what:
                row["tau"] = _stats(ts.numpy())
                row["tau_values"] = ts.numpy().round(5).tolist()
            if ("tau_net" in what or "dimensionality" in what) and n in net_at:
                from seqmem.analysis.timescales import dimensionality, network_timescales

                r = network_timescales(model, n_steps=tau_net_steps, generator=gen)
                if "tau_net" in what:
                    row["tau_net_mean"] = float(r["mean_tau_net"])
                    row["tau_net_valid"] = int(r["n_valid"])
                if "dimensionality" in what:
                    row["dimensionality"] = _activity_dimensionality(model, gen, dimensionality)
            per.append(row)
        out["stages"] = per

    last = Ns[-1]
    model = load_stage(cfg, run, last)
    head = head_for(cfg, last)

    def acc(m, **kw) -> float:
        # the same streams for every variant of the model (common random numbers), so an
        # unchanged model has relative accuracy exactly 1
        g = torch.Generator().manual_seed(seed + 1)
        return float(stream_accuracy(m, task, [last], [head], generator=g, n_trials=n_trials,
                                     stream_len=stream_len, **kw)[0])

    if "ablation" in what or "perturbation" in what:
        say(f"baseline accuracy at N={last}")
        base = acc(model)
        out["base_accuracy"] = base
    if "ablation" in what:
        ts = model.timescales()
        if ts is None:
            out["ablation"] = None
        else:
            longest, shortest = int(torch.argmax(ts)), int(torch.argmin(ts))
            say("ablation")
            out["ablation"] = {
                "N": last,
                "longest_tau_unit": longest, "longest_tau": float(ts[longest]),
                "longest_rel": acc(model, silence=[longest]) / base,
                "shortest_tau_unit": shortest, "shortest_tau": float(ts[shortest]),
                "shortest_rel": acc(model, silence=[shortest]) / base,
            }
    if "perturbation" in what:
        res = {}
        mixer = model.blocks[-1].mixer
        for kind in ("W", "tau"):
            if not hasattr(mixer, kind):
                continue
            curve = []
            for e in eps:
                say(f"perturbation {kind} eps={e}")
                rel = [acc(perturbed(model, kind, e, generator=gen)) / base
                       for _ in range(1 if e == 0 else n_draws)]
                curve.append({"eps": e, "rel_mean": float(np.mean(rel)),
                              "rel_sd": float(np.std(rel)), "draws": rel})
            res[kind] = curve
        out["perturbation"] = res
    if "forgetting" in what:
        say("forgetting matrix")
        f = forgetting_matrix(cfg, run, generator=gen, n_trials=max(2, n_trials // 2),
                              stream_len=stream_len)
        out["forgetting"] = {"N": f["N"], "R": [[None if np.isnan(v) else float(v) for v in row]
                                                for row in f["R"]]}
    (run.dir / "analysis.json").write_text(json.dumps(out, indent=1))
    return out


#: Lighter settings for `seqmem run --quick` (seconds instead of a minute).
QUICK = {"n_trials": 2, "stream_len": 400, "eps": (0.0, 0.1, 0.5), "n_draws": 1,
         "what": ("timescales", "ablation", "perturbation", "forgetting")}


def analyze_stored(root: str, run_id: str, what: tuple[str, ...] = ANALYSES, seed: int = 0,
                   threads: int | None = 1, **kw) -> dict:
    """Analyse a stored run by id (reads only: usable in a worker process)."""
    from seqmem.config import RunConfig
    from seqmem.store import RunStore

    if threads:
        torch.set_num_threads(threads)
    run = RunStore(root).open_run(run_id)
    cfg = RunConfig.model_validate(run.config())
    return analyze_run(cfg, run, what=what, seed=seed, **kw)


def _activity_dimensionality(model, gen, dimensionality, n_steps: int = 1000) -> int:
    p = torch.rand(4, 1, 1, generator=gen)
    x = torch.bernoulli(p.expand(4, n_steps + 200, 1).contiguous(), generator=gen)
    with torch.no_grad():
        h, _ = model.features(x.to(next(model.parameters()).dtype),
                              model.init_state(4, generator=gen))
    return int(dimensionality(h[:, 200:].numpy()))


def headline(out: dict) -> dict:
    """The numbers the store indexes and the comparison table shows."""
    h: dict = {}
    if out.get("stages"):
        s = out["stages"][-1]
        if "tau_net_mean" in s:
            h["tau_net_mean"] = s["tau_net_mean"]
        if "dimensionality" in s:
            h["dimensionality"] = s["dimensionality"]
    if out.get("ablation"):
        h["ablate_longest_rel"] = out["ablation"]["longest_rel"]
        h["ablate_shortest_rel"] = out["ablation"]["shortest_rel"]
    for kind, curve in (out.get("perturbation") or {}).items():
        for pt in curve:
            if pt["eps"] == 0.1:
                h[f"perturb_{kind}_0.1_rel"] = pt["rel_mean"]
    return h
