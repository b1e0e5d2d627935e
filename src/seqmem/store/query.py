"""Queries over the run store: filters (`--where`), fields of runs, best per group, exports.

A run's fields, by name: its row's columns (id, name, kind, status, created_at, ...), its
summary's fields (acc_mean, acc_scaled, epochs, n_solved, mixer, task, ...), its sweep point's
keys (train.lr, ...) and dotted keys of its resolved config (model.d_model, task.seq_len).
Short names: acc = acc_mean.
"""

from __future__ import annotations

import csv
import io
import json
import operator
import re
from typing import Any

from seqmem.errors import SeqmemError

ALIASES = {"acc": "acc_mean"}
_OPS = {"<=": operator.le, ">=": operator.ge, "!=": operator.ne, "==": operator.eq,
        "=": operator.eq, "<": operator.lt, ">": operator.gt}
_COND = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|!=|==|=|<|>)\s*(.+?)\s*$")


def run_field(row: dict, key: str) -> Any:
    """A field of a store row by name (see the module docstring); None if it has none."""
    key = ALIASES.get(key, key)
    if key in row and key not in ("summary", "config"):
        return row[key]
    s = row.get("summary") or {}
    if key in s:
        return s[key]
    point = s.get("point") or {}
    if key in point:
        return point[key]
    node = row.get("config")
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _value(text: str) -> Any:
    text = text.strip().strip("'\"")
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None, "null": None}.get(text.lower(), text)


def parse_where(expr: str) -> list[tuple[str, Any, Any]]:
    """'task=mqar and acc>0.9' -> [(key, op, value), ...]; one-line SeqmemError if malformed."""
    conds = []
    for part in re.split(r"\s+and\s+", expr.strip(), flags=re.IGNORECASE):
        m = _COND.match(part)
        if not m:
            raise SeqmemError(f"--where: cannot read {part!r}; conditions look like "
                              f"task=mqar, acc>0.9, model.d_model<=64, joined by 'and'")
        key, op, value = m.groups()
        if value[:1] in "<>=!":  # acc>>0.9, acc=>1: an operator typed twice
            raise SeqmemError(f"--where: cannot read {part!r}: the value {value!r} starts with "
                              f"an operator; operators are {', '.join(_OPS)}")
        conds.append((key, _OPS[op], _value(value)))
    return conds


def check_keys(rows: list[dict], keys: list[str], what: str) -> None:
    """Refuse keys that no run has (a typo would match nothing, or group everything as
    one), naming a few that they do have. Nothing to judge without runs."""
    if not rows:
        return
    for key in keys:
        if all(run_field(r, key) is None for r in rows):
            known = sorted({k for r in rows for k in (r.get("summary") or {})
                            if not isinstance(r["summary"][k], dict | list)} | set(ALIASES))
            raise SeqmemError(f"{what}: no run here has a field {key!r}; fields include "
                              f"{', '.join(known[:12])}, any dotted config key "
                              f"(model.d_model) and a sweep's grid keys")


def matches(row: dict, conds: list[tuple[str, Any, Any]]) -> bool:
    """Whether a run satisfies every condition (a missing field satisfies only !=)."""
    for key, op, value in conds:
        v = run_field(row, key)
        try:
            ok = op(v, value) if v is not None or op in (operator.eq, operator.ne) else False
        except TypeError:  # e.g. a number against a string: not a match
            ok = op is operator.ne
        if not ok:
            return False
    return True


def best_per_group(rows: list[dict], group: list[str], metric: str = "acc_mean",
                   maximize: bool = True) -> list[dict]:
    """The best run of each group (e.g. the best learning rate per mixer x d_model, as Zoology
    reports), judged by `metric`; runs without a numeric metric are left out."""
    best: dict[tuple, tuple[float, dict]] = {}
    for r in rows:
        v = run_field(r, metric)
        if not isinstance(v, int | float) or isinstance(v, bool):
            continue
        key = tuple(str(run_field(r, g)) for g in group)
        if key not in best or (v > best[key][0] if maximize else v < best[key][0]):
            best[key] = (v, r)
    return [best[k][1] for k in sorted(best)]


def select(store, *, status: str | None = None, sweep: str | None = None,
           where: str | None = None, best: str | None = None, metric: str = "acc_mean",
           limit: int | None = 50) -> list[dict]:
    """The runs of `seqmem runs`, newest first: by status and sweep, filtered by a `where`
    expression (see `parse_where`), reduced to the best run per group of the comma-separated
    keys `best` by `metric` (a leading "-" minimises), at most `limit`. Rows that are
    filtered carry their config (`row["config"]`)."""
    conds = parse_where(where) if where else []
    query = bool(conds or best)
    rows = (store.list_runs(status=status, kind="sweep" if sweep else None, name=sweep,
                            limit=None if query else limit) if store.root.exists() else [])
    if query:
        for r in rows:
            r["config"] = store.open_run(r["id"]).config()
        check_keys(rows, [k for k, _, _ in conds], "--where")
        rows = [r for r in rows if matches(r, conds)]
    if best:
        groups = [g.strip() for g in best.split(",") if g.strip()]
        check_keys(rows, groups, "--best")
        check_keys(rows, [metric.removeprefix("-")], "--metric")
        rows = best_per_group(rows, groups, metric.removeprefix("-"),
                              maximize=not metric.startswith("-"))
    if limit is not None and limit >= 0:
        rows = rows[:limit]
    return rows


DEFAULT_COLUMNS = ("id", "name", "kind", "status", "mixer", "task", "epochs", "n_solved",
                   "acc_mean", "acc_scaled", "elapsed_s")


CONTINUAL_COLUMNS = ("method", "protocol", "seed", "avg_acc", "bwt", "fwt", "forgetting", "lca")


def flat_record(row: dict, columns: list[str] | tuple[str, ...] = DEFAULT_COLUMNS) -> dict:
    """The chosen fields of a run (and its sweep point's keys) as one flat mapping; a
    continual-learning run adds its method, protocol and metrics."""
    rec = {c: run_field(row, c) for c in columns}
    if row.get("kind") == "continual" and columns is DEFAULT_COLUMNS:
        rec.update({c: run_field(row, c) for c in CONTINUAL_COLUMNS})
    for k, v in ((row.get("summary") or {}).get("point") or {}).items():
        rec.setdefault(k, v)
    return rec


def export(rows: list[dict], fmt: str, columns=DEFAULT_COLUMNS) -> str:
    """Rows as CSV or JSON text (flat records)."""
    recs = [flat_record(r, columns) for r in rows]
    if fmt == "json":
        return json.dumps(recs, indent=1, default=str)
    if fmt == "csv":
        keys = list(dict.fromkeys(k for rec in recs for k in rec)) or list(columns)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for rec in recs:
            w.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v
                        for k, v in rec.items()})
        return buf.getvalue()
    raise SeqmemError(f"unknown format {fmt!r}; accepted: table, csv, json")


def to_dataframe(rows: list[dict], columns=DEFAULT_COLUMNS):
    """The runs as a pandas DataFrame (one row per run; pandas is needed for this only)."""
    try:
        import pandas as pd
    except ImportError:
        raise SeqmemError("to_dataframe needs pandas: pip install pandas") from None
    return pd.DataFrame([flat_record(r, columns) for r in rows])
