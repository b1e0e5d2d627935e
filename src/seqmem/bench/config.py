"""The config of a bench: the same kind of model as a run's config (`seqmem.config`), loaded
by `load_config(source, overrides, schema=BenchConfig)`; `seqmem bench`'s flags are
overrides of it (`--lengths 512` is `lengths=[512]`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from seqmem.config import Strict
from seqmem.devices import DeviceName

TORCH_REFERENCE_NAMES = ("torch.nn.RNN", "torch.nn.GRU", "torch.nn.LSTM")
FULL_LENGTHS = (256, 1024, 4096, 16384, 65536)
#: The parts of a bench: the mixer grid (`seqmem.bench.run`), the op table and the chunk
#: lengths (`ops_table`), the small-model training table (`small`), decode (`decode`) and
#: what torch.compile gains per mixer family (`compile_table`).
PARTS = ("grid", "ops", "chunks", "small", "decode", "grid2d", "compile")  # grid2d: `bench.grid`
#: parts run only when asked for: kernels (`bench.kernels`, seqmem's forms vs the GPU kernels)
#: needs CUDA
EXTRA_PARTS = ("kernels",)
QUICK = {"mixers": ("leaky_rnn", "gru"), "references": ("torch.nn.GRU",), "lengths": (64, 128),
         "batch": 2, "d_model": 32, "repeats": 2, "budget_s": 5.0, "parts": ("grid",),
         "shapes": "quick"}
#: `--quick` with a part's flag (`--ops`, `--small`, ...): that part at its small shapes
QUICK_PARTS = {"repeats": 2, "budget_s": 5.0, "step_repeats": 5, "shapes": "quick"}


class BenchConfig(Strict):
    """What `seqmem bench` measures: mixers x forms x lengths beside torch's references."""

    mixers: tuple[str, ...] = ()  # empty: every registered mixer
    forms: tuple[str, ...] = ()  # empty: every form each mixer declares; ("default",): the first
    references: tuple[str, ...] = TORCH_REFERENCE_NAMES
    lengths: tuple[int, ...] = FULL_LENGTHS
    batch: int = Field(4, ge=1)
    d_model: int = Field(256, ge=1)
    repeats: int = Field(3, ge=1)
    budget_s: float = Field(20.0, gt=0)  # one run slower than this: no longer lengths
    step_repeats: int = Field(20, ge=1)
    memory: bool = True
    # one thread by default, as training runs (train.threads): on a machine whose cores are
    # busy, torch's intra-op pool waits for descheduled threads at every small op, and a
    # recurrent loop of thousands of small ops then runs 10-200x slower, unevenly (a fused
    # GRU at 41 tokens/s with 2 threads on a loaded 2-core VM, 9,097 with 1); None: torch's
    # choice (every core)
    threads: int | None = Field(1, ge=1)
    seed: int = 0
    # where the grid measures (seqmem.devices: auto | cpu | cuda | cuda:N | mps). cpu by
    # default: the bench's tables are the CPU reference; the other parts measure on the CPU
    # only and refuse another device
    device: DeviceName = "cpu"
    memory_limit_mib: float | None = Field(None, gt=0)  # None: 60 % of the memory available
    # --peers: seqmem beside the field's implementations (`seqmem.bench.peers`) instead of
    # the mixer grid; quick: small shapes and no torch.compile
    peers: bool = False
    peer_shapes: Literal["quick", "full"] = "full"
    peer_rounds: int = Field(7, ge=1)
    # which parts to run (PARTS); empty: all of them (the full bench); shapes "quick": each
    # part at its small shapes (ops_table.QUICK_OP_SHAPES, small.QUICK_SMALL, ...)
    parts: tuple[str, ...] = ()
    shapes: Literal["quick", "full"] = "full"
    # save the measured best chunk lengths for this machine (seqmem.ops.tuning); None: only
    # in the full bench
    write_chunks: bool | None = None

    @field_validator("mixers", "forms", "references", "lengths", "parts", mode="before")
    @classmethod
    def _comma_list(cls, v):
        if isinstance(v, str):  # "gru,lstm" from the command line
            return tuple(x.strip() for x in v.split(",") if x.strip())
        if isinstance(v, int | float) and not isinstance(v, bool):
            return (v,)
        return v

    @field_validator("references", mode="before")
    @classmethod
    def _none(cls, v):
        return () if v in ("none", None) else v

    @field_validator("parts")
    @classmethod
    def _known_parts(cls, v):
        unknown = [p for p in v if p not in PARTS + EXTRA_PARTS]
        if unknown:
            raise ValueError(f"unknown bench part {unknown[0]!r}; accepted: "
                             f"{', '.join(PARTS + EXTRA_PARTS)}")
        return v

    @field_validator("lengths")
    @classmethod
    def _positive(cls, v):
        if not v or min(v) < 1:
            raise ValueError(f"lengths must be positive integers, got {list(v)}")
        return v
