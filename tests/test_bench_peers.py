"""`seqmem bench --peers`: every installed peer computes what its seqmem subject computes (the
mapping of layouts, scales and gate conventions), a missing peer is one line naming its
package, and the command writes its table. No speed is asserted."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from seqmem.bench import peers
from seqmem.cli.main import main

TINY = peers.Shapes(b=1, t=64, h=1, d=8, d_model=16, t_mixer=8)
FAST = [p for p in peers.PAIRS if p.needs != "compile"]


@pytest.mark.parametrize("pair", FAST, ids=[f"{p.subject} / {p.peer}" for p in FAST])
def test_each_pair_computes_the_same_outputs_and_gradients(pair):
    why = peers.missing(pair.needs)
    if why:
        pytest.skip(why)
    sides = pair.build(TINY, torch.Generator().manual_seed(3))
    assert peers.agreement(sides) <= pair.tol
    # the gradients with respect to every input agree too (the same math end to end)
    grads = []
    for fn in (sides.seqmem, sides.peer):
        for x in sides.inputs:
            x.grad = None
        fn(*sides.inputs).sum().backward()
        grads.append([x.grad.clone() for x in sides.inputs])
    for a, b in zip(*grads, strict=True):
        assert (a - b).abs().max() <= 1e-3 * b.abs().max().clamp_min(1.0)


def test_a_wrong_mapping_is_caught():
    pair = next(p for p in peers.PAIRS if p.peer == "torch.nn.GRU")
    sides = pair.build(TINY, torch.Generator().manual_seed(0))
    wrong = peers.Sides(lambda x: sides.seqmem(x.flip(1)), sides.peer, sides.inputs,
                        sides.tokens)
    assert peers.agreement(wrong) > 1e-2


def test_missing_packages_name_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert peers.missing("fla") == ("flash-linear-attention is not installed "
                                    "(pip install 'seqmem[peers]')")
    assert peers.missing(None) is None


def test_interleaved_rounds_give_the_ratio_of_the_measured_times():
    pair = next(p for p in peers.PAIRS if p.peer == "torch.nn.RNN")
    sides = pair.build(TINY, torch.Generator().manual_seed(0))
    res = peers.interleaved(sides, rounds=3)
    assert res["rounds"] == 3 and res["ratio_low"] <= res["ratio"] <= res["ratio_high"]
    assert res["seqmem_tok_s"] > 0 and res["peer_tok_s"] > 0


def test_run_peers_skips_what_is_not_installed_and_quick_leaves_out_compile():
    rows, skipped = peers.run_peers(TINY, rounds=1, quick=True, only=("torch.nn.GRU",
                                                                      "torch.compile"))
    assert [r["peer"] for r in rows] == ["torch.nn.GRU"] and rows[0]["agree"]
    assert all("torch.compile takes minutes" in s for s in skipped) and len(skipped) == 2


def test_bench_peers_command_writes_its_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(peers, "QUICK_SHAPES", TINY)
    monkeypatch.setattr(peers, "PAIRS", tuple(p for p in peers.PAIRS if p.needs is None))
    assert main(["bench", "--peers", "--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "peers.md").read_text()
    assert "| gru mixer | torch.nn.GRU |" in md and "seqmem / peer" in md
    rows = [json.loads(x) for x in (tmp_path / "peers.jsonl").read_text().splitlines()]
    assert {r["peer"] for r in rows} == {"torch.nn.RNN", "torch.nn.GRU", "torch.nn.LSTM"}
    assert "seqmem bench --peers" in capsys.readouterr().out
