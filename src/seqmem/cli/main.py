"""The `seqmem` command: thin commands that parse arguments, call one library function each
and print (tables in `seqmem.cli.tables`, arguments in `seqmem.cli.parser`).

Bad input is printed as one line (`error: ...`) with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path

from rich.console import Console

from seqmem import flagship, mixers, tasks
from seqmem.analysis.analyze import analyze_and_record
from seqmem.analysis.pruning import OPTIONS as PRUNING_OPTIONS
from seqmem.analysis.pruning import check_options as check_pruning_options
from seqmem.bench import QUICK as BENCH_QUICK
from seqmem.bench import QUICK_PARTS as BENCH_QUICK_PARTS
from seqmem.bench import BenchConfig
from seqmem.cli import tables
from seqmem.cli.parser import build_parser, check_config_argument, join_dotted, split_overrides
from seqmem.config import load_config, parse_value
from seqmem.config.describe import describe
from seqmem.continual.loop import aggregate
from seqmem.dashboard import sweep_dashboard
from seqmem.devices import check_device_name, resolve_device
from seqmem.engine import api, ranks
from seqmem.engine.display import Status
from seqmem.engine.jobs import BenchRequest
from seqmem.errors import SeqmemError
from seqmem.report import load_entries, write_report
from seqmem.reproduce import REPRODUCTIONS, run_reproduction
from seqmem.store import RunStore
from seqmem.store.mlflow_export import export_mlflow
from seqmem.store.query import export, select
from seqmem.sweep import phase_spec, plan_sweep, read_sweep, run_sweep, run_two_phase
from seqmem.train import distributed
from seqmem.train.schedules import REFINED_FILE, refine_run

TAKES_OVERRIDES = ("run", "train", "show-task", "continual", "reproduce")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    typed = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(join_dotted(typed))
    args.argv = typed  # as typed, for the bench README
    console = Console()
    try:
        if args.command is None:
            parser.print_help()
            return 0
        config = getattr(args, "config", None)
        if config and "=" in config and not Path(config).exists():
            extra.insert(0, config)  # an override, not a config file
            args.config = None
        check_config_argument(args.config if hasattr(args, "config") else None)
        if args.command not in TAKES_OVERRIDES and extra:
            raise SeqmemError(f"unrecognised argument(s): {' '.join(extra)}")
        return COMMANDS[args.command](args, split_overrides(extra), console)
    except SeqmemError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Everything is recorded by now: a second Ctrl-C must not interrupt the interpreter's
        # exit handlers (multiprocessing's) into printing a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        resume = "continual" if getattr(args, "command", None) == "continual" else "train"
        print(f"interrupted: finished runs are recorded; resume with "
              f"`seqmem {resume} --resume RUN_ID` (see `seqmem runs`)", file=sys.stderr)
        return 130


def device_override(args, overrides: list[str], key: str = "train.device") -> list[str]:
    """The overrides with `--device` as `train.device=...` (checked: one line if unknown)."""
    if getattr(args, "device", None) is None:
        return overrides
    return [*overrides, f"{key}={check_device_name(args.device)}"]


def cmd_run(args, overrides, console) -> int:
    overrides = device_override(args, overrides)
    store = RunStore(args.root)
    jobs = flagship.start_flagship(store, args.config, overrides, quick=args.quick)
    cfg = jobs[0].cfg
    budget = cfg.train.max_time_s
    console.print(f"seqmem run: leaky RNN (d_model={cfg.model.d_model}) on N-parity, "
                  f"single- vs multi-head curriculum, "
                  f"{f'{budget:.0f} s' if budget else 'no time limit'} each"
                  f"{'' if args.sequential else ', side by side'}; runs "
                  f"{', '.join(j.run_id for j in jobs)}")
    ended = flagship.train_flagship(store, jobs, parallel=not args.sequential,
                                    progress=not args.no_progress, console=console)
    tables.flagship_comparison(console, jobs, ended, flagship.comparison_rows)
    ok = all(ended[j.run_id]["status"] == "done" for j in jobs)
    if ok and not args.no_analysis:
        with Status(console, "analysing the runs (timescales, tau_net, ablation, "
                    "perturbation, forgetting)"):
            heads, path = flagship.analyse_and_report(store, [j.run_id for j in jobs],
                                                      quick=args.quick,
                                                      parallel=not args.sequential)
        tables.headlines(console, jobs, heads)
        console.print(f"report: {path}")
    return 0 if ok else 1


def cmd_train(args, overrides, console) -> int:
    overrides = device_override(args, overrides)
    if args.nproc is not None:
        if args.nproc < 1:
            raise SeqmemError(f"--nproc must be a whole number >= 1, got {args.nproc}")
        overrides = [*overrides, f"train.nproc={args.nproc}"]
    if distributed.env_rank() > 0:  # a rank > 0 under torchrun: it follows rank 0
        return follow_rank_zero(args, overrides)
    store = RunStore(args.root)
    if args.resume:
        if args.config or args.mixer or args.task or args.curriculum:
            raise SeqmemError("--resume takes no config, --mixer, --task or --curriculum: a "
                              "resumed run keeps its own config")
        job = api.resume_job(store, args.resume, overrides)
    else:
        job = api.new_train_job(store, args.config, overrides, mixer=args.mixer,
                                task=args.task, curriculum=args.curriculum)
    cfg = job.cfg
    console.print(f"run {job.run_id}: {cfg.model.mixer.kind} on {cfg.task.kind}, "
                  f"curriculum {cfg.curriculum.kind} -> {job.run_dir}")
    out = api.run_jobs(store, [job], progress=not args.no_progress, console=console)
    ev = out.ended[job.run_id]
    tables.train_result(console, cfg, ev, out.summaries.get(job.run_id) or {})
    return 0 if ev["status"] == "done" else 1


def follow_rank_zero(args, overrides) -> int:
    """A rank > 0 of a torchrun launch: it writes nothing and trains as rank 0 tells it (the
    config only names the device, hence the process group's backend)."""
    if args.resume:
        stored = RunStore(args.root).open_run(args.resume).config()
        device = load_config(stored, [o for o in overrides if o.startswith("train.device=")])
    else:
        device = api.train_config(args.config, overrides, mixer=args.mixer, task=args.task,
                                  curriculum=args.curriculum)
    return ranks.follower(distributed.backend_for(resolve_device(device.train.device)))


def cmd_continual(args, overrides, console) -> int:
    store = RunStore(args.root)
    if args.resume:
        if args.config or args.protocol or args.method or args.seeds or args.device \
                or overrides:
            raise SeqmemError("--resume takes no config or options: a resumed run keeps its own")
        jobs = [api.resume_continual_job(store, args.resume)]
    else:
        seeds = _csv(args.seeds, "--seeds", int)
        if args.device is not None:
            resolve_device(args.device)  # a device this machine lacks: one line, no job
        overrides = device_override(args, overrides, key="device")
        jobs = api.continual_jobs(store, args.config, overrides, protocol=args.protocol,
                                  setting=args.setting, mixer=args.mixer,
                                  methods=_csv(args.method, "--method"), seeds=seeds)
    out = api.run_jobs(store, jobs, progress=not args.no_progress, console=console)
    tables.continual(console, jobs[-1].cfg, aggregate(jobs, out), len({j.cfg.seed for j in jobs}),
                     all_ids=_all_ids(store))
    return 0 if all(s == "done" for s in out.status.values()) else 1


def cmd_runs(args, overrides, console) -> int:
    store = RunStore(args.root)
    rows = select(store, status=args.status, sweep=args.sweep, where=args.where,
                  best=args.best, metric=args.metric, limit=args.limit)
    if args.mlflow:
        done = export_mlflow(store, rows, args.mlflow, args.mlflow_experiment)
        console.print(f"exported {len(done)} run(s) to MLflow experiment "
                      f"{args.mlflow_experiment!r} at {args.mlflow} ({len(rows) - len(done)} "
                      f"were there already)", markup=False)
    elif args.format in ("json", "csv"):
        print(export(rows, args.format), end="" if args.format == "csv" else "\n")
    else:
        keys = [k.strip() for k in (args.best or "").split(",") if k.strip()]
        tables.runs(console, rows, args.root, all_ids=_all_ids(store), keys=keys)
    return 0


def cmd_sweep(args, overrides, console) -> int:
    spec = read_sweep(args.file)
    if args.device is not None:  # every run of the sweep on that device
        key = "device" if spec.kind == "continual" else "train.device"
        spec = spec.model_copy(update={"overrides": device_override(args, spec.overrides,
                                                                    key)})
    store = RunStore(args.root)
    first = phase_spec(spec, "tune") if spec.two_phase else spec
    if args.dry_run:
        tables.sweep_plan(console, first, plan_sweep(first, store))
        return 0
    say = (lambda msg: console.print(msg, markup=False)) if not args.no_progress else None
    run = run_two_phase if spec.two_phase else run_sweep
    res = run(spec, store, workers=args.workers, backend=args.backend, address=args.address,
              progress=say)
    if spec.two_phase:
        tables.two_phase_result(console, spec, res)
    else:
        tables.sweep_result(console, spec, res)
    if res.interrupted:
        raise KeyboardInterrupt
    return 0 if all(st == "done" for st in res.status.values()) else 1


def cmd_show(args, overrides, console) -> int:
    store = RunStore(args.root)
    record = store.describe(args.run_id)
    if args.json:
        tables.show_json(record)
    else:
        tables.show(console, record)
    return 0


def cmd_config(args, overrides, console) -> int:
    tables.config_keys(console, args.show, describe(args.show, args.kind))
    return 0


def cmd_store(args, overrides, console) -> int:
    store = RunStore(args.root)
    report = store.check() if args.action == "check" else store.rebuild()
    tables.store_report(console, report)
    return 0 if args.action == "rebuild" or report.ok else 1


def cmd_report(args, overrides, console) -> int:
    store = RunStore(args.root)
    if args.sweep:
        if args.run_ids:
            raise SeqmemError("give run ids or --sweep NAME, not both")
        path = sweep_dashboard(store, args.sweep, out=args.out, bench=args.bench)
        console.print(f"dashboard: {path}")
        return 0
    if not args.run_ids:
        raise SeqmemError("give at least one RUN_ID, or --sweep NAME")
    entries = load_entries(store, args.run_ids)
    path = write_report(entries, args.out or str(store.root / f"report-{entries[0].run_id}"))
    console.print(f"report: {path}")
    return 0


def cmd_reproduce(args, overrides, console) -> int:
    if args.list:
        if args.name:
            raise SeqmemError("give a NAME or --list, not both")
        tables.reproductions(console, REPRODUCTIONS)
        return 0
    if not args.name:
        raise SeqmemError(f"give the finding to reproduce (one of: "
                          f"{', '.join(sorted(REPRODUCTIONS))}) or --list")
    say = (lambda msg: console.print(msg, markup=False)) if not args.no_progress else None
    seeds = None if args.seeds is None else _csv(args.seeds, "--seeds", int)
    outcome = run_reproduction(args.name, args.root, quick=args.quick, workers=args.workers,
                               seeds=seeds, overrides=overrides,
                               progress=say)
    tables.reproduction(console, REPRODUCTIONS[args.name], outcome)
    return 0


def cmd_list(args, overrides, console) -> int:
    tables.registry(console, args.what, mixers if args.what == "mixers" else tasks)
    return 0


def cmd_analyze(args, overrides, console) -> int:
    device = resolve_device(args.device)  # a device this machine lacks: one line, first
    store = RunStore(args.root)
    row = store.get(args.run_id)
    if row["status"] != "done":
        print(f"note: run {row['id']} is {row['status']}"
              + (f" ({row['reason']})" if row.get("reason") else "")
              + "; analysing the curriculum steps it reached", file=sys.stderr)
    what = tuple(w.strip() for w in args.what.split(",") if w.strip())
    with Status(console, f"analysing {args.run_id}") as status:
        out, head = analyze_and_record(store, args.run_id, what=what, seed=args.seed,
                                       progress=status.message, device=device)
    tables.analysis(console, store.open_run(args.run_id), out, head)
    return 0


def cmd_prune(args, overrides, console) -> int:
    store = RunStore(args.root)
    opts = {"prune_methods": tuple(_csv(args.method, "--method")),
            "prune_sparsities": tuple(_csv(args.sparsities, "--sparsities", float)),
            "prune_schedule": args.schedule,
            "prune_finetune_epochs": _int(args.finetune_epochs, "--finetune-epochs"),
            "prune_retrain": args.retrain, "prune_save": args.save,
            "prune_retrain_epochs": None if args.retrain_epochs is None
            else _int(args.retrain_epochs, "--retrain-epochs", 1)}
    seed = _int(args.seed, "--seed")
    check_pruning_options({**PRUNING_OPTIONS, **opts})  # before any progress line
    store.get(args.run_id)  # an unknown run: one error line
    with Status(console, f"pruning {args.run_id}") as status:
        out, head = analyze_and_record(store, args.run_id, what=("pruning",), seed=seed,
                                       progress=status.message, **opts)
    tables.pruning(console, store.open_run(args.run_id), out["pruning"], head)
    return 0


def cmd_refine_schedule(args, overrides, console) -> int:
    store = RunStore(args.root)
    run = store.open_run(args.run_id)
    out = refine_run(run, smoothing=args.smoothing)
    f = out["factors"]
    console.print(f"refined the schedule of run {run.id} from {out['steps']} updates' gradient "
                  f"norms (smoothing {out['smoothing']}): multiplier max {max(f):.3g} at "
                  f"update {f.index(max(f)) + 1}, mean {sum(f) / len(f):.3g}; written to "
                  f"{run.dir / REFINED_FILE}\ntrain under it: seqmem train ... "
                  f"train.schedule=refined train.schedule_from={run.id}", markup=False)
    return 0


def _int(text: str, what: str, low: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise SeqmemError(f"{what} must be an integer >= {low}, got {text!r}")
    return value


def cmd_bench(args, overrides, console) -> int:
    flags = [f"{k}={v}" for k, v in (
        ("mixers", args.mixers), ("forms", args.forms), ("references", args.references),
        ("lengths", args.lengths), ("batch", args.batch), ("d_model", args.d_model),
        ("repeats", args.repeats), ("budget_s", args.budget), ("threads", args.threads),
        ("device", args.device),
        ("memory", False if args.no_memory else None),
        ("peers", True if args.peers else None),
        ("peer_shapes", "quick" if args.peers and args.quick else None),
        ("peer_rounds", args.repeats if args.peers else None)) if v is not None]
    parts = [p for p in ("ops", "chunks", "small", "decode", "compile", "kernels")
             if getattr(args, p)] + \
        (["grid2d"] if args.grid else [])
    grid_flags = (args.mixers, args.forms, args.references, args.lengths, args.batch,
                  args.d_model)
    if parts:  # only the tables asked for (quick: each at its small shapes)
        flags.append(f"parts={','.join(parts)}")
    elif args.quick or any(v is not None for v in grid_flags):
        flags.append("parts=grid")  # a chosen grid: the grid alone; plain `bench`: everything
    if args.write:
        flags.append("write_chunks=true")
    source = (BENCH_QUICK_PARTS if parts else BENCH_QUICK) if args.quick else None
    cfg = load_config(source, flags, schema=BenchConfig)
    resolve_device(cfg.device)  # a device this machine lacks: one line, before any output
    out = Path(args.out or ("runs/bench-quick" if args.quick else "benchmarks"))
    req = BenchRequest(cfg, command="seqmem " + shlex.join(args.argv),
                       readme=not args.quick and args.out is None)
    res = api.run_bench_job(req, out, console=console)
    ctx = res["context"]
    if ctx.get("kind") != "parts":
        tables.bench(console, ctx, res["rows"], res["paths"])
    for page in ctx.get("pages", []):
        console.print(Path(page).read_text(), markup=False, soft_wrap=True)
    if ctx.get("kind") == "parts":
        console.print(f"written: {', '.join(str(p) for p in res['paths'].values())}",
                      markup=False)
    return 0


def cmd_show_task(args, overrides, console) -> int:
    opts = {k.removeprefix("task."): parse_value(v)
            for k, _, v in (o.partition("=") for o in overrides)}
    head, doc, texts = tasks.examples(args.task, opts, args.examples, args.seed)
    console.print(head, markup=False)
    if doc:
        console.print(doc, markup=False)
    for i, text in enumerate(texts):
        console.print(f"--- example {i}", markup=False)
        console.print(text, markup=False, soft_wrap=True)
    return 0


def _all_ids(store: RunStore) -> list[str]:
    """Every run id of the store: what a short prefix must tell apart."""
    return [r["id"] for r in store.list_runs()] if store.root.exists() else []


def _csv(text: str | None, what: str, conv=str) -> list | None:
    if text is None:
        return None
    try:
        return [conv(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SeqmemError(f"{what} must be a comma-separated list, got {text!r}") from None


COMMANDS = {"run": cmd_run, "continual": cmd_continual, "analyze": cmd_analyze,
            "prune": cmd_prune, "refine-schedule": cmd_refine_schedule,
            "report": cmd_report, "train": cmd_train, "runs": cmd_runs, "show": cmd_show,
            "list": cmd_list, "show-task": cmd_show_task, "bench": cmd_bench, "sweep": cmd_sweep,
            "store": cmd_store, "config": cmd_config, "reproduce": cmd_reproduce}

if __name__ == "__main__":
    sys.exit(main())
