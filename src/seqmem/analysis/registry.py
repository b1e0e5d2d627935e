"""The registries of analyses and of the report's figures.

An analysis is one function, registered with `@analysis`, that declares what it reads and
what it writes into a run's analysis.json:

    @analysis("dimensionality", needs="spread_stages", writes=("dimensionality",),
              headline={"dimensionality": "dimensionality (last N)"})
    def stage_dimensionality(ctx: Context) -> dict:
        return {"dimensionality": ...}

- `needs`, what it reads, which is also how it is called (see `NEEDS`): at every curriculum
  stage or at a few spread ones (it returns fields of that stage's row of "stages"), or once,
  for the last stage or the whole run (it returns top-level keys);
- `writes`, the keys it returns; returning another is an error;
- `headline`, {key: label}: the numbers the store indexes and the report's summary table shows
  under that label. A key's value is the written value of that name (a per-stage analysis's
  at the last stage) or comes from `headline_of(written)`, the analysis's written values;
- `options`, its keyword options with their defaults (`analyze_run(..., eps=(0.0, 0.1))`);
- `default`, whether it runs when no analysis is named (False: only by name, for analyses
  that apply to few runs or take long, e.g. pruning, richness, symbolic, lr_law).

A figure of the report is one function, registered with `@figure`, that draws the runs
(`Entry`) having one of its keys in their analysis (`analysis=`) or summary (`summary=`):

    @figure("ablation", analysis="ablation")
    def ablation_figure(entries: list[Entry], canvas) -> tuple[Figure, header, rows] | None:
        fig, ax = canvas.subplots(figsize=(5, 3.2))
        ...

`canvas` (`seqmem.report.render.Canvas`) makes the matplotlib figure and holds the shared
style (a colour per run, the legend), so analysis modules import no plotting library; the
(header, rows) returned are the figure's numbers, printed in a table beside it. A figure
returns None when its entries give it nothing to draw.

Both registries keep the order of registration: `analysis_names()` lists analyses in that
order, and the report draws figures in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from seqmem.analysis.context import COMMON_OPTIONS, Context
from seqmem.errors import SeqmemError

#: What an analysis reads, and how it is called.
NEEDS = {
    "each_stage": "called at every curriculum stage (ctx.N); returns fields of its row",
    "spread_stages": "called at `tau_net_stages` stages spread evenly from the first to the "
                     "last (always the last); returns fields of their rows",
    "last_stage": "called once, ctx.N the last stage; returns top-level keys",
    "all_stages": "called once, reading every stage (ctx.Ns); returns top-level keys",
    "run": "called once, reading the run's records (metrics, config) or its last checkpoint "
           "(\"last\"), no stage checkpoint; returns top-level keys (a run without curriculum "
           "stages can have it)",
}
PER_STAGE = ("each_stage", "spread_stages")
#: Keys of analysis.json the driver writes itself (and fields of a stage's row: "N").
RESERVED = ("N", "curriculum", "stages")


@dataclass(frozen=True)
class Analysis:
    """A registered analysis (see the module docstring)."""

    name: str
    run: Callable[[Context], dict]
    needs: str
    writes: tuple[str, ...]
    headline: Mapping[str, str] = field(default_factory=dict)
    headline_of: Callable[[dict], dict] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    default: bool = True

    @property
    def per_stage(self) -> bool:
        return self.needs in PER_STAGE

    def written(self, out: dict) -> dict:
        """The values this analysis wrote into `out` (an analysis.json): its top-level keys,
        or for a per-stage analysis its fields of the last stage's row."""
        if self.per_stage:
            rows = out.get("stages") or [{}]
            return {k: rows[-1][k] for k in self.writes if k in rows[-1]}
        return {k: out[k] for k in self.writes if k in out}

    def headline_values(self, out: dict) -> dict:
        """This analysis's headline numbers in `out`; {} if it did not run."""
        written = self.written(out)
        if not written:
            return {}
        if self.headline_of is None:
            return {k: written[k] for k in self.headline if k in written}
        h = self.headline_of(written)
        undeclared = [k for k in h if k not in self.headline]
        if undeclared:
            raise SeqmemError(f"analysis {self.name!r} gave headline numbers "
                              f"{', '.join(undeclared)} that it does not declare; declared: "
                              f"{', '.join(self.headline) or '(none)'}")
        return h

    def check_result(self, result: Any) -> dict:
        """`result` if it is a dict of declared keys, else a SeqmemError naming the others."""
        if not isinstance(result, dict):
            raise SeqmemError(f"analysis {self.name!r} must return a dict of "
                              f"{', '.join(self.writes)}; got {type(result).__name__}")
        undeclared = [k for k in result if k not in self.writes]
        if undeclared:
            raise SeqmemError(f"analysis {self.name!r} returned {', '.join(undeclared)}, which "
                              f"it does not declare; declared: {', '.join(self.writes)}")
        return result


#: name -> Analysis, in the order of registration.
ANALYSIS_REGISTRY: dict[str, Analysis] = {}


def _names(value: str | tuple[str, ...] | list[str], what: str) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(n, str) and n for n in names):
        raise SeqmemError(f"{what} must be names (strings), got {value!r}")
    return names


