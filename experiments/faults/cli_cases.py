"""Bad input and store faults through the command line, as a user meets them: every case
must end with one line on stderr, a non-zero exit code and no traceback.

    .venv/bin/python experiments/faults/cli_cases.py        # prints a table and the totals

Each case runs `seqmem ...` in a fresh temporary folder (a store with one finished run is
made first where the case needs one). The process-level faults (Ctrl-C at each phase, two
writers, a killed driver, a full disk, a read-only store) are tests in tests/test_faults*.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TINY = ["model.d_model=8", "train.batch_size=16", "train.steps_per_epoch=2",
        "train.eval_batches=1", "train.max_epochs=1"]


def seqmem(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqmem.cli.main", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def prepare(root: Path) -> str:
    """A store with one finished training run; its id."""
    seqmem("train", *TINY, "--root", root / "runs", "--no-progress", cwd=root)
    out = seqmem("runs", "--root", root / "runs", "--format", "csv", cwd=root).stdout
    return out.splitlines()[1].split(",")[0]


def cases(root: Path, rid: str):
    """(name, args, set-up) of every case; set-up may break the store first."""
    runs = root / "runs"
    yield "unknown mixer", ["train", "--mixer", "nope"], None
    yield "unknown key, accepted keys", ["train", "task.NN=3"], None
    yield "mixer key typo", ["train", "model.mixer.rul=mod"], None
    yield "float for an integer", ["train", "task.N=1e9", "--curriculum", "none"], None
    yield "a batch that cannot fit", ["train", "task.N=1000000000", "--curriculum", "none"], None
    yield "task.N under a curriculum", ["train", "task.N=5"], None
    yield "override without a value", ["train", "train.lr"], None
    yield "--eval.lengths then an override without =", ["train", "--eval.lengths", "64,128",
                                                         "train.lr"], None
    yield "a folder as config", ["train", str(root)], None
    yield "empty YAML", ["train", "empty.yaml"], lambda: (root / "empty.yaml").write_text("")
    yield "invalid YAML", ["train", "bad.yaml"], lambda: (root / "bad.yaml").write_text("a: [1\n")
    yield "unknown run", ["show", "nope", "--root", runs], None
    yield "resume a finished run", ["train", "--resume", rid, "--root", runs], None
    yield "resume with a non-budget override", ["train", "--resume", rid, "train.lr=1",
                                                "--root", runs], None
    yield "--where malformed", ["runs", "--where", "acc>>0.9", "--root", runs], None
    yield "--where unknown key", ["runs", "--where", "nope=1", "--root", runs], None
    yield "--best unknown key", ["runs", "--best", "nope", "--root", runs], None
    yield "sweep --workers 0", ["sweep", "s.yaml", "--workers", "0", "--root", runs], \
        lambda: (root / "s.yaml").write_text("name: s\ngrid: {seed: [0]}\n")
    yield "sweep --workers -3", ["sweep", "s.yaml", "--workers", "-3", "--root", runs], None
    yield "bench with an unknown mixer", ["bench", "--mixers", "nope", "--out", root / "b"], None
    yield "continual unknown method option", ["continual", "--method", "ewc",
                                              "method_options.lam=1", "--root", runs], None
    yield "show-task unknown option", ["show-task", "mqar", "n_pair=3"], None
    yield "--root is a file", ["runs", "--root", root / "afile"], \
        lambda: (root / "afile").write_text("x")
    yield "invalid config.yaml in a run: show", ["show", rid, "--root", runs], \
        lambda: (runs / rid / "config.yaml").write_text("model: [1\n")
    yield "invalid config.yaml in a run: resume", ["train", "--resume", rid,
                                                   "train.max_epochs=5", "--root", runs], None
    yield "invalid summary.json: report", ["report", rid, "--root", runs], \
        lambda: (runs / rid / "summary.json").write_text("{nope")
    yield "corrupt index: runs", ["runs", "--root", runs], \
        lambda: (runs / "seqmem.db").write_bytes(b"not a database" * 100)
    yield "corrupt index: show", ["show", rid, "--root", runs], None
    yield "corrupt index: train", ["train", *TINY, "--root", runs], None
    yield "deleted run folder: report", ["report", rid, "--root", runs], \
        lambda: (seqmem("store", "rebuild", "--root", runs, cwd=root),
                 shutil.rmtree(runs / rid))


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        rid = prepare(root)
        rows, bad = [], 0
        for name, args, setup in cases(root, rid):
            if setup:
                setup()
            r = seqmem(*args, cwd=root)
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            ok = r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr
            bad += not ok
            rows.append((name, r.returncode, lines[-1] if lines else "(nothing on stderr)", ok))
        for name, code, line, ok in rows:
            print(f"{'ok  ' if ok else 'FAIL'} rc={code:<3} {name}: {line[:150]}")
        print(f"{len(rows)} cases: {len(rows) - bad} one clear line, {bad} not; "
              f"tracebacks: {sum('Traceback' in r[2] for r in rows)}")
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
