"""Sweep resources: the `resources` key of a sweep file, Ray's task options built from it, the
process backend's round-robin pinning of runs to GPUs, and the error on a machine without one.
No GPU and no Ray cluster is needed: CUDA is monkeypatched and the options are read, not run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from seqmem.engine import backends
from seqmem.engine.backends import Job, Processes, Ray, check_gpus, ray_options
from seqmem.errors import ConfigError, SeqmemError
from seqmem.store import RunStore
from seqmem.sweep import plan_sweep, read_sweep, run_sweep

TINY = ["task.kind=n_parity", "task.N=2", "curriculum.kind=none", "model.d_model=8",
        "train.batch_size=16", "train.steps_per_epoch=1", "train.eval_batches=1",
        "train.max_epochs=1"]


def write(tmp_path: Path, data: dict, name: str = "sw.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def fake_cuda(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_resources_key_reaches_every_job_and_not_the_hash(tmp_path):
    grid = {"overrides": TINY, "grid": {"train.lr": [0.1, 0.2]}, "seeds": [0, 1]}
    spec = read_sweep(write(tmp_path, {**grid, "resources": {"gpu": 0.25, "cpu": 2}}))
    (tmp_path / "b").mkdir()
    plain = read_sweep(write(tmp_path / "b", grid))  # the same name: the same configs
    plan = plan_sweep(spec, RunStore(tmp_path / "store"))
    assert len(plan.jobs) == 4
    assert all(j.resources == {"gpu": 0.25, "cpu": 2.0} for j in plan.jobs)
    other = plan_sweep(plain, RunStore(tmp_path / "store2"))
    assert [j.cfg.config_hash() for j in plan.jobs] == [j.cfg.config_hash() for j in other.jobs]
    assert all(j.resources is None for j in other.jobs)
    # defaults of a partial key: no GPU, one CPU
    only_cpu = read_sweep(write(tmp_path, {**grid, "resources": {"cpu": 4}}, "c.yaml"))
    assert only_cpu.resources.model_dump() == {"gpu": 0.0, "cpu": 4.0}


@pytest.mark.parametrize("resources, pattern", [
    ({"tpu": 1}, r"resources\.tpu: unknown resource; accepted: gpu, cpu"),
    ({"gpu": -0.5}, r"resources\.gpu: .*greater than or equal to 0"),
    ({"gpu": 1.5}, r"resources\.gpu: .*share of one GPU \(0 < gpu <= 1\) or a whole number"),
    ({"cpu": 0}, r"resources\.cpu: .*greater than 0"),
    ({"gpu": "half"}, r"resources\.gpu: "),
])
def test_bad_resources_are_one_line_errors(tmp_path, resources, pattern):
    path = write(tmp_path, {"overrides": TINY, "seeds": [0], "resources": resources})
    with pytest.raises(ConfigError, match=pattern) as info:
        read_sweep(path)
    assert "\n" not in str(info.value)


def test_whole_gpus_are_accepted(tmp_path):
    spec = read_sweep(write(tmp_path, {"overrides": TINY, "seeds": [0],
                                       "resources": {"gpu": 2}}))
    assert spec.resources.gpu == 2


def test_ray_options_carry_num_gpus_and_num_cpus():
    assert ray_options({"gpu": 0.25, "cpu": 1}) == {"num_cpus": 1.0, "num_gpus": 0.25,
                                                    "max_retries": 0}
    assert ray_options({"gpu": 0.0, "cpu": 3}) == {"num_cpus": 3.0, "max_retries": 0}
    assert ray_options(None) == {"num_cpus": 1.0, "max_retries": 0}
    with pytest.raises(SeqmemError, match="unknown resource 'tpu'; accepted: gpu, cpu"):
        ray_options({"tpu": 1})


class FakeRemote:
    """Stands in for a Ray remote function: records the options and the calls."""

    def __init__(self, log: list, options: dict | None = None):
        self.log, self.opts = log, options

    def options(self, **kw):
        return FakeRemote(self.log, kw)

    def remote(self, job, q):
        self.log.append((job.run_id, self.opts))
        return object()


def test_ray_start_submits_each_run_with_its_options(tmp_path):
    ray_be = Ray.__new__(Ray)  # no Ray started: only what start() submits is read
    log: list = []
    ray_be.remote, ray_be.q, ray_be.refs = FakeRemote(log), None, {}
    spec = read_sweep(write(tmp_path, {"overrides": TINY, "seeds": [0, 1],
                                       "resources": {"gpu": 0.5, "cpu": 1}}))
    jobs = plan_sweep(spec, RunStore(tmp_path / "store")).jobs
    for job in jobs:
        ray_be.start(job)
    ray_be.start(Job(jobs[0].cfg, "plain", "", "plain"))
    assert log == [(j.run_id, {"num_cpus": 1.0, "num_gpus": 0.5, "max_retries": 0})
                   for j in jobs] + [("plain", None)]
    assert sorted(ray_be.refs.values()) == sorted([j.run_id for j in jobs] + ["plain"])


class FakeProcess:
    def __init__(self, target, args, daemon):
        self.target, self.args, self.pid = target, args, 1234

    def start(self):
        pass


class FakeContext:
    def __init__(self):
        self.made: list[FakeProcess] = []

    def Process(self, **kw):  # multiprocessing's name
        self.made.append(FakeProcess(**kw))
        return self.made[-1]


def job_of(tmp_path, i: int, device: str = "auto", resources=None) -> Job:
    spec = read_sweep(write(tmp_path, {"overrides": [*TINY, f"train.device={device}"],
                                       "seeds": [i]}, f"j{i}.yaml"))
    cfg = plan_sweep(spec, RunStore(tmp_path / f"s{i}")).jobs[0].cfg
    return Job(cfg, f"run-{i}", "", f"run {i}", resources=resources)


@pytest.mark.parametrize("k", [1, 3])
def test_process_backend_pins_gpu_runs_round_robin(tmp_path, monkeypatch, k):
    fake_cuda(monkeypatch, k)
    procs = Processes(2)
    ctx = FakeContext()
    procs.ctx = ctx
    gpu = {"gpu": 0.25, "cpu": 1.0}
    jobs = [job_of(tmp_path, i, resources=gpu) for i in range(7)]
    # runs that ask for no GPU, compute on the CPU, or name their device are not pinned,
    # and do not move the turn of the others
    jobs.insert(2, job_of(tmp_path, 10))
    jobs.insert(4, job_of(tmp_path, 11, device="cpu", resources=gpu))
    jobs.insert(5, job_of(tmp_path, 12, device="cuda:0", resources=gpu))
    for job in jobs:
        procs.start(job)
    seen = {p.args[0].run_id: p.args[2] for p in ctx.made}
    assert all(p.target is backends.process_worker for p in ctx.made)
    expected, turn = {}, 0
    for job in jobs:
        if job.run_id in ("run-10", "run-11", "run-12"):
            expected[job.run_id] = None
        else:
            expected[job.run_id] = str(turn % k)
            turn += 1
    assert seen == expected
    assert [seen[f"run-{i}"] for i in range(7)] == [str(i % k) for i in range(7)]
    procs.q.close()


def test_no_cuda_no_pinning_and_gpu_requests_refused(tmp_path, monkeypatch):
    fake_cuda(monkeypatch, 0)
    procs = Processes(1)
    assert procs.cuda_devices(job_of(tmp_path, 0, resources={"gpu": 1.0})) is None
    procs.q.close()
    with pytest.raises(SeqmemError, match=r"^resources\.gpu asks for a GPU but this machine "
                                          r"has none .*train\.device=cpu$"):
        check_gpus([job_of(tmp_path, 1, resources={"gpu": 0.5})])
    # a run on the CPU may carry the key (the same sweep file on a laptop)
    check_gpus([job_of(tmp_path, 2, device="cpu", resources={"gpu": 0.5})])
    check_gpus([job_of(tmp_path, 3, resources={"gpu": 0.0})])


def test_run_sweep_refuses_a_gpu_request_before_any_run(tmp_path, monkeypatch):
    fake_cuda(monkeypatch, 0)
    store = RunStore(tmp_path / "store")
    spec = read_sweep(write(tmp_path, {"overrides": TINY, "seeds": [0, 1],
                                       "resources": {"gpu": 0.25}}))
    with pytest.raises(SeqmemError, match="asks for a GPU but this machine has none"):
        run_sweep(spec, store, backend="process", workers=2)
    assert store.list_runs() == []


def test_process_worker_sets_the_pinned_device_before_cuda(monkeypatch):
    """The child's first act: CUDA_VISIBLE_DEVICES is the pinned device when the job runs."""
    seen = {}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    monkeypatch.setattr(backends, "guarded",
                        lambda job, emit: seen.setdefault("env", os.environ[
                            "CUDA_VISIBLE_DEVICES"]))
    monkeypatch.setattr(backends.signal, "signal", lambda *a: None)

    class NoThread:  # the orphan watch of a real child is not wanted in this process
        def __init__(self, **kw):
            pass

        def start(self):
            pass

    monkeypatch.setattr(backends.threading, "Thread", NoThread)

    class Q:
        def cancel_join_thread(self):
            pass

    backends.process_worker(Job(None, "r", "", "r"), Q(), "2")
    assert seen["env"] == "2"
