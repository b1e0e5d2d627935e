"""Reproductions of published findings: the registry and the pieces every experiment shares.

A reproduction is one published finding re-measured with seqmem: a sweep file in
`experiments/<name>/` (`sweep.yaml`, and `sweep.quick.yaml` for a few minutes), a function
that runs it and turns the runs' summaries into two tables (ours, and the paper's numbers
with their source), a verdict computed from the numbers, and a report page
`<root>/reproduce/<name>/index.html` with the figures.

- `reproduction(name, ...)` registers an experiment's `run(store, *, quick, progress)`;
  `REPRODUCTIONS` maps names to `Reproduction`s, `get(name)` finds one;
- `run_experiment_sweep` runs an experiment's sweep (re-running finishes what is missing,
  as every sweep does) and returns each run's summary with its grid point;
- `page_dir`, `save_figure` and `write_page` write the page and its PNGs;
- `run_reproduction` is what the command calls: it sets the number of runs at a time for
  the experiment's sweeps (`sweep_workers`) and runs it.
"""

from __future__ import annotations

import base64
import contextvars
import html
import json
import math
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt

from seqmem.errors import SeqmemError
from seqmem.report.render import DPI, html_page, html_table
from seqmem.store import RunStore
from seqmem.sweep import read_sweep, run_sweep

#: the repository's root: an experiment's `directory` is relative to it
REPO_ROOT = Path(__file__).resolve().parents[3]
VERDICTS = ("reproduced", "partly", "not reproduced")
#: runs at a time of an experiment's sweeps (set by `run_reproduction`, default 2)
WORKERS: contextvars.ContextVar[int] = contextvars.ContextVar("seqmem_reproduce_workers",
                                                               default=2)


@dataclass(frozen=True)
class SweepChanges:
    """What `run_reproduction` changes in every sweep of an experiment: `seeds` replace the
    sweep file's seeds (None: keep them), `overrides` (dotted key=value) are applied after the
    file's own. A changed sweep says so in the verdict's reason (`describe`)."""

    seeds: tuple[int, ...] | None = None
    overrides: tuple[str, ...] = ()

    def describe(self) -> str:
        """"seeds 0, 1; train.max_time_s=5" ("" when nothing is changed)."""
        parts = ([f"seeds {', '.join(map(str, self.seeds))}"] if self.seeds is not None
                 else []) + list(self.overrides)
        return "; ".join(parts)


#: the changes `run_reproduction` makes to the experiment's sweeps (none by default)
CHANGES: contextvars.ContextVar[SweepChanges] = contextvars.ContextVar(
    "seqmem_reproduce_changes", default=SweepChanges())  # noqa: B039 (frozen)


@dataclass(frozen=True)
class Reproduction:
    """One published finding: its name, the finding in one line, the paper, the budget on this
    machine, the function that runs it, and its experiment folder (relative to the repo)."""

    name: str
    title: str
    paper: str
    budget: str
    run: Callable[..., Outcome]
    directory: str


@dataclass
class Outcome:
    """What a reproduction found: our table and the paper's (header, rows), the verdict (one
    of `VERDICTS`, computed from the numbers), the reason (the numbers and the likely cause),
    the page written and its figures."""

    ours: tuple[list[str], list[list[str]]]
    paper: tuple[list[str], list[list[str]]]
    verdict: str
    reason: str
    page: Path | None = None
    figures: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise SeqmemError(f"verdict {self.verdict!r} unknown; accepted: "
                              f"{', '.join(VERDICTS)}")


REPRODUCTIONS: dict[str, Reproduction] = {}


def reproduction(name: str, *, title: str, paper: str, budget: str, directory: str):
    """Decorator registering `run(store, *, quick, progress) -> Outcome` as reproduction
    `name` (a second registration of the same name is an error)."""

    def register(run: Callable[..., Outcome]) -> Callable[..., Outcome]:
        if name in REPRODUCTIONS:
            raise SeqmemError(f"reproduction {name!r} is registered twice")
        REPRODUCTIONS[name] = Reproduction(name, title, paper, budget, run, directory)
        return run

    return register


