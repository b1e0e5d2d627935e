"""`seqmem analyze`: the registered analyses of a trained run, stage by stage.

A run trained under an N-curriculum has a checkpoint N<k> for every N it solved; the analyses
(see `seqmem.analysis.registry`) read those. The built-in ones, in the order of `ANALYSES`
(their modules):

- timescales, tau_net, dimensionality (`stages`): per stage, single-unit and network-mediated
  timescales and the dimensionality of the activity;
- ablation (`ablation`), perturbation (`perturbation`): at the last stage, the relative
  accuracy with a unit silenced, and after W or tau is perturbed;
- forgetting (`forgetting`): the accuracy on every N after each curriculum step.

Results go to <run>/analysis.json: {"N": [...], "curriculum": ..., "stages": [{"N": ..., the
fields of the per-stage analyses}, ...], the top-level keys of the others, and "provenance":
{name: {"version", "commit", "seed", "options", "N"}}, how each analysis was computed}. A
partial analysis (`what=`) merges into the file: each analysis rerun replaces only its own
entries (its top-level keys, its fields of the stage rows, its provenance); the others stay.
`headline` picks the numbers the store indexes; `analyze_and_record` adds them to the run's
summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

import seqmem
from seqmem.analysis.context import COMMON_OPTIONS, Context, spread_stages
from seqmem.analysis.probes import stage_checkpoints
from seqmem.analysis.registry import (
    analyses,
    analysis_names,
    default_analysis_names,
    option_defaults,
)
from seqmem.config import RunConfig, load_config
from seqmem.devices import resolve_device
from seqmem.errors import SeqmemError
from seqmem.store import Run, RunStore
from seqmem.store.db import git_commit
from seqmem.store.run import atomic_write

#: The built-in analyses, in order: the package (`seqmem/analysis/__init__.py`) imports their
#: modules before this one. `analysis_names()` also lists any registered since.
ANALYSES = analysis_names()
#: Those a run gets when none is named (the others run by name: `--what pruning`).
DEFAULT_ANALYSES = default_analysis_names()
ANALYSIS_FILE = "analysis.json"

#: Lighter settings for `seqmem run --quick` (seconds instead of a minute).
QUICK = {"n_trials": 2, "stream_len": 400, "eps": (0.0, 0.1, 0.5), "n_draws": 1,
         "ablation_draws": 3,
         "what": ("timescales", "ablation", "perturbation", "forgetting")}


def resolve_options(options: dict) -> dict:
    """Every analysis option: its default, or its value in `options` (an unknown key is a
    SeqmemError naming the accepted ones)."""
    known = option_defaults()
    unknown = [k for k in options if k not in known]
    if unknown:
        raise SeqmemError(f"unknown analysis option {', '.join(unknown)}; accepted: "
                          f"{', '.join(known)}")
    return {**known, **options}


def provenance(seed: int, options: dict, Ns: list[int]) -> dict:
    """How an analysis was computed: seqmem's version, the git commit of its source (None
    outside a repository), the seed, its options and the stages analysed."""
    return {"version": seqmem.__version__, "commit": git_commit(Path(seqmem.__file__).parent),
            "seed": seed, "options": json.loads(json.dumps(options)), "N": list(Ns)}


def merge_analysis(old: dict, new: dict, rerun: list) -> dict:
    """`new` (the analyses `rerun`, their entries only) merged into `old` (an analysis.json):
    the entries of every analysis in `rerun` are dropped from `old` (its top-level keys, its
    fields of the stage rows, its provenance) and `new`'s put in their place; the stage rows
    are those of `new`'s N, keeping `old`'s fields of the stages they share."""
    out = {k: v for k, v in old.items() if k != "stages"}
    for spec in rerun:
        if not spec.per_stage:
            for k in spec.writes:
                out.pop(k, None)
    out.update({k: v for k, v in new.items() if k not in ("stages", "provenance")})
    dropped = {k for spec in rerun if spec.per_stage for k in spec.writes}
    old_rows = {r["N"]: r for r in old.get("stages", [])}
    new_rows = {r["N"]: r for r in new.get("stages", [])}
    rows = []
    for n in new["N"]:
        row = {k: v for k, v in old_rows.get(n, {}).items() if k not in dropped}
        row.update(new_rows.get(n, {}))
        row["N"] = n
        rows.append(dict(sorted(row.items(), key=lambda kv: kv[0] != "N")))
    if rows and (len(rows) > 1 or len(rows[0]) > 1):
        out["stages"] = rows
    out["provenance"] = {**old.get("provenance", {}), **new.get("provenance", {})}
    return out


def analyze_run(cfg: RunConfig, run: Run, *, what: Sequence[str] | None = None, seed: int = 0,
                progress: Callable[[str], None] | None = None,
                device: str | torch.device = "auto", **options) -> dict:
    """Run the analyses `what` (default: the default ones, `DEFAULT_ANALYSES`) on `run`, a
    stored run of
    config `cfg`; write <run>/analysis.json (atomically) and return its content.

    An existing analysis.json is merged with (`merge_analysis`): the analyses not rerun keep
    their results; "provenance" records each analysis's version, commit, seed and options.
    `seed` seeds every analysis's randomness (each its own, see `analysis.context`);
    `options` are the analyses' options (`resolve_options`), e.g. n_trials, stream_len, eps,
    n_draws, tau_net_steps, tau_net_stages (the per-stage measures too costly for every stage,
    tau_net and dimensionality, run at that many stages spread evenly from the first to the
    last; None: every stage). `device` (`seqmem.devices.resolve_device`; auto: cuda when
    available, else cpu) is where the models and their probes compute.
    """
    device = resolve_device(device)
    specs = analyses(default_analysis_names() if what is None else tuple(what))
    opts = resolve_options(options)
    Ns = stage_checkpoints(run)
    if not Ns and any(s.needs != "run" for s in specs):
        raise SeqmemError(f"run {run.id} has no curriculum-step checkpoints (N<k>) to analyse; "
                          f"it solved no N yet")
    say = progress or (lambda msg: None)
    ctx = Context.of_run(cfg, run, Ns, seed=seed, options=opts, say=say, device=device)
    out: dict = {"N": Ns, "curriculum": cfg.curriculum_kind()}
    prov = provenance(seed, {}, Ns)
    out["provenance"] = {s.name: {**prov, "options": json.loads(json.dumps(
        {k: opts[k] for k in option_names(s)}))} for s in specs}

    per_stage = [s for s in specs if s.per_stage]
    if per_stage:
        spread = spread_stages(Ns, opts["tau_net_stages"])
        rows = []
        for n in Ns:
            row: dict = {"N": n}
            for spec in per_stage:
                if spec.needs == "spread_stages" and n not in spread:
                    continue
                say(f"{spec.name} N={n}")
                row.update(spec.check_result(spec.run(ctx.focus(spec.name, n))))
            rows.append(row)
            # this stage's model is done with; the last stage's stays for the analyses below
            ctx.stage_models.keep_only({Ns[-1]})
        out["stages"] = rows
    for spec in specs:
        if not spec.per_stage:
            say(spec.name)
            out.update(spec.check_result(spec.run(ctx.focus(spec.name))))
    out = merge_analysis(read_analysis(run), json.loads(json.dumps(out)), specs)
    atomic_write(run.dir / ANALYSIS_FILE, json.dumps(out, indent=1))
    return out


def option_names(spec) -> list[str]:
    """The options analysis `spec` reads: the common ones and its own."""
    from_common = [k for k in option_defaults() if k in COMMON_OPTIONS]
    return [*from_common, *(k for k in spec.options if k not in from_common)]


def headline(out: dict) -> dict:
    """The numbers the store indexes and the comparison table shows: every registered
    analysis's declared headline numbers found in `out` (an analysis.json)."""
    h: dict = {}
    for spec in analyses():
        h.update(spec.headline_values(out))
    return h


