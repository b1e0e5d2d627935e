"""The `seqmem` command: thin commands that parse arguments and call the library.

Bad input is printed as one line (`error: ...`) with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from seqmem import __version__
from seqmem.analysis.analyze import ANALYSES
from seqmem.errors import SeqmemError

RESUME_OVERRIDES = ("train.max_epochs", "train.max_time_s")

EPILOG = """examples:
  seqmem run --quick                      the flagship in at most 60 s
  seqmem run                              the flagship (at most 10 minutes)
  seqmem train --mixer gru --task n_dms --curriculum multi train.max_epochs=20
  seqmem train --resume RUN_ID            continue an interrupted run
  seqmem runs                             list runs and their status
  seqmem sweep experiments/sweeps/quick.yaml   a grid of runs; re-run to finish what is missing
  seqmem runs --sweep quick --where 'acc>0.9' --best mixer --format csv
  seqmem analyze RUN_ID                   timescales, tau_net, ablation, perturbation
  seqmem list mixers                      registered mixers (also: tasks)
  seqmem show-task mqar n_pairs=4         a few examples of a task, decoded, targets marked
  seqmem train --mixer "gated_deltanet*3,attention" --task mqar --eval.lengths 128,256
  seqmem continual --method finetune,ewc,replay,hnet --seeds 0,1,2   forgetting on N-parity

