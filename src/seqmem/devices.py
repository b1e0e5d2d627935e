"""Where a run computes and at what precision: `train.device`, `train.precision`,
`train.compile`.

    device     auto | cpu | cuda | cuda:N | mps      (auto: cuda when available, else cpu)
    precision  fp32 | bf16 | fp16                    (autocast; fp16 with a gradient scaler)
    compile    false | true                          (torch.compile of the model's features)

The model, its optimiser state, the batches, the analysis probes and the checkpoints' tensors
follow the device. Task batches are generated on the CPU by the run's CPU generator and then
moved (`Batch.to`): the data stream is then the same on every device, so a run gives the same
data whatever it runs on, and the synthetic tasks cost little next to the model.

Under bf16 or fp16 autocast the projections, the MLPs, the heads and attention run in the low
precision; every recurrence op (the scans, the chunked forms, the step loops) upcasts its
inputs to float32 and runs with autocast off (`seqmem.ops.loops.float32_recurrence`), as fla
and mamba-ssm keep their states and decays in float32. Recurrent states are float32 always.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Annotated

import torch
from pydantic import AfterValidator

from seqmem.errors import SeqmemError

PRECISIONS = ("fp32", "bf16", "fp16")
DEVICE_FORMS = "auto, cpu, cuda, cuda:N, mps"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_device_name(name: str) -> str:
    """`name` if it is a device seqmem accepts, else a one-line error naming the forms."""
    if not isinstance(name, str) or not _DEVICE.match(name.strip()):
        raise SeqmemError(f"unknown device {name!r}; accepted: {DEVICE_FORMS}")
    return name.strip()


def _valid_device_name(name: str) -> str:
    try:
        return check_device_name(name)
    except SeqmemError as e:  # pydantic names the config key (train.device, device)
        raise ValueError(str(e)) from None


#: a config field holding a device name, checked by `check_device_name`
DeviceName = Annotated[str, AfterValidator(_valid_device_name)]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device of a device name: auto is cuda when CUDA is available, else cpu. A
    device this machine does not have is a one-line error naming what it has."""
    if isinstance(name, torch.device):
        name = str(name)
    name = check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise SeqmemError(f"device 'mps' is not available on this machine (Apple silicon "
                              f"with an MPS build of torch); available: {available_devices()}")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise SeqmemError(f"device {name!r} needs CUDA, which this machine's torch does not "
                          f"have (torch {torch.__version__}); available: {available_devices()}")
    dev = torch.device(name)
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise SeqmemError(f"device {name!r} does not exist: this machine has {n} CUDA "
                          f"device{'s' if n != 1 else ''} (cuda:0..cuda:{n - 1})")
    return dev


def available_devices() -> str:
    """The devices of this machine, as accepted by `resolve_device`: "cpu", then "cuda:0" ...
    and "mps" where present."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return ", ".join(out)


def device_kinds() -> list[torch.device]:
    """Every kind of device this machine can run on: cpu, and cuda / mps where available (the
    devices the device tests iterate over)."""
    out = [torch.device("cpu")]
    if torch.cuda.is_available():
        out.append(torch.device("cuda"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append(torch.device("mps"))
    return out


def check_precision(precision: str, device: torch.device) -> None:
    """A one-line error for a precision the device cannot run: fp16 and bf16 autocast run on
    cpu and cuda (bf16 on cuda needs compute capability 8.0 or newer), and on mps from torch
    2.5 (fp16 only)."""
    if precision not in PRECISIONS:
        raise SeqmemError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SeqmemError(f"precision bf16 needs a GPU of compute capability 8.0 or newer; "
                          f"{torch.cuda.get_device_name(device)} has not: use fp16 or fp32")
    if precision == "bf16" and device.type == "mps":
        raise SeqmemError("precision bf16 is not supported on mps; accepted there: fp32, fp16")


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """Autocast to `precision` on `device` (fp32: nothing changes)."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=LOW_PRECISION[precision]):
        yield


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """The gradient scaler fp16 needs (its gradients underflow without one); None otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a module's parameters (cpu for a module without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with its `features` (the blocks, the costly part) compiled by torch.compile;
    the heads, the losses and the step forms stay eager. The compiled function replaces the
    instance's attribute, so state_dict, checkpoints and analyses see the same module. A
    torch whose compiler cannot run here (no C++ compiler on the CPU, no Triton on a GPU)
    raises on the first call, with torch's reason."""
    if getattr(model, "_seqmem_compiled", False):
        return model
    model.features = torch.compile(model.features, dynamic=False)
    model._seqmem_compiled = True
    return model