def analysis(name: str, *, needs: str, writes: str | tuple[str, ...],
             headline: Mapping[str, str] | None = None,
             headline_of: Callable[[dict], dict] | None = None,
             options: Mapping[str, Any] | None = None, default: bool = True):
    """Decorator: register `fn(ctx) -> dict` as analysis `name` (see the module docstring).
    `default=False`: run only when asked for by name (`seqmem analyze --what name`), not by
    a plain `seqmem analyze RUN` or the flagship's analysis."""
    if needs not in NEEDS:
        raise SeqmemError(f"analysis {name!r}: unknown needs {needs!r}; accepted: "
                          f"{', '.join(NEEDS)}")
    writes = _names(writes, f"analysis {name!r}: writes")
    reserved = [k for k in writes if k in RESERVED]
    if reserved:
        raise SeqmemError(f"analysis {name!r} may not write {', '.join(reserved)}: the driver "
                          f"writes {', '.join(RESERVED)}")
    options = dict(options or {})
    known = option_defaults()  # an option shared by several analyses has one default
    for key, value in options.items():
        if key in known and known[key] != value:
            raise SeqmemError(f"analysis {name!r}: option {key!r} already has the default "
                              f"{known[key]!r}, not {value!r}")

    def register(fn: Callable[[Context], dict]) -> Callable[[Context], dict]:
        if name in ANALYSIS_REGISTRY:
            raise SeqmemError(f"analysis {name!r} is already registered")
        ANALYSIS_REGISTRY[name] = Analysis(name, fn, needs, writes, dict(headline or {}),
                                           headline_of, options, default)
        return fn

    return register


def analysis_names() -> tuple[str, ...]:
    """The registered analyses, in the order of registration."""
    return tuple(ANALYSIS_REGISTRY)


def default_analysis_names() -> tuple[str, ...]:
    """The analyses a run gets when none is named, in the order of registration."""
    return tuple(n for n, spec in ANALYSIS_REGISTRY.items() if spec.default)


def analyses(what: tuple[str, ...] | list[str] | None = None) -> list[Analysis]:
    """The analyses named in `what` (default: all), in the order of registration."""
    if what is None:
        return list(ANALYSIS_REGISTRY.values())
    unknown = [w for w in what if w not in ANALYSIS_REGISTRY]
    if unknown:
        raise SeqmemError(f"unknown analysis {', '.join(unknown)}; accepted: "
                          f"{', '.join(ANALYSIS_REGISTRY)}")
    return [spec for name, spec in ANALYSIS_REGISTRY.items() if name in what]


def option_defaults() -> dict[str, Any]:
    """Every option an analysis run accepts, with its default."""
    out = dict(COMMON_OPTIONS)
    for spec in ANALYSIS_REGISTRY.values():
        out.update(spec.options)
    return out


# ---- figures ----------------------------------------------------------------------------------
@dataclass
class Entry:
    """One run in the report: its label, id, summary and analysis (its analysis.json)."""

    label: str  # e.g. the curriculum
    run_id: str
    summary: dict
    analysis: dict = field(default_factory=dict)
    run_dir: str | None = None  # the run's folder, for figures of its records (metrics)


@dataclass(frozen=True)
class Figure:
    """A registered figure (see the module docstring)."""

    name: str
    draw: Callable[..., Any]
    analysis: tuple[str, ...] = ()
    summary: tuple[str, ...] = ()

    def entries(self, entries: list[Entry]) -> list[Entry]:
        """The entries that have one of the figure's keys (not empty)."""
        return [e for e in entries if any(e.analysis.get(k) for k in self.analysis)
                or any(e.summary.get(k) for k in self.summary)]


#: name -> Figure, in the order of registration (the order of the report).
FIGURE_REGISTRY: dict[str, Figure] = {}


def figure(name: str, *, analysis: str | tuple[str, ...] = (),
           summary: str | tuple[str, ...] = ()):
    """Decorator: register `fn(entries, canvas) -> (figure, header, rows) | None` as the
    report's figure `name` (also its PNG's file name), drawn from the entries with a key of
    `analysis` in their analysis or of `summary` in their summary."""
    keys = (_names(analysis, f"figure {name!r}: analysis"),
            _names(summary, f"figure {name!r}: summary"))
    if not any(keys):
        raise SeqmemError(f"figure {name!r} must name the keys it draws: analysis=... or "
                          f"summary=...")

    def register(fn):
        if name in FIGURE_REGISTRY:
            raise SeqmemError(f"figure {name!r} is already registered")
        FIGURE_REGISTRY[name] = Figure(name, fn, *keys)
        return fn

    return register


def run_styles(entries: list[Entry], canvas) -> list[tuple[str, str]]:
    """(label, colour) per entry: the label and `canvas.color`, made distinct where runs
    share them: a repeated label gets the run's mixer (and id) added, a repeated colour
    gives way to matplotlib's cycle."""
    labels = [e.label for e in entries]
    out, used = [], set()
    for i, e in enumerate(entries):
        label = e.label
        if labels.count(label) > 1:
            label = f"{label}, {e.summary.get('mixer', '')}".rstrip(", ")
            if sum(1 for x in entries if x.label == e.label
                   and x.summary.get("mixer") == e.summary.get("mixer")) > 1:
                label = f"{label} ({e.run_id[-6:]})"
        color = canvas.color(e, i)
        if color in used:
            color = next(f"C{j}" for j in range(i, i + 20) if f"C{j}" not in used)
        used.add(color)
        out.append((label, color))
    return out


def figures() -> list[Figure]:
    """The registered figures, in the order of registration."""
    return list(FIGURE_REGISTRY.values())
