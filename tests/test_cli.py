"""The command line: one-line errors, a small training run, interrupt and resume, stale runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqmem.cli.main import main
from seqmem.store import RunStore

TINY = ["model.d_model=8", "train.batch_size=16", "train.steps_per_epoch=2",
        "train.eval_batches=1"]


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args,message", [
    (["train", "--mixer", "nope"], "error: model.mixer.kind: unknown mixer 'nope'; accepted: "),
    (["train", "--task", "nope"], "error: task.kind: unknown task 'nope'; accepted:"),
    (["train", "train.lr=-1"], "error: train.lr: Input should be greater than 0"),
    (["train", "train.lrr=1"], "error: train.lrr: unknown key; accepted:"),
    (["train", "task.N=1"], "error: task: N must be"),
    (["train", "--curriculum", "double"], "error: curriculum.kind: Input should be"),
    (["train", "--bogus"], "error: unrecognised argument '--bogus'"),
    (["train", "bogus"], "error: config file 'bogus' not found"),
    (["train", "--resume", "nope"], "error: unknown run 'nope'"),
    (["run", "missing.yaml"], "error: config file 'missing.yaml' not found"),
])
def test_bad_input_is_one_line(capsys, tmp_path, args, message):
    code, _out, err = run_cli(capsys, *args, "--root", tmp_path)
    assert code == 2
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_list_mixers_and_tasks(capsys):
    code, out, _ = run_cli(capsys, "list", "mixers")
    assert code == 0
    for name in ("leaky_rnn", "elman", "gru", "lstm"):
        assert name in out
    code, out, _ = run_cli(capsys, "list", "tasks")
    assert code == 0 and "n_parity" in out and "n_dms" in out


@pytest.mark.parametrize("mixer", ["leaky_rnn", "elman", "gru", "lstm"])
def test_train_each_mixer_records_a_done_run(capsys, tmp_path, mixer):
    code, out, _ = run_cli(capsys, "train", "--mixer", mixer, "--task", "n_dms",
                           "--curriculum", "multi", *TINY, "train.max_epochs=2",
                           "--root", tmp_path, "--no-progress")
    assert code == 0, out
    rows = RunStore(tmp_path).list_runs()
    assert len(rows) == 1 and rows[0]["status"] == "done"
    assert rows[0]["summary"]["epochs"] == 2 and rows[0]["summary"]["mixer"] == mixer
    code, out, _ = run_cli(capsys, "runs", "--root", tmp_path, "--format", "json")
    assert json.loads(out)[0]["id"] == rows[0]["id"]


def _default_sigint() -> None:
    """In the child: Ctrl-C's default disposition. A shell's background job (`make test &`)
    ignores SIGINT and its children inherit that, so Python would never raise
    KeyboardInterrupt and the Ctrl-C test would wait out its timeout."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args, root):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "seqmem.cli.main", *map(str, args),
                             "--root", str(root), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_default_sigint)


def _communicate(p: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """p.communicate, killing the process if it times out (a process left running would fail
    whichever test is running when it is garbage-collected)."""
    try:
        return p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise


def _wait_for_metrics(root: Path, p: subprocess.Popen, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        files = list(root.glob("*/metrics.jsonl"))
        if files and files[0].read_text().count("\n") >= 1:
            return files[0].parent
        time.sleep(0.1)
    p.kill()
    p.communicate()
    raise AssertionError("no epoch finished in time")


def test_ctrl_c_marks_interrupted_and_resume_continues(tmp_path):
    p = _cli("train", "--task", "n_parity", *TINY, "train.max_epochs=100000", root=tmp_path)
    run_dir = _wait_for_metrics(tmp_path, p)
    p.send_signal(signal.SIGINT)
    _, err = _communicate(p, 120)
    assert p.returncode == 130, err
    store = RunStore(tmp_path)
    row = store.list_runs()[0]
    assert row["status"] == "interrupted" and "--resume" in row["reason"]
    done = len(store.open_run(row["id"]).metrics())
    assert done >= 1 and "last" in store.open_run(row["id"]).checkpoints()
    # resume with a larger budget: epochs continue from the checkpoint
    p = _cli("train", "--resume", row["id"], f"train.max_epochs={done + 2}", root=tmp_path)
    _out, err = _communicate(p, 120)
    assert p.returncode == 0, err
    row = store.get(row["id"])
    assert row["status"] == "done"
    epochs = [r["epoch"] for r in store.open_run(row["id"]).metrics()]
    assert epochs[-2:] == [done + 1, done + 2] and epochs == sorted(epochs)
    assert run_dir.name == row["id"]


def test_killed_run_shows_as_stale(tmp_path):
    p = _cli("train", *TINY, "train.max_epochs=100000", root=tmp_path)
    _wait_for_metrics(tmp_path, p)
    p.kill()
    _communicate(p, 120)
    rows = RunStore(tmp_path).list_runs()
    assert rows[0]["status"] == "stale"


def test_resume_refuses_other_options(capsys, tmp_path):
    code, _, _ = run_cli(capsys, "train", *TINY, "train.max_epochs=1", "--root", tmp_path,
                         "--no-progress")
    rid = RunStore(tmp_path).list_runs()[0]["id"]
    code, _, err = run_cli(capsys, "train", "--resume", rid, "--root", tmp_path)
    assert code == 2 and "already done" in err
    code, _, err = run_cli(capsys, "train", "--resume", rid, "--mixer", "gru", "--root", tmp_path)
    assert code == 2 and "keeps its own config" in err
