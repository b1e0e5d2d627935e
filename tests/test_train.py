"""The training loop: determinism, exact resume, and failure on a non-finite loss."""

import json
import re

import pytest
import torch

import seqmem.train.loop as loop
from seqmem import build
from seqmem.config import load_config
from seqmem.engine import train_run
from seqmem.errors import ConfigError, RunFailed
from seqmem.store import RunStore

SMALL = ["model.d_model=16", "train.batch_size=32", "train.steps_per_epoch=3",
         "train.eval_batches=2", "train.max_epochs=4", "curriculum.threshold=0.5"]


def _metrics(run):
    keep = ("epoch", "N", "acc", "loss", "eval_loss", "tau_mean", "tau_sd", "advanced")
    return [{k: r.get(k) for k in keep} for r in run.metrics()]


@pytest.mark.parametrize("mixer", ["leaky_rnn", "gru"])
def test_same_config_same_numbers(tmp_path, mixer):
    cfg = load_config(None, [*SMALL, f"model.mixer.kind={mixer}"])
    store = RunStore(tmp_path)
    a = store.create_run(cfg.model_dump(mode="json"))
    b = store.create_run(cfg.model_dump(mode="json"))
    sa = train_run(cfg, a)
    sb = train_run(cfg, b)
    assert _metrics(a) == _metrics(b)
    assert len(_metrics(a)) == 4
    assert sa["epochs_per_N"] == sb["epochs_per_N"]
    for k, v in a.load_checkpoint("last")["model"].items():
        assert torch.equal(v, b.load_checkpoint("last")["model"][k]), k


