"""A sweep's results on one static page (`seqmem report --sweep NAME`).

Figures, each with its numbers in a table beside it, in one self-contained HTML file (figures
embedded, no external resources) plus one PNG per figure:

- accuracy vs state size per mixer (the Zoology plot): for each mixer and state size, the best
  run over the other swept values (learning rate, seed, ...), as Arora et al. report it;
- accuracy vs sequence length per mixer (runs evaluated with `eval.lengths`);
- timescales per mixer (mean and max over units of the trained models; a mixer that declares
  no per-unit timescale, e.g. elman, is named with no bar);
- speed: training tokens/s per mixer (median over its runs, and each run), and the
  `seqmem bench` table if a bench.jsonl is given.

Each figure has a caption saying what it shows and over how many runs. Points of mixers at
the same x are shifted slightly apart; an axis is logarithmic only where its values span more
than a decade.
"""

from __future__ import annotations

import html
import json
import statistics
from pathlib import Path

from matplotlib.ticker import FuncFormatter

from seqmem.errors import SeqmemError
from seqmem.report.render import CANVAS, figure_section, html_page, html_table
from seqmem.store import RunStore
from seqmem.store.query import run_field


def _mixer(r: dict) -> str:
    return str(run_field(r, "mixer") or run_field(r, "model.mixer.kind"))


def _acc(r: dict) -> float | None:
    v = run_field(r, "acc_mean")
    return float(v) if isinstance(v, int | float) else None


MARKERS = "osD^vP*Xh<>"


def _offsets(names: list[str], spread: float) -> dict[str, float]:
    """An offset per mixer, centred on 0 and `spread` wide in all, so that points of
    different mixers at the same x stay visible side by side."""
    k = len(names)
    return {m: (i - (k - 1) / 2) * (spread / max(k - 1, 1)) for i, m in enumerate(names)}


def _style(names: list[str]) -> dict[str, dict]:
    return {m: {"color": f"C{i}", "marker": MARKERS[i % len(MARKERS)]}
            for i, m in enumerate(names)}


def _note(n_runs: dict[str, int]) -> str:
    return ", ".join(f"{m} {n}" for m, n in sorted(n_runs.items()))


def fig_state_size(rows: list[dict]):
    best: dict[tuple[str, int], float] = {}
    n_runs: dict[str, int] = {}
    for r in rows:
        a, size = _acc(r), run_field(r, "state_size")
        if a is None or not isinstance(size, int):
            continue
        key = (_mixer(r), size)
        best[key] = max(best.get(key, -1.0), a)
        n_runs[key[0]] = n_runs.get(key[0], 0) + 1
    if not best:
        return None
    fig, ax = CANVAS.subplots(figsize=(6.4, 3.8))
    names = sorted({k[0] for k in best})
    log = CANVAS.auto_log(ax, [k[1] for k in best], "x", base=2)
    # mixers of equal state size would hide each other: shift each a little (a factor on a
    # log axis), the table keeps the exact sizes
    sizes = [k[1] for k in best]
    width = 0.3 if log else 0.12 * (max(sizes) - min(sizes) or max(sizes))
    off, style = _offsets(names, width), _style(names)
    for m in names:
        pts = sorted((s, a) for (mm, s), a in best.items() if mm == m)
        x = [s * 2 ** off[m] if log else s + off[m] for s, _ in pts]
        ax.plot(x, [a for _, a in pts], linestyle="-", markersize=6, markerfacecolor="none",
                label=m, **style[m])
    if not log and len(set(sizes)) <= 8:
        ax.set_xticks(sorted(set(sizes)))
        pad = 0.15 * (max(sizes) - min(sizes) or max(sizes))
        ax.set_xlim(min(sizes) - pad, max(sizes) + pad)
    ax.set_xlabel("state size (floats per sequence)")
    ax.set_ylabel("accuracy (best over the sweep)")
    ax.set_ylim(-0.02, 1.02)
    CANVAS.legend(ax)
    rows_out = [[m, s, f"{a:.3f}"] for (m, s), a in sorted(best.items())]
    caption = (f"Best accuracy (acc_mean of the last evaluation) per mixer and state size, the "
               f"best run over every other swept value (learning rate, seed, ...), as Arora et "
               f"al. (Zoology) report it; runs per mixer: {_note(n_runs)}. Points of "
               f"mixers with the same state size are shifted slightly sideways so that none "
               f"hides another; the table has the exact sizes.")
    return fig, ["mixer", "state size", "best accuracy"], rows_out, caption


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
    fig, ax = CANVAS.subplots(figsize=(6.4, 3.8))
    table = []
    names = sorted(best)
    lengths = [int(k) for r in best.values() for k in run_field(r, "acc_by_length")]
    log = CANVAS.auto_log(ax, lengths, "x", base=2)
    width = 0.3 if log else 0.08 * (max(lengths) - min(lengths) or max(lengths))
    off, style = _offsets(names, width), _style(names)
    for m in names:
        r = best[m]
        pts = sorted((int(k), float(v)) for k, v in run_field(r, "acc_by_length").items())
        x = [n * 2 ** off[m] if log else n + off[m] for n, _ in pts]
        ax.plot(x, [p[1] for p in pts], markersize=6, markerfacecolor="none", label=m,
                **style[m])
        table += [[m, n, f"{a:.3f}", r["id"]] for n, a in pts]
    if not log:
        ax.set_xticks(sorted(set(lengths)))
    ax.set_xlabel("evaluation length")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    CANVAS.legend(ax)
    caption = (f"Accuracy against evaluation length for the best run (by acc_mean) of each of "
               f"{len(names)} mixers, runs evaluated with eval.lengths; one run per line, no "
               f"averaging. Points are shifted slightly sideways per mixer so that none hides "
               f"another.")
    return fig, ["mixer", "length", "accuracy", "run"], table, caption


