"""`seqmem bench --ops`, `--chunks`, `--small` and `--decode` on tiny shapes: each table's cases
compute what they claim (checked against the ops' loops, a loop of steps, the peers' outputs),
its derived columns follow from its measured ones, and the commands write their pages. No speed
is asserted."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from seqmem import mixers
from seqmem.bench import decode, ops_table, small
from seqmem.bench.config import BenchConfig
from seqmem.cli.main import main
from seqmem.ops import tuning

TINY_OPS = ops_table.OpShapes(b=1, t=12, h=1, d=4, n_scan=2)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    path = tmp_path / "chunk_sizes.json"
    monkeypatch.setenv("SEQMEM_CHUNK_SIZES", str(path))
    return path


@pytest.mark.parametrize("op", ops_table.OPS)
def test_each_op_case_is_its_op_at_every_chunk_length(op):
    """The case's output at chunk length 5 equals its output at chunk length 1 (every token its
    own chunk: the recurrence step by step) and at the default, in float64."""
    case = ops_table.build_cases(TINY_OPS, only=(op,))[0]
    inputs = [x.detach().double() for x in case.inputs]
    with torch.no_grad():
        one = case.fn(1, *inputs)
        torch.testing.assert_close(case.fn(5, *inputs), one)
        torch.testing.assert_close(case.fn(None, *inputs), one)
    assert case.tokens == TINY_OPS.b * TINY_OPS.t and one.shape[:2] == (1, 12)


def test_op_rows_follow_from_their_times(monkeypatch):
    monkeypatch.setattr(ops_table, "matmul_gflops", lambda: 10.0)
    ctx, rows = ops_table.run_ops(TINY_OPS, rounds=2, only=("gla", "ssd"))
    assert [r["op"] for r in rows] == ["gla", "ssd"] and ctx["matmul_gflops"] == 10.0
    for r in rows:
        sec = r["fwdbwd_ms"] / 1e3
        assert r["fwdbwd_ms_low"] <= r["fwdbwd_ms"] <= r["fwdbwd_ms_high"]
        assert r["tok_s"] == pytest.approx(12 / sec)
        case = ops_table.build_cases(TINY_OPS, only=(r["op"],))[0]
        assert r["fwd_flops"] == ops_table.forward_flops(case, None) > 0
        assert r["gflop_s"] == pytest.approx(3 * r["fwd_flops"] / sec / 1e9)
        assert r["roofline_frac"] == pytest.approx(r["gflop_s"] / 10.0)
        assert r["chunk_size"] == tuning.chunk_size(r["op"]) == ops_table.default_chunk(r["op"])
    md = ops_table.ops_markdown(rows, ctx, command="seqmem bench --ops")
    assert f"| gla | {tuning.chunk_size('gla')} |" in md and "roofline" in md


def test_chunks_pick_the_smallest_median_and_write_it(monkeypatch, cache):
    """Fake round times: for gla the median is smallest at 32 (though 16 has the single fastest
    round), for ssd at 128; the best lengths are those, and saved ones reach tuning."""
    fake = {"gla": {16: [1.0, 9.0, 9.0], 32: [2.0, 2.0, 2.0], 64: [3.0, 3.0, 3.0]},
            "ssd": {16: [5.0] * 3, 32: [4.0] * 3, 64: [1.5, 1.0, 2.0]}}
    seen = []

    def fake_rounds(fns, rounds, **kw):
        op = ["gla", "ssd"][len(seen)]
        seen.append(op)
        return [fake[op][c] for c in (16, 32, 64)], [1] * len(fns)

    monkeypatch.setattr(ops_table, "interleaved_rounds", fake_rounds)
    ctx, rows, best = ops_table.run_chunks(TINY_OPS, rounds=3, only=("gla", "ssd"),
                                           candidates=(16, 32, 64))
    assert best == {"gla": 32, "ssd": 64}
    gla = {r["chunk_size"]: r for r in rows if r["op"] == "gla"}
    assert gla[32]["best"] and gla[16]["vs_best"] == pytest.approx(9.0 / 2.0)
    assert gla[16]["fwdbwd_ms_low"] == pytest.approx(1e3)
    path = tuning.save(best, threads=ctx["threads"])
    assert path == cache
    old = torch.get_num_threads()
    torch.set_num_threads(ctx["threads"])
    try:
        assert tuning.chunk_size("gla") == 32 and tuning.chunk_size("ssd") == 64
    finally:
        torch.set_num_threads(old)
    md = ops_table.chunks_markdown(rows, ctx, best, command="c", saved=path)
    assert "| gla | 32 * |" in md and "Best per op: gla 32, ssd 64." in md


def test_bench_chunks_command_writes_the_table_and_the_machine_file(monkeypatch, tmp_path,
                                                                    cache, capsys):
    monkeypatch.setattr(ops_table, "QUICK_OP_SHAPES", TINY_OPS)
    monkeypatch.setattr(ops_table, "OPS", ("retention",))
    monkeypatch.setattr(tuning, "CANDIDATES", (2, 4))
    out = tmp_path / "out"
    assert main(["bench", "--chunks", "--write", "--quick", "--repeats", "1", "--out",
                 str(out)]) == 0
    rows = [json.loads(x) for x in (out / "chunks.jsonl").read_text().splitlines()]
    assert [r["chunk_size"] for r in rows] == [2, 4]
    best = next(r["chunk_size"] for r in rows if r["best"])
    saved = json.loads(cache.read_text())
    assert saved == {tuning.machine_key(rows[0]["context"]["threads"]): {"retention": best}}
    printed = capsys.readouterr().out
    assert "# seqmem bench --chunks" in printed and "chunks.md" in printed
    # without --write nothing is saved
    cache.unlink()
    assert main(["bench", "--chunks", "--quick", "--repeats", "1", "--out", str(out)]) == 0
    assert not cache.exists()


def test_bench_parts_are_checked():
    with pytest.raises(ValueError, match="unknown bench part 'nosuch'"):
        BenchConfig(parts=("nosuch",))


def test_small_rows_follow_from_their_times_and_the_step_trains(monkeypatch):
    shapes = small.SmallShapes(d_models=(8,), lengths=(8,), batch=2, vocab=8)
    cfg = small.run_config("gru", 8, 8, shapes)
    assert cfg.model.n_layers == 2 and cfg.model.block == "residual"
    assert small.run_config("attention", 8, 16, shapes).model.mixer.options()["max_len"] == 16
    step = small.training_step(cfg, 2)
    model_params = step.__closure__  # the closure holds the model's optimizer
    opt = next(c.cell_contents for c in model_params
               if isinstance(c.cell_contents, torch.optim.AdamW))
    before = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    step()
    after = [p.detach() for g in opt.param_groups for p in g["params"]]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    ctx, rows, skipped = small.run_small(shapes, names=("gru",), rounds=2)
    assert [r["mixer"] for r in rows] == ["attention", "gru"] and not skipped
    att, gru = rows
    assert att["vs_attention"] == 1.0
    assert gru["vs_attention"] == pytest.approx(gru["tok_s"] / att["tok_s"])
    assert gru["tok_s"] == pytest.approx(2 * 8 / (gru["step_ms"] / 1e3))
    md = small.small_markdown(rows, skipped, ctx, command="s")
    assert "| gru | recurrent | 8 |" in md and "## d_model 8" in md


def test_small_skips_a_mixer_over_budget_with_a_note():
    shapes = small.SmallShapes(d_models=(8,), lengths=(8, 16), batch=2, vocab=8)
    _, rows, skipped = small.run_small(shapes, names=("gru",), rounds=1, budget_s=1e-9)
    assert rows == [] and len(skipped) == 2  # attention and gru, from T = 8 on
    assert all("warm-up step took" in s and "from T=8" in s for s in skipped)


def test_decode_carries_the_state():
    """k calls of the mixer-level decode step leave the state that k steps of the mixer from
    the prefill's state give (computed here by a loop)."""
    shapes = decode.DecodeShapes(d_model=8, prefill=5)
    torch.manual_seed(0)
    m = mixers.build("gru", 8)
    gen = torch.Generator().manual_seed(1)
    step = decode._mixer_step(m, 2, shapes, gen)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 8, generator=gen)
    x_t = torch.randn(2, 8, generator=gen)
    with torch.no_grad():
        _, s = m(x)
        for _ in range(3):
            _, s = m.step(x_t, s)
    for _ in range(3):
        step()
    box = next(c.cell_contents for c in step.__closure__ if isinstance(c.cell_contents, list))
    torch.testing.assert_close(box[0], s)


