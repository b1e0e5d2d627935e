"""The flagship experiment: single-head vs multi-head curricula on N-parity.

Reproduces at laptop scale the setting of Khajehabdollahi et al. (ICLR 2024), "Emergent
mechanisms for long timescales depend on training curriculum and affect performance in memory
tasks": a leaky RNN with trainable per-neuron timescales tau learns N-parity with N growing,
once with a single head (N -> N + 1 on one head) and once with a head per N (multi-head). Both
runs use the same seed, network and budget and train side by side, one process per core.

Paper scale: 500 units, 600 steps + 50 test batches per epoch, up to 1,000 epochs (the
multi-head curriculum reaches the 100-head ceiling, single-head stops near N = 35).
Default here: 128 units, 50 steps + 10 test batches per epoch, 360 s of training per
curriculum, then the analysis and the report; --quick: 10 s (the whole command in
under 60 s).
"""

from __future__ import annotations

from rich.console import Console

from seqmem.analysis.analyze import QUICK
from seqmem.config import RunConfig, load_config
from seqmem.engine import Display, Job, Quiet, execute
from seqmem.engine.api import job_for
from seqmem.engine.jobs import AnalysisRequest
from seqmem.report import load_entries, write_report
from seqmem.store import RunStore

#: The flagship's defaults (also in experiments/flagship/flagship.yaml).
FLAGSHIP = {
    "name": "flagship",
    "seed": 0,
    "model": {
        "d_model": 128,
        "n_layers": 1,
        "block": "plain",
        # The encoder Linear(1, d) is the paper's input layer U x + b, so the RNN takes the
        # drive directly (input_proj=False); h0 = 0.1 U(0, 1) as in the authors' code.
        "mixer": {"kind": "leaky_rnn", "rule": "default", "phi": "leaky_relu",
                  "input_proj": False, "h0": "random"},
    },
    "task": {"kind": "n_parity"},
    "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.1, "nesterov": True, "clip": 2.0,
              "batch_size": 256, "steps_per_epoch": 50, "eval_batches": 10,
              "max_epochs": 1000, "max_time_s": 360, "threads": 1},
    "curriculum": {"kind": "multi", "n_start": 2, "n_max": 100, "threshold": 0.98},
}
QUICK_TIME_S = 10.0
CURRICULA = ("single", "multi")


def flagship_configs(source=None, overrides: list[str] | None = None, *, quick: bool = False
                     ) -> list[RunConfig]:
    """The two runs of the flagship (single, multi): same seed, network and budget.

    `source` (a YAML path or dict) replaces the defaults; `overrides` are dotted; `quick`
    caps the budget at QUICK_TIME_S seconds per curriculum.
    """
    base = load_config(source if source is not None else FLAGSHIP, overrides)
    cfgs = []
    for kind in CURRICULA:
        data = base.model_dump()
        data["curriculum"]["kind"] = kind
        data["name"] = f"{base.name or 'flagship'}-{kind}"
        if quick:
            t = data["train"]["max_time_s"]
            data["train"]["max_time_s"] = min(t, QUICK_TIME_S) if t else QUICK_TIME_S
        cfgs.append(load_config(data))
    return cfgs


def comparison_rows(summaries: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Rows of the comparison table: per N, epochs spent and tau mean ± sd at solve time."""
    kinds = list(summaries)
    ns = sorted({int(n) for s in summaries.values() for n in s.get("epochs_per_N", {})})
    header = ["N"]
    for k in kinds:
        header += [f"{k}: epochs", f"{k}: tau mean ± sd"]
    rows = []
    for n in ns:
        row = [str(n)]
        for k in kinds:
            s = summaries[k]
            ep = s.get("epochs_per_N", {}).get(str(n))
            stage = next((st for st in s.get("stages", []) if st["N"] == n), None)
            row.append("" if ep is None else (str(ep) if stage else f"{ep} (unsolved)"))
            row.append(f"{stage['tau_mean']:.3f} ± {stage['tau_sd']:.3f}"
                       if stage and "tau_mean" in stage else "")
        rows.append(row)
    return header, rows


def start_flagship(store: RunStore, source=None, overrides: list[str] | None = None, *,
                   quick: bool = False) -> list[Job]:
    """The flagship's two training runs, created in the store (single, multi)."""
    return [job_for(store, cfg, kind="flagship", label=cfg.curriculum.kind)
            for cfg in flagship_configs(source, overrides, quick=quick)]


def train_flagship(store: RunStore, jobs: list[Job], *, parallel: bool = True,
                   progress: bool = True, console: Console | None = None) -> dict[str, dict]:
    """Train both runs (one process each if `parallel`); their end events by run id. Ctrl-C
    records both as interrupted and re-raises KeyboardInterrupt."""
    display = Display(jobs, console or Console(), enabled=progress) if progress else Quiet()
    out = execute(jobs, store, backend="process" if parallel else "inline",
                  workers=len(jobs) if parallel else 1, display=display)
    if out.interrupted:
        raise KeyboardInterrupt
    return {rid: {**ev, "summary": out.summaries.get(rid, {})} for rid, ev in out.ended.items()}


def analyse_and_report(store: RunStore, run_ids: list[str], *, quick: bool = False,
                       parallel: bool = True) -> tuple[dict[str, dict], str]:
    """Analyse every run (one process each if `parallel` and not `quick`), record the headline
    numbers in the store, and write the report; (headline by run id, report path)."""
    opts = dict(QUICK) if quick else {}
    req = AnalysisRequest(**({"what": opts.pop("what")} if "what" in opts else {}),
                          options=opts)
    jobs = [Job(req, rid, str(store.open_run(rid).dir), label=rid, kind="analyze")
            for rid in run_ids]
    parallel = parallel and len(jobs) > 1 and not quick
    out = execute(jobs, store, backend="process" if parallel else "inline",
                  workers=len(jobs) if parallel else 1)
    if out.interrupted:
        raise KeyboardInterrupt
    failed = [f"{rid}: {ev.get('reason')}" for rid, ev in out.ended.items()
              if ev["status"] != "done"]
    if failed:
        raise RuntimeError("analysis failed: " + "; ".join(failed))
    path = write_report(load_entries(store, run_ids), store.root / f"report-{run_ids[0]}",
                        title="seqmem run: single- vs multi-head curriculum on N-parity")
    return {rid: out.summaries[rid] for rid in run_ids}, str(path)