def fig_timescales(rows: list[dict]):
    per: dict[str, list[tuple[float, float]]] = {}
    seen: dict[str, int] = {}
    for r in rows:
        m = _mixer(r)
        seen[m] = seen.get(m, 0) + 1
        mean, mx = run_field(r, "tau_mean"), run_field(r, "tau_max")
        if isinstance(mean, int | float) and isinstance(mx, int | float):
            per.setdefault(m, []).append((float(mean), float(mx)))
    if not per:
        return None
    names = sorted(seen)  # every mixer: one without timescales is named on the axis too
    means = {m: statistics.median(v[0] for v in per[m]) for m in per}
    maxes = {m: statistics.median(v[1] for v in per[m]) for m in per}
    fig, ax = CANVAS.subplots(figsize=(6.4, 3.8))
    x = range(len(names))
    have = [i for i, m in enumerate(names) if m in per]
    ax.bar([i - 0.2 for i in have], [means[names[i]] for i in have], width=0.4,
           label="mean over units")
    ax.bar([i + 0.2 for i in have], [maxes[names[i]] for i in have], width=0.4,
           label="max over units")
    log = CANVAS.auto_log(ax, [*means.values(), *maxes.values(), 1.0], "y")
    for i, m in enumerate(names):
        if m not in per:
            ax.text(i, 0.5, "no per-unit\ntimescale", rotation=90, ha="center", va="center",
                    transform=ax.get_xaxis_transform(), color="#777", fontsize=8)
    ax.set_xticks(list(x), names, rotation=30 if len(names) > 4 else 0,
                  ha="right" if len(names) > 4 else "center")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("timescale (steps), median over runs")
    if not log:
        ax.set_ylim(bottom=0)
    CANVAS.legend(ax)
    table = [[m, seen[m], f"{means[m]:.3f}" if m in per else "none",
              f"{maxes[m]:.3f}" if m in per else "none"] for m in names]
    missing = [m for m in names if m not in per]
    caption = (f"Single-unit timescales of the trained models (tau of a leaky unit, 1 / (1 - "
               f"gate) averaged over a probe input for GRU and LSTM): the mean and the max over "
               f"units, each the median over a mixer's runs; runs per mixer: "
               f"{_note(seen)}."
               + (f" {', '.join(missing)} declare no per-unit timescale (their units have no "
                  f"leak or gate), so they have no bar." if missing else ""))
    return fig, ["mixer", "runs", "tau mean", "tau max"], table, caption


def _speeds(rows: list[dict]) -> dict[str, list[float]]:
    per: dict[str, list[float]] = {}
    for r in rows:
        v = run_field(r, "train_tokens_per_s")
        if isinstance(v, int | float):
            per.setdefault(_mixer(r), []).append(float(v))
    return per


def fig_speed(rows: list[dict]):
    per = _speeds(rows)
    if not per:
        return None
    names = sorted(per)
    med = [statistics.median(per[m]) for m in names]
    fig, ax = CANVAS.subplots(figsize=(6.4, 3.4))
    style = _style(names)
    ax.barh(range(len(names)), med, color=[style[m]["color"] for m in names], alpha=0.6)
    for i, m in enumerate(names):
        ax.plot(per[m], [i] * len(per[m]), linestyle="none", marker="|", color="k",
                markersize=10)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    log = CANVAS.auto_log(ax, [v for m in names for v in per[m]], "x")
    if not log:
        ax.set_xlim(left=0)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("training tokens/s (bar: median over runs; ticks: each run)")
    header, table = speed_table(rows)
    caption = (f"Training throughput per mixer: tokens per second of the training steps of "
               f"each run's last epoch (bars: the median over a mixer's runs, vertical ticks: "
               f"each run); runs per mixer: {_note({m: len(v) for m, v in per.items()})}. "
               f"Measured while the sweep's runs shared the machine, so compare within one "
               f"sweep; seqmem bench measures speed alone.")
    return fig, header, table, caption


FIGURES = [("accuracy_vs_state_size", fig_state_size), ("accuracy_vs_length", fig_length),
           ("timescales", fig_timescales), ("speed", fig_speed)]
#: What a sweep adds to fill a figure that none of its runs measured.
EMPTY_HINTS = {
    "accuracy_vs_length": ": add eval.lengths (e.g. eval.lengths=64,128,256) to the sweep's "
                          "overrides, on a task with a length option (seqmem config --show "
                          "eval)",
    "timescales": ": it needs mixers with per-unit timescales (leaky_rnn, gru, lstm)",
}


def speed_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    per = _speeds(rows)
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
                         f"sweep measured it{html.escape(EMPTY_HINTS.get(name, ''))}</p>")
        else:
            parts.append(figure_section(name, *res[:3], out, caption=res[3]))
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
