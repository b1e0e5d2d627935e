"""`--device` of continual, analyze and bench: cpu runs and is recorded; a device this machine
lacks (cuda on a machine without it) or an unknown name is one error line, exit 2, no
traceback, and nothing run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seqmem.analysis.probes import load_stage
from seqmem.cli.main import main
from seqmem.config import load_config
from seqmem.engine.jobs import train_run
from seqmem.store import RunStore

CONTINUAL = ["steps=2", "eval_batches=1", "eval_batch_size=8", "batch_size=8", "d_model=4",
             "protocol_options.n_max=3"]
BENCH = ["--mixers", "gru", "--lengths", "4", "--batch", "1", "--d-model", "4", "--repeats",
         "1", "--references", "none", "--no-memory"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine "
                             "without CUDA")


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str, start: str) -> None:
    assert err.startswith(start), err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = load_config(None, ["model.d_model=8", "train.batch_size=16",
                             "train.steps_per_epoch=1", "train.eval_batches=1",
                             "curriculum.threshold=0.01", "curriculum.n_max=3"])
    store = RunStore(tmp_path_factory.mktemp("runs"))
    run = store.create_run(cfg.model_dump(mode="json"))
    train_run(cfg, run)
    return cfg, run, store


def test_continual_on_the_cpu_records_its_device(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "continual", "--device", "cpu", "--root", tmp_path,
                           "--no-progress", *CONTINUAL)
    assert code == 0, out
    (row,) = RunStore(tmp_path).list_runs(kind="continual")
    assert row["status"] == "done"
    assert RunStore(tmp_path).open_run(row["id"]).config()["device"] == "cpu"


def test_analyze_on_the_cpu(capsys, trained):
    cfg, run, store = trained
    code, _out, err = run_cli(capsys, "analyze", run.id, "--what", "timescales", "--device",
                             "cpu", "--root", store.root)
    assert code == 0, err
    stages = json.loads((Path(run.dir) / "analysis.json").read_text())["stages"]
    for row in stages:  # the timescales of each stage's model, read from it directly
        tau = load_stage(cfg, run, row["N"]).timescales().double()
        assert row["tau"]["mean"] == pytest.approx(float(tau.mean()), rel=1e-6)


def test_bench_on_the_cpu_states_its_device(capsys, tmp_path):
    code, _out, err = run_cli(capsys, "bench", "--quick", *BENCH, "--device", "cpu", "--out",
                             tmp_path)
    assert code == 0, err
    assert "device cpu;" in (tmp_path / "bench.md").read_text()
    rows = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert rows and {r["device"] for r in rows} == {"cpu"}


@NO_CUDA
def test_a_device_this_machine_lacks_is_one_line(capsys, tmp_path, trained):
    _, run, store = trained
    for args in (["continual", "--device", "cuda", "--root", tmp_path, *CONTINUAL],
                 ["analyze", run.id, "--device", "cuda:1", "--root", store.root],
                 ["bench", "--quick", *BENCH, "--device", "cuda", "--out", tmp_path / "b"]):
        code, _out, err = run_cli(capsys, *args)
        assert code == 2, args
        one_line(err, f"error: device '{args[args.index('--device') + 1]}' needs CUDA")
    assert not (tmp_path / "b").exists() and not RunStore(tmp_path).list_runs()


def test_an_unknown_device_name_is_one_line(capsys, tmp_path, trained):
    _, run, store = trained
    for args in (["continual", "--device", "gpu", "--root", tmp_path, *CONTINUAL],
                 ["analyze", run.id, "--device", "gpu", "--root", store.root],
                 ["bench", "--quick", *BENCH, "--device", "gpu", "--out", tmp_path / "b"]):
        code, _out, err = run_cli(capsys, *args)
        assert code == 2, args
        assert "unknown device 'gpu'; accepted: auto, cpu, cuda, cuda:N, mps" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
