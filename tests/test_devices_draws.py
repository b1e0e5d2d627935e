"""What follows the device without a GPU to run on: random draws from a CPU generator are made
on the CPU and moved (checked with a module on the meta device, where a draw on the module's
device would not be the CPU's), a continual method moves everything it holds, an analysis's
models sit on its device, and the bench's timed calls wait for a GPU."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from seqmem import build
from seqmem.analysis.context import Context
from seqmem.analysis.probes import perturbed
from seqmem.bench import BenchConfig, measure
from seqmem.bench import run as bench_run
from seqmem.config import load_config
from seqmem.continual.config import ContinualConfig
from seqmem.continual.methods import METHODS
from seqmem.engine.jobs import train_run
from seqmem.errors import ConfigError, SeqmemError
from seqmem.models import SequenceModel
from seqmem.store import RunStore

META = torch.device("meta")


class DrawDevices(TorchFunctionMode):
    """Records the device (None: the default, the CPU) of every call that draws from a
    generator."""

    def __init__(self):
        super().__init__()
        self.devices: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kwargs.get("generator") is not None:
            self.devices.append(kwargs.get("device"))
        return func(*args, **kwargs)


def _leaky_model(d: int = 6) -> SequenceModel:
    return SequenceModel(1, d, mixer="leaky_rnn", mixer_options={"h0": "random"}, heads=[2])


def test_a_random_initial_state_is_drawn_on_the_cpu_and_moved():
    model = _leaky_model()
    want = 0.1 * torch.rand(3, 6, generator=torch.Generator().manual_seed(5))  # (b, d)
    (cpu_state,) = model.init_state(3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(cpu_state, want)
    model.to(META)
    mode = DrawDevices()
    with mode:
        (state,) = model.init_state(3, generator=torch.Generator().manual_seed(5))
    assert state.device == META and state.shape == (3, 6)
    assert mode.devices and all(d in (None, "cpu", torch.device("cpu")) for d in mode.devices)


def test_a_perturbation_is_drawn_on_the_cpu_for_a_model_elsewhere():
    model = _leaky_model().to(META)
    mode = DrawDevices()
    with mode:
        out = perturbed(model, "W", 0.1, generator=torch.Generator().manual_seed(0))
    assert next(out.parameters()).device == META
    assert mode.devices and all(d in (None, "cpu", torch.device("cpu")) for d in mode.devices)


def _tensors(value, seen=None):
    """Every tensor reachable from value: through dicts, lists, tuples, modules and objects'
    attributes (an independent walk, wider than Method.to's)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, torch.nn.Module):
        yield from value.parameters()
        yield from value.buffers()
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v, seen)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _tensors(v, seen)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        for v in vars(value).values():
            yield from _tensors(v, seen)


@pytest.mark.parametrize("method", METHODS)
def test_a_continual_method_moves_all_it_holds(method):
    cfg = load_config(None, [f"method={method}", "d_model=4", "protocol_options.n_max=3"],
                      schema=ContinualConfig)
    _, m = build.build_continual(cfg)
    gen = torch.Generator().manual_seed(0)
    m.before_experience(0, gen)  # what the method holds after an experience (Fisher, buffer)
    m.after_step(0, m.train_batches(0, 4, gen), gen)
    m.after_experience(0, gen)
    assert m.to(META) is m and m.device == META
    held = {k: v for k, v in vars(m).items() if k != "protocol"}  # tasks' data stay on the CPU
    tensors = list(_tensors(held))
    assert tensors and all(t.device == META for t in tensors), method
    batch = m.sample(m.protocol.experiences[0].train, 2, torch.Generator().manual_seed(0))
    assert {batch.inputs.device, batch.targets.device, batch.mask.device} == {META}


def test_the_continual_and_bench_configs_check_the_device_name():
    assert load_config(None, ["device=cpu"], schema=ContinualConfig).device == "cpu"
    assert ContinualConfig().device == "auto" and BenchConfig().device == "cpu"
    for schema in (ContinualConfig, BenchConfig):
        with pytest.raises(ConfigError, match=r"^device: unknown device 'gpu'; accepted: auto"):
            load_config(None, ["device=gpu"], schema=schema)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = load_config(None, ["model.d_model=8", "train.batch_size=16",
                             "train.steps_per_epoch=1", "train.eval_batches=1",
                             "curriculum.threshold=0.01", "curriculum.n_max=3"])
    store = RunStore(tmp_path_factory.mktemp("runs"))
    run = store.create_run(cfg.model_dump(mode="json"))
    train_run(cfg, run)
    return cfg, run, store


def test_an_analysis_context_keeps_its_models_on_its_device(trained):
    cfg, run, _ = trained
    ctx = Context.of_run(cfg, run, [2, 3], seed=0, options={}, say=print, device=META)
    assert ctx.device == META and ctx.focus("timescales").device == META
    assert {p.device for p in ctx.model().parameters()} == {META}
    assert {p.device for p in ctx.load(build.build_model(cfg)).parameters()} == {META}
    cpu = Context.of_run(cfg, run, [2, 3], seed=0, options={}, say=print)
    assert {p.device for p in cpu.model().parameters()} == {torch.device("cpu")}


def test_timing_waits_for_a_gpu(monkeypatch):
    """On cuda every timed run ends with torch.cuda.synchronize (before the clock is read);
    on the CPU nothing is waited for."""
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    measure.time_it(lambda: None, repeats=3, warmup=2, device="cuda")
    assert len(calls) == 1 + 3  # after the warm-up, then after each measured run
    calls.clear()
    measure.time_it(lambda: None, repeats=3, device="cpu")
    x = torch.zeros(2, 3)
    measure.fwd_only(torch.nn.Linear(3, 3), x, lambda m, x: m(x))()
    assert calls == []


def test_the_bench_parts_but_the_grid_refuse_another_device(monkeypatch, tmp_path):
    monkeypatch.setattr(bench_run, "resolve_device", lambda name: META)
    cfg = BenchConfig(parts=("ops",), device="cuda")
    with pytest.raises(SeqmemError, match=r"^bench parts ops measure on the CPU only"):
        bench_run.bench_to(cfg, tmp_path, command="seqmem bench --ops --device cuda")
    assert not any(tmp_path.iterdir())