Overrides are dotted keys, e.g. train.lr=3e-4 model.d_model=64 task.N=5 (a leading -- is
optional). Runs live under --root (default runs/, database runs/seqmem.db)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqmem", description="Build, train and dissect sequence models that remember.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"seqmem {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="the flagship: single- vs multi-head curricula on N-parity",
                       description="Train the leaky RNN on N-parity with the single-head and "
                       "the multi-head curriculum side by side (same seed and budget), then "
                       "print a comparison table. Extra arguments are dotted overrides.")
    r.add_argument("config", nargs="?", help="YAML config replacing the flagship defaults")
    r.add_argument("--quick", action="store_true", help="a budget of at most 60 s")
    r.add_argument("--no-analysis", action="store_true",
                   help="skip the analysis and the report after training")
    r.add_argument("--sequential", action="store_true",
                   help="train the two curricula one after the other in this process")
    _common(r)

    t = sub.add_parser("train", help="train any mixer on any task under a curriculum",
                       description="Train one run. Extra arguments are dotted overrides of the "
                       "config (e.g. train.lr=3e-4).")
    t.add_argument("config", nargs="?", help="YAML run config (default: the defaults)")
    t.add_argument("--mixer", help="mixer name (see `seqmem list mixers`)")
    t.add_argument("--task", help="task name (see `seqmem list tasks`)")
    t.add_argument("--curriculum", help="single, multi, sliding or none")
    t.add_argument("--resume", metavar="RUN_ID", help="continue a run from its last checkpoint")
    _common(t)

    cl = sub.add_parser("continual", help="continual learning: a protocol of experiences x "
                        "methods against forgetting", description="Train on a protocol's "
                        "experiences one after another with each method (and seed), evaluate "
                        "every experience after each, and print average accuracy, backward and "
                        "forward transfer (mean ± sd over seeds). Results go to the store; "
                        "`seqmem report RUN_IDS` draws the accuracy matrices. Extra arguments "
                        "are dotted overrides, e.g. steps=500 protocol_options.n_max=8 "
                        "method_options.ewc_lambda=1000.")
    cl.add_argument("config", nargs="?", help="YAML continual config (default: the defaults)")
    cl.add_argument("--protocol", help="n_curriculum (default), split, permuted or tasks")
    cl.add_argument("--setting", help="task (a head per experience) or domain (one head)")
    cl.add_argument("--method", help="comma-separated: finetune, joint, multihead, replay, ewc, "
                    "si, hnet, rnn_hnet (default finetune)")
    cl.add_argument("--mixer", help="mixer name (default leaky_rnn)")
    cl.add_argument("--seeds", help="comma-separated seeds (default 0)")
    cl.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run")
    _common(cl)

    sw = sub.add_parser("sweep", help="run a grid of configs, resumable, on Ray or processes",
                        description="Expand a sweep file (YAML, or Python defining SWEEP; see "
                        "seqmem.sweep.spec) into runs identified by their config hash. Done "
                        "runs are skipped, interrupted or failed ones resumed, so re-running a "
                        "sweep finishes only what is missing. Workers that die are recorded "
                        "and retried.")
    sw.add_argument("file", help="sweep file (.yaml or .py)")
    sw.add_argument("--workers", type=int, help="runs at a time (default: the CPU count)")
    sw.add_argument("--backend", default="auto", help="auto (Ray if installed, else "
                    "processes; inline for --workers 1), ray, process or inline")
    sw.add_argument("--address", help="join an existing Ray cluster (ray://host:port or auto)")
    sw.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    _common(sw)

    ru = sub.add_parser("runs", help="list and query runs in the store",
                        description="List runs, newest first. --where filters by fields "
                        "(row, summary, sweep point or dotted config keys), e.g. "
                        "--where 'task=mqar and acc>0.9'.")
    ru.add_argument("--status", help="only runs with this status")
    ru.add_argument("--sweep", help="only the runs of this sweep")
    ru.add_argument("--where", help="conditions joined by 'and': key=value, key>number, ...")
    ru.add_argument("--best", metavar="KEYS", help="only the best run per group of these "
                    "comma-separated keys (e.g. mixer,model.d_model), by --metric")
    ru.add_argument("--metric", default="acc_mean", help="metric for --best (default "
                    "acc_mean; prefix with - to minimise)")
    ru.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    ru.add_argument("--format", choices=("table", "json", "csv"), default="table")
    ru.add_argument("--mlflow", metavar="URI", help="export the selected runs to MLflow at "
                    "this tracking URI (runs exported before are skipped)")
    ru.add_argument("--mlflow-experiment", default="seqmem", help="MLflow experiment name "
                    "(default seqmem)")
    ru.add_argument("--root", default="runs", help="store root (default runs/)")

    s = sub.add_parser("show", help="a run's config, status and summary")
    s.add_argument("run_id")
    s.add_argument("--root", default="runs", help="store root (default runs/)")

    an = sub.add_parser("analyze", help="timescales, tau_net, ablation, perturbation, "
                        "forgetting of a run", description="Analyse a run trained under an "
                        "N-curriculum, stage by stage; results go to <run>/analysis.json and "
                        "headline numbers to the store's summary.")
    an.add_argument("run_id")
    an.add_argument("--what", default=",".join(ANALYSES),
                    help=f"comma-separated subset of {','.join(ANALYSES)} (default: all)")
    an.add_argument("--seed", type=int, default=0, help="seed of the probe inputs")
    an.add_argument("--root", default="runs", help="store root (default runs/)")

    rp = sub.add_parser("report", help="one self-contained HTML page (and PNGs) for runs",
                        description="Write report.html (figures embedded) and one PNG per "
                        "figure for the given runs, using their analysis where present "
                        "(see seqmem analyze).")
    rp.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    rp.add_argument("--sweep", help="a dashboard of this sweep's runs instead (accuracy vs "
                    "state size and length per mixer, timescales, speed)")
    rp.add_argument("--bench", help="with --sweep: a bench.jsonl from seqmem bench to include")
    rp.add_argument("-o", "--out", default=None, help="output: a .html path (PNGs beside "
                    "it) or a folder (default <root>/report-<first run id>/)")
    rp.add_argument("--root", default="runs", help="store root (default runs/)")

    ls = sub.add_parser("list", help="list registered mixers or tasks")
    ls.add_argument("what", choices=("mixers", "tasks"))

    b = sub.add_parser("bench", help="tokens/s, decode latency and memory of every mixer form",
                       description="Measure forward and forward+backward tokens/s, decode "
                       "latency per token, peak memory and the fraction of the matmul roofline "
                       "for mixers x forms x sequence lengths, beside PyTorch's fused RNN/GRU/"
                       "LSTM, in one process. Writes bench.jsonl, bench.csv, bench.png and "
                       "bench.md (the full run also README.md) to --out.")
    b.add_argument("--quick", action="store_true",
                   help="a small grid that runs in well under a minute")
    b.add_argument("--mixers", help="comma-separated mixer names (default: all)")
    b.add_argument("--forms", help="comma-separated forms, e.g. chunk,recurrent, or default "
                   "(each mixer's training form only); default: all")
    b.add_argument("--references", help="comma-separated torch references, or none "
                   "(default: torch.nn.RNN,torch.nn.GRU,torch.nn.LSTM)")
    b.add_argument("--lengths", help="comma-separated T (default 256,1024,4096,16384,65536)")
    b.add_argument("--batch", type=int, help="batch size (default 4)")
    b.add_argument("--d-model", type=int, help="model width (default 256)")
    b.add_argument("--repeats", type=int, help="measured runs per point (default 3)")
    b.add_argument("--budget", type=float, help="seconds: a form whose one run is slower "
                   "is not measured at longer T (default 20)")
    b.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    b.add_argument("--out", help="output folder (default benchmarks/, quick: runs/bench-quick/)")

    st = sub.add_parser("show-task", help="print a few examples of a task, decoded to text",
                        description="Build a task (extra arguments are its options, e.g. "
                        "n_pairs=4 or task.n_pairs=4), draw a batch and print examples with "
                        "the supervised targets marked, so you see what a model is asked.")
    st.add_argument("task", help="task name (see `seqmem list tasks`)")
    st.add_argument("-n", "--examples", type=int, default=3, help="examples (default 3)")
    st.add_argument("--seed", type=int, default=0, help="seed of the batch (default 0)")
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="runs", help="store root (default runs/)")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")


