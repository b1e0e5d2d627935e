"""What the commands print: rich tables and one-line results, from library results only."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from seqmem.analysis.registry import analyses
from seqmem.bench.run import markdown_table, ratios, unsteady
from seqmem.report.page import mean_sd, paired_rows
from seqmem.store.query import run_field


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
    labels = [(label, key) for spec in analyses() for key, label in spec.headline.items()]
    known = {key for _, key in labels}
    labels += [(k, k) for k in sorted({k for h in heads.values() for k in h} - known)]
    for label, key, sd in paired_rows(labels):  # a mean and its sd in one row, as the report
        vals = [heads[j.run_id].get(key) for j in jobs]
        if all(v is None for v in vals):
            continue
        sds = [heads[j.run_id].get(sd) if sd else None for j in jobs]
        tab.add_row(escape(label), *map(mean_sd, vals, sds))
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


def short_ids(ids, among, min_len: int = 8) -> dict[str, str]:
    """The shortest prefix of each id that no other id of `among` starts with, at least
    `min_len` characters (as git abbreviates commits); every command accepts it."""
    pool = sorted(set(among) | set(ids))
    out = {}
    for i, rid in enumerate(pool):
        common = max((len(_common_prefix(rid, pool[j])) for j in (i - 1, i + 1)
                      if 0 <= j < len(pool)), default=0)
        out[rid] = rid[:max(min_len, common + 1)]
    return {rid: out[rid] for rid in ids}


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def continual(console: Console, cfg, rows: list[dict], n_seeds: int,
              all_ids: list[str] = ()) -> None:
    """The methods x seeds table; runs by their short unique prefix, the full ids below it."""
    run_ids = [rid for r in rows for rid in r["runs"].split(", ") if rid]
    short = short_ids(run_ids, all_ids)
    regression = any(r.get("avg_loss") for r in rows) and not any(r.get("avg_acc") for r in rows)
    key, avg = ("avg_loss", "avg MSE") if regression else ("avg_acc", "avg accuracy")
    tab = _table(f"continual learning: {cfg.protocol} ({cfg.setting or 'default'} setting), "
                 f"{cfg.mixer}, {cfg.steps} steps per experience; mean ± sd over {n_seeds} "
                 f"seed(s)", ("method", avg, "backward transfer", "forward transfer",
                              "forgetting", "LCA", "runs"))
    for r in rows:
        tab.add_row(r["method"], r.get(key, ""), r["bwt"], r["fwt"], r.get("forgetting", ""),
                    r["lca"],
                    "\n".join(short[rid] for rid in r["runs"].split(", ") if rid))
    runs_col = tab.columns[-1]  # a prefix per line, never cut
    runs_col.no_wrap, runs_col.overflow = True, "fold"
    runs_col.min_width = max((len(v) for v in short.values()), default=4)
    console.print(tab)
    console.print("runs: " + ", ".join(run_ids), markup=False, soft_wrap=True)


def store_report(console: Console, report) -> None:
    for p in report.problems:
        console.print(f"  {p}", markup=False)
    console.print(report.line, markup=False)


def runs(console: Console, rows: list[dict], root: str, *, all_ids=(), keys=()) -> None:
    """The runs table: each run by the shortest unique prefix of its id (what every command
    accepts), and the full id where the console has room; `keys` (the --best groups) as
    columns of their own."""
    if not rows:
        console.print(f"no runs in {root} match", markup=False)
        return
    short = short_ids([r["id"] for r in rows], all_ids)
    width = max(len(r["id"]) for r in rows)
    full = console.width >= 100 + width
    body = []
    for r in rows:
        s = r.get("summary") or {}
        acc = s.get("acc_mean", s.get("avg_acc"))  # continual runs: the average accuracy
        body.append({"name": r.get("name") or "", "kind": r.get("kind") or "",
                     "status": r["status"], "epochs": str(s.get("epochs", "")),
                     "max N": str(s.get("n_solved") or ""),
                     "acc": "" if acc is None else f"{acc:.3f}",
                     "updated": str(r.get("updated_at", ""))[5:16].replace("T", " ")})
    # a column empty in every row says nothing; name and kind shared by every row (one
    # sweep's runs) go to the title instead
    shared = {c: body[0][c] for c in ("name", "kind")
              if len(rows) > 1 and body[0][c] and all(b[c] == body[0][c] for b in body)}
    cols = [c for c in body[0] if c not in shared and any(b[c] for b in body)]
    title = f"runs in {root}" + (f" ({', '.join(f'{k} {v}' for k, v in shared.items())})"
                                 if shared else "")
    tab = _table(title, ())
    tab.add_column("id" if full else "id (prefix)", no_wrap=True, overflow="fold",
                   min_width=max(len(v) for v in short.values()))
    if full:
        tab.add_column("full id", no_wrap=True, overflow="fold", min_width=width)
    for k in keys:
        tab.add_column(k, overflow="fold", min_width=min(len(k), 16))
    for col in cols:
        tab.add_column(col)
    for r, b in zip(rows, body, strict=True):
        cells = [short[r["id"]], *([r["id"]] if full else []),
                 *(_num(run_field(r, k)) for k in keys)]
        tab.add_row(*(escape(c) for c in cells), *(escape(b[c]) for c in cols))
    console.print(tab)
    if not full:
        console.print("full ids: widen the terminal, or seqmem runs --format csv; any unique "
                      "prefix of at least 6 characters works in every command", markup=False)


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


def two_phase_result(console: Console, spec, res) -> None:
    """A two-phase sweep: every point's score on the tuning stream (the selected one marked),
    then the frozen point's score on the evaluation stream."""
    tp = spec.two_phase

    def fmt(v) -> str:
        return "" if v is None else f"{v:.4f}"

    tab = _table(f"sweep {spec.name}, tuning phase ({spec.name}-tune): {tp.select} "
                 f"(mean over seeds; {tp.mode or 'default'} direction)",
                 ("point", tp.select, "runs", "selected"))
    for s in res.tune_scores:
        tab.add_row(s.label, fmt(s.score), str(len(s.summaries)),
                    "best" if res.best is not None and s is res.best else "")
    console.print(tab)
    if res.best is None:
        console.print(f"no point of {spec.name}-tune has {tp.select}; the evaluation phase did "
                      f"not run", markup=False)
        return
    ev = res.eval_score
    console.print(f"evaluation phase ({spec.name}-eval): {res.best.label}: {tp.select} "
                  f"{fmt(ev.score if ev else None)} (tuning phase {fmt(res.best.score)}); see "
                  f"seqmem runs --sweep {spec.name}-eval", markup=False)


