"""Devices and precision of a training run (`train.device`, `train.precision`,
`seqmem.devices`): every mixer family trains on every device this machine has, bf16 and fp16
autocast train on the CPU, a checkpoint resumes (with the fp16 loss scale), and a device this
machine lacks is one line before any run exists."""

import subprocess
import sys

import pytest
import torch

from seqmem import devices, mixers
from seqmem.config import load_config
from seqmem.engine import train_run
from seqmem.errors import ConfigError, SeqmemError
from seqmem.mixers.grid import names_2d
from seqmem.store import RunStore

SMALL = ["model.d_model=16", "train.batch_size=32", "train.steps_per_epoch=3",
         "train.eval_batches=2", "train.max_epochs=4", "curriculum.threshold=0.5"]


def _family_representatives() -> list[str]:
    """The first registered mixer of each mixer module (one per family), and every 2-D
    mixer (each its own family)."""
    seen: dict[str, str] = {}
    for name in mixers.names():
        seen.setdefault(mixers.lookup(name).__module__, name)
    return sorted(seen.values()) + sorted(names_2d())


def _losses(run) -> list[float]:
    return [x for r in run.metrics() if "step_loss" in r for x in r["step_loss"]]


# ---- names and errors ---------------------------------------------------------------------
def test_auto_is_cuda_when_available_else_cpu():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert devices.resolve_device("auto").type == want
    assert devices.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda0", "", "tpu"])
def test_an_unknown_device_name_is_one_line(name):
    with pytest.raises(SeqmemError, match=r"unknown device .*accepted: auto, cpu, cuda, "
                                          r"cuda:N, mps") as e:
        devices.resolve_device(name)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_names_what_this_machine_has(name):
    with pytest.raises(SeqmemError, match=r"needs CUDA.*available: cpu"):
        devices.resolve_device(name)


def test_train_device_is_checked_as_config():
    with pytest.raises(ConfigError, match=r"train\.device.*unknown device 'gpu'"):
        load_config(None, ["train.device=gpu"])
    with pytest.raises(ConfigError, match=r"train\.precision"):
        load_config(None, ["train.precision=fp8"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_device_it_lacks_is_one_line_and_creates_no_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "seqmem.cli.main", "train", "--device", "cuda",
                          "--root", str(tmp_path), "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    err = out.stderr.strip()
    assert err.startswith("error: device 'cuda' needs CUDA") and "\n" not in err, err
    assert "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "seqmem.db").exists() or RunStore(tmp_path).list_runs() == []


# ---- every mixer family on every device ---------------------------------------------------
@pytest.mark.parametrize("device", [str(d) for d in devices.device_kinds()])
@pytest.mark.parametrize("mixer", _family_representatives())
def test_every_family_trains_on_every_device(tmp_path, mixer, device):
    """A short training run (forecasting Lorenz-63 one step ahead, or Lorenz-96 on a grid for
    a 2-D mixer, which every mixer learns at once) on the device: the loss of the last six
    updates is below 0.8 of that of the first six, and the checkpoint's tensors come back on
    the CPU."""
    task = (["task.kind=lorenz96", "task.n_vars=6", "task.seq_len=6", "task.burn_in=0.5"]
            if mixer in names_2d() else  # a 2-D mixer: Lorenz-96 on a time x variables grid
            ["task.kind=dynamics", "task.seq_len=24", "task.burn_in=0.5"])
    cfg = load_config(None, ["model.d_model=16", "train.batch_size=16",
                             "train.steps_per_epoch=10", "train.eval_batches=1",
                             "train.max_epochs=3", "curriculum.kind=none", *task,
                             "eval.free_run_steps=0",
                             "train.optimizer=adam", "train.lr=0.01",
                             f"model.mixer.kind={mixer}", f"train.device={device}"])
    run = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    train_run(cfg, run)
    losses = _losses(run)
    assert len(losses) == 30 and all(map(torch.isfinite, torch.tensor(losses)))
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < 0.8 * first, (mixer, device, losses)
    ck = run.load_checkpoint("last")
    assert all(v.device.type == "cpu" for v in ck["model"].values())


# ---- precision ------------------------------------------------------------------------------
def _train(tmp_path, name, extra, mixer="gru"):
    cfg = load_config(None, [*SMALL, f"model.mixer.kind={mixer}", "curriculum.kind=none",
                             "task.N=2", *extra])
    run = RunStore(tmp_path / name).create_run(cfg.model_dump(mode="json"))
    summary = train_run(cfg, run)
    return run, summary


@pytest.mark.parametrize("mixer", ["gru", "gated_deltanet", "attention"])
def test_bf16_trains_close_to_fp32_but_not_equal(tmp_path, mixer):
    """bf16 autocast on the CPU changes the numbers (the projections run in bf16) by about
    bf16's resolution, not more: the per-update losses of 12 updates stay within 2 % of the
    fp32 run's, and differ from them."""
    a, _ = _train(tmp_path, "fp32", [], mixer)
    b, _ = _train(tmp_path, "bf16", ["train.precision=bf16"], mixer)
    la, lb = torch.tensor(_losses(a)), torch.tensor(_losses(b))
    assert la.shape == lb.shape == (12,)
    rel = ((la - lb).abs() / la.abs()).max().item()
    assert 0 < rel < 0.02, (mixer, rel)


def test_fp16_keeps_its_loss_scale_in_the_checkpoint_and_resumes_exactly(tmp_path):
    whole, _ = _train(tmp_path, "whole", ["train.precision=fp16"])
    cfg = load_config(None, [*SMALL, "model.mixer.kind=gru", "curriculum.kind=none",
                             "task.N=2", "train.precision=fp16"])
    cut = RunStore(tmp_path / "cut").create_run(cfg.model_dump(mode="json"))

    def interrupt_after_two(ev):
        if ev["event"] == "epoch" and ev["record"]["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, cut, emit=interrupt_after_two)
    ck = cut.load_checkpoint("last")
    assert ck["scaler"]["scale"] == 2.0 ** 16  # GradScaler's initial scale, no overflow yet
    train_run(cfg, cut, resume=True)
    assert _losses(cut) == _losses(whole)
    assert all(map(torch.isfinite, torch.tensor(_losses(whole))))


def test_a_mixer_keeps_its_state_in_float32_under_autocast():
    m = mixers.build("gru", 8)
    x = torch.randn(2, 5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.nn.functional.linear(x, torch.eye(8))  # a bf16 activation
        assert h.dtype == torch.bfloat16
        _, state = m(h)
    assert all(s.dtype == torch.float32 for s in torch.utils._pytree.tree_leaves(state)
               if isinstance(s, torch.Tensor))
    # outside autocast a bf16 input to float32 parameters is still refused
    with pytest.raises(SeqmemError, match="does not match the parameters' dtype"):
        m(x.bfloat16())


def test_resume_may_move_a_run_to_another_device(tmp_path):
    """A resumed run may change train.device (only that and the budget); the data stream is
    drawn on the CPU, so it continues exactly (here cpu -> cpu, the only device)."""
    from seqmem.engine import api

    store = RunStore(tmp_path)
    job = api.new_train_job(store, None, [*SMALL, "train.max_epochs=2"])
    train_run(job.cfg, store.open_run(job.run_id))
    store.set_status(job.run_id, "done")
    again = api.resume_job(store, job.run_id, ["train.max_epochs=3", "train.device=cpu"])
    assert again.cfg.train.device == "cpu" and again.resume
    with pytest.raises(SeqmemError, match="only budget, device and process overrides"):
        api.resume_job(store, job.run_id, ["train.precision=bf16"])