def test_decode_rows_and_table():
    shapes = decode.DecodeShapes(d_model=8, batches=(1, 2), prefill=3, warmup=1)
    ctx, rows, skipped = decode.run_decode(shapes, names=("gru", "mamba"), rounds=2,
                                           peers=False)
    assert [(r["subject"], r["level"], r["batch"]) for r in rows] == [
        (n, lv, b) for b in (1, 2) for n in ("gru", "mamba") for lv in ("mixer", "model")]
    for r in rows:
        assert r["step_ms_low"] <= r["step_ms"] <= r["step_ms_high"]
        assert r["tok_s"] == pytest.approx(r["batch"] / (r["step_ms"] / 1e3))
    md = decode.decode_markdown(rows, skipped, ctx, command="d")
    assert "## batch 2" in md and "| mamba |" in md


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                    reason="transformers is not installed")
@pytest.mark.parametrize("peer", decode.PEERS, ids=[p[0] for p in decode.PEERS])
def test_hf_cached_steps_agree_with_seqmem(peer):
    _, _, make = peer
    shapes = decode.DecodeShapes(d_model=16, prefill=4)
    mine, theirs, err = decode._hf_pair(make, 16, 2, shapes, torch.Generator().manual_seed(0))
    assert err <= decode.PEER_TOL
    mine()
    theirs()  # both steps run on from the states the comparison left


