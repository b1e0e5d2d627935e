"""A sweep's results on one static page (`seqmem report --sweep NAME`).

Figures, each with its numbers in a table beside it, in one self-contained HTML file (figures
embedded, no external resources) plus one PNG per figure:

- accuracy vs state size per mixer (the Zoology plot): for each mixer and state size, the best
  run over the other swept values (learning rate, seed, ...), as Arora et al. report it;
- accuracy vs sequence length per mixer (runs evaluated with `eval.lengths`);
- timescales per mixer (mean and max over units of the trained models);
- speed: training tokens/s per mixer (median over its runs), and the `seqmem bench` table if
  a bench.jsonl is given.
"""

from __future__ import annotations

import html
import json
import statistics
from pathlib import Path

from seqmem.errors import SeqmemError
from seqmem.report.render import CANVAS, figure_section, html_page, html_table
from seqmem.store import RunStore
from seqmem.store.query import run_field


def _mixer(r: dict) -> str:
    return str(run_field(r, "mixer") or run_field(r, "model.mixer.kind"))


def _acc(r: dict) -> float | None:
    v = run_field(r, "acc_mean")
    return float(v) if isinstance(v, int | float) else None


def fig_state_size(rows: list[dict]):
    best: dict[tuple[str, int], float] = {}
    for r in rows:
        a, size = _acc(r), run_field(r, "state_size")
        if a is None or not isinstance(size, int):
            continue
        key = (_mixer(r), size)
        best[key] = max(best.get(key, -1.0), a)
    if not best:
        return None
    fig, ax = CANVAS.subplots(figsize=(6, 4))
    for m in sorted({k[0] for k in best}):
        pts = sorted((s, a) for (mm, s), a in best.items() if mm == m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("state size (floats per sequence)")
    ax.set_ylabel("accuracy (best over the sweep)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(frameon=False, fontsize=8)
    rows_out = [[m, s, f"{a:.3f}"] for (m, s), a in sorted(best.items())]
    return fig, ["mixer", "state size", "best accuracy"], rows_out


def fig_length(rows: list[dict]):
    best: dict[str, dict] = {}
    for r in rows:
        by_len = run_field(r, "acc_by_length")
        if not isinstance(by_len, dict) or not by_len:
            continue
        m = _mixer(r)
        if m not in best or (_acc(r) or 0) > (_acc(best[m]) or 0):
            best[m] = r
    if not best:
        return None
    fig, ax = CANVAS.subplots(figsize=(6, 4))
    table = []
    for m, r in sorted(best.items()):
        pts = sorted((int(k), float(v)) for k, v in run_field(r, "acc_by_length").items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        table += [[m, n, f"{a:.3f}", r["id"]] for n, a in pts]
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation length")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(frameon=False, fontsize=8)
    return fig, ["mixer", "length", "accuracy", "run"], table


def fig_timescales(rows: list[dict]):
    per: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        mean, mx = run_field(r, "tau_mean"), run_field(r, "tau_max")
        if isinstance(mean, int | float) and isinstance(mx, int | float):
            per.setdefault(_mixer(r), []).append((float(mean), float(mx)))
    if not per:
        return None
    names = sorted(per)
    means = [statistics.median(v[0] for v in per[m]) for m in names]
    maxes = [statistics.median(v[1] for v in per[m]) for m in names]
    fig, ax = CANVAS.subplots(figsize=(6, 4))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], means, width=0.4, label="mean over units")
    ax.bar([i + 0.2 for i in x], maxes, width=0.4, label="max over units")
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("timescale (steps), median over runs")
    ax.legend(frameon=False, fontsize=8)
    table = [[m, len(per[m]), f"{a:.3f}", f"{b:.3f}"] for m, a, b in zip(names, means, maxes,
                                                                          strict=True)]
    return fig, ["mixer", "runs", "tau mean", "tau max"], table


FIGURES = [("accuracy_vs_state_size", fig_state_size), ("accuracy_vs_length", fig_length),
           ("timescales", fig_timescales)]


def speed_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    per: dict[str, list[float]] = {}
    for r in rows:
        v = run_field(r, "train_tokens_per_s")
        if isinstance(v, int | float):
            per.setdefault(_mixer(r), []).append(float(v))
    return (["mixer", "runs", "training tokens/s (median)"],
            [[m, len(v), f"{statistics.median(v):,.0f}"] for m, v in sorted(per.items())])


def runs_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    keys = sorted({k for r in rows for k in ((r.get("summary") or {}).get("point") or {})})
    header = ["run", "status", "mixer", *keys, "accuracy", "epochs"]
    body = []
    for r in rows:
        point = (r.get("summary") or {}).get("point") or {}
        a = _acc(r)
        body.append([r["id"], r["status"], _mixer(r), *(point.get(k, "") for k in keys),
                     "" if a is None else f"{a:.3f}", run_field(r, "epochs") or ""])
    return header, body


def write_dashboard(rows: list[dict], out_dir: str | Path, *, title: str,
                    bench: str | Path | None = None) -> Path:
    """Write dashboard.html and a PNG per figure into out_dir; return the page's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_done = sum(r["status"] == "done" for r in rows)
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(rows)} runs, {n_done} done.</p>"]
    for name, make in FIGURES:
        res = make(rows)
        if res is None:
            parts.append(f"<h2>{name.replace('_', ' ')}</h2><p class='empty'>no run of this "
                         f"sweep measured it</p>")
        else:
            parts.append(figure_section(name, *res, out))
    parts.append("<h2>speed</h2>" + html_table(*speed_table(rows)))
    if bench:
        recs = [json.loads(x) for x in Path(bench).read_text().splitlines() if x.strip()]
        header = ["subject", "form", "T", "fwd+bwd tokens/s", "step ms", "roofline"]
        body = [[b["subject"], b["form"], b["T"], f"{b['fwdbwd_tok_s']:,.0f}",
                 "" if b.get("step_ms") is None else f"{b['step_ms']:.3g}",
                 f"{100 * b['roofline_frac']:.1f} %"] for b in recs]
        parts.append(f"<h3>seqmem bench ({html.escape(str(bench))})</h3>"
                     + html_table(header, body))
    parts.append("<h2>runs</h2><div class='numbers'>" + html_table(*runs_table(rows))
                 + "</div>")
    path = out / "dashboard.html"
    path.write_text(html_page(title, parts))
    return path


def sweep_dashboard(store: RunStore, sweep: str, *, out: str | Path | None = None,
                    bench: str | Path | None = None) -> Path:
    """The dashboard of the runs of sweep `sweep` in `store` (their rows and configs), written
    to `out` (default <root>/dashboard-<sweep>/); return the page's path."""
    rows = store.list_runs(kind="sweep", name=sweep)
    if not rows:
        names = sorted({str(r.get("name")) for r in store.list_runs(kind="sweep")})
        raise SeqmemError(f"no sweep named {sweep!r} in {str(store.root)!r}; sweeps there: "
                          f"{', '.join(names) or '(none)'}")
    for r in rows:
        r["config"] = store.open_run(r["id"]).config()
    return write_dashboard(rows, out or store.root / f"dashboard-{sweep}",
                           title=f"seqmem sweep {sweep}", bench=bench)
