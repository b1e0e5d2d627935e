"""Live logging: TensorBoard (for real, where installed) and wandb (through a stand-in module
that records the calls), written by the engine from the same records as metrics.jsonl."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from seqmem.config import load_config
from seqmem.engine import Job, execute
from seqmem.errors import ConfigError
from seqmem.store import RunStore

TINY = ["model.d_model=8", "train.batch_size=16", "train.steps_per_epoch=2",
        "train.eval_batches=1", "train.max_epochs=3", "curriculum.kind=none"]
HAS_TB = importlib.util.find_spec("tensorboard") is not None


def _run(tmp_path, overrides):
    store = RunStore(tmp_path)
    cfg = load_config(None, [*TINY, *overrides])
    run = store.create_run(cfg.model_dump(mode="json"))
    execute([Job(cfg, run.id, str(run.dir), label="t")], store)
    return run


@pytest.mark.skipif(not HAS_TB, reason="needs tensorboard (pip install 'seqmem[logging]')")
def test_tensorboard_gets_every_epoch_of_metrics_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(tmp_path, ["train.log=tensorboard"])
    acc = EventAccumulator(str(run.dir / "tensorboard"))
    acc.Reload()
    logged = {e.step: e.value for e in acc.Scalars("acc_mean")}
    expect = {m["epoch"]: m["acc_mean"] for m in run.metrics() if "epoch" in m}
    assert sorted(logged) == [1, 2, 3] and logged == pytest.approx(expect)
    assert [e.step for e in acc.Scalars("lr")] == [1, 2, 3]


def test_wandb_is_offline_in_the_run_folder(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, values, step):
            calls.append(("log", step, dict(values)))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "wandb" else real(name, *a))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = _run(tmp_path, ["train.log=[wandb]"])
    init = calls[0][1]
    assert init["mode"] == "offline" and init["dir"] == str(run.dir) and init["id"] == run.id
    steps = [c[1] for c in calls if c[0] == "log"]
    assert steps == [1, 2, 3] and calls[-1] == ("finish",)
    first = next(c[2] for c in calls if c[0] == "log")
    assert first["acc_mean"] == pytest.approx(run.metrics()[0]["acc_mean"])


def test_a_logger_whose_package_is_missing_is_a_config_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.log=[tensorboard]"])
    assert e.value.path == "train.log" and "pip install 'seqmem[logging]'" in str(e.value)
    with pytest.raises(ConfigError, match="unknown logger 'mlflow'; accepted: tensorboard"):
        load_config(None, ["train.log=[mlflow]"])
