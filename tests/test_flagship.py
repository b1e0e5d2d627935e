"""The flagship command: both curricula trained side by side and compared."""

import subprocess
import sys
from pathlib import Path

from seqmem.flagship import comparison_rows, flagship_configs
from seqmem.store import RunStore


def test_flagship_configs_differ_only_in_curriculum():
    single, multi = flagship_configs(quick=True)
    assert (single.curriculum.kind, multi.curriculum.kind) == ("single", "multi")
    a, b = single.model_dump(), multi.model_dump()
    for d in (a, b):
        d["curriculum"].pop("kind")
        d.pop("name")
    assert a == b
    assert single.train.max_time_s <= 20 and single.model.mixer.kind == "leaky_rnn"
    assert single.model.mixer.input_proj is False and single.task.kind == "n_parity"


def test_comparison_rows_from_summaries():
    s = {"single": {"epochs_per_N": {"2": 3, "3": 5}, "stages": [
        {"N": 2, "tau_mean": 1.5, "tau_sd": 0.25}]},
         "multi": {"epochs_per_N": {"2": 2}, "stages": [{"N": 2, "tau_mean": 1.4, "tau_sd": 0.2}]}}
    header, rows = comparison_rows(s)
    assert header[0] == "N" and len(header) == 5
    assert rows == [["2", "3", "1.500 ± 0.250", "2", "1.400 ± 0.200"],
                    ["3", "5 (unsolved)", "", "", ""]]


def test_run_quick_end_to_end(tmp_path):
    p = subprocess.run([sys.executable, "-m", "seqmem.cli.main", "run", "--quick", "--root",
                        str(tmp_path), "--no-progress"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert "max N solved" in p.stdout and "per N: epochs spent" in p.stdout
    report = next(tmp_path.glob("report-*/report.html"))
    assert f"report: {report}" in p.stdout.replace("\n", "")
    assert (report.parent / "tau_vs_N.png").exists()
    rows = RunStore(tmp_path).list_runs()
    assert sorted(r["summary"]["curriculum"] for r in rows) == ["multi", "single"]
    assert all(r["status"] == "done" and r["kind"] == "flagship" for r in rows)
    for r in rows:
        s = r["summary"]
        assert s["n_solved"] >= 2 and s["stop_reason"] == "max_time_s"
        assert s["stages"][0]["N"] == 2 and "tau_mean" in s["stages"][0]
        assert "perturb_tau_0.1_rel" in s and "ablate_longest_rel" in s
        assert (Path(r["dir"]) / "analysis.json").exists()


def test_experiment_file_matches_the_defaults():
    from pathlib import Path

    from seqmem.config import load_config
    from seqmem.flagship import FLAGSHIP

    path = Path(__file__).parents[1] / "experiments" / "flagship" / "flagship.yaml"
    assert load_config(path) == load_config(FLAGSHIP)