def show(console: Console, record: dict) -> None:
    """A run as a readable summary (`seqmem show`; `--json` prints the record itself)."""
    row, cfg = record["row"], record.get("config") or {}
    s = row.get("summary") or {}
    lines: list[tuple[str, str]] = []

    def add(label, value):
        if value not in (None, "", [], {}):
            lines.append((label, str(value)))

    add("run", row["id"])
    add("status", row["status"] + (f" ({row['reason']})" if row.get("reason") else ""))
    add("kind", row.get("kind"))
    add("name", row.get("name"))
    task = cfg.get("task") or {}
    mixer = ((cfg.get("model") or {}).get("mixer") or {})
    add("task", s.get("task") or task.get("kind") or cfg.get("protocol"))
    add("mixer", s.get("mixer") or mixer.get("kind") or cfg.get("mixer"))
    add("method", s.get("method") or cfg.get("method"))
    cur = s.get("curriculum") or (cfg.get("curriculum") or {}).get("kind")
    add("curriculum", cur)
    add("epochs", s.get("epochs"))
    if s.get("stop_reason"):
        add("stopped by", s["stop_reason"])
    if "knob" in s:
        knob = s["knob"]
        add(f"max {knob} solved", "none" if s.get("n_solved") is None else s["n_solved"])
        add(f"{knob} reached", s.get("n_current"))
        # the curriculum's own end (n_max reached), not the run's: a run that used up its
        # budget is done with its curriculum unfinished
        add("curriculum finished", "yes" if s.get("curriculum_finished") else
            "no (the run stopped before the curriculum's last step)")
    if isinstance(s.get("acc_mean"), int | float):
        add("accuracy", f"{s['acc_mean']:.3f} (scaled {s.get('acc_scaled', float('nan')):.3f})"
            + (f"; per head {', '.join(f'{a:.3f}' for a in s['acc'])}"
               if isinstance(s.get("acc"), list) and len(s["acc"]) > 1 else ""))
    for key, label in (("acc_by_length", "accuracy by length"), ("mse_by_length",
                                                                  "mse by length")):
        if isinstance(s.get(key), dict):
            add(label, ", ".join(f"{k}: {_num(v)}" for k, v in s[key].items()))
    for key in ("mse", "eval_mse", "avg_acc", "bwt", "fwt", "lca", "forgetting"):
        if isinstance(s.get(key), int | float):
            add(key, f"{s[key]:.4g}")
    add("evaluated on", s.get("eval_on"))
    add("state size", f"{s['state_size']} floats per sequence" if "state_size" in s else None)
    add("parameters", s.get("n_params"))
    timing = [f"{s['elapsed_s']:.0f} s training" if "elapsed_s" in s else "",
              f"{s['train_tokens_per_s']:,.0f} tokens/s" if "train_tokens_per_s" in s else ""]
    add("time", ", ".join(t for t in timing if t))
    add("created", str(row.get("created_at") or "")[:19])
    add("updated", str(row.get("updated_at") or "")[:19])
    add("folder", row.get("dir"))
    add("checkpoints", ", ".join(record.get("checkpoints") or []))
    w = record.get("writer")
    if w:
        add("written by", ", ".join(f"{k} {v}" for k, v in w.items()) if isinstance(w, dict)
            else w)
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        console.print(f"{k:<{width}}  {v}", markup=False, soft_wrap=True)
    console.print(f"{'':<{width}}  config and full record: seqmem show {row['id']} --json",
                  markup=False, soft_wrap=True)