def test_bench_flags_choose_the_parts(monkeypatch, tmp_path):
    """A plain `bench` runs every part (and saves chunk lengths); a grid flag or --quick alone
    the grid; a table's flag that table; --write asks to save."""
    import seqmem.engine.jobs as jobs

    seen = []

    def fake_bench_to(cfg, out_dir, **kw):
        seen.append(cfg)
        return {"kind": "parts", "skipped": [], "pages": []}, [], {}

    monkeypatch.setattr(jobs, "bench_to", fake_bench_to)
    for argv in ([], ["--quick"], ["--mixers", "gru"], ["--small", "--decode"],
                 ["--chunks", "--write", "--quick"]):
        assert main(["bench", *argv, "--out", str(tmp_path)]) == 0
    assert [c.parts for c in seen] == [(), ("grid",), ("grid",), ("small", "decode"),
                                       ("chunks",)]
    assert [c.write_chunks for c in seen] == [None, None, None, None, True]
    assert seen[4].shapes == "quick" and seen[4].mixers == () and seen[0].shapes == "full"


def test_bench_tables_command_writes_and_prints_each_page(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ops_table, "matmul_gflops", lambda: 1.0)
    monkeypatch.setattr(ops_table, "QUICK_OP_SHAPES", TINY_OPS)
    monkeypatch.setattr(ops_table, "OPS", ("linear_attention",))
    monkeypatch.setattr(small, "QUICK_SMALL", small.SmallShapes(d_models=(8,), lengths=(8,),
                                                                batch=2, vocab=8))
    monkeypatch.setattr(decode, "QUICK_DECODE", decode.DecodeShapes(d_model=8, batches=(1,),
                                                                    prefill=2, warmup=1))
    monkeypatch.setattr(decode, "PEERS", ())
    assert main(["bench", "--ops", "--small", "--decode", "--quick", "--mixers", "elman",
                 "--repeats", "1", "--out", str(tmp_path)]) == 0
    for stem in ("ops", "small", "decode"):
        assert (tmp_path / f"{stem}.md").exists() and (tmp_path / f"{stem}.csv").exists()
    small_rows = [json.loads(x) for x in (tmp_path / "small.jsonl").read_text().splitlines()]
    assert [r["mixer"] for r in small_rows] == ["attention", "elman"]
    printed = capsys.readouterr().out
    assert all(f"# seqmem bench --{p}" in printed for p in ("ops", "small", "decode"))