def test_resume_continues_exactly(tmp_path):
    cfg = load_config(None, [*SMALL, "model.mixer.h0=random", "train.max_epochs=5"])
    store = RunStore(tmp_path)
    whole = store.create_run(cfg.model_dump(mode="json"))
    train_run(cfg, whole)

    cut = store.create_run(cfg.model_dump(mode="json"))

    def interrupt_after_two(ev):
        if ev["event"] == "epoch" and ev["record"]["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, cut, emit=interrupt_after_two)
    assert len(cut.metrics()) == 2
    train_run(cfg, cut, resume=True)
    assert _metrics(cut) == _metrics(whole)
    assert [r["epoch"] for r in cut.metrics()] == [1, 2, 3, 4, 5]


def test_resume_restores_a_metrics_line_lost_after_its_checkpoint(tmp_path, monkeypatch):
    """Stopped between an epoch's checkpoint and its metrics line: resuming writes the line
    from the checkpoint, so every epoch is logged once and in order."""
    cfg = load_config(None, [*SMALL, "train.max_epochs=3"])
    store = RunStore(tmp_path)
    whole = store.create_run(cfg.model_dump(mode="json"))
    train_run(cfg, whole)
    cut = store.create_run(cfg.model_dump(mode="json"))
    real_log = type(cut).log

    def log_then_stop(self, record):
        if record.get("epoch") == 2:
            raise KeyboardInterrupt  # after epoch 2's checkpoint, before its line
        real_log(self, record)

    monkeypatch.setattr(type(cut), "log", log_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, cut)
    monkeypatch.setattr(type(cut), "log", real_log)
    assert [r["epoch"] for r in cut.metrics()] == [1]
    train_run(cfg, cut, resume=True)
    assert [r["epoch"] for r in cut.metrics()] == [1, 2, 3]
    assert _metrics(cut) == _metrics(whole)


def test_curriculum_advances_and_checkpoints_each_step(tmp_path):
    cfg = load_config(None, [*SMALL, "curriculum.threshold=0.01", "curriculum.kind=multi",
                             "curriculum.n_max=4"])
    run = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    s = train_run(cfg, run)
    # threshold 0.01: every epoch solves its N, so N = 2, 3, 4 take one epoch each
    assert s["n_solved"] == 4 and s["curriculum_finished"] and s["epochs"] == 3
    assert s["stop_reason"] == "curriculum finished"
    assert s["epochs_per_N"] == {"2": 1, "3": 1, "4": 1}
    assert {"N002", "N003", "N004", "last"} <= set(run.checkpoints())
    assert [r["active_N"] for r in run.metrics()] == [[2], [2, 3], [2, 3, 4]]
    assert [st["N"] for st in s["stages"]] == [2, 3, 4]


def test_non_finite_loss_fails_and_keeps_last_good(tmp_path, monkeypatch):
    cfg = load_config(None, SMALL)
    run = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    real = loop.run_batch
    calls = {"n": 0}
    per_epoch = cfg.train.steps_per_epoch + cfg.train.eval_batches

    def poisoned(*a, **k):
        calls["n"] += 1
        loss, acc = real(*a, **k)
        return (loss * float("nan") if calls["n"] > per_epoch else loss), acc

    monkeypatch.setattr(loop, "run_batch", poisoned)
    with pytest.raises(RunFailed, match=r"non-finite loss .* epoch 2, step 1"):
        train_run(cfg, run)
    ck = run.load_checkpoint("last")
    assert ck["train"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert len(run.metrics()) == 1


def test_summary_is_json(tmp_path):
    cfg = load_config(None, SMALL)
    run = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    s = train_run(cfg, run)
    assert json.loads(json.dumps(s)) == run.read_summary()
    assert s["stop_reason"] == "max_epochs" and s["epochs"] == 4


def test_lr_schedule_closed_form():
    cfg = load_config(None, ["task.kind=n_parity", "train.schedule=cosine", "train.max_epochs=2",
                             "train.steps_per_epoch=5", "train.warmup_steps=2"])
    f = [build.lr_schedule(cfg)(s) for s in range(12)]
    assert f[:2] == [0.5, 1.0]  # linear warm-up
    total = 2 * 5 - 2
    for s in range(2, 12):
        frac = min((s - 2) / total, 1.0)
        assert f[s] == pytest.approx((1 + torch.cos(torch.tensor(torch.pi * frac)).item()) / 2)
    assert f[-1] == pytest.approx(0.0)
    # auto: the flagship tasks keep a constant rate with the paper's optimisers
    flag = load_config(None, [])
    assert build.schedule_choice(flag) == "constant" and build.optimizer_choice(flag)[0] == "sgd"
    assert build.optimizer_choice(load_config(None, ["model.mixer.kind=gru"]))[0] == "adam"


def test_logged_lr_follows_schedule(tmp_path):
    cfg = load_config(None, [*SMALL, "train.schedule=cosine", "train.max_epochs=3",
                             "curriculum.kind=none"])
    run = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    train_run(cfg, run)
    base = build.optimizer_choice(cfg)[1]
    lrs = [r["lr"] for r in run.metrics()]
    # the lr of each epoch's last update
    assert lrs == pytest.approx([base * build.lr_schedule(cfg)(3 * e + 2) for e in range(3)])
    assert lrs[0] > lrs[1] > lrs[2] > 0


def test_target_acc_stops_early(tmp_path):
    cfg = load_config(None, [*SMALL, "curriculum.kind=none", "train.target_acc=0.01",
                             "train.max_epochs=50"])
    run = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    s = train_run(cfg, run)
    assert s["stop_reason"] == "target_acc" and s["epochs"] == 1
    assert s["acc_scaled"] == pytest.approx(2 * s["acc_mean"] - 1)  # two classes: chance 0.5


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_knob_curriculum_grows_another_task_option(tmp_path, kind, monkeypatch):
    """curriculum.knob=n_pairs on mqar: the value grows by `step` when solved; under multi each
    training batch is drawn at one of the values reached and every value is evaluated, under
    single only the newest value is trained and evaluated."""
    cfg = load_config(None, [*SMALL, "task.kind=mqar", "task.vocab_size=64", "model.mixer=gru",
                             f"curriculum.kind={kind}", "curriculum.knob=n_pairs",
                             "curriculum.n_start=2", "curriculum.n_max=6", "curriculum.step=2",
                             "curriculum.threshold=0.001"])
    drawn = []
    real = loop.run_batch

    def spy(model, task, *a, **kw):
        drawn.append(task.n_pairs)
        return real(model, task, *a, **kw)

    monkeypatch.setattr(loop, "run_batch", spy)
    run = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    s = train_run(cfg, run)
    assert s["n_solved"] == 6 and s["curriculum_finished"] and s["epochs"] == 3
    assert s["knob"] == "n_pairs"
    assert [st["N"] for st in s["stages"]] == [2, 4, 6]
    evaluated = [1, 1, 1] if kind == "single" else [1, 2, 3]
    assert [len(r["acc"]) for r in run.metrics()] == evaluated
    # epoch k: 3 training batches, then one evaluation batch per value (eval_batches 2 shared)
    start = sum(3 + 2 * n if kind == "single" else 3 + n * max(1, -(-2 // n))
                for n in evaluated[:2])
    last_train = drawn[start:start + 3]
    allowed = {6} if kind == "single" else {2, 4, 6}
    assert set(last_train) <= allowed


def test_knob_curriculum_errors_name_the_options():
    with pytest.raises(ConfigError, match=re.escape(
            "curriculum.knob: task 'mqar' has no integer option 'nope'; accepted: seq_len, "
            "n_pairs, vocab_size")):
        load_config(None, ["task.kind=mqar", "curriculum.kind=single", "curriculum.knob=nope"])
    with pytest.raises(ConfigError, match=re.escape("curriculum.kind: 'multi' needs a task")):
        load_config(None, ["task.kind=mqar", "curriculum.kind=multi"])


def test_a_time_budget_drives_the_cosine_schedule():
    """With max_time_s the schedule runs over the time too (whichever budget ends first):
    half the time is half the cosine, at any step count."""
    cfg = load_config(None, ["task.kind=mqar", "curriculum.kind=none", "train.max_time_s=10",
                             "train.max_epochs=1000", "train.steps_per_epoch=50"])
    f = build.lr_schedule(cfg)
    assert build.schedule_choice(cfg) == "cosine"
    assert f(10, 0.0) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 10 / 50000))))
    assert f(10, 5.0) == pytest.approx(0.5, abs=1e-4)  # half the time: cos(pi / 2)
    assert f(10, 10.0) == pytest.approx(0.0, abs=1e-6)
    no_time = build.lr_schedule(load_config(None, ["task.kind=mqar", "curriculum.kind=none"]))
    assert no_time(10, 1e9) == no_time(10, 0.0)