def read_analysis(run: Run) -> dict:
    """A run's analysis.json; {} if it has none."""
    p = run.dir / ANALYSIS_FILE
    if not p.exists():
        return {}
    try:
        out = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SeqmemError(f"{p} cannot be read ({exc}); delete it and analyse the run again "
                          f"(seqmem analyze {run.id})") from None
    if not isinstance(out, dict):
        raise SeqmemError(f"{p} holds no analysis (a JSON object); delete it and analyse the "
                          f"run again (seqmem analyze {run.id})")
    return out


def analyze_stored(root: str, run_id: str, what: Sequence[str] | None = None, seed: int = 0,
                   threads: int | None = 1, **kw) -> dict:
    """Analyse a stored run by id (`analyze_run`). It reads the database and writes only the
    run's folder, so it may run in a worker process."""
    if threads:
        torch.set_num_threads(threads)
    run = RunStore(root).open_run(run_id)
    return analyze_run(load_config(run.config()), run, what=what, seed=seed, **kw)


def record_headline(store: RunStore, run_id: str, out: dict) -> dict:
    """Add the headline numbers of `out` (an analysis of run `run_id`) to the run's summary
    in the store; return them."""
    h = headline(out)
    store.update_summary(run_id, {**store.get(run_id)["summary"], **h})
    return h


def analyze_and_record(store: RunStore, run_id: str, *, what: Sequence[str] | None = None,
                       seed: int = 0, progress: Callable[[str], None] | None = None,
                       device: str | torch.device = "auto", **options) -> tuple[dict, dict]:
    """Analyse a stored run (`analyze_run`: writes its analysis.json) and add the headline
    numbers to its summary in the store; return (analysis, headline)."""
    run = store.open_run(run_id)
    out = analyze_run(load_config(run.config()), run, what=what, seed=seed, progress=progress,
                      device=device, **options)
    return out, record_headline(store, run.id, out)