def show_json(record: dict) -> None:
    print(json.dumps(record, indent=1, default=str))


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring (up to its first full stop followed by a space or
    the end of its first paragraph), its lines joined: a registry table's summary."""
    para = re.split(r"\n\s*\n", (doc or "").strip(), maxsplit=1)[0]
    text = " ".join(para.split())
    # a stop ends the sentence, not one of an ellipsis ("x[1] + ... + x[N]") or of "e.g."
    m = re.search(r"(?<![.\s])(?<!\be\.g)(?<!\bi\.e)(?<!\bcf)(?<!\bvs)(?<!\bal)\.(?=\s|$)", text)
    return text[:m.start() + 1] if m else text


def registry(console: Console, what: str, reg) -> None:
    """Registered names, their options and the first sentence of their docstring (escaped:
    docstrings hold brackets, e.g. x[t-N+1], that rich would read as markup)."""
    tab = _table(f"registered {what}", ("name", "options (keyword, default)", "summary"))
    for name in reg.names():
        cls = reg.get(name)
        opts = ", ".join(f"{k}={p.default!r}" for k, p in reg.hyperparameters(cls).items())
        tab.add_row(escape(name), escape(opts), escape(first_sentence(cls.__doc__)))
    console.print(tab)


def analysis(console: Console, run, out: dict, head: dict) -> None:
    stages = f", N = {out['N'][0]}..{out['N'][-1]}" if out.get("N") else ""
    tab = _table(f"analysis of {run.id} ({out.get('curriculum', '')}{stages})",
                 ("measure", "value"))
    for k, v in head.items():
        tab.add_row(k, _num(v))
    console.print(tab)
    law = out.get("lr_law") or {}
    if law.get("params"):  # the annealing law: final loss measured, fitted and predicted
        p = law["params"]
        pred = ", ".join(f"{n} {v['final']:.4g}" for n, v in law["predicted"].items())
        console.print(f"lr_law ({law['schedule']}, {law['steps']} updates): L0 {p['L0']:.4g}, "
                      f"A {p['A']:.4g}, alpha {p['alpha']:.4g}, C {p['C']:.4g}, rmse "
                      f"{p['rmse']:.3g}; final loss measured {law['final_measured']:.4g}, "
                      f"fitted {law['final_fitted']:.4g}; predicted: {pred}", markup=False)
    elif law.get("skipped"):
        console.print(f"lr_law skipped: {law['skipped']}", markup=False)
    console.print(f"written: {run.dir / 'analysis.json'}")