def get(name: str) -> Reproduction:
    """The reproduction called `name`; a SeqmemError naming the accepted names otherwise."""
    if name not in REPRODUCTIONS:
        raise SeqmemError(f"unknown reproduction {name!r}; accepted: "
                          f"{', '.join(sorted(REPRODUCTIONS)) or '(none registered)'}")
    return REPRODUCTIONS[name]


def experiment_dir(directory: str | Path) -> Path:
    """The experiment folder: `directory` itself if absolute, else under the repository."""
    p = Path(directory)
    return p if p.is_absolute() else REPO_ROOT / p


def as_store(store: RunStore | str | Path) -> RunStore:
    """A RunStore from a store or its root folder."""
    return store if isinstance(store, RunStore) else RunStore(store)


def run_experiment_sweep(store: RunStore | str | Path, directory: str | Path, *, quick: bool,
                         progress: Callable[[str], None] | None = None,
                         overrides: Iterable[str] = (), workers: int | None = None,
                         backend: str = "process") -> dict[str, dict]:
    """Run `<directory>/sweep.yaml` (quick: `sweep.quick.yaml`) with extra dotted `overrides`
    on `store`, `workers` runs at a time (default: `WORKERS`, 2) on `backend` (spawned
    processes by default; with one worker the runs go inline, in this process); runs already
    done are kept, failed or interrupted ones resumed. The seeds and overrides of `CHANGES`
    (set by `run_reproduction`) apply on top of the file's.

    Returns run id -> the run's summary (the store's, with its summary.json over it, which
    holds a continual run's full matrix), plus "point" (its grid point), "status" and
    "run_dir". A sweep stopped by Ctrl-C raises KeyboardInterrupt after recording its runs.
    """
    folder = experiment_dir(directory)
    path = folder / ("sweep.quick.yaml" if quick else "sweep.yaml")
    if not path.is_file():
        raise SeqmemError(f"sweep file {str(path)!r} not found; an experiment folder holds "
                          f"sweep.yaml and sweep.quick.yaml")
    spec = read_sweep(path)
    changes = CHANGES.get()
    extra = [*overrides, *changes.overrides]
    if extra:
        spec = spec.model_copy(update={"overrides": [*spec.overrides, *extra]})
    if changes.seeds is not None:
        spec = spec.model_copy(update={"seeds": list(changes.seeds)})
    st = as_store(store)
    workers = workers or WORKERS.get()
    res = run_sweep(spec, st, workers=workers, backend="inline" if workers == 1 else backend,
                    progress=progress)
    if res.interrupted:
        raise KeyboardInterrupt
    out: dict[str, dict] = {}
    for rid, point in res.plan.points.items():
        if rid.startswith("new-"):  # never started
            continue
        row = st.get(rid)
        summary = dict(row["summary"])
        full = Path(row["dir"]) / "summary.json"
        if full.is_file():
            summary.update(json.loads(full.read_text()))
        summary.update(point=point, status=res.status.get(rid, row["status"]),
                       run_dir=str(row["dir"]))
        out[rid] = summary
    return out


def run_reproduction(name: str, store: RunStore | str | Path, *, quick: bool = False,
                     workers: int | None = None, seeds: Iterable[int] | None = None,
                     overrides: Iterable[str] = (),
                     progress: Callable[[str], None] | None = None) -> Outcome:
    """Run reproduction `name` on `store` (its sweeps `workers` runs at a time; one worker:
    inline) and return its Outcome (whose page lies under the store's root). `seeds` replace
    the sweeps' seeds and `overrides` (dotted key=value) are applied to every run; the
    verdict's reason then names them, since the result is no longer the stated budget's."""
    rep = get(name)
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise SeqmemError(f"--workers must be an integer >= 1 (runs at a time), got {workers}")
    seeds = None if seeds is None else tuple(seeds)
    if seeds is not None and (not seeds or any(isinstance(s, bool) or not isinstance(s, int)
                                               or s < 0 for s in seeds)):
        raise SeqmemError(f"--seeds must be integers >= 0, comma-separated (e.g. 0,1,2), got "
                          f"{', '.join(map(str, seeds)) or 'none'}")
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0].strip()]
    if bad:
        raise SeqmemError(f"an override takes key=value (e.g. train.max_time_s=60), got "
                          f"{bad[0]!r}")
    changes = SweepChanges(seeds, tuple(overrides))
    tokens = WORKERS.set(workers or 2), CHANGES.set(changes)
    try:
        return rep.run(as_store(store), quick=quick, progress=progress)
    finally:
        WORKERS.reset(tokens[0])
        CHANGES.reset(tokens[1])