def _split_overrides(extra: list[str]) -> list[str]:
    out = []
    extra = list(extra)
    joined = []
    while extra:  # "--eval.lengths 64,128" is read as "eval.lengths=64,128"
        a = extra.pop(0)
        if a.startswith("--") and "=" not in a and "." in a and extra \
                and not extra[0].startswith("-"):
            a = f"{a}={extra.pop(0)}"
        joined.append(a)
    for a in joined:
        if "=" not in a or (a.startswith("-") and not a.startswith("--")):
            raise SeqmemError(f"unrecognised argument {a!r}; overrides look like "
                              f"train.lr=3e-4 (see seqmem --help)")
        out.append(a.removeprefix("--"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for the bench README
    console = Console()
    try:
        if args.command is None:
            parser.print_help()
            return 0
        config = getattr(args, "config", None)
        if config and "=" in config and not Path(config).exists():
            extra.insert(0, config)  # an override, not a config file
            args.config = None
        if args.command not in ("run", "train", "show-task", "continual") and extra:
            raise SeqmemError(f"unrecognised argument(s): {' '.join(extra)}")
        return COMMANDS[args.command](args, _split_overrides(extra), console)
    except SeqmemError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are recorded; resume with "
              "`seqmem train --resume RUN_ID` (see `seqmem runs`)", file=sys.stderr)
        return 130


def cmd_run(args, overrides, console) -> int:
    from seqmem.flagship import comparison_rows, flagship_configs
    from seqmem.store import RunStore
    from seqmem.train.runner import Job, execute

    cfgs = flagship_configs(args.config, overrides, quick=args.quick)
    store = RunStore(args.root)
    jobs = []
    for cfg in cfgs:
        run = store.create_run(cfg.model_dump(mode="json"), kind="flagship", name=cfg.name)
        jobs.append(Job(cfg, run.id, str(run.dir), label=cfg.curriculum.kind))
    budget = cfgs[0].train.max_time_s
    console.print(f"seqmem run: leaky RNN (d_model={cfgs[0].model.d_model}) on N-parity, "
                  f"single- vs multi-head curriculum, "
                  f"{f'{budget:.0f} s' if budget else 'no time limit'} each"
                  f"{'' if args.sequential else ', side by side'}; runs "
                  f"{', '.join(j.run_id for j in jobs)}")
    ended = execute(jobs, store, parallel=not args.sequential, progress=not args.no_progress,
                    console=console)
    summaries = {j.label: ended[j.run_id].get("summary", {}) for j in jobs}
    _print_comparison(console, jobs, ended, summaries, comparison_rows)
    ok = all(ended[j.run_id]["status"] == "done" for j in jobs)
    if ok and not args.no_analysis:
        _analyse_and_report(store, jobs, console, quick=args.quick,
                            parallel=not args.sequential)
    return 0 if ok else 1


def _analyse_and_report(store, jobs, console, *, quick: bool, parallel: bool) -> None:
    """Analyse every run (one process each if parallel), record headlines, write the report."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from seqmem.analysis.analyze import QUICK, analyze_stored, headline
    from seqmem.report import write_report

    kw = QUICK if quick else {}
    runs = [j.run_id for j in jobs]
    with console.status("analysing the runs (timescales, tau_net, ablation, perturbation, "
                        "forgetting)"):
        if parallel and len(runs) > 1 and not quick:
            with ProcessPoolExecutor(len(runs), mp_context=mp.get_context("spawn")) as ex:
                outs = list(ex.map(_analyse_one, [(str(store.root), r, kw) for r in runs]))
        else:
            outs = [analyze_stored(str(store.root), r, **kw) for r in runs]
    for rid, out in zip(runs, outs, strict=True):
        store.update_summary(rid, {**store.get(rid)["summary"], **headline(out)})
    path = write_report(_entries(store, runs), store.root / f"report-{runs[0]}",
                        title="seqmem run: single- vs multi-head curriculum on N-parity")
    tab = Table(title="analysis (last N solved; relative accuracy on the streaming task)",
                title_justify="left")
    tab.add_column("")
    for j in jobs:
        tab.add_column(j.label)
    keys = sorted({k for o in outs for k in headline(o)})
    for k in keys:
        vals = [headline(o).get(k) for o in outs]
        tab.add_row(k, *("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
                         for v in vals))
    console.print(tab)
    console.print(f"report: {path}")


def _analyse_one(args):
    from seqmem.analysis.analyze import analyze_stored

    root, run_id, kw = args
    return analyze_stored(root, run_id, **kw)


def _print_comparison(console, jobs, ended, summaries, comparison_rows) -> None:
    tab = Table(title="single- vs multi-head curriculum (N-parity)", title_justify="left")
    tab.add_column("")
    for j in jobs:
        tab.add_column(j.label)

    def cell(s, key, fmt="{}"):
        v = s.get(key)
        return "" if v is None else fmt.format(v)

    rows = [
        ("status", lambda j, s: ended[j.run_id]["status"]),
        ("max N solved", lambda j, s: cell(s, "n_solved")),
        ("epochs", lambda j, s: cell(s, "epochs")),
        ("training time", lambda j, s: cell(s, "elapsed_s", "{:.0f} s")),
        ("tau mean ± sd (end)", lambda j, s: f"{s['tau_mean']:.3f} ± {s['tau_sd']:.3f}"
         if "tau_mean" in s else ""),
        ("tau max (end)", lambda j, s: cell(s, "tau_max", "{:.3f}")),
        ("run id", lambda j, s: j.run_id),
    ]
    for name, f in rows:
        tab.add_row(name, *(f(j, summaries[j.label]) for j in jobs))
    console.print(tab)
    header, body = comparison_rows(summaries)
    if body:
        per_n = Table(title="per N: epochs spent and tau when N was solved",
                      title_justify="left")
        for h in header:
            per_n.add_column(h)
        for row in body:
            per_n.add_row(*row)
        console.print(per_n)
    for j in jobs:
        if ended[j.run_id].get("reason"):
            console.print(f"[{j.label}] {ended[j.run_id]['status']}: "
                          f"{ended[j.run_id]['reason']}", markup=False)


def cmd_train(args, overrides, console) -> int:
    from seqmem.config import load_config
    from seqmem.store import RunStore
    from seqmem.train.runner import Job, execute

    store = RunStore(args.root)
    if args.resume:
        if args.config or args.mixer or args.task or args.curriculum:
            raise SeqmemError("--resume takes no config, --mixer, --task or --curriculum: a "
                              "resumed run keeps its own config")
        bad = [o for o in overrides if o.split("=")[0] not in RESUME_OVERRIDES]
        if bad:
            raise SeqmemError(f"--resume accepts only budget overrides "
                              f"({', '.join(RESUME_OVERRIDES)}); got {', '.join(bad)}")
        run = store.open_run(args.resume)
        row = store.get(run.id)
        if row["status"] == "done" and not overrides:
            raise SeqmemError(f"run {run.id} is already done; nothing to resume (extend its "
                              f"budget with train.max_epochs=... or train.max_time_s=...)")
        if "last" not in run.checkpoints():
            raise SeqmemError(f"run {run.id} has no checkpoint 'last' to resume from; "
                              f"start it again with seqmem train")
        cfg = load_config(run.config(), overrides)
        if overrides:  # the run's config records its budget as extended
            (Path(run.dir) / "config.yaml").write_text(
                yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        store.set_status(run.id, "running")
        jobs = [Job(cfg, run.id, str(run.dir), label=cfg.name or run.id, resume=True)]
    else:
        pre = []
        if args.mixer:
            pre.append(f"model.mixer.kind={args.mixer}")
        if args.task:
            pre.append(f"task.kind={args.task}")
        if args.curriculum:
            pre.append(f"curriculum.kind={args.curriculum}")
        cfg = load_config(args.config, pre + overrides)
        run = store.create_run(cfg.model_dump(mode="json"), kind="train", name=cfg.name)
        jobs = [Job(cfg, run.id, str(run.dir), label=cfg.name or run.id)]
    console.print(f"run {jobs[0].run_id}: {cfg.model.mixer['kind']} on {cfg.task['kind']}, "
                  f"curriculum {cfg.curriculum.kind} -> {jobs[0].run_dir}")
    ended = execute(jobs, store, progress=not args.no_progress, console=console)
    ev = ended[jobs[0].run_id]
    s = ev.get("summary") or {}
    solved = (f", max {cfg.curriculum.knob} solved {s.get('n_solved')}"
              if cfg.curriculum.kind != "none" else "")
    if "eval_mse" in s or "mse" in s:  # a regression task (e.g. dynamics)
        result = ", ".join(f"{k} {s[k]:.4g}" for k in ("mse", "eval_mse", "d_stsp", "d_h")
                           if isinstance(s.get(k), int | float))
    else:
        result = (f"accuracy {s.get('acc_mean', float('nan')):.3f} "
                  f"(scaled {s.get('acc_scaled', float('nan')):.3f})")
    console.print(f"{ev['status']}: epochs {s.get('epochs')}{solved}, {result}"
                  + (f", stopped: {s['stop_reason']}" if s.get("stop_reason") else "")
                  + (f" ({ev['reason']})" if ev.get("reason") else ""), markup=False)
    if s.get("acc_by_length"):
        console.print("accuracy by length: " + ", ".join(
            f"{k}: {v:.3f}" for k, v in s["acc_by_length"].items()), markup=False)
    return 0 if ev["status"] == "done" else 1


def cmd_runs(args, overrides, console) -> int:
    from seqmem.store import RunStore
    from seqmem.store.query import best_per_group, export, matches, parse_where

    store = RunStore(args.root)
    conds = parse_where(args.where) if args.where else []
    query = bool(conds or args.best)
    rows = store.list_runs(status=args.status, kind="sweep" if args.sweep else None,
                           name=args.sweep, limit=None if query else args.limit) \
        if Path(args.root).exists() else []
    if query:
        for r in rows:
            r["config"] = store.open_run(r["id"]).config()
        rows = [r for r in rows if matches(r, conds)]
    if args.best:
        metric = args.metric.removeprefix("-")
        rows = best_per_group(rows, [g.strip() for g in args.best.split(",") if g.strip()],
                              metric, maximize=not args.metric.startswith("-"))
    if args.limit is not None and args.limit >= 0:
        rows = rows[: args.limit]
    if args.mlflow:
        from seqmem.store.mlflow_export import export_mlflow

        done = export_mlflow(store, rows, args.mlflow, args.mlflow_experiment)
        console.print(f"exported {len(done)} run(s) to MLflow experiment "
                      f"{args.mlflow_experiment!r} at {args.mlflow} ({len(rows) - len(done)} "
                      f"were there already)", markup=False)
        return 0
    if args.format == "json":
        print(export(rows, "json"))
        return 0
    if args.format == "csv":
        print(export(rows, "csv"), end="")
        return 0
    tab = Table(title=f"runs in {args.root}", title_justify="left")
    for col in ("id", "name", "kind", "status", "epochs", "max N", "acc", "updated"):
        tab.add_column(col)
    for r in rows:
        s = r.get("summary") or {}
        acc = s.get("acc_mean", s.get("avg_acc"))  # continual runs: the average accuracy
        tab.add_row(r["id"], r.get("name") or "", r.get("kind") or "", r["status"],
                    str(s.get("epochs", "")), str(s.get("n_solved") or ""),
                    "" if acc is None else f"{acc:.3f}", str(r.get("updated_at", ""))[:19])
    console.print(tab)
    return 0


def cmd_sweep(args, overrides, console) -> int:
    from seqmem.store import RunStore
    from seqmem.sweep import plan_sweep, read_sweep, run_sweep

    spec = read_sweep(args.file)
    store = RunStore(args.root)
    if args.dry_run:
        plan = plan_sweep(spec, store)
        console.print(f"sweep {spec.name}: {len(plan.points)} runs: {len(plan.done)} done, "
                      f"{sum(j.resume for j in plan.jobs)} to resume, "
                      f"{sum(not j.resume for j in plan.jobs)} to start, {len(plan.busy)} "
                      f"running elsewhere", markup=False)
        for j in plan.jobs:
            console.print(f"  {'resume' if j.resume else 'start '} {j.label}", markup=False)
        return 0
    say = (lambda msg: console.print(msg, markup=False)) if not args.no_progress else None
    res = run_sweep(spec, store, workers=args.workers, backend=args.backend,
                    address=args.address, progress=say)
    counts: dict[str, int] = {}
    for st in res.status.values():
        counts[st] = counts.get(st, 0) + 1
    console.print(f"sweep {spec.name}: " + ", ".join(f"{v} {k}" for k, v in
                                                     sorted(counts.items()))
                  + f"; see seqmem runs --sweep {spec.name}", markup=False)
    if res.interrupted:
        raise KeyboardInterrupt
    return 0 if all(st == "done" for st in res.status.values()) else 1


def cmd_show(args, overrides, console) -> int:
    from seqmem.store import RunStore

    store = RunStore(args.root)
    run = store.open_run(args.run_id)
    row = store.get(run.id)
    print(json.dumps({"row": row, "config": run.config(), "checkpoints": run.checkpoints()},
                     indent=1, default=str))
    return 0


def _entries(store, run_ids):
    from seqmem.report import Entry

    entries = []
    for rid in run_ids:
        run = store.open_run(rid)
        row = store.get(run.id)
        p = run.dir / "analysis.json"
        analysis = json.loads(p.read_text()) if p.exists() else {}
        summary = row["summary"]
        if row.get("kind") == "continual":  # the full summary: R, curves, baseline
            summary = {**summary, **run.read_summary()}
        label = summary.get("curriculum") or row.get("name") or run.id
        entries.append(Entry(label, run.id, summary, analysis))
    return entries


def cmd_report(args, overrides, console) -> int:
    from seqmem.report import write_report
    from seqmem.store import RunStore

    store = RunStore(args.root)
    if args.sweep:
        from seqmem.dashboard import write_dashboard

        if args.run_ids:
            raise SeqmemError("give run ids or --sweep NAME, not both")
        rows = store.list_runs(kind="sweep", name=args.sweep)
        if not rows:
            names = sorted({r.get("name") for r in store.list_runs(kind="sweep")})
            raise SeqmemError(f"no sweep named {args.sweep!r} in {args.root}; sweeps there: "
                              f"{', '.join(map(str, names)) or '(none)'}")
        for r in rows:
            r["config"] = store.open_run(r["id"]).config()
        out = args.out or str(store.root / f"dashboard-{args.sweep}")
        path = write_dashboard(rows, out, title=f"seqmem sweep {args.sweep}", bench=args.bench)
        console.print(f"dashboard: {path}")
        return 0
    if not args.run_ids:
        raise SeqmemError("give at least one RUN_ID, or --sweep NAME")
    entries = _entries(store, args.run_ids)
    out = args.out or str(store.root / f"report-{entries[0].run_id}")
    path = write_report(entries, out)
    console.print(f"report: {path}")
    return 0


def cmd_list(args, overrides, console) -> int:
    from seqmem import mixers, tasks

    reg = mixers if args.what == "mixers" else tasks
    tab = Table(title=f"registered {args.what}", title_justify="left")
    tab.add_column("name")
    tab.add_column("options (keyword, default)")
    tab.add_column("summary")
    for name in reg.names():
        cls = reg.get(name)
        opts = ", ".join(f"{k}={p.default!r}" for k, p in reg.hyperparameters(cls).items())
        doc = (cls.__doc__ or "").strip().splitlines()
        tab.add_row(name, opts, doc[0] if doc else "")
    console.print(tab)
    return 0


def cmd_analyze(args, overrides, console) -> int:
    from seqmem.analysis.analyze import analyze_run, headline
    from seqmem.config import RunConfig
    from seqmem.store import RunStore

    store = RunStore(args.root)
    run = store.open_run(args.run_id)
    cfg = RunConfig.model_validate(run.config())
    what = tuple(w.strip() for w in args.what.split(",") if w.strip())
    with console.status(f"analysing {run.id}") as status:
        out = analyze_run(cfg, run, what=what, seed=args.seed,
                          progress=lambda msg: status.update(f"analysing {run.id}: {msg}"))
    h = headline(out)
    store.update_summary(run.id, {**store.get(run.id)["summary"], **h})
    tab = Table(title=f"analysis of {run.id} ({cfg.curriculum.kind}, N = {out['N'][0]}.."
                f"{out['N'][-1]})", title_justify="left")
    tab.add_column("measure")
    tab.add_column("value")
    for k, v in h.items():
        tab.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    console.print(tab)
    console.print(f"written: {run.dir / 'analysis.json'}")
    return 0


def _csv(text: str | None, what: str, conv=str) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(conv(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise SeqmemError(f"{what} must be a comma-separated list, got {text!r}") from None


def cmd_bench(args, overrides, console) -> int:
    from seqmem.bench.run import (
        QUICK,
        BenchConfig,
        markdown_table,
        ratios,
        run_bench,
        write_outputs,
    )

    cfg = BenchConfig(**QUICK) if args.quick else BenchConfig()
    for key, value in (("mixers", _csv(args.mixers, "--mixers")),
                       ("forms", _csv(args.forms, "--forms")),
                       ("lengths", _csv(args.lengths, "--lengths", int)),
                       ("batch", args.batch), ("d_model", args.d_model),
                       ("repeats", args.repeats), ("budget_s", args.budget),
                       ("threads", args.threads)):
        if value is not None:
            setattr(cfg, key, value)
    if args.references is not None:
        cfg.references = () if args.references == "none" else _csv(args.references,
                                                                     "--references")
    if args.no_memory:
        cfg.memory = False
    for key in ("batch", "d_model", "repeats"):
        if getattr(cfg, key) < 1:
            raise SeqmemError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(cfg, key)}")
    if not cfg.lengths or min(cfg.lengths) < 1:
        raise SeqmemError(f"--lengths must be positive integers, got {cfg.lengths}")
    out = Path(args.out or ("runs/bench-quick" if args.quick else "benchmarks"))
    command = "seqmem " + shlex.join(args.argv)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "bench.partial.jsonl"  # every row as it comes: a killed bench keeps them
    partial.write_text("")

    def keep(row: dict) -> None:
        with partial.open("a") as f:
            f.write(json.dumps(row) + "\n")

    try:
        with console.status("bench") as status:
            ctx, rows = run_bench(cfg, progress=lambda msg: status.update(f"bench: {msg}"),
                                  on_row=keep)
    except BaseException:
        if partial.stat().st_size == 0:  # nothing measured (e.g. bad input): leave no file
            partial.unlink()
        raise
    partial.unlink()
    paths = write_outputs(ctx, rows, out, skipped=cfg.skipped, command=command)
    if not args.quick and args.out is None:
        (out / "README.md").write_text(paths["md"].read_text())
    console.print(f"{ctx['machine']}; torch {ctx['torch']}, {ctx['threads']} thread(s); "
                  f"matmul {ctx['matmul_gflops']} GFLOP/s", markup=False)
    console.print(markdown_table(rows), markup=False, soft_wrap=True)
    for line in ratios(rows):
        console.print(line, markup=False)
    for line in cfg.skipped:
        console.print(f"not measured: {line}", markup=False)
    console.print(f"written: {', '.join(str(p) for p in paths.values())}", markup=False)
    return 0


def cmd_show_task(args, overrides, console) -> int:
    import torch

    from seqmem import tasks
    from seqmem.config import parse_value

    if args.examples < 1:
        raise SeqmemError(f"--examples must be >= 1, got {args.examples}")
    opts = {}
    for o in overrides:
        key, _, value = o.partition("=")
        opts[key.removeprefix("task.")] = parse_value(value)
    task = tasks.build(args.task, **opts)
    batch = task.sample(args.examples, generator=torch.Generator().manual_seed(args.seed))
    doc = (type(task).__doc__ or "").strip().splitlines()
    console.print(f"{task!r}", markup=False)
    if doc:
        console.print(doc[0], markup=False)
    for i in range(args.examples):
        console.print(f"--- example {i}", markup=False)
        console.print(task.render(batch, i), markup=False, soft_wrap=True)
    return 0


def cmd_continual(args, overrides, console) -> int:
    import statistics

    from seqmem.continual import load_continual_config, run_continual
    from seqmem.store import RunStore

    store = RunStore(args.root)
    if args.resume:
        if args.config or args.protocol or args.method or args.seeds or overrides:
            raise SeqmemError("--resume takes no config or options: a resumed run keeps its own")
        cfg = load_continual_config(store.open_run(args.resume).config())
        rid, status, summary = run_continual(cfg, store, progress=not args.no_progress,
                                             console=console, resume_id=args.resume)
        console.print(f"{rid}: {status}, average accuracy {summary.get('avg_acc')}")
        return 0 if status == "done" else 1
    flags = [f"{k}={v}" for k, v in (("protocol", args.protocol), ("setting", args.setting),
                                     ("mixer", args.mixer)) if v]
    methods = (args.method or "").split(",") if args.method else [None]
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [None]
    results: dict[str, list[dict]] = {}
    for method in methods:
        for seed in seeds:
            extra = [*flags, *([f"method={method}"] if method else []),
                     *([f"seed={seed}"] if seed is not None else [])]
            cfg = load_continual_config(args.config, [*extra, *overrides])
            rid, status, summary = run_continual(cfg, store, progress=not args.no_progress,
                                                 console=console)
            results.setdefault(cfg.method, []).append({"run": rid, "status": status, **summary})
    tab = Table(title=f"continual learning: {cfg.protocol} ({cfg.setting or 'default'} "
                f"setting), {cfg.mixer}, {cfg.steps} steps per experience; mean ± sd over "
                f"{len(seeds)} seed(s)", title_justify="left")
    for col in ("method", "avg accuracy", "backward transfer", "forward transfer", "LCA",
                "runs"):
        tab.add_column(col)

    def stat(rows, key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        if not vals:
            return ""
        sd = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
        return f"{statistics.mean(vals):.3f}{sd}"

    for method, rows in results.items():
        tab.add_row(method, stat(rows, "avg_acc"), stat(rows, "bwt"), stat(rows, "fwt"),
                    stat(rows, "lca"), ", ".join(r["run"] for r in rows))
    console.print(tab)
    return 0 if all(r["status"] == "done" for rows in results.values() for r in rows) else 1


COMMANDS = {"run": cmd_run, "continual": cmd_continual, "analyze": cmd_analyze,
            "report": cmd_report, "train": cmd_train, "runs": cmd_runs, "show": cmd_show,
            "list": cmd_list, "show-task": cmd_show_task, "bench": cmd_bench, "sweep": cmd_sweep}

if __name__ == "__main__":
    sys.exit(main())
