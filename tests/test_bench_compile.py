"""The compile table (`seqmem bench --compile`): its rows, its failure rows, its files, and (slow)
a real torch.compile of a tiny model whose output equals the eager model's."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from seqmem.bench import compile_table as ct
from seqmem.bench.config import BenchConfig
from seqmem.bench.small import SmallShapes, run_config
from seqmem.build import build_curriculum, build_model, build_task
from seqmem.cli.parser import build_parser
from seqmem.config import load_config
from seqmem.devices import compile_model
from seqmem.errors import SeqmemError

TINY = SmallShapes(d_models=(8,), lengths=(8,), batch=4, vocab=16)


def no_compile(monkeypatch) -> None:
    """torch.compile as the identity: the table's plumbing without the compiler's cost."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)


def test_row_numbers_follow_from_the_timings(monkeypatch):
    no_compile(monkeypatch)
    row = ct.compile_row("mlp", TINY, rounds=2, seed=3)
    assert row["error"] is None and row["family"] == ct.FAMILIES["mlp"]
    assert (row["d_model"], row["T"], row["batch"], row["form"]) == (8, 8, 4, "parallel")
    for key in ("eager_first_s", "compiled_first_s", "eager_step_ms", "compiled_step_ms",
                "eager_tok_s", "compiled_tok_s", "speedup"):
        assert row[key] > 0, key
    tokens = 4 * 8
    assert math.isclose(row["eager_tok_s"], tokens / (row["eager_step_ms"] / 1e3))
    assert math.isclose(row["compiled_tok_s"], tokens / (row["compiled_step_ms"] / 1e3))
    assert math.isclose(row["speedup"], row["eager_step_ms"] / row["compiled_step_ms"])
    assert row["eager_step_ms_low"] <= row["eager_step_ms"] <= row["eager_step_ms_high"]
    gain = row["eager_step_ms"] - row["compiled_step_ms"]
    if gain > 0:
        assert math.isclose(row["break_even_steps"], 1e3 * (
            row["compiled_first_s"] - row["eager_first_s"]) / gain)
    else:
        assert row["break_even_steps"] is None
    # two models of one seed (the identity "compiled" one included) start equal
    assert row["eager_loss"] == row["compiled_loss"] and row["same_loss"]
    assert math.isfinite(row["eager_loss"]) and row["eager_loss"] > 0


def test_a_mixer_that_fails_to_compile_gets_a_failure_row(monkeypatch):
    def broken(model):
        def features(*a, **kw):
            raise RuntimeError("InductorError: no working C++ compiler\nsecond line")
        model.features = features
        return model

    monkeypatch.setattr(ct, "compile_model", broken)
    no_compile(monkeypatch)
    ctx, rows = ct.run_compile(TINY, names=("mlp", "leaky_rnn"), rounds=1)
    assert [r["mixer"] for r in rows] == ["mlp", "leaky_rnn"]
    for r in rows:
        assert r["error"] == "RuntimeError: InductorError: no working C++ compiler"
        assert r["eager_first_s"] > 0 and "speedup" not in r
    assert len(ctx["load_before"]) == 3 and ctx["shapes"]["d_models"] == (8,)
    md = ct.compile_markdown(rows, ctx, command="seqmem bench --compile")
    table = [ln for ln in md.splitlines() if ln.startswith("| mlp ")]
    assert len(table) == 1 and "failed: RuntimeError: InductorError" in table[0]
    header = next(ln for ln in md.splitlines() if ln.startswith("| mixer "))
    assert table[0].count("|") == header.count("|")  # every column present
    assert "Failed to compile: mlp, leaky_rnn." in md


def test_unknown_mixer_is_refused_before_anything_runs():
    with pytest.raises(SeqmemError, match="nosuch"):
        ct.run_compile(TINY, names=("nosuch",))


def test_compile_to_writes_the_three_files(tmp_path, monkeypatch):
    no_compile(monkeypatch)
    monkeypatch.setattr(ct, "QUICK_COMPILE_SHAPES", TINY)
    cfg = load_config(None, ["parts=compile", "shapes=quick", "repeats=1"], schema=BenchConfig)
    rows, paths = ct.compile_to(cfg, tmp_path, command="seqmem bench --compile --quick")
    assert [r["mixer"] for r in rows] == list(ct.QUICK_MIXERS)
    lines = paths["jsonl"].read_text().splitlines()
    assert [json.loads(x)["mixer"] for x in lines] == list(ct.QUICK_MIXERS)
    assert "load_after" in json.loads(lines[0])["context"]
    with paths["csv"].open() as f:
        assert [r["mixer"] for r in csv.DictReader(f)] == list(ct.QUICK_MIXERS)
    md = paths["md"].read_text()
    assert "seqmem bench --compile --quick" in md and "load average" in md


def test_bench_parser_has_the_compile_flag():
    args = build_parser().parse_args(["bench", "--compile", "--quick"])
    assert args.compile and args.quick


@pytest.mark.slow
# torch's compiler imports torch.utils.mkldnn, which warns of its own deprecated jit API
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_real_compile_of_a_tiny_model_equals_eager():
    """torch.compile for real (about 30 s on 2 cores): the table's row, and the compiled
    features equal to the eager model's on the same batch."""
    _, rows = ct.run_compile(TINY, names=("mlp",), rounds=1)
    (row,) = rows
    assert row["error"] is None, row["error"]
    assert row["compiled_first_s"] > 0 and row["compiled_tok_s"] > 0 and row["speedup"] > 0
    assert row["same_loss"]
    assert math.isclose(row["compiled_loss"], row["eager_loss"], rel_tol=1e-4)
    cfg = run_config("mlp", 8, 8, TINY)
    cur = build_curriculum(cfg)
    eager, compiled = build_model(cfg, cur), compile_model(build_model(cfg, cur))
    x = build_task(cfg, cur).sample(4, generator=torch.Generator().manual_seed(0)).inputs
    with torch.no_grad():
        want, _ = eager.features(x)
        got, _ = compiled.features(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