# ---- numbers ------------------------------------------------------------------------------
def mean_sd(values: Iterable[float | None]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, count) of the finite values (nan, nan, 0 if none;
    sd nan for one value)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return math.nan, math.nan, 0
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else math.nan
    return m, sd, len(v)


def fmt(x: float | None, digits: int = 3, *, fixed: bool = False) -> str:
    """A number for a table: `digits` significant figures (`fixed`: decimals), "" for None
    or nan."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return f"{x:.{digits}f}" if fixed else f"{x:.{digits}g}"


def fmt_mean_sd(values: Iterable[float | None], digits: int = 3, *, fixed: bool = False
                ) -> str:
    """"mean ± sd (n=k)" of the finite values ("" if none); `fixed`: `digits` decimals."""
    m, sd, n = mean_sd(values)
    if n == 0:
        return ""
    return (f"{fmt(m, digits, fixed=fixed)} ± {fmt(sd, digits, fixed=fixed) or '–'} "
            f"(n={n})")


# ---- the page -----------------------------------------------------------------------------
def page_dir(root: str | Path, name: str) -> Path:
    """<root>/reproduce/<name>/, created."""
    d = Path(root) / "reproduce" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_figure(fig, root: str | Path, name: str, stem: str) -> Path:
    """Write matplotlib `fig` as <root>/reproduce/<name>/<stem>.png (the report's `DPI`),
    close it, and return the path."""
    path = page_dir(root, name) / f"{stem}.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def report_outcome(name: str, title: str, data, *, judge: Callable, table: Callable,
                   paper: tuple[list[str], list[list[str]]], figure: Callable,
                   root: str | Path, quick_note: str | None = None) -> Outcome:
    """The Outcome of a finding from its collected data: `judge(data)` -> (verdict, reason),
    `table(data)` -> our table, `figure(data, root)` -> the figure's path (none without data),
    and the page written; `quick_note` (the quick form) opens the reason, saying what the
    smoke-test budget checks."""
    verdict, reason = judge(data)
    if quick_note:
        reason = f"Quick form ({quick_note}). {reason}"
    figures = [figure(data, root)] if data else []
    out = Outcome(table(data), paper, verdict, reason, None, figures)
    out.page = write_page(root, name, title, out, figures)
    return out


def write_page(root: str | Path, name: str, title: str, outcome: Outcome,
               figures: Iterable[Path]) -> Path:
    """Write <root>/reproduce/<name>/index.html: the title, the verdict and its reason, our
    table beside the paper's, and the figures (PNGs, inlined so that the page is
    self-contained; a PNG from elsewhere is also copied into the page's folder). Under
    `CHANGES` (other seeds or overrides than the sweep file's) the reason opens with them."""
    d = page_dir(root, name)
    changed = CHANGES.get().describe()
    if changed and not outcome.reason.startswith("Changed from the sweep file"):
        outcome.reason = f"Changed from the sweep file: {changed}. {outcome.reason}"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p><b>verdict: {html.escape(outcome.verdict)}</b>. "
             f"{html.escape(outcome.reason)}</p>",
             "<h2>ours</h2>", html_table(*outcome.ours),
             "<h2>the paper's</h2>", html_table(*outcome.paper)]
    for png in figures:
        png = Path(png)
        if not png.is_file():
            raise SeqmemError(f"figure {str(png)!r} not found; give the PNGs the experiment "
                              f"wrote")
        if png.resolve().parent != d.resolve():
            shutil.copyfile(png, d / png.name)
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(png.stem.replace('_', ' '))}</h2>"
                     f"<figure><img alt='{html.escape(png.stem)}' style='max-width:100%' "
                     f"src='data:image/png;base64,{data}'></figure>")
    page = d / "index.html"
    page.write_text(html_page(title, parts))
    return page