def pruning(console: Console, run, p: dict, head: dict) -> None:
    """Accuracy against sparsity of `seqmem prune` (relative to the intact model: one-shot,
    fine-tuned, retrained from scratch), with the target s, the fraction of mixer weights at
    zero, and the mean tau of the units structured pruning removed (out) and kept (in)."""
    tab = _table(f"pruning of {run.id} at N = {p['N']} (intact accuracy "
                 f"{p['base_accuracy']:.3f}; relative accuracies)",
                 ("method", "s", "zeros", "1-shot", "tuned", "scratch", "tau out",
                  "tau in"))
    for q in p["points"]:
        tab.add_row(q["method"], f"{q['target']:.2f}", f"{q['sparsity']:.3f}",
                    _num(q["rel_oneshot"]), _num(q.get("rel_finetuned")),
                    _num(q.get("rel_retrained")), _num(q.get("tau_removed_mean")),
                    _num(q.get("tau_kept_mean")))
    console.print(tab)
    for k, v in head.items():
        console.print(f"{k}: {_num(v)}", markup=False)
    for method, why in (p.get("skipped") or {}).items():
        console.print(f"skipped {method}: {why}", markup=False)
    console.print(f"written: {run.dir / 'analysis.json'}", markup=False)


def bench(console: Console, ctx: dict, rows: list[dict], paths: dict) -> None:
    if ctx.get("kind") == "peers":
        console.print(Path(paths["md"]).read_text(), markup=False, soft_wrap=True)
        console.print(f"written: {', '.join(str(p) for p in paths.values())}", markup=False)
        return
    console.print(f"{ctx['machine']}; torch {ctx['torch']}, {ctx['threads']} thread(s); "
                  f"matmul {ctx['matmul_gflops']} GFLOP/s", markup=False)
    console.print(markdown_table(rows), markup=False, soft_wrap=True)
    for line in ratios(rows):
        console.print(line, markup=False)
    for line in unsteady(rows):
        console.print(f"unsteady: {line}", markup=False)
    for line in ctx["skipped"]:
        console.print(f"not measured: {line}", markup=False)
    console.print(f"written: {', '.join(str(p) for p in paths.values())}", markup=False)


def config_keys(console: Console, section: str, rows: list[dict]) -> None:
    tab = _table(f"config keys: {section} (override any as key=value)",
                 ("key", "type", "default", "help"))
    for r in rows:
        tab.add_row(*(escape(str(r[k])) for k in ("key", "type", "default", "help")))
    console.print(tab)


def reproductions(console: Console, reps: dict) -> None:
    """The registered reproductions: name, the finding, the paper, the budget."""
    tab = _table("reproductions (seqmem reproduce NAME [--quick])",
                 ["name", "finding", "paper", "budget"])
    for name in sorted(reps):
        r = reps[name]
        tab.add_row(name, escape(r.title), escape(r.paper), escape(r.budget))
    console.print(tab)


def reproduction(console: Console, rep, outcome) -> None:
    """A reproduction's outcome: our table, the paper's, the verdict with its reason, the
    page."""
    for title, (header, rows) in ((f"{rep.name}: ours", outcome.ours),
                                  (f"{rep.name}: the paper's ({rep.paper})", outcome.paper)):
        tab = _table(escape(title), [escape(str(h)) for h in header])
        for row in rows:
            tab.add_row(*(escape(str(c)) for c in row))
        console.print(tab)
    colour = {"reproduced": "green", "partly": "yellow"}.get(outcome.verdict, "red")
    console.print(f"verdict: [{colour}]{outcome.verdict}[/{colour}]. {escape(outcome.reason)}")
    if outcome.page is not None:
        console.print(f"page: {escape(str(outcome.page))}")