def test_target_acc_waits_for_patience_and_summaries_name_what_ran(tmp_path):
    cfg = load_config(None, [*SMALL, "curriculum.kind=none", "train.target_acc=0.01",
                             "train.target_patience=3", "train.max_epochs=50"])
    run = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    s = train_run(cfg, run)
    assert s["stop_reason"] == "target_acc" and s["epochs"] == 3
    # no curriculum: no N, knob, stages or epochs per N; the accuracy names its task and split
    assert not {"knob", "n_solved", "stages", "epochs_per_N"} & set(s)
    assert s["eval_on"].startswith("NParity(N=[2]")
    assert all("N" not in m for m in run.metrics())


def test_a_finite_held_out_split_is_evaluated_in_one_exact_pass():
    """mnist1d's test split: every example once (batches of any size give the same number),
    equal to the accuracy counted example by example."""
    cfg = load_config(None, ["task.kind=mnist1d", "curriculum.kind=none", "model.d_model=8",
                             "train.batch_size=97", "model.mixer=gru"])
    parts = build.train_parts(cfg)
    task = parts.make_task(parts.curriculum, split="test")
    if not hasattr(task, "iter_batches"):
        pytest.skip("this task has no exact pass")
    model, heads = parts.model.eval(), [0]
    acc, _ = loop.evaluate(cfg, model, task, heads, torch.Generator(), d_out=1)
    right = 0
    with torch.no_grad():
        for i in range(task.n_examples()):
            b = task.batch_at([i])
            h, _ = model.features(b.inputs, model.init_state(1))
            right += int(model.heads[0](h[0, -1]).argmax() == b.targets[0, -1, 0])
    assert acc[0] == pytest.approx(right / task.n_examples())
    sampled = load_config(None, ["task.kind=mnist1d", "curriculum.kind=none", "eval.exact=false"])
    assert not loop.exact_pass(sampled, task) and loop.exact_pass(cfg, task)
