"""The run engine: job kinds, what it records of each, retries and interrupts (inline)."""

from __future__ import annotations

import pytest

from seqmem.engine import Job, execute, job_kind
from seqmem.engine.jobs import JOB_KINDS
from seqmem.errors import RunFailed, SeqmemError
from seqmem.store import RunStore

CALLS: list[str] = []


@pytest.fixture(autouse=True)
def _kinds():
    """Job kinds that only this file registers (removed afterwards)."""
    CALLS.clear()

    @job_kind("t_flaky")
    def flaky(cfg, run, *, emit=None, resume=False):
        CALLS.append(f"flaky resume={resume}")
        emit({"event": "start", "resume": resume})
        if len(CALLS) == 1:
            raise OSError("disk hiccup")
        return {"value": cfg["value"]}

    @job_kind("t_diverges")
    def diverges(cfg, run, *, emit=None, resume=False):
        CALLS.append("diverges")
        raise RunFailed("non-finite loss")

    @job_kind("t_note", records="summary")
    def note(cfg, run, *, emit=None, resume=False):
        return {"note": cfg["note"]}

    @job_kind("t_stop")
    def stop(cfg, run, *, emit=None, resume=False):
        CALLS.append("stop")
        raise KeyboardInterrupt

    yield
    for k in ("t_flaky", "t_diverges", "t_note", "t_stop"):
        JOB_KINDS.pop(k, None)


def _job(store, kind, cfg):
    run = store.create_run({"kind": kind})
    return Job(cfg, run.id, str(run.dir), label=kind, kind=kind)


def test_a_failed_job_is_retried_and_a_deterministic_failure_is_not(tmp_path):
    store = RunStore(tmp_path)
    a, b = _job(store, "t_flaky", {"value": 3}), _job(store, "t_diverges", {})
    out = execute([a, b], store, retries=2)
    assert out.status == {a.run_id: "done", b.run_id: "failed"}
    assert out.attempts == {a.run_id: 1} and CALLS.count("diverges") == 1
    assert CALLS[:2] == ["flaky resume=False", "flaky resume=False"]  # no checkpoint: restart
    assert store.get(a.run_id)["summary"] == {"value": 3}
    assert store.get(b.run_id)["status"] == "failed"
    assert "non-finite loss" in store.get(b.run_id)["reason"]


def test_a_summary_job_adds_to_the_run_and_leaves_its_status(tmp_path):
    store = RunStore(tmp_path)
    job = _job(store, "t_flaky", {"value": 1})
    CALLS.append("skip the hiccup")
    execute([job], store)
    store.update_summary(job.run_id, {"value": 1, "kept": True})
    note = Job({"note": "hi"}, job.run_id, job.run_dir, label="note", kind="t_note")
    out = execute([note], store)
    assert out.summaries[job.run_id] == {"note": "hi"}
    row = store.get(job.run_id)
    assert row["status"] == "done" and row["summary"] == {"value": 1, "kept": True, "note": "hi"}


def test_an_interrupt_stops_the_queue_and_records_every_job(tmp_path):
    store = RunStore(tmp_path)
    jobs = [_job(store, "t_stop", {}), _job(store, "t_flaky", {"value": 0})]
    out = execute(jobs, store)
    assert out.interrupted and CALLS == ["stop"]
    assert {store.get(j.run_id)["status"] for j in jobs} == {"interrupted"}
    assert "resume" in store.get(jobs[1].run_id)["reason"]


def test_unknown_kinds_and_backends_are_one_line_errors(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(SeqmemError, match="unknown backend 'gpu'; accepted: auto, ray"):
        execute([], store, backend="gpu")
    with pytest.raises(SeqmemError, match="job records"):
        job_kind("t_bad", records="everything")
    with pytest.raises(SeqmemError, match="already registered"):
        job_kind("train")(lambda *a, **k: {})
