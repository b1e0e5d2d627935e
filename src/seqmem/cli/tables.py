"""What the commands print: rich tables and one-line results, from library results only."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from seqmem.bench.run import markdown_table, ratios


def _table(title: str, columns) -> Table:
    tab = Table(title=title, title_justify="left")
    for col in columns:
        tab.add_column(col)
    return tab


def _num(v) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def flagship_comparison(console: Console, jobs, ended: dict, comparison_rows) -> None:
    summaries = {j.label: ended[j.run_id].get("summary", {}) for j in jobs}
    tab = _table("single- vs multi-head curriculum (N-parity)", ["", *(j.label for j in jobs)])

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
        per_n = _table("per N: epochs spent and tau when N was solved", header)
        for row in body:
            per_n.add_row(*row)
        console.print(per_n)
    for j in jobs:
        if ended[j.run_id].get("reason"):
            console.print(f"[{j.label}] {ended[j.run_id]['status']}: "
                          f"{ended[j.run_id]['reason']}", markup=False)


def headlines(console: Console, jobs, heads: dict[str, dict]) -> None:
    tab = _table("analysis (last N solved; relative accuracy on the streaming task)",
                 ["", *(j.label for j in jobs)])
    for k in sorted({k for h in heads.values() for k in h}):
        tab.add_row(k, *(_num(heads[j.run_id].get(k)) for j in jobs))
    console.print(tab)


def train_result(console: Console, cfg, ev: dict, s: dict) -> None:
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


def continual(console: Console, cfg, rows: list[dict], n_seeds: int) -> None:
    tab = _table(f"continual learning: {cfg.protocol} ({cfg.setting or 'default'} setting), "
                 f"{cfg.mixer}, {cfg.steps} steps per experience; mean ± sd over {n_seeds} "
                 f"seed(s)", ("method", "avg accuracy", "backward transfer", "forward transfer",
                              "LCA", "runs"))
    for r in rows:
        tab.add_row(r["method"], r["avg_acc"], r["bwt"], r["fwt"], r["lca"], r["runs"])
    console.print(tab)


def store_report(console: Console, report) -> None:
    for p in report.problems:
        console.print(f"  {p}", markup=False)
    console.print(report.line, markup=False)


def runs(console: Console, rows: list[dict], root: str) -> None:
    if not rows:
        console.print(f"no runs in {root} match", markup=False)
        return
    tab = _table(f"runs in {root}", ())
    tab.add_column("id", no_wrap=True, min_width=22)  # what every other command takes
    for col in ("name", "kind", "status", "epochs", "max N", "acc", "updated"):
        tab.add_column(col)
    for r in rows:
        s = r.get("summary") or {}
        acc = s.get("acc_mean", s.get("avg_acc"))  # continual runs: the average accuracy
        tab.add_row(r["id"], r.get("name") or "", r.get("kind") or "", r["status"],
                    str(s.get("epochs", "")), str(s.get("n_solved") or ""),
                    "" if acc is None else f"{acc:.3f}", str(r.get("updated_at", ""))[:19])
    console.print(tab)


def sweep_plan(console: Console, spec, plan) -> None:
    console.print(f"sweep {spec.name}: {len(plan.points)} runs: {len(plan.done)} done, "
                  f"{sum(j.resume for j in plan.jobs)} to resume, "
                  f"{sum(not j.resume for j in plan.jobs)} to start, {len(plan.busy)} "
                  f"running elsewhere", markup=False)
    for j in plan.jobs:
        console.print(f"  {'resume' if j.resume else 'start '} {j.label}", markup=False)


def sweep_result(console: Console, spec, res) -> None:
    counts: dict[str, int] = {}
    for st in res.status.values():
        counts[st] = counts.get(st, 0) + 1
    console.print(f"sweep {spec.name}: " + ", ".join(f"{v} {k}" for k, v in
                                                     sorted(counts.items()))
                  + f"; see seqmem runs --sweep {spec.name}", markup=False)


def show(record: dict) -> None:
    print(json.dumps(record, indent=1, default=str))


def registry(console: Console, what: str, reg) -> None:
    tab = _table(f"registered {what}", ("name", "options (keyword, default)", "summary"))
    for name in reg.names():
        cls = reg.get(name)
        opts = ", ".join(f"{k}={p.default!r}" for k, p in reg.hyperparameters(cls).items())
        doc = (cls.__doc__ or "").strip().splitlines()
        tab.add_row(name, opts, doc[0] if doc else "")
    console.print(tab)


def analysis(console: Console, run, out: dict, head: dict) -> None:
    tab = _table(f"analysis of {run.id} ({out.get('curriculum', '')}, N = {out['N'][0]}.."
                 f"{out['N'][-1]})", ("measure", "value"))
    for k, v in head.items():
        tab.add_row(k, _num(v))
    console.print(tab)
    console.print(f"written: {run.dir / 'analysis.json'}")


def bench(console: Console, ctx: dict, rows: list[dict], paths: dict) -> None:
    console.print(f"{ctx['machine']}; torch {ctx['torch']}, {ctx['threads']} thread(s); "
                  f"matmul {ctx['matmul_gflops']} GFLOP/s", markup=False)
    console.print(markdown_table(rows), markup=False, soft_wrap=True)
    for line in ratios(rows):
        console.print(line, markup=False)
    for line in ctx["skipped"]:
        console.print(f"not measured: {line}", markup=False)
    console.print(f"written: {', '.join(str(p) for p in paths.values())}", markup=False)
